r"""Hugging Face transformers models: absorb a context into per-token, per-layer MLP patches.

`absorb_context(model, context_ids, query_ids) -> PatchSet` (DESIGN.md): the contextual run feeds
``[context; query]`` and records, at every layer, the residual stream $u_C$ that the MLP branch is
added to, at the query positions. The query is then run alone (positions from 0, or each token
alone at its absolute position with ``keep_positions=True``, the paper's reduced run); at every
layer a hook reads the actual patched state $u$ below it and computes that layer's patches with the
generated torch kernel (`block_patches`): the self-correcting layer-by-layer algorithm of
arXiv:2511.17864 (Algorithm 1). By default the query runs in one pass, the MLP branches applying
the patches factored (`PatchSet.logits`), every token's patches of a layer computed at once.
``computed_in="model"`` runs it in the model's own arithmetic instead: token by token (key/value
cache) through the model's own modules, each layer's dense patched weights written in per token
(`PatchSet.materialized_logits` replays exactly that), because a patch computed in one arithmetic
and applied in another drifts apart with depth when it amplifies (THEORY.md section 5); it is the
default for a named strategy, whose amplification the default's choice does not bound.

The default output strategy is chosen per layer and token among the block's exact strategies:
the well-conditioned one with the least `amplification` of input perturbations (Theorem 1 is
kept by name, ``strategy="norm_vector"``); ``layer.strategies`` records the choice.

What the layers are is inferred from the model (`numeric.infer`): a `Layout` holds, per layer, an
`Adapter` with the layer's `BlockSpec`, where the MLP-side modules live, and how the canonical
parameters (`W_gate`, `experts.W_down`, ...) map onto the model's parameters (stored transposed for
GPT-2's Conv1D, fused gate/up rows, stacked expert tensors); every layer's spec is checked against
the module numerically before any patch. ``spec=`` and ``params=`` declare what inference cannot.
"""

from __future__ import annotations

import weakref
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from numeric import kernels, offload
from numeric.infer import FUSED, Adapter, Layout, cached, check_ids, fuse, get, infer, kv_cache, last_logits_only
from symbolic import catalog
from symbolic.errors import PatchConditionError, SpecError
from symbolic.spec import BlockSpec


def layout_for(model, spec: BlockSpec | str | None = None, params: dict[str, str] | None = None) -> Layout:
    """The model's `Layout`: inferred and checked layer by layer (`numeric.infer.infer`), or the user's
    ``spec`` (a catalog name, TOML path or `BlockSpec`) with its parameter map ``params``, checked the same
    way. Cached on the model until its modules change (a swapped module is checked again)."""
    if isinstance(spec, str):
        spec = catalog.resolve(spec)
    key = (spec, tuple(sorted((params or {}).items())), _module_ids(model))
    cached = _LAYOUTS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    layout = infer(model, spec, params)
    _LAYOUTS[model] = (key, layout)
    return layout


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _module_ids(model) -> tuple:
    """Every module and any forward set on it (not the class's): what a swapped module or forward changes."""
    return tuple((id(m), id(m.__dict__.get("forward"))) for m in model.modules())


# --------------------------------------------------------------------------- patch sets


@dataclass
class LayerPatches:
    """Patches of one layer for every query token (DESIGN.md, `PatchSet.layers`).

    ``strategies[j]`` is the output strategy token j's patches were derived with (the default picks,
    per layer and token, the exact strategy with the smallest amplification, `amplification[j]`).
    ``factored`` holds the kernel's patches by canonical name, (q, ...) arrays, when every token used
    the same strategy; ``per_token[j]`` holds token j's alone when they were computed token by token.
    """

    rank1: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    factored: dict = field(default_factory=dict)  # the kernel's patches, by canonical name
    strategies: list[str] = field(default_factory=list)
    amplification: list[float] = field(default_factory=list)
    per_token: list[dict] = field(default_factory=list)

    def token(self, j: int) -> dict:
        """The kernel's factored patches of token j alone, (1, ...) arrays."""
        return self.per_token[j] if self.per_token else _slice(self.factored, j)


@dataclass
class PatchSet:
    """Per-layer patches of a query; `logits()` runs the query alone with them (factored) and
    `materialized_logits()` with them written into the model's own modules (dense, per token)."""

    model: object
    query_ids: torch.Tensor
    layers: list[LayerPatches]
    layout: Layout
    positions: torch.Tensor | None = None  # keep_positions: each token alone at its absolute position
    kernels: dict = field(default_factory=dict)  # spec -> {output strategy: kernel module}, the default first
    incremental: bool = False  # computed token by token through the key/value cache: `logits` replays that

    @property
    def spec(self) -> BlockSpec:
        """The spec of the first layer (`layout` has every layer's)."""
        return self.layout[0].spec

    def kernel_for(self, n: int, strategy: str | None = None):
        """Layer n's kernel of an output strategy (its spec's default when None)."""
        candidates = self.kernels[self.layout[n].spec]
        return candidates.get(strategy) if strategy in candidates else next(iter(candidates.values()))

    @property
    def kernel(self):
        """The first layer's default kernel."""
        return self.kernel_for(0)

    def _run(self):
        """The query run with the factored patches, in the protocol they were computed in: one pass; each token
        alone at its absolute position (``positions``); or token by token through the key/value cache
        (``incremental``; a patch fits the u its own protocol produced, and a model's cached and one-pass runs
        may differ: Moshi's cache keeps a sliding window that its full causal mask does not apply)."""
        def apply(n):
            return _LayerKernel(self, n)
        if self.positions is None and not self.incremental:
            with swapped_branches(self.model, self.layout, apply, lambda n, u, x: self.layers[n]), \
                    offload.located(self.model, self.layout.layers):
                return self.model(self.query_ids)
        outs, cache = [], None
        for j in range(self.query_ids.shape[1]):
            kwargs = cached(self.model, cache) if self.positions is None else \
                {"position_ids": self.positions[:, j:j + 1]}
            with swapped_branches(self.model, self.layout, apply, lambda n, u, x, j=j: (self.layers[n], j)), \
                    offload.located(self.model, self.layout.layers):
                outs.append(self.model(self.query_ids[:, j:j + 1], **kwargs))
            cache = kv_cache(outs[-1], self.model) if self.positions is None else None
        return outs

    @torch.no_grad()
    def logits(self) -> torch.Tensor:
        """(1, q, vocab): the no-context run with the patches applied, in the protocol they were computed in."""
        out = self._run()
        return out.logits if not isinstance(out, list) else torch.cat([o.logits for o in out], 1)

    @torch.no_grad()
    def hidden_states(self) -> torch.Tensor:
        """(1, q, d): the last hidden state of the patched no-context run (encoders)."""
        out = self._run()
        if isinstance(out, list):
            return torch.cat([o.last_hidden_state for o in out], 1)
        return out.last_hidden_state

    @torch.no_grad()
    def materialized_logits(self, layers: int | None = None) -> torch.Tensor:
        r"""(1, q, vocab): the query run by the model's own modules with the patches written into its weights.

        For query token $j$ every patched parameter $P$ of every layer becomes
        $P + U_j V_j^\top$ (`rank1`) or `values[j]`, densely, in the model's own storage and dtype;
        the model's forward runs unchanged. Tokens go one at a time through the key/value cache
        (from position 0), so token $j$ attends to the states the earlier query tokens produced
        with *their own* patched weights; with ``keep_positions`` each token runs alone at its
        absolute position. Every parameter is restored afterwards. Decoders only (an encoder's
        tokens see later tokens, which a per-token weight cannot express). ``layers``: write the
        patches of the first `layers` layers only (the others keep their weights; a depth study).
        """
        if self.layout.encoder and self.positions is None:
            raise SpecError("materialized_logits runs the query token by token, which an encoder cannot do "
                            "(every token sees the later ones); absorb with keep_positions=True")
        return torch.cat([o.logits for o in self._materialized(layers)], 1)

    def _materialized(self, upto: int | None = None) -> list:
        upto = len(self.layout) if upto is None else upto
        outs, cache, writer = [], None, DenseWriter(self.model, self.layout)
        for j in range(self.query_ids.shape[1]):
            def dense(n, u, x, j=j):
                return (self.layers[n], j) if n < upto else None

            ids = self.query_ids[:, j:j + 1]
            if self.positions is None:
                out = _token_pass(self.model, self.layout, ids, dense, writer, **cached(self.model, cache))
                cache = kv_cache(out, self.model)
            else:
                out = _token_pass(self.model, self.layout, ids, dense, writer, position_ids=self.positions[:, j:j + 1])
            outs.append(out)
        return outs


class _LayerKernel:
    """`apply` of a layer's factored patches with each token's own strategy kernel (for `swapped_branches`)."""

    def __init__(self, ps: PatchSet, n: int):
        self.ps, self.n = ps, n

    def apply(self, params, which, u, **extra):
        lp, only = which if isinstance(which, tuple) else (which, None)
        if only is not None:
            return self._one(params, lp, only, u, extra)
        if lp.factored and len(set(lp.strategies)) <= 1:
            kernel = self.ps.kernel_for(self.n, lp.strategies[0] if lp.strategies else None)
            return kernel.apply(params, lp.factored, u, **extra)
        rows = [self._one(params, lp, j, u[j:j + 1], {k: v[j:j + 1] for k, v in extra.items()})
                for j in range(u.shape[0])]
        return torch.cat(rows)

    def _one(self, params, lp, j, u, extra):
        kernel = self.ps.kernel_for(self.n, lp.strategies[j] if lp.strategies else None)
        return kernel.apply(params, lp.token(j), u, **extra)


def dense_parameters(layer, lp: LayerPatches, j: int) -> dict[str, torch.Tensor]:
    r"""Token j's patched parameters of one layer, dense: $P + U_j V_j^\top$ for every `rank1` entry
    (a stacked-expert slice ``name[e]`` included) and ``values[j]``; the sum is formed by `torch.addr`
    in at least float32 and rounded to the parameter's dtype (`DenseWriter` forms the same values)."""
    out = {}
    for name, (U, V) in lp.rank1.items():
        out[name] = _patched(parameter_view(layer, name), U[j], V[j])
    for name, value in lp.values.items():
        out[name] = value[j].to(parameter_view(layer, name).dtype)
    return out


def _patched(P: torch.Tensor, u: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """P + outer(u, v) by `torch.addr`, in at least float32, in P's dtype (into `out` when given)."""
    wide = torch.promote_types(P.dtype, torch.float32)
    if wide == P.dtype:
        u, v = u.to(wide), v.to(wide)
        return torch.addr(P, u, v) if out is None else torch.addr(P, u, v, out=out)
    value = torch.addr(P.to(wide), u.to(wide), v.to(wide)).to(P.dtype)
    return value if out is None else out.copy_(value)


class DenseWriter:
    r"""Writes token j's dense patched parameters into a model's layers and takes them out again.

    A resident parameter (the model is not dispatched by accelerate, the name is not a stacked-expert
    slice) is never overwritten: $P + U_j V_j^\top$ is formed into a buffer (`torch.addr`, one read of P
    and one write) and the parameter's ``.data`` is pointed at it; restoring points it back at its
    own storage, so the original is untouched, whatever happens. Buffers are reused across tokens
    and layers (a layer is restored before the next one is written): a few matrices of memory.
    Anything else goes through `offload.write` / `offload.restore` with `dense_parameters`.
    Both forms compute the same values.
    """

    def __init__(self, model, layout: Layout):
        self.layers = get(model, layout.layers)
        self.fast = not offload.dispatched(model)
        self.buffers: dict[tuple, list[torch.Tensor]] = {}  # (shape, dtype, device) -> free buffers

    def write(self, n: int, lp: LayerPatches, j: int) -> list:
        """Layer n computes with token j's patched parameters; returns what `restore` undoes."""
        layer, undo, slow = self.layers[n], [], LayerPatches()
        for name, (U, V) in lp.rank1.items():
            param = self._resident(layer, name)
            if param is None:
                slow.rank1[name] = (U, V)
                continue
            own = param.data
            free = self.buffers.setdefault((own.shape, own.dtype, own.device), [])
            buf = free.pop() if free else torch.empty(own.shape, dtype=own.dtype, device=own.device)
            _patched(own, U[j], V[j], out=buf)
            param.data = buf
            undo.append((param, own, buf))
        for name, value in lp.values.items():
            param = self._resident(layer, name)
            if param is None:
                slow.values[name] = value
                continue
            own = param.data
            param.data = value[j].to(own.dtype).reshape(own.shape)
            undo.append((param, own, None))
        saved = offload.write(layer, dense_parameters(layer, slow, j)) if slow.rank1 or slow.values else []
        return [undo, saved]

    def restore(self, saved: list) -> None:
        """Undo `write`: every parameter back on its own storage, the buffers free again."""
        if not saved:
            return
        undo, rest = saved
        offload.restore(rest)
        for param, own, buf in reversed(undo):
            param.data = own
            if buf is not None:
                self.buffers[(own.shape, own.dtype, own.device)].append(buf)

    def _resident(self, layer, name: str):
        if not self.fast or "[" in name:
            return None
        p = get(layer, name)
        return p if isinstance(p, torch.Tensor) and not p.is_meta else None


def parameter_view(layer, name: str) -> torch.Tensor:
    """The parameter (or the stacked-expert slice ``path[e]``) a patch name refers to, detached, for
    reading: a view of a resident parameter; one loaded by accelerate's hook for an offloaded one."""
    path, _, index = name.partition("[")
    p = offload.read(layer, path)
    return p[int(index[:-1])] if index else p


def _trunk(model, head: bool):
    """The model, or without its head (a causal LM's decoder, ``base_model``) for a pass whose logits
    nobody reads: the head of a large vocabulary costs as much as many layers. A dispatched model
    always runs whole (accelerate's hooks on the top module place the inputs)."""
    base = getattr(model, "base_model", model)
    if head or base is model or not isinstance(base, torch.nn.Module) or offload.dispatched(model):
        return model
    return base


def _token_pass(model, layout: Layout, ids: torch.Tensor, dense_for, writer: DenseWriter | None = None,
                head: bool = True, **kwargs):
    """One forward pass of the model's own modules with per-layer dense patches written in.

    At every layer, as soon as the MLP's input u is known (the pre-hook of the u module; of the
    branch module for a parallel block, once attention has run), ``dense_for(n, u, x)`` gives
    ``(LayerPatches, j)`` (or None: the layer keeps its weights), whose token j is written into the
    layer (`DenseWriter`) and restored after the branch module. All parameters are restored on exit,
    also when a patch fails. ``head=False``: the decoder alone (no logits; `_trunk`).
    """
    state: dict = {}
    handles = _input_hooks(model, layout, state)
    layers = get(model, layout.layers)
    writer = writer or DenseWriter(model, layout)
    saved: dict[int, list] = {}

    def write(n):
        def hook(_mod, _args):
            u, x = _base(state.pop(n), layout[n])
            which = dense_for(n, u, x)
            if which is not None:
                saved[n] = writer.write(n, *which)
        return hook

    def restore(n):
        def hook(_mod, _args, _out):
            writer.restore(saved.pop(n, []))
        return hook

    for n, layer in enumerate(layers):
        adapter = layout[n]
        point = adapter.branch_module if adapter.mode == "parallel" else adapter.u_module
        handles.append(get(layer, point).register_forward_pre_hook(write(n)))
        handles.append(get(layer, adapter.branch_module).register_forward_hook(restore(n)))
    try:
        with offload.located(model, layout.layers):
            return _trunk(model, head)(ids, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for n in list(saved):
            writer.restore(saved.pop(n))


def _slice(patches: dict, j: int) -> dict:
    return {name: {f: v[j:j + 1] for f, v in fields.items()} for name, fields in patches.items()}


def _concat(parts: list[dict]) -> dict:
    return {name: {f: torch.cat([p[name][f] for p in parts]) for f in fields} for name, fields in parts[0].items()}


def layer_params(layer, adapter: Adapter) -> dict[str, torch.Tensor]:
    """A layer's canonical parameters (views of its own), in one dtype: a parameter that transformers keeps
    in float32 in a model of another dtype (DeepSeek-V3's router weight and selection bias since
    transformers 5.24: ``_keep_in_fp32_modules_strict``) is cast to the dtype of the others, the dtype of the
    residual stream the kernels compute in (the model itself computes that router in float32 whatever its
    dtype, as it computes RMSNorm: the float32 upcasts `numeric.infer.Float64Mode` widens)."""
    params = {canon: p.read(layer) for canon, p in adapter.params.items()}
    dtypes = Counter(t.dtype for t in params.values() if t.is_floating_point())
    if len(dtypes) > 1:
        common = dtypes.most_common(1)[0][0]
        params = {k: v.to(common) if v.is_floating_point() else v for k, v in params.items()}
    return params


def _input_hooks(model, layout: Layout, store: dict) -> list:
    """Hooks that store, per layer n, the input of the u module (`store[n]["first"]`) and, for a
    parallel block, the attention output (`store[n]["attn"]`); they do not change the run."""
    handles = []
    for n, layer in enumerate(get(model, layout.layers)):
        adapter = layout[n]

        def grab(_mod, args, n=n):  # (1, T, d), or (T, d) rows where the layer reshapes them (OPT)
            r = store.setdefault(n, {})
            r["first"], r["shape"] = _rows(args[0]).detach(), args[0].shape

        def grab_attn(_mod, _args, output, n=n):
            store.setdefault(n, {})["attn"] = _rows(output[0] if isinstance(output, tuple) else output).detach()

        handles.append(get(layer, adapter.u_module).register_forward_pre_hook(grab))
        if adapter.mode == "parallel":
            handles.append(get(layer, adapter.attn_module).register_forward_hook(grab_attn))
    return handles


def _product_hooks(model, layout: Layout, store: dict, start: int) -> list:
    """Hooks that store, per layer n, the output rows from ``start`` on of every module that computes a
    contextual product of the layer's kernel (`Adapter.products`): ``store[n][matrix]`` (T, out)."""
    handles = []
    for n, layer in enumerate(get(model, layout.layers)):
        for canon, path in layout[n].products:
            def grab(_mod, _args, out, n=n, canon=canon):  # a copy: a view would hold every position's output
                store.setdefault(n, {})[canon] = _rows(out)[start:].detach().clone()

            handles.append(get(layer, path).register_forward_hook(grab))
    return handles


def _given_rows(given: dict | None, rows) -> dict | None:
    """The given products of some tokens: ``rows`` an index or a slice of the token axis."""
    return None if not given else {k: v[rows] for k, v in given.items()}


def _token_given(given: dict, j: int) -> dict:
    """{layer: token j's given products}, from every layer's (`contextual_bases`)."""
    return {n: _given_rows(g, slice(j, j + 1)) for n, g in given.items()}


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(T, d): the query's states of a batch of one, whether the layer holds them as (1, T, d) or (T, d)."""
    return t.reshape(-1, t.shape[-1])


def _base(r: dict, adapter: Adapter) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(u, x) of one layer from what the hooks stored: x + attention and x for a parallel block."""
    if adapter.mode == "parallel":
        return r["first"] + r["attn"], r["first"]
    return r["first"], None


@contextmanager
def swapped_branches(model, layout: Layout, kernel_for, patches_for):
    """Swap every layer's MLP branch for the kernel's patched sub-block (factored patches).

    The branch module's forward is replaced (so the model's own MLP never runs), modules in
    `adapter.skip` become pass-throughs, and the input hooks read u (and x, the attention output, for a
    parallel block). Each layer's parameters are read when its branch runs (loaded just in time by
    accelerate's hooks on a dispatched model). Every ``forward`` attribute is restored on exit to
    exactly what it was (accelerate's own wrapper on a dispatched model).
    """
    state: dict = {}
    handles, swapped = _input_hooks(model, layout, state), []
    for n, layer in enumerate(get(model, layout.layers)):
        adapter = layout[n]

        def branch(*args, n=n, layer=layer, adapter=adapter, **kwargs):
            r = state.pop(n)
            u, x = _base(r, adapter)
            params = layer_params(layer, adapter)
            extra = {} if x is None else {"x": x}
            y = kernel_for(n).apply(params, patches_for(n, u, x), u, **extra)
            # the module's own output: the layer multiplies it by its branch multiplier c after the module
            out = y if adapter.returns_sum else (y - u) / adapter.spec.mlp.branch_scale
            # shaped as the module's input, (1, T, .) or OPT's (T, .) rows
            lead = args[0].shape[:-1] if args and isinstance(args[0], torch.Tensor) else r["shape"][:-1]
            out = out.reshape(*lead, out.shape[-1]).to(r["first"].dtype)
            return out if not adapter.arity else (out,) + (None,) * (adapter.arity - 1)  # the layer reads [0]

        for path, forward in [(p, _passthrough) for p in adapter.skip] + [(adapter.branch_module, branch)]:
            module = get(layer, path)
            swapped.append((module, module.__dict__.get("forward", _CLASS_FORWARD)))
            module.forward = forward
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for module, forward in reversed(swapped):
            if forward is _CLASS_FORWARD:
                del module.forward  # back to the class's forward
            else:
                module.forward = forward  # the instance's own (accelerate's hook wrapper)


_CLASS_FORWARD = object()  # a module whose forward is its class's (no instance attribute)


def _passthrough(hidden, *args, **kwargs):
    return hidden


def contextual_bases(model, layout: Layout, ids: torch.Tensor, head: bool = True, given: dict | None = None,
                     start: int = 0, **kwargs) -> tuple[list[torch.Tensor], object]:
    """u_C of every layer (all positions) and the output of the run with the context (``head=False``:
    of the decoder alone, no logits; `_trunk`). ``given``: a dict that receives, per layer n, the contextual
    products its modules computed ({matrix: (T, out)} from position ``start`` on; `Adapter.products`), for
    the kernels' ``given``."""
    record: dict = {}
    handles = _input_hooks(model, layout, record)
    if given is not None:
        handles += _product_hooks(model, layout, given, start)
    if not head and _trunk(model, head) is model:
        kwargs = {**last_logits_only(model), **kwargs}
    try:
        with offload.located(model, layout.layers):
            out = _trunk(model, head)(ids, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return [_base(record[n], layout[n])[0] for n in range(len(record))], out


DEFAULT = "default"  # per layer and token: the exact output strategy with the smallest amplification
COMPUTED_IN = ("model", "kernel")
PROBES = 2  # random input directions of the amplification measure
FD_STEP = 1e-3  # relative step of the central differences of `amplification`
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


def amplification(kernel, params: dict, patches: dict, u: torch.Tensor, x: torch.Tensor | None,
                  mode: str, reference: torch.Tensor | None = None) -> torch.Tensor:
    r"""(T,): how much more the patched MLP branch amplifies a perturbation of its input than the original.

    $$ A = \max_k \frac{\lVert J_{\theta+\Delta\theta}(u)\,\eta_k \rVert}{\lVert J_\theta(u)\,\eta_k \rVert} $$
    with $J_\theta$ the Jacobian of the branch (the sub-block minus the skip; w.r.t. x for a parallel
    block) and $\eta_k$ fixed random directions, by central differences with a step of $10^{-3}$ of
    the input's norm (all probes in one batched call; no Jacobian is formed). In Algorithm 1 an error
    $e_\ell$ of layer $\ell$'s input reaches layer $\ell+1$ as about $(I + J_{\theta+\Delta\theta}) e_\ell$:
    a patch with a large $A$ (Theorem 1 where $f(h_C)$ has tiny coordinates:
    $A \approx \max_i |\gamma_i + \Delta\gamma_i| / \max_i|\gamma_i|$) multiplies every rounding
    difference below it; the default strategy minimizes $A$. ``reference``: the unpatched
    differences (`branch_response`), shared by every candidate strategy; without it they come from
    the same call of ``kernel.apply`` as the patched ones (zero patches: one read of the weights).
    """
    return _amplification(kernel, params, patches, u, x, mode, reference)[0]


def _amplification(kernel, params, patches, u, x, mode, reference=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`amplification` and the unpatched differences it measured against."""
    reps = 2 * PROBES
    if reference is None:  # one call of apply: the patched rows, then the unpatched ones (zero patches)
        both = {k: {f: torch.cat([v] * reps + [_unpatched(f, v)] * reps) for f, v in fs.items()}
                for k, fs in patches.items()}
        new, reference = branch_response(kernel.apply, (params, both), u, x, mode, copies=2).unbind(0)
    else:
        rep = {k: {f: torch.cat([v] * reps) for f, v in fs.items()} for k, fs in patches.items()}
        new = branch_response(kernel.apply, (params, rep), u, x, mode)
    amp = (new.double().norm(dim=-1) / reference.double().norm(dim=-1).clamp_min(1e-300)).max(0).values  # (T,)
    return amp, reference


def _unpatched(name: str, v: torch.Tensor) -> torch.Tensor:
    """A patch field that changes nothing: a unit scale, zero factors and deltas."""
    return torch.ones_like(v) if name == "scale" else torch.zeros_like(v)


def branch_response(fn, args, u: torch.Tensor, x: torch.Tensor | None, mode: str, copies: int = 1) -> torch.Tensor:
    """(K, T, d): central differences of the branch `fn(*args, ...)` along K fixed random directions.
    ``copies`` > 1: ``fn`` takes that many stacked copies of the probes (rows of its patches that
    differ); returns (copies, K, T, d)."""
    base = x if mode == "parallel" else u  # (T, d)
    T, reps = base.shape[0], 2 * PROBES * copies
    gen = torch.Generator(device="cpu").manual_seed(0)
    eta = torch.randn((PROBES, *base.shape), generator=gen, dtype=torch.float64).to(base)  # (K, T, d)
    eta = eta / eta.norm(dim=-1, keepdim=True) * (FD_STEP * base.norm(dim=-1, keepdim=True))
    probes = torch.cat([base + eta, base - eta]).reshape(-1, base.shape[-1])  # (2K T, d)
    others = torch.cat([u] * reps) if mode == "parallel" else (None if x is None else torch.cat([x] * reps))
    probes = torch.cat([probes] * copies) if copies > 1 else probes
    out = _branch(fn, args, others, probes, mode).reshape(copies, 2, PROBES, T, -1)
    out = out[:, 0] - out[:, 1]
    return out if copies > 1 else out[0]


def _branch(fn, args, other, v, mode: str) -> torch.Tensor:
    """The MLP branch as a function of its perturbed input v (u for sequential blocks, x for parallel)."""
    if mode == "parallel":
        return fn(*args, other, x=v)
    y = fn(*args, v, **_x(other))
    return y if mode == "post_ln" else y - v


@dataclass
class Patcher:
    """Computes one layer's patches for a few tokens: each token's exact strategy of least amplification.

    ``kernels`` are the candidate strategies (one when a strategy is named); ``patch_dtype`` computes
    the patches in a wider dtype and stores them in the model's. To save time, the strategy a layer
    chose for the previous token is tried first and kept, without trying the others, while its
    patch is well conditioned and its amplification at most `ACCEPT` (``memory``; a layer without a
    choice of its own starts from the layer below's, under the same rule); and kept without
    measuring its amplification (NaN recorded) while the patch is no more than `GROWTH` times as large,
    relative to the parameters, as when this Patcher last measured it (`_unchanged`). The tokens of one
    call are computed in one batched call of the kept strategy's kernel (`_batch`), measured at the
    token with the largest patch; only tokens the rule does not cover go through `_best` one by one.
    """

    model: object
    layout: Layout
    kernels: dict  # spec -> {output strategy: kernel}
    patch_dtype: torch.dtype | None = None
    memory: dict = field(default_factory=dict)  # layer -> the strategy its previous token chose
    measure: bool = True  # the amplification of a single candidate too (a choice always measures)
    writer: DenseWriter | None = None  # writes the dense patches of the materialized passes (its buffers)
    measured: dict = field(default_factory=dict)  # layer -> (strategy, amplification, patch sizes) last measured
    cached: dict = field(default_factory=dict, repr=False)  # layer -> its parameters (resident models)
    fuse: bool = False  # keep the patched branch's output where the kernel computes it with the patches
    outputs: dict = field(default_factory=dict, repr=False)  # layer -> (u, y): `patched`'s y, for `_Fused`

    def __post_init__(self):
        self.writer = self.writer or DenseWriter(self.model, self.layout)

    def params(self, n: int) -> dict[str, torch.Tensor]:
        """Layer n's canonical parameters (`layer_params`), read once per Patcher on a resident model: the
        views keep the parameters' own storage, which `DenseWriter` never writes. A dispatched model's
        are loaded by its hooks at every call (holding them would defeat the offload)."""
        if n in self.cached:
            return self.cached[n]
        params = layer_params(get(self.model, self.layout.layers)[n], self.layout[n])
        if self.writer.fast:
            self.cached[n] = params
        return params

    def layer(self, n: int, u: torch.Tensor, target: torch.Tensor, x: torch.Tensor | None,
              given: dict | None = None) -> LayerPatches:
        """LayerPatches of layer n for u, target (T, d) (x: the MLP input of a parallel block). ``given``: the
        contextual run's products of layer n ({matrix: (T, out)}, `contextual_bases`), which the kernels take
        instead of recomputing them (not where the patches are computed in a wider dtype: there the
        kernel's own products are the more accurate)."""
        adapter = self.layout[n]
        params = self.params(n)
        kernels_n = self.kernels[adapter.spec]
        target = target.to(device=u.device, dtype=u.dtype)  # accelerate may place layers on several devices
        wide = self.patch_dtype if self.patch_dtype is not None and self.patch_dtype != u.dtype else None
        if wide is not None:
            params = {k: v.to(wide) for k, v in params.items()}
        cast = (lambda t: t) if wide is None else (lambda t: None if t is None else t.to(wide))  # noqa: E731
        single = len(kernels_n) == 1
        self.outputs.pop(n, None)
        fuse = self.fuse and wide is None  # (a patch computed wide is applied stored narrow: not the same y)
        given = given if wide is None else None
        chosen = self._batch(n, params, cast(u), cast(target), cast(x), fuse, given) \
            if self.measure or not single else None
        if chosen is None and single:  # every token measured (or none, ``measure=False``)
            name, kernel = next(iter(kernels_n.items()))
            patches, y = patches_and_output(kernel, params, cast(u), cast(target), str(n), cast(x), fuse, given)
            amp = amplification(kernel, params, patches, cast(u), cast(x), adapter.mode) if self.measure \
                else torch.full((u.shape[0],), float("nan"))
            if y is not None:
                self.outputs[n] = (u, y)
            return self._store(n, params, [name] * u.shape[0], amp.tolist(), [patches], u.dtype, batched=True)
        if chosen is None:  # the batch could not decide (`_batch`): token by token
            chosen = [self._best(n, params, cast(u[j:j + 1]), cast(target[j:j + 1]),
                                 None if x is None else cast(x[j:j + 1]), j, _given_rows(given, slice(j, j + 1)))
                      for j in range(u.shape[0])]
        names, amps, parts = [c[0] for c in chosen], [c[1] for c in chosen], [c[2] for c in chosen]
        if len(set(names)) == 1:  # one strategy: stored as one batch (`LayerPatches.token` slices it)
            return self._store(n, params, names, amps, [_concat(parts)], u.dtype, batched=True)
        return self._store(n, params, names, amps, parts, u.dtype, batched=False)

    def _best(self, n, params, u, target, x, j, given=None) -> tuple[str, float, dict]:
        """Token j's patches by every candidate; the best by (ill-conditioned, amplification)."""
        from numeric.kernels.runtime import relative_sizes, warn_ill_conditioned

        found, first_error, reference = [], None, None
        last, record = self.memory.get(n), self.measured.get(n)
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
            if name == last and not ill and record is not None and record[0] == name and \
                    set(sizes) == set(patches) and _unchanged(record[1], record[2], sizes):
                found = [(ill, float("nan"), name, patches)]  # kept without measuring (NaN recorded)
                break
            amp, reference = _amplification(kernel, params, patches, u, x, adapter.mode, reference)  # the
            amp = float(amp[0])  # unpatched branch is measured once, with the first candidate, for all
            found.append((ill, amp, name, patches, sizes))
            if name == last and not ill and amp <= ACCEPT:
                break  # the layer's previous choice still does not amplify: keep it
        if not found:
            raise PatchConditionError(first_error.condition, [j], first_error.layer)
        ill, amp, name, patches, *sizes = _choose(found)
        self.memory[n] = name
        if sizes:
            self.measured[n] = (name, amp, sizes[0])
        warn_ill_conditioned(patches, kernels_n[name].references(params), str(n))
        return name, amp, patches

    def _batch(self, n, params, u, target, x, fuse: bool = False,
               given: dict | None = None) -> list[tuple[str, float, dict]] | None:
        """`_best` for T tokens at once: the layer's previous choice computed in one batched call; its
        amplification measured at the token with the largest patch, and every well-conditioned token whose
        patch is at most `GROWTH` times that one's kept unmeasured (`_unchanged`, NaN recorded), as `_best`
        keeps a choice from token to token. Other tokens go through `_best`. None (all through `_best`) when
        a side condition fails at some token, the kept choice amplifies more than `ACCEPT`, or a patch part
        has no size (a bias). A layer without a previous choice starts from the layer below's, kept under
        the same rule (the layers of a model tend to choose alike: one batched call instead of every
        candidate at the first token); when the rule rejects it, or there is none, the first token's `_best`
        chooses. ``fuse``: where every token keeps the batched patches, their branch output y on u (the
        kernel's `patched`) is left in ``outputs[n]``."""
        kernels_n = self.kernels[self.layout[n].spec]
        first = None  # the first token's `_best`, where the layer has no previous choice to keep
        if self.memory.get(n) not in kernels_n:  # (or one of another strategy set)
            if len(kernels_n) == 1:
                self.memory[n] = next(iter(kernels_n))
            elif self.memory.get(n - 1) in kernels_n:  # the layer below's choice, kept if the rule keeps it
                self.memory[n] = self.memory[n - 1]
                found = self._kept(n, params, u, target, x, None, fuse, given)
                if found is not None:
                    return found
                del self.memory[n]  # rejected: the first token chooses among all candidates
            if n not in self.memory:
                first = self._best(n, params, _row(u, 0), _row(target, 0), _row(x, 0), 0,
                                   _given_rows(given, slice(0, 1)))
        return self._kept(n, params, u, target, x, first, fuse, given)

    def _kept(self, n, params, u, target, x, first, fuse, given=None) -> list[tuple[str, float, dict]] | None:
        """`_batch` with the layer's choice in ``memory[n]`` (``first``: the first token's `_best`, or None)."""
        from numeric.kernels.runtime import ill_tokens, relative_sizes, warn_sizes

        kernels_n = self.kernels[self.layout[n].spec]
        name = self.memory[n]
        kernel = kernels_n[name]
        try:
            patches, y = _quiet(patches_and_output, kernel, params, u, target, str(n), x, fuse, given)
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
        at_m, record = {k: float(v[m]) for k, v in sizes.items()}, self.measured.get(n)
        if record is not None and record[0] == name and set(record[2]) == set(at_m) and \
                _unchanged(record[1], record[2], at_m):  # measured on an earlier call: still valid
            amp, base, at_m = float("nan"), record[1], record[2]
        else:
            amp = float(_amplification(kernel, params, _slice(patches, m), _row(u, m), _row(x, m),
                                       self.layout[n].mode)[0][0])
            if amp > ACCEPT:
                return None
            base = amp
            self.measured[n] = (name, amp, at_m)
        chosen, alone = [], 0  # alone: tokens whose patches come from `_best`, not from the batch
        for j in range(u.shape[0]):
            if j == 0 and first is not None and first[0] == name:  # its patches as the batch computed them
                chosen.append((name, first[1], _slice(patches, 0)))
            elif j == 0 and first is not None:
                chosen.append(first)
                alone += 1
            elif j == m:
                chosen.append((name, amp, _slice(patches, j)))
            elif not bool(ill[j]) and _unchanged(base, at_m, {k: float(v[j]) for k, v in sizes.items()}):
                chosen.append((name, float("nan"), _slice(patches, j)))
            else:
                chosen.append(self._best(n, params, _row(u, j), _row(target, j), _row(x, j), j,
                                         _given_rows(given, slice(j, j + 1))))
                self.memory[n] = name
                alone += 1
        kept = [j for j, c in enumerate(chosen) if c[0] == name]
        if y is not None and not alone:
            self.outputs[n] = (u, y)
        warn_sizes({k: v[kept] for k, v in sizes.items()}, kernel.references(params), str(n))
        return chosen

    def _ill(self, kernel, params, patches) -> bool:
        """Whether the patch, stored in the model's dtype, is ill-conditioned (`runtime.ILL_CONDITIONED`)."""
        from numeric.kernels.runtime import ill_conditioned

        return ill_conditioned(patches, kernel.references(params), self.model.dtype)

    def _store(self, n, params, names, amps, parts, dtype, batched: bool) -> LayerPatches:
        adapter, layer = self.layout[n], get(self.model, self.layout.layers)[n]
        params = self.params(n)  # the stored values are in the model's dtype
        parts = [{k: {f: v.to(dtype) for f, v in fs.items()} for k, fs in p.items()} for p in parts]
        if batched:
            out = _layer_patches(adapter, params, parts[0])
        else:
            out = _combine(layer, [_layer_patches(adapter, params, p) for p in parts])
            out.per_token = parts
            out.factored = _concat(parts) if len(set(names)) == 1 else {}
        out.strategies, out.amplification = list(names), [float(a) for a in amps]
        return out


def block_patches(kernel, params: dict, u: torch.Tensor, target: torch.Tensor, layer: str = "",
                  x: torch.Tensor | None = None, given: dict | None = None) -> dict:
    """``kernel.block_patches``, except that a token whose u equals its target exactly gets the identity patch
    (`_unpatched`: zero factors and deltas, unit scales). The context has not reached that token at this layer
    (say, a sliding window that holds only a padding token's zero states, in both runs), so the unpatched
    layer is exact there, whereas a formula may be undefined (``z != 0`` fails for u = u_C = 0). ``given``: the
    contextual products of the T tokens (the kernel's ``given``)."""
    same = (u == target).all(-1)  # (T,)
    if not bool(same.any()):
        return kernel.block_patches(params, u, target, layer=layer, **_x(x), **_given(given))
    rows = (~same).nonzero()[:, 0]
    if len(rows):
        try:
            found = kernel.block_patches(params, u[rows], target[rows], layer=layer,
                                         **_x(None if x is None else x[rows]), **_given(_given_rows(given, rows)))
        except PatchConditionError as exc:  # name the tokens by their index among all T
            raise PatchConditionError(exc.condition, [int(rows[t]) for t in exc.tokens], exc.layer) from None
    else:  # the formulas on a generic stand-in (u = target), for the patches' fields and shapes only
        r = torch.randn(u[:1].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(u)
        found = kernel.block_patches(params, r, r, layer=layer, **_x(None if x is None else r))
    out = {}
    for name, fields in found.items():
        out[name] = {}
        for f, v in fields.items():
            full = _unpatched(f, v[:1]).expand(u.shape[0], *v.shape[1:]).clone()  # (T, ...): identity rows
            if len(rows):
                full[rows] = v
            out[name][f] = full
    return out


def patches_and_output(kernel, params: dict, u: torch.Tensor, target: torch.Tensor, layer: str = "",
                       x: torch.Tensor | None = None, fuse: bool = False,
                       given: dict | None = None) -> tuple[dict, torch.Tensor | None]:
    """(`block_patches`, y): with ``fuse``, y is the patched sub-block's output on u from the kernel's `patched`
    (which computes z and each input map's W z once for both); None without ``fuse``, where the kernel has no
    `patched` (a mixture of experts) or where some token gets the identity patch."""
    if fuse and hasattr(kernel, "patched") and not bool((u == target).all(-1).any()):
        return kernel.patched(params, u, target, layer=layer, **_x(x), **_given(given))
    return block_patches(kernel, params, u, target, layer, x, given), None


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


def _choose(found: list[tuple[bool, float, str, dict]]) -> tuple[bool, float, str, dict]:
    """Among (ill, amplification, name, patches): the well-conditioned ones if any, then the least
    amplification; amplifications within `TIE` of the least count as equal (the checker's order)."""
    if len(found) == 1:
        return found[0]
    pool = [f for f in found if not f[0]] or found
    least = min(f[1] for f in pool)
    return next(f for f in pool if f[1] <= TIE * least)


def _unchanged(amp: float, then: dict, now: dict) -> bool:
    r"""Whether a layer's kept strategy needs no new `amplification`: measured at most `ACCEPT` with
    room to spare, and its patch now at most `GROWTH` times as large (relative to the parameters) as
    then. The excess $A - 1$ comes from the patch and grows about linearly with its size, so
    $1 + (A - 1)\,g \le$ `ACCEPT` with g the largest growth bounds the new amplification. Only for
    patches whose every part has a size (a bias patch has none: it is measured every time)."""
    growth = max((now[k] / then[k] if then[k] > 0 else (0.0 if now[k] == 0 else float("inf"))) for k in now)
    return growth <= GROWTH and 1 + (max(amp, 1.0) - 1) * growth <= ACCEPT


def _x(x) -> dict:
    return {} if x is None else {"x": x}


def _given(given: dict | None) -> dict:
    """The kernel's ``given`` keyword, where there are products to give."""
    return {"given": given} if given else {}


def _combine(layer, tokens: list[LayerPatches]) -> LayerPatches:
    """One LayerPatches from per-token ones whose strategies may differ: a token without a rank-1 patch
    of some parameter gets zero factors, one without a value gets the parameter itself."""
    out = LayerPatches()
    for name in dict.fromkeys(k for t in tokens for k in t.rank1):
        shapes = next(t.rank1[name] for t in tokens if name in t.rank1)
        pairs = [t.rank1.get(name, (torch.zeros_like(shapes[0]), torch.zeros_like(shapes[1]))) for t in tokens]
        out.rank1[name] = (torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]))
    for name in dict.fromkeys(k for t in tokens for k in t.values):
        dtype = next(t.values[name].dtype for t in tokens if name in t.values)
        own = parameter_view(layer, name).detach()[None].to(dtype)  # (1, *shape): the unpatched value
        out.values[name] = torch.cat([t.values.get(name, own) for t in tokens])
    return out


@torch.no_grad()
def absorb_context(model, context_ids: torch.Tensor, query_ids: torch.Tensor, keep_positions: bool = False,
                   strategy: str | None = None, input_strategy: str | None = None,
                   patch_dtype: torch.dtype | None = None, computed_in: str | None = None,
                   memory: dict | None = None, measure: bool = True, spec: BlockSpec | str | None = None,
                   params: dict[str, str] | None = None, mode: str = "token") -> PatchSet:
    """Per-token, per-layer patches that make the query-alone run reproduce the run with the context.

    ``keep_positions=True`` runs each query token alone at its absolute position (the paper's
    reduced run); the default runs the query alone from position 0. ``patch_dtype`` computes the
    patches in a wider dtype than the model's (e.g. float32 for a bfloat16 model) and stores them in
    the model's dtype. ``strategy``: an output strategy by name (``norm_vector`` is the paper's
    Theorem 1), or ``None``/``"default"``: per layer and token, the exact strategy of least
    `amplification` (recorded in ``layer.strategies``).

    ``computed_in="kernel"`` (the default): one pass of the whole query through the model's own
    attention and norms, the MLP branches applying the patches factored by the kernels; layer n's
    patches are computed from the u this run produces, all tokens at once (`Patcher`), so
    `PatchSet.logits()` reproduces the contextual run; written into the weights
    (`PatchSet.materialized_logits()`) the patches carry the kernel/module rounding difference
    unamplified, the chosen strategies amplifying at most `ACCEPT`. ``"model"`` (the default when a
    strategy is named, which may amplify: Theorem 1 on Gemma about 1e3): Algorithm 1 in the model's
    arithmetic. The query goes token by token through the model's own modules with each lower layer's
    patches written into its weights, and layer n's patches are computed from the u those modules
    produce, so `PatchSet.materialized_logits()` reproduces the contextual run at the model's own
    round-off; one token at a time, it costs several times the one-pass run (benchmarks/RESULTS.md).
    Measured on SmolLM2-135M, float32: one pass 5e-7 factored / 2.3e-5 written; token by token
    2.4e-5 / 1.4e-6 (Gemma 3 270M: 1e-6 either way).
    ``memory``: {layer: strategy} the default tries first (a layer without one: the layer below's),
    updated with its choices; pass the same
    dict to successive calls (one token each, as the paper's protocol does) to save their time.
    ``measure=False`` skips the `amplification` of a strategy named explicitly (NaN is recorded).
    ``spec``/``params``: the user's spec (catalog name, TOML path or `BlockSpec`) and its parameter map
    {canonical name: parameter path in a layer, ``path:layout`` for a non-(out, in) storage}, instead of
    the inferred ones; either way every layer is checked against the model first (`layout_for`).
    ``mode="sequence"``: one patch per layer for all query tokens at once, a PEFT LoRA adapter
    (`numeric.sequence.absorb_sequence`; the other options do not apply).
    The contextual products of the patch formulas (W_gate z_C, ...) are read from the modules of the
    run with the context that computed them, where the layout found such modules (`Adapter.products`), so the
    patches do not read those matrices again.
    """
    if mode != "token":
        if mode != "sequence":
            raise SpecError(f"mode must be 'token' (per-token patches) or 'sequence' (one patch per layer), "
                            f"got {mode!r}")
        from numeric.sequence import absorb_sequence

        return absorb_sequence(model, context_ids, query_ids, layout_for(model, spec, params))
    check_ids(context_ids, query_ids, model)
    layout, candidates = resolve(model, strategy, input_strategy, spec, params)
    if computed_in is None:  # a named strategy may amplify round-off: computed where Algorithm 1 corrects it
        named = strategy not in (None, DEFAULT) and not (layout.encoder and not keep_positions)
        computed_in = "model" if named else "kernel"
    if computed_in not in COMPUTED_IN:
        raise SpecError(f"computed_in must be one of {', '.join(COMPUTED_IN)}, got {computed_in!r}")
    if computed_in == "model" and layout.encoder and not keep_positions:
        raise SpecError("computed_in='model' runs the query token by token, which an encoder (every token sees "
                        "the later ones) cannot do; use keep_positions=True or computed_in='kernel'")
    patcher = Patcher(model, layout, candidates, patch_dtype, {} if memory is None else memory, measure)
    c, q = context_ids.shape[1], query_ids.shape[1]
    given: dict = {}  # layer -> the contextual products of the query rows (`Adapter.products`)
    bases, _ = contextual_bases(model, layout, torch.cat([context_ids, query_ids], 1), head=False, given=given,
                                start=c)
    targets = [b[c:] for b in bases]
    positions = torch.arange(c, c + q)[None] if keep_positions else None
    if computed_in == "kernel" and not keep_positions:
        stored, _ = _patch_pass(model, patcher, query_ids, targets, given=given)
        return PatchSet(model, query_ids, stored, layout, kernels=candidates)
    per_token, cache = [], None
    for j in range(q):
        kwargs = {"position_ids": positions[:, j:j + 1]} if keep_positions else cached(model, cache)
        one = _token_given(given, j)
        try:
            if computed_in == "kernel":
                lps, _ = _patch_pass(model, patcher, query_ids[:, j:j + 1], [t[j:j + 1] for t in targets],
                                     head=False, given=one, **kwargs)
            else:
                lps, out = _materialized_pass(model, patcher, query_ids[:, j:j + 1], [t[j:j + 1] for t in targets],
                                              head=False, given=one, **kwargs)
                cache = kv_cache(out, model) if not keep_positions else None
        except PatchConditionError as exc:  # the run held one token: name it by its index in the query
            raise PatchConditionError(exc.condition, [j], exc.layer) from None
        per_token.append(lps)
    layers = [_merge_tokens(get(model, layout.layers)[n], [t[n] for t in per_token])
              for n in range(len(per_token[0]))]
    return PatchSet(model, query_ids, layers, layout, positions, kernels=candidates, incremental=positions is None)


def _merge_tokens(layer, tokens: list[LayerPatches]) -> LayerPatches:
    """The LayerPatches of q single-token runs as one (q tokens)."""
    out = _combine(layer, tokens)
    out.per_token = [t.token(0) for t in tokens]
    out.strategies = [s for t in tokens for s in t.strategies]
    out.amplification = [a for t in tokens for a in t.amplification]
    out.factored = _concat(out.per_token) if len(set(out.strategies)) == 1 else {}
    return out


def _patch_pass(model, patcher: Patcher, ids, targets, head: bool = True, given: dict | None = None,
                **kwargs) -> tuple[list[LayerPatches], object]:
    """One pass with the kernels applying the patches factored; layer n's from the u this run produces.
    ``given``: {layer: the contextual products of its tokens} (`Patcher.layer`)."""
    stored = [LayerPatches() for _ in get(model, patcher.layout.layers)]
    given = given or {}

    def compute(n, u, x):
        stored[n] = patcher.layer(n, u, targets[n], x, given.get(n))
        return stored[n]

    ps = PatchSet(model, ids, stored, patcher.layout, kernels=patcher.kernels)
    patcher.fuse = True
    try:
        with swapped_branches(model, patcher.layout, lambda n: _Fused(patcher, _LayerKernel(ps, n), n), compute), \
                offload.located(model, patcher.layout.layers):
            out = _trunk(model, head)(ids, **kwargs)
    finally:
        patcher.fuse = False
        patcher.outputs.clear()
    return stored, out


class _Fused:
    """`_LayerKernel.apply`, except that the output the Patcher's `patched` call left for exactly this u (the
    same object) is returned instead of recomputed."""

    def __init__(self, patcher: Patcher, inner: _LayerKernel, n: int):
        self.patcher, self.inner, self.n = patcher, inner, n

    def apply(self, params, which, u, **extra):
        found = self.patcher.outputs.pop(self.n, None)
        if found is not None and found[0] is u:
            return found[1]
        return self.inner.apply(params, which, u, **extra)


def _materialized_pass(model, patcher: Patcher, ids, targets, head: bool = True, given: dict | None = None,
                       **kwargs) -> tuple[list[LayerPatches], object]:
    """One token through the model's own modules: layer n's patches computed from the u they produce
    with the dense patches of the layers below written in, then written into layer n itself.
    ``head=False``: no logits (`_trunk`). ``given`` as in `_patch_pass`."""
    stored = [LayerPatches() for _ in patcher.layout]
    given = given or {}

    def dense(n, u, x):
        stored[n] = patcher.layer(n, u, targets[n], x, given.get(n))
        return stored[n], 0

    out = _token_pass(model, patcher.layout, ids, dense, patcher.writer, head=head, **kwargs)
    return stored, out


@torch.no_grad()
def generate_without_context(model, context_ids: torch.Tensor, query_ids: torch.Tensor, max_new_tokens: int,
                             strategy: str | None = None, applied: str = "factored",
                             spec: BlockSpec | str | None = None, params: dict[str, str] | None = None) -> torch.Tensor:
    """Greedy generation by the model WITHOUT the context, patched afresh for every new token.

    Two key/value caches advance one token per step: the contextual run's (to read $u_C$ of the new
    token at every layer) and the patched run's; the new token's patches depend only on its own
    $u$ and $u_C$, so no earlier token is recomputed and a step costs two one-token passes.
    ``applied="factored"`` (default): the kernels apply every token's patches in the model's run (its
    own attention and norms; the MLP branch by the kernel's `apply`), about the cost of the two passes;
    ``"materialized"``: every token's patches are written into the model's own modules (Algorithm 1 in
    the model's arithmetic; dense per-token weights, about twice as slow). Both give the contextual
    run's greedy ids (`tests/test_real_models.py`, `ctxpatch models`). The contextual step also hands each layer
    the products its modules computed (`contextual_bases`, `Adapter.products`), so a patched layer reads its MLP
    matrices once, as the model's own does: a step costs the two passes and the patch checks.
    Returns the generated ids, shape (1, max_new_tokens).
    """
    check_ids(context_ids, query_ids, model)
    if max_new_tokens < 1:
        raise SpecError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if applied not in ("materialized", "factored"):
        raise SpecError(f"applied must be 'materialized' or 'factored', got {applied!r}")
    layout, candidates = resolve(model, strategy, spec=spec, params=params)
    patcher = Patcher(model, layout, candidates)
    step = _materialized_pass if applied == "materialized" else _patch_pass
    c, q = context_ids.shape[1], query_ids.shape[1]
    given: dict = {}  # layer -> the contextual products of the query rows, then of each new token
    bases, out_C = contextual_bases(model, layout, torch.cat([context_ids, query_ids], 1), head=False, given=given,
                                    start=c, use_cache=True)
    cache_C, cache_P = kv_cache(out_C, model), None
    if applied == "factored":
        _, out_P = step(model, patcher, query_ids, [b[c:] for b in bases], given=given, use_cache=True,
                        **last_logits_only(model))  # the next token reads the last position only
    else:
        for j in range(q):
            _, out_P = step(model, patcher, query_ids[:, j:j + 1], [b[c + j:c + j + 1] for b in bases],
                            head=j == q - 1, given=_token_given(given, j),
                            **cached(model, cache_P))
            cache_P = kv_cache(out_P, model)
    cache_P = kv_cache(out_P, model)
    tokens = []
    for i in range(max_new_tokens):
        nxt = out_P.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        tokens.append(nxt)
        if i == max_new_tokens - 1:
            break
        given = {}
        bases, out_C = contextual_bases(model, layout, nxt, head=False, given=given, **cached(model, cache_C))
        _, out_P = step(model, patcher, nxt, bases, given=given, **cached(model, cache_P))
        cache_C, cache_P = kv_cache(out_C, model), kv_cache(out_P, model)
    return torch.cat(tokens, 1)


def _layer_patches(adapter: Adapter, params: dict, patches: dict) -> LayerPatches:
    """The kernel's factored patches in the model's own names and storage layouts.

    A canonical (out, in) patch ``left right^T`` is stored as such (``linear``), transposed (``conv1d``,
    ``t``: factors swapped), per expert (``experts.*``: one patch per slice ``path[e]``), or as half of a
    fused gate/up matrix (`numeric.infer.FUSED`: halves or interleaved entries, rows or transposed columns):
    gate and up share the right factor z, so the fused matrix gets one rank-1 patch whose left factor joins
    the two left factors (zero for a half left unpatched).
    """
    out = LayerPatches(factored=patches)
    fused: dict[str, dict[int, tuple]] = {}
    for canon, fields in patches.items():
        p = adapter.params[canon]
        if "left" not in fields:
            if p.layout in FUSED:  # no strategy patches the value of half of a fused tensor (a fused bias)
                raise SpecError(f"{canon} ({p.path}, {p.layout}): a value patch of half of a fused tensor is not "
                                "written; use the rank1 input strategy")
            out.values[p.path] = _value(adapter.spec, canon, params[canon], fields)
            continue
        left, right = fields["left"], fields["right"]
        if p.layout in FUSED:
            fused.setdefault(p.path, {})[FUSED[p.layout][2]] = (left, right, p.layout, canon.startswith("experts."))
            continue
        if p.layout in ("conv1d", "t"):  # stored (in, out): the transpose of left right^T
            left, right = right, left
        if canon.startswith("experts."):
            for e in range(left.shape[1]):
                out.rank1[f"{p.path}[{e}]"] = (left[:, e], right[:, e])
        else:
            out.rank1[p.path] = (left, right)
    for path, halves in fused.items():
        left, right, layout, experts = next(iter(halves.values()))
        if any(not torch.equal(h[1], right) for h in halves.values()):
            raise SpecError(f"{path}: the gate and up patches have different right factors, so their fused "
                            "matrix gets a rank-2 patch; use the rank1 input strategy")
        _, interleaved, _, transposed = FUSED[layout]
        parts = [halves[w][0] if w in halves else torch.zeros_like(left) for w in (0, 1)]
        both = fuse(*parts, -1, interleaved)  # (q, [E,] 2 out): the fused output axis
        for e in range(both.shape[1]) if experts else [None]:
            lf, rf = (both, right) if e is None else (both[:, e], right[:, e])
            out.rank1[path if e is None else f"{path}[{e}]"] = (rf, lf) if transposed else (lf, rf)
    return out


def _value(spec: BlockSpec, canon: str, param: torch.Tensor, fields: dict) -> torch.Tensor:
    """The full patched value per token, in the model's parameterization (Gemma stores w, uses 1 + w)."""
    if "delta" in fields:
        return param[None] + fields["delta"]
    one_plus = spec.norms[canon.split(".")[0]].scale == "one_plus"
    return fields["scale"] * (1 + param[None]) - 1 if one_plus else fields["scale"] * param[None]
