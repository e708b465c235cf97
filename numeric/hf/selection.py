r"""Choosing each token's output strategy: among the block's exact strategies, the well-conditioned one of least
`amplification`, and the rules that keep a layer's previous choice without comparing every candidate again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from numeric import kernels
from numeric.hf import offload
from numeric.hf.amplification import amplification, measure_amplification, unpatched, x_kwarg
from numeric.hf.infer import layout_for
from numeric.hf.layout import Layout, layer_params
from numeric.hf.offload import get
from numeric.hf.passes import given_rows
from numeric.hf.patches import LayerPatches, combine_tokens, concat_tokens, layer_patches, token_slice
from symbolic.errors import ModelInputError, PatchConditionError
from symbolic.spec import BlockSpec

DEFAULT = "default"  # per layer and token: the exact output strategy with the smallest amplification
TIE = 1.1  # amplifications within 10% are equal (random directions): the checker's order decides
ACCEPT = 1.5  # a layer's previous choice is kept while it amplifies perturbations at most this much
GROWTH = 2.0  # ... and kept unmeasured while its patch is at most this much larger than when last measured


def resolve(model, strategy: str | None = None, input_strategy: str | None = None, spec=None,
            params: dict[str, str] | None = None) -> tuple[Layout, dict]:
    """The model's checked `Layout` and, per distinct spec, its candidate kernels (`candidate_kernels`)."""
    layout = layout_for(model, spec, params)
    return layout, {s: candidate_kernels(s, strategy, input_strategy) for s in layout.specs}


def candidate_kernels(spec: BlockSpec, strategy: str | None, input_strategy: str | None = None) -> dict:
    """{output strategy: kernel}: every exact output strategy of `spec` for the default (``None`` or
    ``"default"``; the checker's own default first), or the one strategy asked for."""
    from symbolic.controllability import check

    if strategy not in (None, DEFAULT):
        k = kernels.load(spec, "torch", strategy, input_strategy)
        return {k.OUTPUT_STRATEGY: k}
    verdict = check(spec)
    first = verdict.output_strategy
    names = [first] + [n for n in verdict.output.ok if n != first] if first else []
    return {n: kernels.load(spec, "torch", n, input_strategy) for n in names}


@dataclass(frozen=True)
class Products:
    """What a layer's kernels take ready-made instead of reading a matrix again: ``given``, the contextual run's
    products ({matrix: (T, out)}, `contextual_bases`), and ``plain``, the no-context products of the same
    pass ({matrix@vector: (T, out)}, the kernel's `plain_products`). Either may be None."""

    given: dict | None = None
    plain: dict | None = None

    def rows(self, rows) -> Products:
        """The products of some tokens: ``rows`` an index array or a slice of the token axis."""
        return Products(given_rows(self.given, rows), given_rows(self.plain, rows))

    def kwargs(self) -> dict:
        """The kernel's ``given`` and ``plain`` keywords, where there are products to give."""
        return {k: v for k, v in (("given", self.given), ("plain", self.plain)) if v}


NONE = Products()


@dataclass(frozen=True)
class Candidate:
    """One output strategy's patches of some tokens, as the choice weighs them.

    ``amplification`` is NaN where the strategy was kept without measuring it; ``sizes`` (the largest relative
    size of each patch part) where it was measured, else None; ``ill``: ill-conditioned once stored in the
    model's dtype (`numeric.kernels.runtime.ill_conditioned`)."""

    strategy: str
    patches: dict  # the kernel's factored patches by canonical name, (T, ...) arrays
    amplification: float = float("nan")
    sizes: dict[str, float] | None = None
    ill: bool = False


@dataclass(frozen=True)
class Measurement:
    """What was last measured of a layer's kept strategy: its amplification and the relative sizes of its patch
    parts at that token (`unchanged` decides from them whether a new patch needs measuring again)."""

    strategy: str
    amplification: float
    sizes: dict[str, float]

    def covers(self, strategy: str, sizes: dict[str, float]) -> bool:
        """Whether this measurement still bounds the amplification of `strategy`'s patch of these sizes."""
        return strategy == self.strategy and set(sizes) == set(self.sizes) and \
            unchanged(self.amplification, self.sizes, sizes)


@dataclass
class Memory:
    """What the choice remembers, per layer: the strategy its previous token chose (``kept``), and what was
    last measured of it (``measured``). ``kept`` may be the caller's dict (`absorb_context`'s ``memory``), so
    that successive calls start from the previous choices; ``measured`` belongs to one `Patcher`."""

    kept: dict[int, str] = field(default_factory=dict)
    measured: dict[int, Measurement] = field(default_factory=dict)


@dataclass
class Patcher:
    """Computes one layer's patches for a few tokens: each token's exact strategy of least amplification.

    ``kernels`` are the candidate strategies (one when a strategy is named); ``patch_dtype`` computes
    the patches in a wider dtype and stores them in the model's. To save time, the strategy a layer
    chose for the previous token is tried first and kept, without trying the others, while its
    patch is well conditioned and its amplification at most `ACCEPT` (``memory.kept``; a layer without a
    choice of its own starts from the layer below's, under the same rule); and kept without
    measuring its amplification (NaN recorded) while the patch is no more than `GROWTH` times as large,
    relative to the parameters, as when this Patcher last measured it (``memory.measured``, `unchanged`). The
    tokens of one call are computed in one batched call of the kept strategy's kernel, measured at the
    token with the largest patch; only tokens the rule does not cover are chosen one by one (`best`).
    """

    model: object
    layout: Layout
    kernels: dict  # spec -> {output strategy: kernel}
    patch_dtype: torch.dtype | None = None
    memory: Memory = field(default_factory=Memory)
    measure: bool = True  # the amplification of a single candidate too (a choice always measures)

    def __post_init__(self):
        self._params: dict[int, dict] = {}  # layer -> its canonical parameters, on a resident model
        self._resident = not offload.dispatched(self.model)

    def params(self, n: int) -> dict[str, torch.Tensor]:
        """Layer n's canonical parameters (`layer_params`), read once per Patcher on a resident model: the
        views keep the parameters' own storage, which `DenseWriter` never writes. A dispatched model's
        are loaded by its hooks at every call (holding them would defeat the offload)."""
        if n in self._params:
            return self._params[n]
        params = layer_params(get(self.model, self.layout.layers)[n], self.layout[n])
        if self._resident:
            self._params[n] = params
        return params

    def layer(self, n: int, u: torch.Tensor, target: torch.Tensor, x: torch.Tensor | None,
              given: dict | None = None, plain: dict | None = None) -> LayerPatches:
        """LayerPatches of layer n for u, target (T, d). x: the MLP input of a parallel block. ``given``: the
        contextual run's products of layer n ({matrix: (T, out)}, `contextual_bases`), ``plain``: the no-context
        products of this pass (the kernel's `plain_products` of u), which the kernels take instead of
        recomputing them (not where the patches are computed in a wider dtype: there the kernel's own products
        are the more accurate)."""
        adapter = self.layout[n]
        params = self.params(n)
        kernels_n = self.kernels[adapter.spec]
        target = target.to(device=u.device, dtype=u.dtype)  # accelerate may place layers on several devices
        wide = self.patch_dtype if self.patch_dtype is not None and self.patch_dtype != u.dtype else None
        carried(n, wide or u.dtype, u, target)
        if wide is not None:
            params = {k: v.to(wide) if isinstance(v, torch.Tensor) else v for k, v in params.items()}
        cast = (lambda t: t) if wide is None else (lambda t: None if t is None else t.to(wide))  # noqa: E731
        single = len(kernels_n) == 1
        given = Products(given, plain) if wide is None else NONE
        chosen = self._batch(n, params, cast(u), cast(target), cast(x), given) if self.measure or not single \
            else None
        if chosen is None and single:  # every token measured (or none, ``measure=False``)
            name, kernel = next(iter(kernels_n.items()))
            patches = block_patches(kernel, params, cast(u), cast(target), str(n), cast(x), given)
            amp = amplification(kernel, params, patches, cast(u), cast(x), adapter.mode) if self.measure \
                else torch.full((u.shape[0],), float("nan"))
            return self._store(n, [name] * u.shape[0], amp.tolist(), [patches], wide or u.dtype, batched=True)
        if chosen is None:  # the batch could not decide (`_batch`): token by token
            chosen = [self.best(n, params, cast(u[j:j + 1]), cast(target[j:j + 1]),
                                None if x is None else cast(x[j:j + 1]), j, given.rows(slice(j, j + 1)))
                      for j in range(u.shape[0])]
        names, amps = [c.strategy for c in chosen], [c.amplification for c in chosen]
        parts = [c.patches for c in chosen]
        if len(set(names)) == 1:  # one strategy: stored as one batch (`LayerPatches.token` slices it)
            return self._store(n, names, amps, [concat_tokens(parts)], wide or u.dtype, batched=True)
        return self._store(n, names, amps, parts, wide or u.dtype, batched=False)

    def best(self, n: int, params: dict, u: torch.Tensor, target: torch.Tensor, x: torch.Tensor | None, j: int,
             given: Products = NONE) -> Candidate:
        """Token j's patches by every candidate strategy (u, target: its (1, d) rows); the best by (ill-conditioned,
        amplification), `choose`. The layer's previous choice is tried first and kept, unmeasured while
        `Measurement.covers` it, or measured at most `ACCEPT`; the choice is remembered (``memory``)."""
        from numeric.kernels.runtime import relative_sizes, warn_ill_conditioned

        found, first_error, reference = [], None, None
        last, record = self.memory.kept.get(n), self.memory.measured.get(n)
        adapter = self.layout[n]
        kernels_n = self.kernels[adapter.spec]
        for name, kernel in sorted(kernels_n.items(), key=lambda item: item[0] != last):  # last choice first
            try:
                patches = _quiet(block_patches, kernel, params, u, target, str(n), x, given)
            except PatchConditionError as exc:
                first_error = first_error or exc
                continue
            ill = self._ill(kernel, params, patches)
            sizes = {k: float(v.max()) for k, v in relative_sizes(patches, kernel.references(params)).items()}
            if name == last and not ill and record is not None and set(sizes) == set(patches) and \
                    record.covers(name, sizes):
                found = [Candidate(name, patches, ill=ill)]  # kept without measuring (NaN recorded)
                break
            amp, reference = measure_amplification(kernel, params, patches, u, x, adapter.mode, reference)  # the
            amp = float(amp[0])  # unpatched branch is measured once, with the first candidate, for all
            found.append(Candidate(name, patches, amp, sizes, ill))
            if name == last and not ill and amp <= ACCEPT:
                break  # the layer's previous choice still does not amplify: keep it
        if not found:
            raise PatchConditionError(first_error.condition, [j], first_error.layer)
        chosen = choose(found)
        self.memory.kept[n] = chosen.strategy
        if chosen.sizes is not None:
            self.memory.measured[n] = Measurement(chosen.strategy, chosen.amplification, chosen.sizes)
        warn_ill_conditioned(chosen.patches, kernels_n[chosen.strategy].references(params), str(n))
        return chosen

    def _batch(self, n, params, u, target, x, given: Products = NONE) -> list[Candidate] | None:
        """`best` for T tokens at once: the layer's previous choice computed in one batched call; its
        amplification measured at the token with the largest patch, and every well-conditioned token whose
        patch is at most `GROWTH` times that one's kept unmeasured (`unchanged`, NaN recorded), as `best`
        keeps a choice from token to token. Other tokens go through `best`. None (all through `best`) when
        a side condition fails at some token, the kept choice amplifies more than `ACCEPT`, or a patch part
        has no size (a bias). A layer without a previous choice starts from the layer below's, kept under
        the same rule (the layers of a model tend to choose alike: one batched call instead of every
        candidate at the first token); when the rule rejects it, or there is none, the first token's `best`
        chooses."""
        kernels_n = self.kernels[self.layout[n].spec]
        kept = self.memory.kept
        first = None  # the first token's `best`, where the layer has no previous choice to keep
        if kept.get(n) not in kernels_n:  # (or one of another strategy set)
            if len(kernels_n) == 1:
                kept[n] = next(iter(kernels_n))
            elif kept.get(n - 1) in kernels_n:  # the layer below's choice, kept if the rule keeps it
                kept[n] = kept[n - 1]
                found = self._kept(n, params, u, target, x, None, given)
                if found is not None:
                    return found
                del kept[n]  # rejected: the first token chooses among all candidates
            if n not in kept:
                first = self.best(n, params, _row(u, 0), _row(target, 0), _row(x, 0), 0, given.rows(slice(0, 1)))
        return self._kept(n, params, u, target, x, first, given)

    def _kept(self, n, params, u, target, x, first: Candidate | None, given: Products = NONE) -> list[Candidate] | None:
        """`_batch` with the layer's choice in ``memory.kept[n]`` (``first``: the first token's `best`, or None)."""
        from numeric.kernels.runtime import ill_tokens, relative_sizes, warn_sizes

        kernels_n = self.kernels[self.layout[n].spec]
        name = self.memory.kept[n]
        kernel = kernels_n[name]
        try:
            patches = _quiet(block_patches, kernel, params, u, target, str(n), x, given)
        except PatchConditionError:
            return None
        sizes = {k: v.double().cpu() for k, v in relative_sizes(patches, kernel.references(params)).items()}
        if set(sizes) != set(patches):
            return None
        ill = ill_tokens(sizes, kernel.references(params), self.model.dtype)  # as `_ill`, token by token
        if ill is None or bool(ill.all()):
            return None
        largest = torch.stack(list(sizes.values())).max(0).values.masked_fill(ill, -1.0)
        m = int(largest.argmax())
        at_m, record = {k: float(v[m]) for k, v in sizes.items()}, self.memory.measured.get(n)
        if record is not None and record.covers(name, at_m):  # measured on an earlier call: still valid
            amp, base, at_m = float("nan"), record.amplification, record.sizes
        else:
            amp = float(measure_amplification(kernel, params, token_slice(patches, m), _row(u, m), _row(x, m),
                                              self.layout[n].mode)[0][0])
            if amp > ACCEPT:
                return None
            base = amp
            self.memory.measured[n] = Measurement(name, amp, at_m)
        chosen = []
        for j in range(u.shape[0]):
            if j == 0 and first is not None and first.strategy == name:  # its patches as the batch computed them
                chosen.append(Candidate(name, token_slice(patches, 0), first.amplification))
            elif j == 0 and first is not None:
                chosen.append(first)
            elif j == m:
                chosen.append(Candidate(name, token_slice(patches, j), amp))
            elif not bool(ill[j]) and unchanged(base, at_m, {k: float(v[j]) for k, v in sizes.items()}):
                chosen.append(Candidate(name, token_slice(patches, j)))
            else:
                chosen.append(self.best(n, params, _row(u, j), _row(target, j), _row(x, j), j,
                                        given.rows(slice(j, j + 1))))
                self.memory.kept[n] = name
        keeping = [j for j, c in enumerate(chosen) if c.strategy == name]
        warn_sizes({k: v[keeping] for k, v in sizes.items()}, kernel.references(params), str(n))
        return chosen

    def _ill(self, kernel, params, patches) -> bool:
        """Whether the patch, stored in the model's dtype, is ill-conditioned (`runtime.ILL_CONDITIONED`)."""
        from numeric.kernels.runtime import ill_conditioned

        return ill_conditioned(patches, kernel.references(params), self.model.dtype)

    def _store(self, n, names, amps, parts, dtype, batched: bool) -> LayerPatches:
        """The patches as `LayerPatches`, in ``dtype``: the dtype they were computed in (the model's, or the
        patch dtype, which the kernels then apply them in: `PatchSet.patch_dtype`)."""
        adapter, layer = self.layout[n], get(self.model, self.layout.layers)[n]
        params = self.params(n)
        parts = [{k: {f: v.to(dtype) for f, v in fs.items()} for k, fs in p.items()} for p in parts]
        finite(n, parts, dtype)
        if batched:
            out = layer_patches(adapter, params, parts[0])
        else:
            out = combine_tokens(layer, [layer_patches(adapter, params, p) for p in parts])
            out.per_token = parts
            out.factored = concat_tokens(parts) if len(set(names)) == 1 else {}
        out.strategies, out.amplification = list(names), [float(a) for a in amps]
        return out


def carried(n: int, dtype: torch.dtype, u: torch.Tensor, target: torch.Tensor) -> None:
    r"""Refuse a layer whose residual stream the patch formulas' arithmetic cannot carry: the norms square it,
    and $|u|^2$ above the dtype's largest number is infinite (float16: $|u| \ge 256$; the model's own norms
    compute in float32, so its run is fine), which would surface as a misleading $z \ne 0$ refusal or a
    non-finite patch."""
    info = torch.finfo(dtype)
    big = float(torch.maximum(u.detach().abs().max(), target.detach().abs().max()))
    if not big < info.max ** 0.5:
        wider = "float32" if dtype in (torch.float16, torch.bfloat16) else "float64"
        raise ModelInputError(f"layer {n}: the residual stream reaches |u| = {big:.3g}, whose square overflows "
                              f"{str(dtype).removeprefix('torch.')} (largest {info.max:.4g}) in the patch formulas' "
                              f"norms; compute the patches in {wider}: patch_dtype=torch.{wider} (they are then "
                              "applied and checked in it)")


def finite(n: int, parts: list[dict], dtype: torch.dtype) -> None:
    """Refuse patches with a non-finite entry (an overflow of ``dtype``, or a division by a vanishing
    denominator), naming the layer and tokens, instead of storing them."""
    bad: set[int] = set()
    offset = 0
    for p in parts:
        for fields in p.values():
            for v in fields.values():
                rows = ~torch.isfinite(v.reshape(v.shape[0], -1)).all(-1)
                bad.update(offset + int(j) for j in rows.nonzero()[:, 0])
        offset += next(iter(next(iter(p.values())).values())).shape[0] if p else 0
    if not bad:
        return
    if dtype in (torch.float16, torch.bfloat16):
        raise ModelInputError(f"layer {n}: the patch formulas overflow {str(dtype).removeprefix('torch.')} at query "
                              f"tokens {sorted(bad)} (a non-finite patch entry); compute the patches in float32: "
                              "patch_dtype=torch.float32")
    raise PatchConditionError("every patch entry is finite (a denominator vanishes to round-off)", sorted(bad), str(n))


def block_patches(kernel, params: dict, u: torch.Tensor, target: torch.Tensor, layer: str = "",
                  x: torch.Tensor | None = None, given: Products = NONE) -> dict:
    """``kernel.block_patches``, except that a token whose u equals its target exactly gets the identity patch
    (`unpatched`: zero factors and deltas, unit scales). The context has not reached that token at this layer
    (say, a sliding window that holds only a padding token's zero states, in both runs), so the unpatched
    layer is exact there, whereas a formula may be undefined (``z != 0`` fails for u = u_C = 0). ``given``: the
    products of the T tokens the kernel takes ready-made (`Products`)."""
    same = (u == target).all(-1)  # (T,)
    if not bool(same.any()):
        return kernel.block_patches(params, u, target, layer=layer, **x_kwarg(x), **given.kwargs())
    rows = (~same).nonzero()[:, 0]
    if len(rows):
        try:
            found = kernel.block_patches(params, u[rows], target[rows], layer=layer,
                                         **x_kwarg(None if x is None else x[rows]), **given.rows(rows).kwargs())
        except PatchConditionError as exc:  # name the tokens by their index among all T
            raise PatchConditionError(exc.condition, [int(rows[t]) for t in exc.tokens], exc.layer) from None
    else:  # the formulas on a generic stand-in (u = target), for the patches' fields and shapes only
        r = torch.randn(u[:1].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(u)
        found = kernel.block_patches(params, r, r, layer=layer, **x_kwarg(None if x is None else r))
    out = {}
    for name, fields in found.items():
        out[name] = {}
        for f, v in fields.items():
            full = unpatched(f, v[:1]).expand(u.shape[0], *v.shape[1:]).clone()  # (T, ...): identity rows
            if len(rows):
                full[rows] = v
            out[name][f] = full
    return out


def _row(t: torch.Tensor | None, j: int) -> torch.Tensor | None:
    """Token j's row of a (T, ...) array, (1, ...), or None."""
    return None if t is None else t[j:j + 1]


def _quiet(fn, *args, **kwargs):
    """`fn` with `IllConditionedPatchWarning` silenced: a candidate warns only if it is chosen."""
    import warnings

    from numeric.kernels.runtime import IllConditionedPatchWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IllConditionedPatchWarning)
        return fn(*args, **kwargs)


def choose(found: list[Candidate]) -> Candidate:
    """Among the candidates of one token: the well-conditioned ones if any, then the least amplification;
    amplifications within `TIE` of the least count as equal (the checker's order decides)."""
    if len(found) == 1:
        return found[0]
    pool = [c for c in found if not c.ill] or found
    least = min(c.amplification for c in pool)
    return next(c for c in pool if c.amplification <= TIE * least)


def unchanged(amp: float, then: dict, now: dict) -> bool:
    r"""Whether a layer's kept strategy needs no new `amplification`: measured at most `ACCEPT` with
    room to spare, and its patch now at most `GROWTH` times as large (relative to the parameters) as
    then. The excess $A - 1$ comes from the patch and grows about linearly with its size, so
    $1 + (A - 1)\,g \le$ `ACCEPT` with g the largest growth bounds the new amplification. Only for
    patches whose every part has a size (a bias patch has none: it is measured every time)."""
    growth = max((now[k] / then[k] if then[k] > 0 else (0.0 if now[k] == 0 else float("inf"))) for k in now)
    return growth <= GROWTH and 1 + (max(amp, 1.0) - 1) * growth <= ACCEPT
