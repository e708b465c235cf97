r"""What a patch set measured of itself: the patched run's outputs against the run with the context.

`absorb_context` runs the contextual pass (to read $u_C$) and the patched query pass (Algorithm 1); both
produce the outputs on the query tokens anyway, so comparing them costs no forward. The figure is the
issue's measure, $\max|\Delta\ell| / \max|\ell|$ over every query token and vocabulary entry (an encoder:
its last hidden state), judged against its dtype's bound (`numeric.hf.bounds.logit_bound`). Each layer's
output (the residual stream it hands on) is recorded in both runs too, which names the layer where the
patched state first leaves the contextual one.

A patch set keeps the contextual run's outputs (`Reference`), so its replays measure themselves as well:
`PatchSet.logits` (the factored run) and `PatchSet.materialized_logits` (written into the model's modules)
each record a `Figure` in `PatchSet.accuracy`, and the one that is not the arithmetic the patches were
computed in says so, with its figure, when it leaves the bound (`PatchAccuracyWarning`, one per call; turn it
into an error with ``warnings.simplefilter("error", PatchAccuracyWarning)``).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from numeric.hf.bounds import logit_bound

#: The run each ``computed_in`` computes the patches in: its replay is the exact one.
EXACT = {"kernel": "factored", "model": "materialized"}
REPLAY = {"factored": "logits()", "materialized": "materialized_logits()"}
WORST = 3  # tokens named in a message


class PatchAccuracyWarning(UserWarning):
    """A patched run's outputs are further from the run with the context than its dtype's bound."""


@dataclass(frozen=True)
class Figure:
    """One patched run against the contextual one: ``error`` = max|Δ|/max|reference| over every query token
    and entry, ``tokens`` each query token's max|Δ| on the same scale, ``drift`` per layer the largest
    relative difference of its output (max|Δx|/max|x_C| over the tokens), ``top1`` the share of query tokens
    whose largest entry is the contextual run's."""

    error: float
    tokens: tuple[float, ...]
    drift: tuple[float, ...]
    top1: float

    def worst(self, k: int = WORST) -> list[int]:
        """The query tokens with the largest error, worst first."""
        return sorted(range(len(self.tokens)), key=lambda j: -self.tokens[j])[:k]

    def first_layer(self, bound: float) -> int | None:
        """The first layer whose output leaves the contextual one by more than ``bound`` (None: none does)."""
        return next((n for n, d in enumerate(self.drift) if not d <= bound), None)


@dataclass
class Reference:
    """The contextual run at the query positions: its outputs (q, vocab) and every layer's output (q, d)."""

    output: torch.Tensor
    states: list[torch.Tensor]

    def compare(self, output: torch.Tensor, states: list[torch.Tensor] | None = None) -> Figure:
        """A patched run's `Figure`: ``output`` (1, q, vocab) or (q, vocab), ``states`` its layers' outputs."""
        want = self.output.detach().double()
        got = output.detach().reshape(want.shape).to(want)
        scale = float(want.abs().max()) or 1.0
        per = ((got - want).abs().amax(-1) / scale).tolist()
        drift = tuple(_relative(s, w) for s, w in zip(states or [], self.states, strict=False))
        top1 = float((got.argmax(-1) == want.argmax(-1)).double().mean())
        return Figure(_nan_max(per), tuple(per), drift, top1)


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    want = want.detach().double()
    got = got.detach().to(device=want.device, dtype=torch.float64).reshape(want.shape)
    return float((got - want).abs().max() / (want.abs().max() if bool(want.abs().max() > 0) else 1.0))


def _nan_max(values) -> float:
    """The largest value; NaN if any is NaN (a NaN is never within a bound)."""
    values = list(values)
    return float("nan") if any(v != v for v in values) else max(values, default=0.0)


@dataclass
class Accuracy:
    """A patch set's figures: ``figures["factored"]`` / ``figures["materialized"]`` (the last measurement of
    each run, `Figure`), the ``bound`` of the model's ``dtype`` they are judged against, ``exact``: the run
    the patches were computed in, whose replay reproduces the figure absorb_context measured; ``ill``:
    {layer: the largest |patch| / |parameter| * eps of the dtype} where patches are ill-conditioned."""

    dtype: str
    bound: float
    exact: str
    figures: dict[str, Figure] = field(default_factory=dict)
    ill: dict[int, float] = field(default_factory=dict)

    @classmethod
    def of(cls, dtype: torch.dtype, computed_in: str) -> Accuracy:
        return cls(str(dtype).removeprefix("torch."), logit_bound(dtype), EXACT[computed_in])

    def error(self, which: str) -> float | None:
        f = self.figures.get(which)
        return None if f is None else f.error

    @property
    def ok(self) -> bool:
        """Every figure measured so far within the bound."""
        return all(f.error <= self.bound for f in self.figures.values())

    def as_dict(self) -> dict:
        return {"dtype": self.dtype, "bound": self.bound, "exact": self.exact, "ok": self.ok,
                "factored": self.error("factored"), "materialized": self.error("materialized"),
                "ill_conditioned_layers": sorted(self.ill)}


def check(ps, which: str, figure: Figure, caller: str) -> None:
    """Record ``figure`` as the patch set's ``which`` run and warn once, naming the cause, if it leaves the
    bound."""
    acc = ps.accuracy
    acc.figures[which] = figure
    if not figure.error <= acc.bound:
        warnings.warn(message(ps, which, caller), PatchAccuracyWarning, stacklevel=3)


def message(ps, which: str, caller: str) -> str:
    """One paragraph: the figure and its bound, which arithmetic the patches were computed in, the layer
    where the patched state first leaves the contextual one, the worst tokens, and what to do."""
    acc = ps.accuracy
    f = acc.figures[which]
    q = len(f.tokens)
    what = "outputs" if ps.layout.encoder else "logits"
    text = [f"{caller}: the patched run's {what} ({which}) are {f.error:.2e} from the run with the context "
            f"(max|Δ|/max|{what[:-1]}| over the {q} query tokens; top-1 agreement {f.top1:.0%}), above the "
            f"{acc.dtype} bound {acc.bound:.1e}."]
    other = next(k for k in EXACT.values() if k != which)
    if which != acc.exact:
        done = acc.error(other)
        text.append(f"The patches were computed in the {_arith(other)}, and this {which} run is a replay in another "
                    f"arithmetic; {REPLAY[other]} replays them as computed"
                    + (f" ({done:.1e})." if done is not None else "."))
    text.append(_where(ps, f, acc.bound))
    text.append("What to do: " + "; ".join(_advice(ps, which, f, acc)) + ".")
    return " ".join(text)


def _arith(run: str) -> str:
    return "kernels' factored run" if run == "factored" else "model's own modules (materialized)"


def _where(ps, f: Figure, bound: float) -> str:
    """The first layer that leaves the contextual run, its strategies and amplification, the worst tokens."""
    worst = f.worst()
    n = f.first_layer(bound)
    if n is None and f.drift:
        n = max(range(len(f.drift)), key=lambda k: f.drift[k])
        where = f"No layer's output leaves the bound; the largest difference is at layer {n} ({f.drift[n]:.1e})"
    elif n is None:
        where = "The layers' outputs were not recorded"
    else:
        where = f"The patched state first leaves the contextual one at layer {n} ({f.drift[n]:.1e})"
    if n is not None and n < len(ps.layers):
        lp = ps.layers[n]
        names = sorted(set(lp.strategies))
        amps = [a for a in lp.amplification if a == a]
        where += f", strategy {', '.join(names)}" if names else ""
        where += f", amplification up to {max(amps):.3g}" if amps else ""
        if n in ps.accuracy.ill:
            where += f", ill-conditioned ({ps.accuracy.ill[n]:.1e} of the dtype's precision)"
    tokens = ", ".join(f"{j} ({f.tokens[j]:.1e})" for j in worst)
    ill = sorted(ps.accuracy.ill)
    tail = f"; ill-conditioned patches at layers {_ranges(ill)}" if ill else ""
    return f"{where}; the largest errors are at query tokens {tokens}{tail}."


def _advice(ps, which: str, f: Figure, acc: Accuracy) -> list[str]:
    out = []
    if which != acc.exact:
        other = "kernel" if which == "factored" else "model"
        out.append(f"use {REPLAY[acc.exact]} (the run the patches were computed in), or absorb with "
                   f"computed_in={other!r} for a {which} run")
    else:
        other = "model" if acc.exact == "factored" else "kernel"
        out.append(f"absorb with computed_in={other!r}")
    if _alternatives(ps):
        out.append("another strategy (the default picks, per layer and token, the one of least amplification)")
    if acc.dtype in ("bfloat16", "float16") and (ps.patch_dtype is None or ps.patch_dtype.itemsize < 4):
        out.append("a wider patch_dtype (patch_dtype=torch.float32)")
    return out


def _alternatives(ps) -> bool:
    """Whether some layer's block has an exact output strategy its patches did not use."""
    from symbolic.controllability import check as controllable

    used = {s for lp in ps.layers for s in lp.strategies}
    return any(set(controllable(spec).output.ok) - used for spec in ps.layout.specs)


def _ranges(ns: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, start = [], None
    for i, n in enumerate(ns):
        start = n if start is None else start
        if i + 1 == len(ns) or ns[i + 1] != n + 1:
            out.append(str(n) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


@contextmanager
def collected_ill(into: dict[int, float]):
    """`IllConditionedPatchWarning`s of the block folded into ``into`` ({layer: worst size * eps}) instead of
    printed one per layer and token; any other warning is passed on once, as it came, also when the block
    fails. The patch set's figure says whether the ill-conditioning cost precision (`check` warns once when
    it did)."""
    from numeric.kernels.runtime import IllConditionedPatchWarning

    records: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield into
            finally:
                records = list(caught)
    finally:
        seen = set()
        for w in records:
            if issubclass(w.category, IllConditionedPatchWarning):
                layer = int(w.message.layer) if str(w.message.layer).isdigit() else -1
                into[layer] = max(into.get(layer, 0.0), float(w.message.lost))
            elif (w.category, str(w.message)) not in seen:
                seen.add((w.category, str(w.message)))
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
