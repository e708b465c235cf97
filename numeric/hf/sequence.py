r"""One patch per layer for a whole teacher-forced continuation (rank $\le q$), saved as a PEFT LoRA adapter.

`absorb_sequence(model, context_ids, query_ids) -> SequencePatch` (also
``numeric.hf.absorb_context(..., mode="sequence")``): for the q query tokens at once, every layer's
MLP gets ONE low-rank patch that makes the query-alone run reproduce the run with the context at
all q positions (THEORY.md section 6; `symbolic.sequence` states and proves the identities).

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

import copy
import dataclasses
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from numeric.infer import cached, check_ids, kv_cache, last_logits_only
from symbolic.errors import PatchConditionError, SpecError
from symbolic.spec import BlockSpec

APPLIED = ("lora", "weights")
RANK_TOL = 1e-12  # sigma_min / sigma_max below this: the columns are numerically dependent
NEWTON_STEPS = 60  # the shared-scale dual: Newton converges in about 8 where feasible
NEWTON_TOL = 1e-11  # relative residual of the shared-scale constraints (float64 sums of d terms)
ACCEPT_TOL = 1e-6  # a Newton residual below this is taken up by c_j (set from the w reached)
SCALE_FLOOR = 0.1  # a zero scale coordinate starts the projection at 0.1 RMS(gamma)
C_WINDOW = 2.0  # the post-norm construction keeps each token's pre-norm RMS within this factor of the context's
B_MIN = 1e-3  # the smallest mean(t_j^2 w) aimed at (c_j >= sqrt(eps / (1 - B_MIN)))


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
    `numeric.infer.Adapter` fields with the layers' path and whether the model is an encoder."""

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
    """A `numeric.infer.Layout` whose layers are all of one kind as a `Uniform`; SpecError otherwise."""
    k = layout.kinds[0]
    if any(other != k for other in layout.kinds):
        names = list(dict.fromkeys(other.spec.name for other in layout.kinds))
        raise SpecError(f"mode='sequence' needs layers of one kind; {layout.model_type!r} has several "
                        f"({', '.join(names)}); use mode='token'")
    return Uniform(layout.layers, layout.encoder, k.spec, k.mode, k.u_module, k.branch_module, k.params,
                   k.attn_module, k.adds_residual)


def site_for(model, adapter: Uniform) -> Site:
    """The MLP site of a model's layers; SpecError for what the sequence patch does not cover."""
    spec = adapter.spec
    if spec.moe is not None or adapter.encoder or adapter.mode == "post_ln" or adapter.adds_residual:
        raise SpecError(f"mode='sequence' covers decoder blocks with a dense or gated MLP; {model.config.model_type!r} "
                        "is an MoE or encoder block (use the per-token mode='token').")
    names = ("W_gate", "W_up") if spec.mlp.kind == "gated" else ("W_up",)
    path = {k: p.path.rsplit(".", 1)[0] for k, p in adapter.params.items()}
    post = spec.mlp.post_norm
    if post is not None and post.kind != "rms":
        raise SpecError(f"mode='sequence': a {post.kind} post-norm has no shared-scale construction; only 'rms'")
    eps = post.eps if post is not None else 0.0
    site = Site(tuple(path[n] for n in names), path["W_down"], adapter.params["W_down"].layout == "conv1d",
                path.get("mlp_post_norm.scale") if post is not None else None,
                post is not None and post.scale == "one_plus", eps)
    return site


# --------------------------------------------------------------------------- the linear algebra (float64)


def left_inverse(X: torch.Tensor, what: str, layer: int) -> tuple[torch.Tensor, float]:
    r"""$(X^\top X)^{-1} X^\top$ of an (n, q) matrix by QR, and its condition number; refuses rank < q."""
    n, q = X.shape
    if q > n:
        raise PatchConditionError(f"q <= {what.split(':')[0]} size (q = {q} tokens, size {n})", list(range(q)),
                                  str(layer))
    s = torch.linalg.svdvals(X)
    cond = float(s[0] / s[-1]) if s[-1] > 0 else math.inf
    if not cond < 1 / RANK_TOL:
        raise PatchConditionError(f"rank {what} = q (the {q} columns are dependent: condition {cond:.3g})",
                                  list(range(q)), str(layer))
    Q, R = torch.linalg.qr(X)  # (n, q), (q, q)
    return torch.linalg.solve_triangular(R, Q.T, upper=True), cond  # (q, n)


def shared_scale(T: torch.Tensor, c0: torch.Tensor, gamma: torch.Tensor, eps: float,
                 layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""$w > 0$ (d,) and $c$ (q,) with $\mathrm{mean}(t_j^2 w) = 1 - \epsilon/c_j^2$ for every row $t_j$ of T (q, d).

    Then $\gamma' = 1/\sqrt{w}$ and $h'_j = c_j\, t_j \odot \sqrt{w}$ give
    $\gamma' \odot h'_j / \sqrt{\mathrm{mean}(h_j'^2) + \epsilon} = t_j$ exactly (`symbolic.sequence`).
    $c_j$ stays within a factor `C_WINDOW` of the contextual RMS $c_{0,j}$ (so $W_\mathrm{down}$ need not
    cancel its own output): $b_j = 1 - \epsilon/c_j^2$ is $m_j = \mathrm{mean}(t_j^2 w_0)$ clipped to the
    window, so $w = w_0 = 1/\gamma^2$ (zero coordinates floored at `SCALE_FLOOR` RMS($\gamma$)) whenever it
    can be kept. Otherwise $w$ is the Itakura-Saito projection of $w_0$ onto the q constraints $M w = 1$,
    $M_j = t_j^2 / (d\, b_j)$: it minimizes $\sum_i w_i/w_{0,i} - \log(w_i/w_{0,i})$, which grows without
    bound as any $w_i \to 0$ or $\infty$ (so $\gamma'$ stays away from 0 and infinity, unlike a KL
    projection), and is $w = 1/(1/w_0 - M^\top\lambda)$, found by damped Newton steps on the concave dual.
    Raises PatchConditionError when no positive solution is found (the dual does not converge).
    """
    q, d = T.shape
    floor = SCALE_FLOOR * gamma.pow(2).mean().sqrt()
    w0 = 1 / torch.maximum(gamma.abs(), floor) ** 2  # (d,)
    m = (T**2 * w0).mean(-1)  # (q,)
    lo = (1 - eps * C_WINDOW**2 / c0**2).clamp_min(B_MIN)
    b = torch.minimum(torch.maximum(m, lo), 1 - eps / (C_WINDOW * c0) ** 2)  # (q,)
    M = T**2 / (d * b[:, None])  # (q, d): the constraints read M w = 1
    p = 1 / w0
    lam = torch.zeros(q, dtype=T.dtype)

    def dual(lam):  # the concave dual of the Itakura-Saito projection; -inf outside its domain
        s = p - M.T @ lam
        if not bool((s > 0).all()):
            return -math.inf
        return float((p / s).sum() - torch.log(p / s).sum() - lam @ (M @ (1 / s) - 1))

    for _ in range(NEWTON_STEPS):
        w = 1 / (p - M.T @ lam)  # (d,)
        r = 1 - M @ w  # (q,)
        if float(r.abs().max()) < NEWTON_TOL:
            break
        step = torch.linalg.lstsq((M * w**2) @ M.T, r[:, None]).solution[:, 0]
        t, now, miss = 1.0, dual(lam), float(r.norm())
        while not (dual(lam + t * step) >= now or _miss(M, p, lam + t * step) < miss) and t > 1e-12:
            t /= 2  # damped: the dual must rise (or, at its round-off, the constraints' miss fall)
        lam = lam + t * step
    w = 1 / (p - M.T @ lam)
    r = 1 - M @ w
    achieved = (T**2 * w).mean(-1)  # (q,): c_j is set from it, so the identity holds to round-off
    if not (float(r.abs().max()) < ACCEPT_TOL and bool((w > 0).all()) and bool((achieved < 1).all())):
        raise PatchConditionError("a positive shared scale with mean(t_j^2 w) = 1 - eps/c_j^2 for every token "
                                  f"(no convergence; residual {float(r.abs().max()):.3g})", list(range(q)),
                                  str(layer))
    return w, (eps / (1 - achieved)).sqrt()


def _miss(M: torch.Tensor, p: torch.Tensor, lam: torch.Tensor) -> float:
    s = p - M.T @ lam
    return float((1 - M @ (1 / s)).norm()) if bool((s > 0).all()) else math.inf


# --------------------------------------------------------------------------- the patch


def _weight(module, site: Site) -> torch.Tensor:
    """A map's weight in canonical (out, in) orientation, float64."""
    w = module.weight.detach().double().clone()  # a copy: the patch is written into the module next
    return w.T if site.conv1d else w


def _bias(module) -> torch.Tensor | float:
    b = getattr(module, "bias", None)
    return 0.0 if b is None else b.detach().double()


def _gamma(norm, site: Site) -> torch.Tensor:
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
        with _saved(_touched(self.model, self.adapter, self.site)):
            for n, layer in enumerate(layers):
                for name, value in self.dense(n).items():
                    parameter_view(layer, name).detach().copy_(value)
            yield self.model

    @contextmanager
    def factored(self):
        """The patches applied as peft applies a LoRA adapter (`lora_hook`), a replaced norm scale written in."""
        layers = self.model.get_submodule(self.adapter.layers)
        handles = []
        with _saved(_touched(self.model, self.adapter, self.site)):
            for n, layer in enumerate(layers):
                for path, (B, A) in self.layers[n].lora.items():
                    module = layer.get_submodule(path)
                    dt = adapter_dtype(module.weight)
                    cast = (B.to(dt).contiguous(), A.to(dt).contiguous())
                    handles.append(module.register_forward_hook(lora_hook(lambda c=cast: c)))
                for name, value in self.layers[n].scale.items():
                    parameter_view(layer, name).detach().copy_(value)
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
            return model(self.query_ids if ids is None else ids).logits

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

    @torch.no_grad()
    def save_peft(self, path) -> None:
        """Write a PEFT LoRA adapter: `peft.PeftModel.from_pretrained(model, path)` loads it, and that model
        run on the query alone reproduces the contextual logits. peft injects the adapter into the model
        itself (`get_peft_model`), `save_pretrained` writes it, then `unload` takes it out again; the model's
        parameters (values and ``requires_grad``) are restored and checked unchanged."""
        import peft

        before = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        grads = {k: p.requires_grad for k, p in self.model.named_parameters()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft's notes on fan_in_fan_out, untrained modules_to_save
            pm = peft.get_peft_model(self.model, self.lora_config())
            try:
                self._fill(pm)
                pm.save_pretrained(str(path))
            finally:
                pm.unload()  # keeps the modules_to_save copies in place of the originals: restored below
                for k, p in self.model.named_parameters():
                    p.detach().copy_(before[k])
                    p.requires_grad_(grads[k])
        after = self.model.state_dict()
        if set(after) != set(before) or any(not torch.equal(before[k], after[k]) for k in before):
            raise RuntimeError("peft's unload did not restore the model exactly")

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


def _touched(model, adapter, site: Site) -> list[torch.Tensor]:
    """The parameters a sequence patch writes: the MLP maps' weights and the post-norm's scale."""
    paths = [*site.inputs, site.down] + ([site.post_norm] if site.post_norm else [])
    return [layer.get_submodule(p).weight for layer in model.get_submodule(adapter.layers) for p in paths]


@contextmanager
def _saved(params: list[torch.Tensor]):
    saved = [(p, p.detach().clone()) for p in params]
    try:
        yield
    finally:
        for p, v in saved:
            p.detach().copy_(v)


def _record(model, adapter, site: Site, store: dict, start: int) -> list:
    """Hooks storing, per layer, positions start.. of: each map's input, the down map's output, u and the
    branch output (u = the MLP input's residual; x + attention for a parallel block)."""
    handles = []
    for n, layer in enumerate(model.get_submodule(adapter.layers)):
        rec = store.setdefault(n, {})

        def keep(key, which, rec=rec):
            def hook(_m, args, out=None):
                t = out if which == "out" else args[0]
                t = t[0] if isinstance(t, tuple) else t
                t = t.reshape(1, -1, t.shape[-1])  # (1, T, .): OPT's MLP sees (T, .) rows
                rec[key] = t[0, start:].detach().double().clone()  # a copy: some blocks add to it in place
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


def _u(rec: dict) -> torch.Tensor:
    return rec["x"] + rec["attn"] if "attn" in rec else rec["x"]


class _Induction:
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
        return t.reshape(1, -1, t.shape[-1])[0]

    def hooks(self) -> list:
        handles = []
        for n, layer in enumerate(self.model.get_submodule(self.adapter.layers)):
            self.now[n] = {}
            for p in self.site.inputs:
                handles.append(layer.get_submodule(p).register_forward_pre_hook(self._input(n, p)))
            for p in (*self.site.inputs, self.site.down) if self.applied == "lora" else ():
                key = id(layer.get_submodule(p))
                handles.append(layer.get_submodule(p).register_forward_hook(lora_hook(lambda k=key: self.cast.get(k))))
            handles.append(layer.get_submodule(self.adapter.u_module).register_forward_pre_hook(self._grab(n, "x")))
            if self.adapter.mode == "parallel":
                handles.append(layer.get_submodule(self.adapter.attn_module).register_forward_hook(
                    self._grab(n, "attn", out=True)))
            handles.append(layer.get_submodule(self.site.down).register_forward_pre_hook(self._output(n)))
        return handles

    def _grab(self, n, key, out=False):
        def hook(_m, args, output=None):
            t = output if out else args[0]
            self.now[n][key] = self.rows(t[0] if isinstance(t, tuple) else t).detach().double().clone()
        return hook

    def _write(self, module, B: torch.Tensor, A: torch.Tensor) -> None:
        w = module.weight
        if self.applied == "lora":
            dt = adapter_dtype(w)
            self.cast[id(module)] = (B.to(dt).contiguous(), A.to(dt).contiguous())
            return
        delta = B @ A
        w.detach().copy_((w.detach().double() + (delta.T if self.site.conv1d else delta)).to(w.dtype))

    def _input(self, n: int, path: str):
        def hook(module, args):
            Z = self.rows(args[0]).detach().double().T  # (d, q)
            self.kept[n][path] = Z
            ZC = self.ctx[n][("in", path)].T  # (d, q)
            W = _weight(module, self.site)  # (out, d)
            A, cond = left_inverse(Z, f"Z:{path}", n)
            B = W @ (ZC - Z)  # (out, q)
            self._write(module, B, A)
            lp = self.layers[n]
            lp.lora[path], lp.condition[f"Z:{path}"] = (B, A), cond
            lp.rank = max(lp.rank, A.shape[0])
            miss = (W + B @ A) @ Z - W @ ZC
            lp.residual = max(lp.residual, float(miss.abs().max() / (W @ ZC).abs().max().clamp_min(1e-300)))
        return hook

    def _output(self, n: int):
        def hook(module, args):
            a = self.rows(args[0]).detach().double().T  # (m, q)
            self.kept[n][self.site.down] = a
            rec, lp = self.ctx[n], self.layers[n]
            target = _u(rec) + rec["b"] - _u(self.now[n])  # (q, d): what the branch must output
            W = _weight(module, self.site)  # (d, m)
            Y = (W @ a).T + _bias(module)  # (q, d): the unpatched map on the actual activations
            if self.site.post_norm is not None:
                target = self._post_norm(n, target, rec["h"], lp)
            A, cond = left_inverse(a, "A", n)
            B = (target - Y).T  # (d, q)
            self._write(module, B, A)
            lp.lora[self.site.down], lp.condition["A"] = (B, A), cond
            lp.rank = max(lp.rank, A.shape[0])
            miss = ((W + B @ A) @ a).T + _bias(module) - target
            lp.residual = max(lp.residual, float(miss.abs().max() / target.abs().max().clamp_min(1e-300)))
        return hook

    def _post_norm(self, n: int, T: torch.Tensor, hC: torch.Tensor, lp: SequenceLayer) -> torch.Tensor:
        """The shared scale gamma' (written into the norm) and the down outputs h'_j it needs (q, d)."""
        norm = self.model.get_submodule(self.adapter.layers)[n].get_submodule(self.site.post_norm)
        gamma, eps = _gamma(norm, self.site), self.site.eps
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




def parameter_view(layer, name: str) -> torch.Tensor:
    return layer.get_parameter(name)  # the sequence patch never patches a stacked-expert slice


def _run(model, handles: list, ids: torch.Tensor, **kwargs):
    try:
        return model(ids, **kwargs)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def absorb_sequence(model, context_ids: torch.Tensor, query_ids: torch.Tensor, layout,
                    applied: str = "lora") -> SequencePatch:
    r"""One patch per layer (rank $\le q$) that makes the query alone reproduce the contextual run on all
    q query tokens; see the module docstring. Raises SpecError for blocks it does not cover and
    PatchConditionError (naming the layer) where a side condition fails (q larger than a map's
    input size, dependent inputs, an infeasible shared post-norm scale).

    ``applied="lora"`` (default): during the induction the patches act as peft's LoRA layers compute
    them ($W x + B(Ax)$ in the model's dtype), so each layer's patch corrects the rounding of the saved
    adapter below it and `save_peft` writes exactly what was computed. ``"weights"``: written densely
    into the model's own modules ($W + BA$ rounded once), the arithmetic of `SequencePatch.written`.

    ``layout``: the model's checked `numeric.infer.Layout` (``numeric.hf.layout_for(model)``).

    >>> sp = absorb_sequence(model, context_ids, query_ids, layout_for(model))   # doctest: +SKIP
    >>> sp.logits()          # (1, q, vocab), as with the context
    >>> sp.save_peft("adapter")   # peft.PeftModel.from_pretrained(model, "adapter")
    """
    check_ids(context_ids, query_ids, model)
    if applied not in APPLIED:
        raise SpecError(f"applied must be one of {', '.join(map(repr, APPLIED))}, got {applied!r}")
    adapter = uniform(layout)
    site = site_for(model, adapter)
    ctx: dict = {}
    _run(model, _record(model, adapter, site, ctx, context_ids.shape[1]), torch.cat([context_ids, query_ids], 1),
         **last_logits_only(model))
    ind = _Induction(model, adapter, site, ctx, applied)
    with _saved(_touched(model, adapter, site)):
        _run(model, ind.hooks(), query_ids)
    return SequencePatch(model, query_ids, ind.layers, adapter, site, applied)


# --------------------------------------------------------------------------- grown by one rank per token


def greville(X: torch.Tensor, P: torch.Tensor, x: torch.Tensor, what: str, layer: int,
             token: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""Greville's rank-one update of a left inverse: $X' = [X\ x]$ and $X'^{+} = [P - d\,b^\top;\ b^\top]$.

    $P = X^{+}$ (q, n), $d = P x$, $c = x - X d$ (the new column's part outside the old span; computed
    twice, Gram-Schmidt style, so that it is accurate when small), $b = c / c^\top c$. The old rows change
    by the rank-one correction $-d\,b^\top$ (with $b^\top X = 0$ they still invert the old columns), the new
    row $b^\top$ inverts the new one. Returns $(X', X'^{+}, \mathrm{cond}(X'))$; refuses (naming the layer
    and the token) when the new column depends on the old ones or the size is exhausted, as `left_inverse`.
    """
    n, q = X.shape
    if q + 1 > n:
        raise PatchConditionError(f"q <= {what.split(':')[0]} size (q = {q + 1} tokens, size {n})", [token],
                                  str(layer))
    d = P @ x
    c = x - X @ d
    e = P @ c  # the re-orthogonalisation: c loses what rounding left of the old span
    d, c = d + e, c - X @ e
    X2 = torch.cat([X, x[:, None]], 1)
    s = torch.linalg.svdvals(X2)
    cond = float(s[0] / s[-1]) if s[-1] > 0 else math.inf
    if not cond < 1 / RANK_TOL:
        raise PatchConditionError(f"rank {what} = q (token {token}'s column depends on the earlier ones: "
                                  f"condition {cond:.3g})", [token], str(layer))
    b = c / (c @ c)
    return X2, torch.cat([P - torch.outer(d, b), b[None]], 0), cond


def scale_for(t: torch.Tensor, w: torch.Tensor, eps: float, layer: int, token: int) -> torch.Tensor:
    r"""The new token's pre-norm RMS $c$ under a KEPT shared post-norm scale $\gamma' = \pm 1/\sqrt{w}$:
    $\mathrm{mean}(t^2 w) = 1 - \epsilon / c^2$ (`shared_scale`), so $c = \sqrt{\epsilon / (1 - \mathrm{mean}(t^2 w))}$.
    PatchConditionError (naming the layer) when $\mathrm{mean}(t^2 w) \ge 1$: no $c$ exists, the shared scale
    would have to change (and with it every earlier token's down output)."""
    m = float((t**2 * w).mean())
    if not m < 1:
        raise PatchConditionError(f"mean(t^2 w) < 1 under the kept shared post-norm scale (token {token}'s target "
                                  f"gives {m:.6g}; a new scale gamma' would change every earlier token's patch)",
                                  [token], str(layer))
    return torch.tensor(math.sqrt(eps / (1 - m)), dtype=t.dtype)


class _Growth(_Induction):
    """Forward hooks of a ONE-token pass (the key/value cache of the patched run holds the earlier tokens):
    each map's factors gain the new token by `greville`, from its actual input, before the map runs."""

    def __init__(self, base: _Induction, ctx: dict, token: int, rescale: bool):
        self.__dict__.update(base.__dict__)
        self.ctx, self.token, self.now, self.rescale, self.rescaled = ctx, token, {}, rescale, []

    def _input(self, n: int, path: str):
        def hook(module, args):
            z = self.rows(args[0])[-1].detach().double()  # (d,)
            zC = self.ctx[n][("in", path)][-1]
            W = _weight(module, self.site)
            lp = self.layers[n]
            B, A = lp.lora[path]
            self.kept[n][path], A, cond = greville(self.kept[n][path], A, z, f"Z:{path}", n, self.token)
            B = torch.cat([B, (W @ (zC - z))[:, None]], 1)
            self._write(module, B, A)
            lp.lora[path], lp.condition[f"Z:{path}"], lp.rank = (B, A), cond, max(lp.rank, A.shape[0])
            miss = W @ z + B @ (A @ z) - W @ zC
            lp.residual = max(lp.residual, float(miss.abs().max() / (W @ zC).abs().max().clamp_min(1e-300)))
        return hook

    def _output(self, n: int):
        def hook(module, args):
            a = self.rows(args[0])[-1].detach().double()  # (m,)
            rec, lp, kept, down = self.ctx[n], self.layers[n], self.kept[n], self.site.down
            target = (_u(rec) + rec["b"] - _u(self.now[n]))[-1]  # (d,)
            W = _weight(module, self.site)
            B, A = lp.lora[down]
            kept[down], A, cond = greville(kept[down], A, a, "A", n, self.token)
            if self.site.post_norm is not None:
                sign, w = kept["w"]
                kept["T"] = torch.cat([kept["T"], target[None]])
                kept["c0"] = torch.cat([kept["c0"], (rec["h"][-1].pow(2).mean() + self.site.eps).sqrt()[None]])
                try:
                    target = scale_for(target, w, self.site.eps, n, self.token) * target * (sign * w.sqrt())
                except PatchConditionError:
                    if not self.rescale:
                        raise
                    H = self._rescale(n, kept, lp)  # (q+1, d): every token's down output under the new scale
                    B = (H - (W @ kept[down]).T - _bias(module)).T  # all columns: their targets moved
                    target = H[-1]
            if B.shape[1] < A.shape[0]:
                B = torch.cat([B, (target - W @ a - _bias(module))[:, None]], 1)
            self._write(module, B, A)
            lp.lora[down], lp.condition["A"], lp.rank = (B, A), cond, max(lp.rank, A.shape[0])
            miss = W @ a + B @ (A @ a) + _bias(module) - target
            lp.residual = max(lp.residual, float(miss.abs().max() / target.abs().max().clamp_min(1e-300)))
        return hook

    def _rescale(self, n: int, kept: dict, lp: SequenceLayer) -> torch.Tensor:
        """A new shared scale for layer n's post-norm (`shared_scale` over all q+1 targets), written in; the down
        outputs (d, q+1) every token then needs. Only this layer's scale and W_down's B change: every earlier
        token's post-norm output, hence every state above, stays what it was."""
        norm = self.model.get_submodule(self.adapter.layers)[n].get_submodule(self.site.post_norm)
        w, c = shared_scale(kept["T"], kept["c0"], kept["gamma"], self.site.eps, n)
        sign = kept["w"][0]
        stored = sign / w.sqrt() - (1 if self.site.one_plus else 0)
        lp.scale[self.site.post_norm + ".weight"] = stored.to(norm.weight.dtype)
        norm.weight.detach().copy_(stored.to(norm.weight.dtype))
        lp.condition["gamma'"] = float(w.max().sqrt() / w.min().sqrt())
        kept["w"] = (sign, w)
        self.rescaled.append(n)
        return c[:, None] * kept["T"] * (sign * w.sqrt())


class GrowingSequence:
    r"""A sequence patch grown by one rank per token: exact for the sequence so far, updated, not refitted.

    Starts as `absorb_sequence` on the first tokens (q0); `step(token)` appends one token: one pass of the
    contextual run and one of the patched run, each of that ONE token with its own key/value cache (the
    earlier tokens are not rerun). Layer by layer (Algorithm 1's induction), each map's LoRA factors gain
    the token by Greville's update (`greville`): A gains a row (its old rows get a rank-one correction
    $-d\,b^\top$ with $b^\top Z = 0$), B gains a column (its old columns are kept as they are), so
    $\Delta W' = \Delta W + (W z_C - (W + \Delta W) z)\, b^\top$: the earlier tokens' map outputs, hence
    their states and the cached keys and values, do not change. A Gemma post-norm keeps its shared scale
    $\gamma'$; the new token's pre-norm RMS $c$ comes from its own condition (`scale_for`), which refuses
    with PatchConditionError (naming the layer) where no $c$ exists, unless ``rescale=True``: then that
    layer alone gets a new shared scale (`shared_scale` over all its tokens' targets) and its W_down's B
    is recomputed for every token (A is still updated); the other layers and every earlier token's states
    are untouched (``rescaled`` lists where). Dependent inputs and q beyond a map's input size are
    refused (`greville`). The factors are applied as peft applies LoRA (``applied="lora"``). A refused
    step leaves the patch as it was.

    >>> g = GrowingSequence(model, context_ids, query_ids[:, :8], layout)   # doctest: +SKIP
    >>> out = g.step(int(query_ids[0, 8]))    # {"contextual", "grown", "before"} logits of that token
    >>> g.patch.save_peft("adapter")          # rank 9 now, exact on all 9 tokens
    """

    @torch.no_grad()
    def __init__(self, model, context_ids: torch.Tensor, query_ids: torch.Tensor, layout, rescale: bool = False):
        check_ids(context_ids, query_ids, model)
        self.rescale, self.rescaled = rescale, []  # rescaled: (token, layer) where a new shared scale was solved
        self.model, self.adapter = model, uniform(layout)
        self.site = site_for(model, self.adapter)
        ctx: dict = {}
        out = _run(model, _record(model, self.adapter, self.site, ctx, context_ids.shape[1]),
                   torch.cat([context_ids, query_ids], 1), use_cache=True, **last_logits_only(model))
        self.context_cache = kv_cache(out, model)
        self.ind = _Induction(model, self.adapter, self.site, ctx, "lora")
        with _saved(_touched(model, self.adapter, self.site)):
            self.cache = kv_cache(_run(model, self.ind.hooks(), query_ids, use_cache=True), model)
        self.ids = query_ids

    @property
    def patch(self) -> SequencePatch:
        """The patch as it stands (shares the factors; later steps grow it)."""
        return SequencePatch(self.model, self.ids, self.ind.layers, self.adapter, self.site, "lora")

    @torch.no_grad()
    def step(self, token: int, before: bool = False) -> dict:
        """Grow by one token: the contextual and the grown patch's logits of it ((vocab,), float64), and with
        ``before`` those of the patch as it was (the next-token prediction a frozen patch would give)."""
        ids = torch.tensor([[int(token)]], dtype=self.ids.dtype)
        check_ids(ids, ids, self.model)
        out = {}
        if before:
            with self.patch.factored() as model:
                out["before"] = model(ids, **cached(self.model, copy.deepcopy(self.cache))).logits[0, -1]
        rec: dict = {}
        ctx = _run(self.model, _record(self.model, self.adapter, self.site, rec, 0), ids,
                   **cached(self.model, copy.deepcopy(self.context_cache)))
        out["contextual"] = ctx.logits[0, -1]
        grow = _Growth(self.ind, rec, self.ids.shape[1], self.rescale)
        saved = ([dataclasses.replace(lp, lora=dict(lp.lora), condition=dict(lp.condition),
                                       scale=dict(lp.scale)) for lp in self.ind.layers],
                 {n: dict(k) for n, k in self.ind.kept.items()}, dict(self.ind.cast))
        layers = self.model.get_submodule(self.adapter.layers)
        try:
            with _saved(_touched(self.model, self.adapter, self.site)):
                for n, lp in enumerate(self.ind.layers):  # the kept shared post-norm scales
                    for name, value in lp.scale.items():
                        parameter_view(layers[n], name).detach().copy_(value)
                res = _run(self.model, grow.hooks(), ids, **cached(self.model, copy.deepcopy(self.cache)))
        except PatchConditionError:  # the patch stays as it was, exact for the tokens before
            self.ind.layers[:], kept, cast = saved
            self.ind.kept.update(kept)
            self.ind.cast.clear()
            self.ind.cast.update(cast)
            raise
        self.context_cache, self.cache = kv_cache(ctx, self.model), kv_cache(res, self.model)
        out["grown"] = res.logits[0, -1]
        self.ids = torch.cat([self.ids, ids], 1)
        self.rescaled += [(self.ids.shape[1] - 1, n) for n in grow.rescaled]
        return {k: v.double() for k, v in out.items()}


# --------------------------------------------------------------------------- token-independent, least squares


def reduced_rank(Y: torch.Tensor, X: torch.Tensor, rank: int, rcond: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""$(B, A)$, $B A$ of rank $\le$ `rank`, minimising $\lVert B A X - Y\rVert_F$ (reduced-rank regression).

    With $X = U S V^\top$ (singular values below ``rcond`` times the largest dropped: the least-squares
    solution $Y X^{+}$ is the minimum-norm one, and plain least squares where X has full row rank), the
    fitted values are $Y V V^\top$; their best rank-r approximation (Eckart-Young) is $U_r U_r^\top Y V V^\top$
    with $U_r$ the top left singular vectors of $M = Y V$, reached by $B = U_r$, $A = U_r^\top M S^{-1} U^\top$.
    (Truncating $Y X^{+}$ itself would not minimise the residual unless X were whitened.)"""
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    keep = S > rcond * S[0]
    U, S, Vh = U[:, keep], S[keep], Vh[keep]
    M = Y @ Vh.T  # (out, k)
    Um = torch.linalg.svd(M, full_matrices=False)[0][:, :rank]
    return Um, (Um.T @ M) / S @ U.T


class _Shared(_Induction):
    """Forward hooks of ONE batched pass of all queries (right-padded; ``mask`` marks their tokens): each
    map's rank-r least-squares patch over all their tokens, from the inputs the patched layers below give."""

    def __init__(self, model, adapter, site: Site, ctx: dict, mask: torch.Tensor, rank: int, rcond: float):
        super().__init__(model, adapter, site, ctx, "lora")
        self.mask, self.r, self.rcond = mask, rank, rcond

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(*self.mask.shape, t.shape[-1])[self.mask]  # (B, T, .), or OPT's (B T, .) rows

    def _fit(self, module, n: int, path: str, Y: torch.Tensor, X: torch.Tensor) -> None:
        B, A = reduced_rank(Y, X, self.r, self.rcond)
        self._write(module, B, A)
        lp = self.layers[n]
        lp.lora[path], lp.rank = (B, A), max(lp.rank, A.shape[0])
        lp.residual = max(lp.residual, float((B @ (A @ X) - Y).norm() / Y.norm().clamp_min(1e-300)))

    def _input(self, n: int, path: str):
        def hook(module, args):
            Z = self.rows(args[0]).detach().double().T  # (d, N): every query's tokens
            W = _weight(module, self.site)
            self._fit(module, n, path, W @ (self.ctx[n][("in", path)].T - Z), Z)
        return hook

    def _output(self, n: int):
        def hook(module, args):
            a = self.rows(args[0]).detach().double().T  # (m, N)
            rec = self.ctx[n]
            target = _u(rec) + rec["b"] - _u(self.now[n])  # (N, d)
            if self.site.post_norm is not None:  # the norm's own scale kept: aim at a pre-norm value
                norm = self.model.get_submodule(self.adapter.layers)[n].get_submodule(self.site.post_norm)
                gamma = _gamma(norm, self.site)
                inv = torch.where(gamma.abs() > SCALE_FLOOR * gamma.pow(2).mean().sqrt(), 1 / gamma, 0.0)
                h = target * inv
                target = h * (rec["h"].pow(2).mean(-1, keepdim=True).sqrt() / h.pow(2).mean(-1, keepdim=True).sqrt()
                              .clamp_min(1e-300))
            W = _weight(module, self.site)
            Y = W @ a + (_bias(module)[:, None] if isinstance(_bias(module), torch.Tensor) else 0.0)
            self._fit(module, n, self.site.down, target.T - Y, a)
        return hook


@torch.no_grad()
def shared_patch(model, context_ids: torch.Tensor, queries: list[torch.Tensor], layout, rank: int = 8,
                 rcond: float = 1e-6) -> SequencePatch:
    r"""ONE token-independent patch per layer (rank $\le$ `rank`), fitted by least squares over all tokens of
    many queries of one context (in the spirit of arXiv:2510.08734's context "thought" patches).

    Layer by layer as `absorb_sequence`: one contextual pass per query records the targets; one batched
    pass of all queries (right-padded) fits each map, from the inputs the fitted layers below give, by
    `reduced_rank` over the stacked inputs of every query token (the minimum-norm least-squares patch
    where the tokens are fewer than the input size, plain least squares where more, then truncated to
    rank r optimally for the residual). Not exact anywhere: it is the rank-r fit of the targets. A Gemma
    post-norm keeps its own scale; W_down aims at $t / \gamma$ rescaled to the contextual pre-norm RMS
    (exact where $\mathrm{RMS}(t/\gamma) = 1$; zero where $\gamma$ is). Applied as a LoRA adapter to any
    token sequence: ``shared_patch(...).logits(ids)``.
    """
    if not queries:
        raise SpecError("shared_patch needs at least one query")
    if not (isinstance(rank, int) and rank >= 1):
        raise SpecError(f"rank must be a positive integer, got {rank!r}")
    for q in queries:
        check_ids(context_ids, q, model)
    adapter = uniform(layout)
    site = site_for(model, adapter)
    records = []
    for q in queries:
        rec: dict = {}
        _run(model, _record(model, adapter, site, rec, context_ids.shape[1]), torch.cat([context_ids, q], 1),
             **last_logits_only(model))
        records.append(rec)
    ctx = {n: {k: torch.cat([r[n][k] for r in records], 0) for k in records[0][n]} for n in records[0]}
    width = max(q.shape[1] for q in queries)
    ids = torch.zeros(len(queries), width, dtype=queries[0].dtype)
    mask = torch.zeros(len(queries), width, dtype=torch.bool)
    for i, q in enumerate(queries):
        ids[i, :q.shape[1]], mask[i, :q.shape[1]] = q[0], True
    ind = _Shared(model, adapter, site, ctx, mask, rank, rcond)
    with _saved(_touched(model, adapter, site)):
        _run(model, ind.hooks(), ids, attention_mask=mask.long())
    return SequencePatch(model, queries[0], ind.layers, adapter, site, "lora")


# --------------------------------------------------------------------------- beyond the fitted tokens


@torch.no_grad()
def greedy(model, ids: torch.Tensor, tokens: int) -> torch.Tensor:
    """(1, tokens): greedy continuation of `ids` by the model (key/value cache, no stop token)."""
    out, new = model(ids, use_cache=True), []
    for _ in range(tokens):
        new.append(out.logits[:, -1:].argmax(-1))
        out = model(new[-1], **cached(model, kv_cache(out, model)))
    return torch.cat(new, 1)


@torch.no_grad()
def frozen_study(model, layout, context_ids: torch.Tensor, prompt_ids: torch.Tensor,
                 fit: int, ahead: int) -> dict:
    r"""How a sequence patch fitted on `fit` teacher-forced tokens does on the next `ahead` ones, frozen.

    The continuation is the model's own greedy generation WITH the context; the patch is fitted on its
    first `fit` tokens (the prompt, then generated ones), then the query-alone run with the patch
    continues along the same tokens (teacher-forced). Per position: top-1 agreement with the
    contextual run and the logit error $\max|\ell - \ell_C| / \max|\ell_C|$; the unpatched
    query-alone run is the baseline. Returns the figures as a dict (lists per position).
    """
    ids = torch.cat([prompt_ids, greedy(model, torch.cat([context_ids, prompt_ids], 1), fit + ahead)], 1)
    seq = ids[:, :fit + ahead]
    sp = absorb_sequence(model, context_ids, seq[:, :fit], layout)
    want = model(torch.cat([context_ids, seq], 1)).logits[0, context_ids.shape[1]:].double()
    runs = {"patched": sp.logits(seq)[0].double(), "unpatched": model(seq).logits[0].double()}
    scale = want.abs().amax(-1)  # (T,)
    out = {"context_len": context_ids.shape[1], "fit": fit, "ahead": ahead, "rank": sp.rank}
    for name, got in runs.items():
        err = ((got - want).abs().amax(-1) / scale).tolist()
        agree = (got.argmax(-1) == want.argmax(-1)).tolist()
        out[name] = {"error": err, "agree": agree, "fit_error": max(err[:fit]),
                     "fit_agreement": sum(agree[:fit]) / fit, "ahead_agreement": sum(agree[fit:]) / ahead,
                     "ahead_median_error": sorted(err[fit:])[ahead // 2]}
    return out


def _scores(got: torch.Tensor, want: torch.Tensor) -> dict:
    """Per position: the logit error max|l - l_C| / max|l_C| and top-1 agreement."""
    got, want = got.double(), want.double()
    return {"error": ((got - want).abs().amax(-1) / want.abs().amax(-1)).tolist(),
            "agree": (got.argmax(-1) == want.argmax(-1)).tolist()}


@torch.no_grad()
def grown_study(model, layout, context_ids: torch.Tensor, seq: torch.Tensor, fit: int, rescale: bool = True) -> dict:
    r"""(b): a `GrowingSequence` fitted on the first `fit` tokens of `seq`, then grown by one rank per token
    along the rest. Per later position k: ``before`` is the prediction of the patch grown through token
    k-1 (what it gives for token k before token k is absorbed; a frozen patch one token ahead),
    ``grown`` the logits once token k is absorbed (exact along the cached run); ``rerun``: the final
    patch run on the whole sequence at once (float32 rounding of the earlier tokens is no longer
    corrected by the layers above, unlike `absorb_sequence`'s induction). ``rescaled``: post-norm
    layers that needed a new shared scale (``rescale``), per token."""
    g = GrowingSequence(model, context_ids, seq[:, :fit], layout, rescale=rescale)
    steps = [g.step(int(seq[0, k]), before=True) for k in range(fit, seq.shape[1])]
    want = torch.stack([s["contextual"] for s in steps])
    full = model(torch.cat([context_ids, seq], 1)).logits[0, context_ids.shape[1]:]
    return {"rank": g.patch.rank, "rescaled": len(g.rescaled),
            "before": _scores(torch.stack([s["before"] for s in steps]), want),
            "grown": _scores(torch.stack([s["grown"] for s in steps]), want),
            "rerun": _scores(g.patch.logits(seq)[0], full)}


@torch.no_grad()
def shared_study(model, layout, context_ids: torch.Tensor, train: list[torch.Tensor], test: list[torch.Tensor],
                 fit: int, rank: int = 8) -> dict:
    r"""(c) against (a): a token-independent rank-`rank` patch (`shared_patch`) fitted on the `train` queries,
    on each HELD-OUT query of `test`, per position, against the contextual run; with the exact sequence
    patch fitted on that query's first `fit` tokens and frozen (`absorb_sequence`, as `frozen_study`) and
    no patch. Returns per test query {"shared", "frozen", "unpatched"} scores over all its positions."""
    sp = shared_patch(model, context_ids, train, layout, rank=rank)
    rows = []
    for seq in test:
        want = model(torch.cat([context_ids, seq], 1)).logits[0, context_ids.shape[1]:]
        frozen = absorb_sequence(model, context_ids, seq[:, :fit], layout)
        rows.append({"shared": _scores(sp.logits(seq)[0], want), "frozen": _scores(frozen.logits(seq)[0], want),
                     "unpatched": _scores(model(seq).logits[0], want)})
    return {"rank": sp.rank, "train_tokens": sum(q.shape[1] for q in train), "rows": rows,
            "train_residual": max(lp.residual for lp in sp.layers)}
