"""The report's figures (matplotlib, Agg): errors per layer and dtype, patch norms per layer and
token, and the implicit dynamics of the patch as the context grows (arXiv:2507.16003)."""

from __future__ import annotations

from pathlib import Path

#: Each figure of a report: its file name and its caption (the HTML's alt text).
FIGURES = {"errors": ("errors.png", "error per layer and dtype"),
           "norms": ("patch_norms.png", "patch norms per layer and token"),
           "dynamics": ("dynamics.png", "implicit dynamics"),
           "experiment": ("experiment.png", "generation experiment")}


def names(data: dict) -> dict[str, str]:
    """The figures a report of `data` has, by key, with their file names (nothing is drawn)."""
    keys = ["errors", "norms", "dynamics"] + (["experiment"] if data.get("experiment") else [])
    return {k: FIGURES[k][0] for k in keys}


def figures(data: dict, out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    draw = {"errors": _errors, "norms": _norms, "dynamics": _dynamics, "experiment": _experiment}
    return {k: draw[k](data, out_dir / file) for k, file in names(data).items()}


def _experiment(data: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2))
    for run in data["experiment"]:
        steps = [s for p in run["prompts"] for s in p["steps"]]
        label = f"{run['dtype']}, {run['strategy']} ({run['agreement']:.0%})"
        a1.semilogy(range(len(steps)), [max(s["linf"], 1e-9) for s in steps], ".", ms=3, label=label)
        a2.plot(range(len(steps)), [sum(x["agree"] for x in steps[: i + 1]) / (i + 1) for i in range(len(steps))],
                label=label)
    a1.set_xlabel("generated token (5 prompts x 20)")
    a1.set_ylabel("logit L-inf vs the model with the prompt")
    a2.set_xlabel("generated token")
    a2.set_ylabel("running top-1 agreement")
    a1.legend(fontsize=7)
    fig.suptitle("generation without the prompt (trained tiny Gemma 3), per token", fontsize=9)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _errors(data: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for row in data["validation"]:
        errs = [max(e, 1e-18) for e in row["per_layer_error"]]
        ax.semilogy(range(1, len(errs) + 1), errs, "o-", label=f"{row['dtype']} (bound {row['bound']:.0e})")
        ax.axhline(row["bound"], ls=":", lw=0.8, color=ax.lines[-1].get_color())
    ax.set_xlabel("layer")
    ax.set_ylabel("max relative error")
    ax.set_title("patched no-context run vs contextual run")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _norms(data: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    norms = data["validation"][0]["patch_norms"]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    if norms and norms[0]:
        im = ax.imshow(norms, aspect="auto", cmap="viridis", origin="lower")
        fig.colorbar(im, ax=ax, label="largest |patch| / |parameter|")
    ax.set_xlabel("query token")
    ax.set_ylabel("layer")
    ax.set_title("patch norms per layer and token (float64, trial 1)")
    return _save(fig, path)


def _dynamics(data: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    dyn = data["dynamics"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2))
    for name, series in dyn["params"].items():
        a1.plot(dyn["context_len"], series["norm"], label=name)
        a2.plot(dyn["context_len"], series["cosine_to_final"], label=name)
    a1.set_xlabel("context length")
    a1.set_ylabel("|patch| (Frobenius)")
    a2.set_xlabel("context length")
    a2.set_ylabel("cosine with the final patch")
    a1.legend(fontsize=7)
    fig.suptitle("implicit dynamics: the patch of one query token as the context grows", fontsize=9)
    return _save(fig, path)
