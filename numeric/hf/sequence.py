r"""One patch per layer for a whole teacher-forced continuation (rank $\le q$), saved as a PEFT LoRA adapter.

`absorb_sequence(model, context_ids, query_ids) -> SequencePatch` (also
``numeric.hf.absorb_context(..., mode="sequence")``): for the q query tokens at once, every layer's
MLP gets ONE low-rank patch that makes the query-alone run reproduce the run with the context at
all q positions (`proofs.sequence_patch` states the identities, which the proof kernel checks;
docs/theory.md, "Sequence patches").

- input maps $W$ (up, gate): $\Delta W = W (Z_C - Z)(Z^\top Z)^{-1} Z^\top$, so
  $(W + \Delta W) z_j = W z_{C,j}$ for every token $j$; $Z = [z_1 \dots z_q]$ are the map's inputs in
  the no-context run, $Z_C$ the contextual ones. Needs rank $Z = q$ (so $q \le d$).
- output map $W_\mathrm{down}$, no post-norm: the same on the hidden activations $A$:
  $\Delta W = (Y^\star - Y)(A^\top A)^{-1}A^\top$ with $Y^\star$ the outputs the residual stream needs
  ($u_C + b_C - u$: the contextual branch output plus the residual shift). Needs rank $A = q \le m$.
- post-norm (Gemma's sandwich) $\gamma \odot h / \sqrt{\mathrm{mean}(h^2) + \epsilon}$: a shared
  replacement scale $\gamma' = 1/\sqrt{w}$ and per-token down outputs $h'_j = c_j\, t_j \odot \sqrt{w}$
  reproduce every target $t_j$ exactly when $\mathrm{mean}(t_j^2 w) = 1 - \epsilon / c_j^2$ for every
  j (`shared_scale`: $c_j$ is the contextual RMS, $w$ the KL projection of $1/\gamma^2$ onto these
  q linear constraints). The replaced scale goes into PEFT's ``modules_to_save``.

Layer by layer (Algorithm 1 of arXiv:2511.17864, all q tokens at once): one contextual pass
records every layer's map inputs and branch outputs at the query positions; one pass of the query
alone then computes each layer's patch in forward hooks from the state its own modules produce,
with the patches of the layers below already written into the model (attention among the query
tokens is corrected by the induction). Computed in float64, stored in the model's dtype.
Refused with a clear error: MoE blocks, encoders, q larger than a map's input size.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from numeric.hf.bounds import logit_bound
from numeric.hf.compat import check_ids, finite_run, keep_logits, model_dtype
from numeric.hf.infer import layout_for
from numeric.hf.layout import parameter_view, token_rows
from numeric.hf.sequence_algebra import left_inverse, shared_scale
from numeric.hf.untouched import folder, untouched
from symbolic.errors import ModelInputError
from symbolic.spec import BlockSpec

APPLIED = ("lora", "weights")


@dataclass(frozen=True)
class Site:
    """Where one layer's MLP maps live (module paths relative to the layer) and its post-norm."""

    inputs: tuple[str, ...]  # up / gate: the maps that read z
    down: str  # the map that writes the branch output (or the post-norm's input)
    conv1d: bool  # GPT-2's Conv1D stores weights (in, out)
    post_norm: str | None  # module path of an RMS post-norm, whose scale is replaced
    one_plus: bool  # the stored norm weight w gives gamma = 1 + w
    eps: float


@dataclass
class SequenceLayer:
    r"""One layer's sequence patch: ``lora[path] = (B, A)`` with $\Delta W = B A$ in the canonical
    (out, in) orientation, float64; ``scale[param]`` a replaced norm weight (stored parameterization);
    ``rank`` $\le q$; ``condition``: condition numbers of the solves (``Z:<path>``, ``A``, ``gamma'``);
    ``residual``: the patched branch's largest relative miss of its targets, in float64."""

    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    scale: dict[str, torch.Tensor] = field(default_factory=dict)
    rank: int = 0
    condition: dict[str, float] = field(default_factory=dict)
    residual: float = 0.0


@dataclass(frozen=True)
class Uniform:
    """The one layer kind of a model whose layers are all alike (what the sequence patch covers): the
    `numeric.hf.layout.Adapter` fields with the layers' path and whether the model is an encoder."""

    layers: str
    encoder: bool
    spec: BlockSpec
    mode: str
    u_module: str
    branch_module: str
    params: dict
    attn_module: str = ""
    adds_residual: bool = False


def uniform(layout) -> Uniform:
    """A `numeric.hf.layout.Layout` whose layers are all of one kind as a `Uniform`; `ModelInputError` otherwise."""
    if any(other is None for other in layout.kinds):
        raise ModelInputError(f"mode='sequence' needs an MLP branch in every layer; {layout.model_type!r} has layers "
                              "without one (their effect is absorbed by the next MLP layer, per token: mode='token')")
    k = layout.kinds[0]
    if any(other != k for other in layout.kinds):
        names = list(dict.fromkeys(other.spec.name for other in layout.kinds))
        raise ModelInputError(f"mode='sequence' needs layers of one kind; {layout.model_type!r} has several "
                              f"({', '.join(names)}); use mode='token'")
    return Uniform(layout.layers, layout.encoder, k.spec, k.mode, k.u_module, k.branch_module, k.params,
                   k.attn_module, k.adds_residual)


def site_for(model, adapter: Uniform) -> Site:
    """The MLP site of a model's layers; `ModelInputError` for what the sequence patch does not cover."""
    spec = adapter.spec
    if spec.moe is not None or adapter.encoder or adapter.mode == "post_ln" or adapter.adds_residual:
        raise ModelInputError(f"mode='sequence' covers decoder blocks with a dense or gated MLP; "
                              f"{model.config.model_type!r} is an MoE or encoder block (use the per-token "
                              "mode='token').")
    names = ("W_gate", "W_up") if spec.mlp.kind == "gated" else ("W_up",)
    path = {k: p.path.rsplit(".", 1)[0] for k, p in adapter.params.items()}
    post = spec.mlp.post_norm
    if post is not None and post.kind != "rms":
        raise ModelInputError(f"mode='sequence': a {post.kind} post-norm has no shared-scale construction; only 'rms'")
    eps = post.eps if post is not None else 0.0
    site = Site(tuple(path[n] for n in names), path["W_down"], adapter.params["W_down"].layout == "conv1d",
                path.get("mlp_post_norm.scale") if post is not None else None,
                post is not None and post.scale == "one_plus", eps)
    return site


def weight64(module, site: Site) -> torch.Tensor:
    """A map's weight in canonical (out, in) orientation, float64."""
    w = module.weight.detach().double().clone()  # a copy: the patch is written into the module next
    return w.T if site.conv1d else w


def bias64(module) -> torch.Tensor | float:
    b = getattr(module, "bias", None)
    return 0.0 if b is None else b.detach().double()


def gamma64(norm, site: Site) -> torch.Tensor:
    w = norm.weight.detach().double().clone()
    return 1 + w if site.one_plus else w


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype peft gives LoRA factors: the base weight's, float32 for a half-precision base."""
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype


def lora_hook(factors):
    r"""A forward hook adding $B (A x)$ as peft's LoRA layer does (``result + lora_B(lora_A(x)) * scaling``,
    scaling 1, in the factors' dtype, then cast back); ``factors()`` gives (B, A) or None, contiguous as
    peft's weights are (a transposed layout takes another GEMM kernel, which rounds differently)."""
    def hook(_module, args, out):
        f = factors()
        if f is None:
            return None
        B, A = f
        x = args[0].to(A.dtype)
        return (out + torch.nn.functional.linear(torch.nn.functional.linear(x, A), B) * 1.0).to(out.dtype)
    return hook


@dataclass
class SequencePatch:
    """The per-layer sequence patches of one query (see the module docstring)."""

    model: object
    query_ids: torch.Tensor
    layers: list[SequenceLayer]
    adapter: Uniform
    site: Site
    applied: str = "lora"  # how the induction applied the patches, and how `logits` applies them
    reference: torch.Tensor | None = None  # (q, vocab): the run with the context on the query tokens
    accuracy: SequenceAccuracy | None = None

    @property
    def rank(self) -> int:
        return max(lp.rank for lp in self.layers)

    def dense(self, n: int) -> dict[str, torch.Tensor]:
        """Layer n's patched parameters, dense, in the model's storage layout and dtype."""
        layer = self.model.get_submodule(self.adapter.layers)[n]
        out = {}
        for path, (B, A) in self.layers[n].lora.items():
            P = parameter_view(layer, path + ".weight")
            delta = B @ A
            out[path + ".weight"] = (P.detach().double() + (delta.T if self.site.conv1d else delta)).to(P.dtype)
        out.update({k: v.to(parameter_view(layer, k).dtype) for k, v in self.layers[n].scale.items()})
        return out

    @contextmanager
    def written(self):
        """The patches written into the model's own modules; every parameter restored exactly on exit."""
        layers = self.model.get_submodule(self.adapter.layers)
        with saved_parameters(touched_parameters(self.model, self.adapter, self.site)):
            for n, layer in enumerate(layers):
                for name, value in self.dense(n).items():
                    layer.get_parameter(name).detach().copy_(value)  # written in place
            yield self.model

    @contextmanager
    def factored(self):
        """The patches applied as peft applies a LoRA adapter (`lora_hook`), a replaced norm scale written in."""
        layers = self.model.get_submodule(self.adapter.layers)
        handles = []
        with saved_parameters(touched_parameters(self.model, self.adapter, self.site)):
            for n, layer in enumerate(layers):
                for path, (B, A) in self.layers[n].lora.items():
                    module = layer.get_submodule(path)
                    dt = adapter_dtype(module.weight)
                    cast = (B.to(dt).contiguous(), A.to(dt).contiguous())
                    handles.append(module.register_forward_hook(lora_hook(lambda c=cast: c)))
                for name, value in self.layers[n].scale.items():
                    layer.get_parameter(name).detach().copy_(value)  # written in place
            try:
                yield self.model
            finally:
                for h in handles:
                    h.remove()

    @torch.no_grad()
    def logits(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """(1, q, vocab): the query (or `ids`) alone with the patches applied the way they were computed
        (``applied``: ``"lora"`` factored as peft does, ``"weights"`` written into the model's modules)."""
        with (self.factored() if self.applied == "lora" else self.written()) as model:
            logits = model(self.query_ids if ids is None else ids).logits
        if ids is None and self.reference is not None:
            self.accuracy = measured(self.reference, logits, self.accuracy.bound, self.layers, "SequencePatch.logits")
        return logits

    def lora_config(self):
        """The `peft.LoraConfig` of this patch: r = q, lora_alpha = r (scaling 1), no dropout."""
        import peft

        ranks = {f"{self.adapter.layers}.{n}.{p}": lp.rank for n, lp in enumerate(self.layers) for p in lp.lora}
        r = self.rank
        pattern = {k: v for k, v in ranks.items() if v != r}
        targets = sorted({p for lp in self.layers for p in lp.lora})
        save = [self.site.post_norm] if any(lp.scale for lp in self.layers) else None
        return peft.LoraConfig(r=r, lora_alpha=r, target_modules=targets, lora_dropout=0.0, bias="none",
                               rank_pattern=pattern, alpha_pattern=dict(pattern), modules_to_save=save,
                               fan_in_fan_out=self.site.conv1d)

    @property
    def replaces_scales(self) -> bool:
        """Whether some layer's patch replaces its post-norm scale (Gemma's sandwich: `Induction._post_norm`)."""
        return any(lp.scale for lp in self.layers)

    @torch.no_grad()
    def save_peft(self, path, modules_to_save: bool = False) -> None:
        """Write a PEFT LoRA adapter: `peft.PeftModel.from_pretrained(model, path)` loads it, and that model
        run on the query alone reproduces the contextual logits; peft's ``unload()`` gives the model back
        exactly as it was. peft injects the adapter into the model itself (`get_peft_model`),
        `save_pretrained` writes it, then `unload` takes it out again; the model's modules and parameters
        (values and ``requires_grad``) are left exactly as they were (`untouched`), also when writing fails.

        A patch that replaces a post-norm scale (`replaces_scales`: Gemma 2/3, OLMo 2) is refused unless
        ``modules_to_save=True``: a LoRA adapter carries a norm's scale only as peft's ``modules_to_save``, a
        replaced copy of the module that peft's ``unload()`` leaves in the model (no longer the model loaded:
        load such an adapter into a copy, or leave it with ``merge_and_unload()`` / ``disable_adapter()``)."""
        import peft

        target = folder(path)
        if self.replaces_scales and not modules_to_save:
            layers = [n for n, lp in enumerate(self.layers) if lp.scale]
            raise ModelInputError(
                f"save_peft: this patch replaces the {self.site.post_norm} scale of layers {layers}, which a LoRA "
                "adapter can carry only as peft's modules_to_save; peft's unload() would leave the replaced norm "
                "in your model (it would no longer be the model you loaded). Pass modules_to_save=True to write it "
                "anyway and load it into a copy of the model, or use the patch in place: sp.logits(), sp.written()")
        with untouched(self.model, touched_parameters(self.model, self.adapter, self.site)), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft's notes on fan_in_fan_out, untrained modules_to_save
            pm = peft.get_peft_model(self.model, self.lora_config())
            try:
                self._fill(pm)
                pm.save_pretrained(str(target))
            finally:
                pm.unload()  # keeps the modules_to_save copies in place of the originals: `untouched` puts them back

    def _fill(self, pm) -> None:
        root = pm.base_model.model.get_submodule(self.adapter.layers)
        for n, lp in enumerate(self.layers):
            layer = root[n]
            for path, (B, A) in lp.lora.items():
                mod = layer.get_submodule(path)
                mod.lora_A["default"].weight.copy_(A.to(mod.lora_A["default"].weight.dtype))
                mod.lora_B["default"].weight.copy_(B.to(mod.lora_B["default"].weight.dtype))
            for name, value in lp.scale.items():
                wrapper = layer.get_submodule(name.rsplit(".", 1)[0])
                wrapper.modules_to_save["default"].weight.copy_(value)


@dataclass(frozen=True)
class SequenceAccuracy:
    """The sequence patch's run against the run with the context (the issue's measure, `numeric.hf.accuracy`):
    ``error`` max|Δlogit|/max|logit| over the q tokens, ``tokens`` each token's, ``bound`` the dtype's."""

    error: float
    tokens: tuple[float, ...]
    bound: float

    @property
    def ok(self) -> bool:
        return self.error <= self.bound


def measured(reference: torch.Tensor, logits: torch.Tensor, bound: float, layers: list[SequenceLayer],
             caller: str) -> SequenceAccuracy:
    """The `SequenceAccuracy` of a run; one `PatchAccuracyWarning` when it leaves the bound, naming the worst
    tokens and the layer of the worst-conditioned solve."""
    from numeric.hf.accuracy import PatchAccuracyWarning, Reference

    f = Reference(reference, []).compare(logits)
    out = SequenceAccuracy(f.error, f.tokens, bound)
    if not out.ok:
        worst = max(range(len(layers)), key=lambda n: max(layers[n].condition.values(), default=0.0))
        cond = max(layers[worst].condition.items(), key=lambda kv: kv[1], default=("", float("nan")))
        warnings.warn(f"{caller}: the sequence patch's logits are {f.error:.2e} from the run with the context "
                      f"(max|Δ|/max|logit| over the {len(f.tokens)} tokens; top-1 {f.top1:.0%}), above the bound "
                      f"{bound:.1e} of the model's dtype; the largest errors are at tokens {f.worst()}; the worst "
                      f"conditioned solve is layer {worst}'s {cond[0]} ({cond[1]:.3g}). Fewer query tokens (a "
                      "better conditioned solve) or a wider model dtype.", PatchAccuracyWarning, stacklevel=3)
    return out


def touched_parameters(model, adapter, site: Site) -> list[torch.Tensor]:
    """The parameters a sequence patch writes: the MLP maps' weights and the post-norm's scale."""
    paths = [*site.inputs, site.down] + ([site.post_norm] if site.post_norm else [])
    return [layer.get_submodule(p).weight for layer in model.get_submodule(adapter.layers) for p in paths]


@contextmanager
def saved_parameters(params: list[torch.Tensor]):
    saved = [(p, p.detach().clone()) for p in params]
    try:
        yield
    finally:
        for p, v in saved:
            p.detach().copy_(v)


def record_hooks(model, adapter, site: Site, store: dict, start: int) -> list:
    """Hooks storing, per layer, positions start.. of: each map's input, the down map's output, u and the
    branch output (u = the MLP input's residual; x + attention for a parallel block)."""
    handles = []
    for n, layer in enumerate(model.get_submodule(adapter.layers)):
        rec = store.setdefault(n, {})

        def keep(key, which, rec=rec):
            def hook(_m, args, out=None):
                t = out if which == "out" else args[0]
                t = t[0] if isinstance(t, tuple) else t
                rec[key] = token_rows(t)[start:].detach().double().clone()  # a copy: some blocks add to it in place
            return hook

        for p in site.inputs:
            handles.append(layer.get_submodule(p).register_forward_pre_hook(keep(("in", p), "in")))
        handles.append(layer.get_submodule(site.down).register_forward_pre_hook(keep("a", "in")))
        handles.append(layer.get_submodule(site.down).register_forward_hook(keep("h", "out")))
        handles.append(layer.get_submodule(adapter.u_module).register_forward_pre_hook(keep("x", "in")))
        handles.append(layer.get_submodule(adapter.branch_module).register_forward_hook(keep("b", "out")))
        if adapter.mode == "parallel":
            handles.append(layer.get_submodule(adapter.attn_module).register_forward_hook(keep("attn", "out")))
    return handles


def residual_u(rec: dict) -> torch.Tensor:
    return rec["x"] + rec["attn"] if "attn" in rec else rec["x"]


class Induction:
    """Forward hooks of the query-alone pass: each map's patch from its actual input, written in at once."""

    def __init__(self, model, adapter, site: Site, ctx: dict, applied: str):
        self.model, self.adapter, self.site, self.ctx, self.applied = model, adapter, site, ctx, applied
        self.now: dict[int, dict] = {}
        self.cast: dict[int, tuple] = {}  # id(module) -> (B, A) in peft's dtype, applied by `lora_hook`
        self.layers = [SequenceLayer() for _ in model.get_submodule(adapter.layers)]
        #: per layer: each map's inputs (path -> (size, q), float64) and the post-norm's (sign, w), for `grow`
        self.kept: dict[int, dict] = {n: {} for n in range(len(self.layers))}

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """The query tokens' rows (q, size) of a batch-first activation (or of OPT's (q, size) rows)."""
        return token_rows(t)

    def hooks(self) -> list:
        handles = []
        for n, layer in enumerate(self.model.get_submodule(self.adapter.layers)):
            self.now[n] = {}
            for p in self.site.inputs:
                handles.append(layer.get_submodule(p).register_forward_pre_hook(self.input_hook(n, p)))
            for p in (*self.site.inputs, self.site.down) if self.applied == "lora" else ():
                key = id(layer.get_submodule(p))
                handles.append(layer.get_submodule(p).register_forward_hook(lora_hook(lambda k=key: self.cast.get(k))))
            handles.append(layer.get_submodule(self.adapter.u_module).register_forward_pre_hook(self._grab(n, "x")))
            if self.adapter.mode == "parallel":
                handles.append(layer.get_submodule(self.adapter.attn_module).register_forward_hook(
                    self._grab(n, "attn", out=True)))
            handles.append(layer.get_submodule(self.site.down).register_forward_pre_hook(self.output_hook(n)))
        return handles

    def _grab(self, n, key, out=False):
        def hook(_m, args, output=None):
            t = output if out else args[0]
            self.now[n][key] = self.rows(t[0] if isinstance(t, tuple) else t).detach().double().clone()
        return hook

    def write(self, module, B: torch.Tensor, A: torch.Tensor) -> None:
        w = module.weight
        if self.applied == "lora":
            dt = adapter_dtype(w)
            self.cast[id(module)] = (B.to(dt).contiguous(), A.to(dt).contiguous())
            return
        delta = B @ A
        w.detach().copy_((w.detach().double() + (delta.T if self.site.conv1d else delta)).to(w.dtype))

    def input_hook(self, n: int, path: str):
        def hook(module, args):
            Z = self.rows(args[0]).detach().double().T  # (d, q)
            self.kept[n][path] = Z
            ZC = self.ctx[n][("in", path)].T  # (d, q)
            W = weight64(module, self.site)  # (out, d)
            A, cond = left_inverse(Z, f"Z:{path}", n)
            B = W @ (ZC - Z)  # (out, q)
            self.write(module, B, A)
            lp = self.layers[n]
            lp.lora[path], lp.condition[f"Z:{path}"] = (B, A), cond
            lp.rank = max(lp.rank, A.shape[0])
            miss = (W + B @ A) @ Z - W @ ZC
            lp.residual = max(lp.residual, float(miss.abs().max() / (W @ ZC).abs().max().clamp_min(1e-300)))
        return hook

    def output_hook(self, n: int):
        def hook(module, args):
            a = self.rows(args[0]).detach().double().T  # (m, q)
            self.kept[n][self.site.down] = a
            rec, lp = self.ctx[n], self.layers[n]
            target = residual_u(rec) + rec["b"] - residual_u(self.now[n])  # (q, d): what the branch must output
            W = weight64(module, self.site)  # (d, m)
            Y = (W @ a).T + bias64(module)  # (q, d): the unpatched map on the actual activations
            if self.site.post_norm is not None:
                target = self._post_norm(n, target, rec["h"], lp)
            A, cond = left_inverse(a, "A", n)
            B = (target - Y).T  # (d, q)
            self.write(module, B, A)
            lp.lora[self.site.down], lp.condition["A"] = (B, A), cond
            lp.rank = max(lp.rank, A.shape[0])
            miss = ((W + B @ A) @ a).T + bias64(module) - target
            lp.residual = max(lp.residual, float(miss.abs().max() / target.abs().max().clamp_min(1e-300)))
        return hook

    def _post_norm(self, n: int, T: torch.Tensor, hC: torch.Tensor, lp: SequenceLayer) -> torch.Tensor:
        """The shared scale gamma' (written into the norm) and the down outputs h'_j it needs (q, d)."""
        norm = self.model.get_submodule(self.adapter.layers)[n].get_submodule(self.site.post_norm)
        gamma, eps = gamma64(norm, self.site), self.site.eps
        c0 = (hC.pow(2).mean(-1) + eps).sqrt()  # (q,): the contextual pre-norm RMS
        w, c = shared_scale(T, c0, gamma, eps, n)
        sign = torch.where(gamma < 0, -1.0, 1.0).double()
        new = sign / w.sqrt()  # gamma'
        self.kept[n].update(w=(sign, w), T=T, c0=c0, gamma=gamma)
        stored = new - 1 if self.site.one_plus else new
        lp.scale[self.site.post_norm + ".weight"] = stored.to(norm.weight.dtype)
        norm.weight.detach().copy_(stored.to(norm.weight.dtype))
        lp.condition["gamma'"] = float(new.abs().max() / new.abs().min())
        return c[:, None] * T * (sign * w.sqrt())  # (q, d): h'_j = c_j t_j / gamma'


def run_hooks(model, handles: list, ids: torch.Tensor, **kwargs):
    try:
        return model(ids, **kwargs)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def absorb_sequence(model, context_ids: torch.Tensor, query_ids: torch.Tensor, applied: str = "lora",
                    spec: BlockSpec | str | None = None, params: dict[str, str] | None = None) -> SequencePatch:
    r"""One patch per layer (rank $\le q$) that makes the query alone reproduce the contextual run on all
    q query tokens; see the module docstring. Raises `ModelInputError` for blocks it does not cover and
    PatchConditionError (naming the layer) where a side condition fails (q larger than a map's
    input size, dependent inputs, an infeasible shared post-norm scale).

    ``applied="lora"`` (default): during the induction the patches act as peft's LoRA layers compute
    them ($W x + B(Ax)$ in the model's dtype), so each layer's patch corrects the rounding of the saved
    adapter below it and `save_peft` writes exactly what was computed. ``"weights"``: written densely
    into the model's own modules ($W + BA$ rounded once), the arithmetic of `SequencePatch.written`.

    ``spec``/``params``: a user's spec and parameter map instead of the inferred ones (`layout_for`, which
    checks every layer against the model first, and caches the layout on the model).

    The induction's own run is measured against the run with the context (``accuracy``, `SequenceAccuracy`,
    with the bound of the model's dtype, `numeric.hf.bounds`); above the bound, one `PatchAccuracyWarning`.

    >>> sp = absorb_sequence(model, context_ids, query_ids)   # doctest: +SKIP
    >>> sp.logits()          # (1, q, vocab), as with the context
    >>> sp.save_peft("adapter")   # peft.PeftModel.from_pretrained(model, "adapter")
    """
    check_ids(context_ids, query_ids, model, logits=True)
    if applied not in APPLIED:
        raise ModelInputError(f"applied must be one of {', '.join(map(repr, APPLIED))}, got {applied!r}")
    adapter = uniform(layout_for(model, spec, params))
    site = site_for(model, adapter)
    ctx: dict = {}
    q = query_ids.shape[1]
    want = run_hooks(model, record_hooks(model, adapter, site, ctx, context_ids.shape[1]),
                     torch.cat([context_ids, query_ids], 1), **keep_logits(model, q)).logits[0, -q:]
    finite_run(model, want)
    ind = Induction(model, adapter, site, ctx, applied)
    with saved_parameters(touched_parameters(model, adapter, site)):
        got = run_hooks(model, ind.hooks(), query_ids).logits  # the induction's own run: measured, not rerun
    accuracy = measured(want, got, logit_bound(model_dtype(model)), ind.layers, "absorb_sequence")
    return SequencePatch(model, query_ids, ind.layers, adapter, site, applied, want, accuracy)
