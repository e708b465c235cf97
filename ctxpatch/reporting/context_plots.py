"""The context report's figures (matplotlib, Agg), drawn in memory as PNG bytes: per layer x query token heat maps
of patch size, strategy and amplification; every parameter's patch size against depth; the patched runs' error
against depth."""

from __future__ import annotations

import io
import math

#: Each figure of a context report: its file name and its caption (the HTML's alt text).
FIGURES = {"sizes": ("patch_sizes.png", "patch size per layer and token"),
           "strategies": ("strategies.png", "strategy per layer and token"),
           "amplification": ("amplification.png", "amplification per layer and token"),
           "params": ("params.png", "patch size per parameter and layer"),
           "depth": ("depth.png", "error against depth")}
MAX_LABELS = 40  # query tokens named on the x axis up to this many


def figures(data: dict) -> dict[str, bytes]:
    """Every figure of `FIGURES` as PNG bytes (nothing is written)."""
    import matplotlib

    matplotlib.use("Agg")
    draw = {"sizes": _sizes, "strategies": _strategies, "amplification": _amplification, "params": _params,
            "depth": _depth}
    return {k: draw[k](data) for k in FIGURES}


def save(fig) -> bytes:
    """A laid-out figure as PNG bytes (110 dpi, no software stamp, as the proof reports' figures); closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _grid(data: dict, title: str):
    import matplotlib.pyplot as plt

    q, n = len(data["query_tokens"]), data["n_layers"]
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 0.16 * n))
    ax.set_xlabel("query token")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    if q <= MAX_LABELS:
        ax.set_xticks(range(q), [t["text"] for t in data["query_tokens"]], rotation=60, fontsize=7)
    return fig, ax


def _sizes(data: dict) -> bytes:
    import numpy as np

    grid = np.array([[max(v, 1e-30) for v in row["largest"]] for row in data["layers"]])
    fig, ax = _grid(data, "largest patch / parameter (Frobenius) per layer and token")
    im = ax.imshow(np.log10(grid), aspect="auto", cmap="viridis", origin="lower")
    fig.colorbar(im, ax=ax, label="log10 |patch| / |param|")
    return save(fig)


def _strategies(data: dict) -> bytes:
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    names = data["strategies"]
    grid = np.array([[names.index(s) for s in row["strategies"]] for row in data["layers"]])
    cmap = plt.get_cmap("tab10", max(len(names), 1))
    fig, ax = _grid(data, "output strategy per layer and token")
    ax.imshow(grid, aspect="auto", cmap=cmap, origin="lower", vmin=-0.5, vmax=len(names) - 0.5)
    ax.legend(handles=[Patch(color=cmap(i), label=s) for i, s in enumerate(names)], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1))
    return save(fig)


def _amplification(data: dict) -> bytes:
    import numpy as np

    grid = np.array([[math.nan if a is None else a for a in row["amplification"]] for row in data["layers"]])
    fig, ax = _grid(data, "amplification of input perturbations (blank: kept, not measured again)")
    if np.isfinite(grid).any():
        im = ax.imshow(grid, aspect="auto", cmap="magma", origin="lower")
        fig.colorbar(im, ax=ax, label="patched / unpatched")
    return save(fig)


def _params(data: dict) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    params = dict.fromkeys(p for row in data["layers"] for p in row["params"])
    for p in params:
        layers = [row["layer"] for row in data["layers"] if p in row["params"]]
        largest = [max(max(s["relative"] for s in row["params"][p]), 1e-30) for row in data["layers"]
                   if p in row["params"]]
        ax.semilogy(layers, largest, "o-", ms=3, label=p)
    ax.set_xlabel("layer")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("|patch| / |param| (largest token)")
    ax.set_title("patch size per parameter and layer", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save(fig)


def _depth(data: dict) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    for how in ("factored", "materialized"):
        errs = [max(e, 1e-18) for e in data["errors"][how]["per_layer"]]
        ax.semilogy(range(len(errs)), errs, "o-", ms=3, label=how)
    ax.set_xlabel("layer")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("max relative error of the layer's output")
    ax.set_title("patched query alone vs the run with the context, per layer", fontsize=9)
    ax.legend(fontsize=8)
    return save(fig)
