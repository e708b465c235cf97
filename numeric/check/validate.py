r"""Random-instance validation: the layer-by-layer algorithm on stacks of random blocks.

A block here is a real contextual layer: multi-head causal softmax attention (RoPE and grouped
query heads optional) with the attention-side norms the spec declares, then the MLP sub-block of
the spec. The *contextual run* feeds ``[context; query]``; the *patched run* feeds the query alone
(positions from 0) and, layer by layer, computes the patches of every query token from the actual
patched state below it (arXiv:2511.17864, Algorithm 1) with the generated torch kernel, then applies
them. The figures: the max relative error of the patched run against the contextual run at the
query positions (per token, max over layers' outputs and trials), the same for the unpatched run
(to show the patch matters), and conditioning (the smallest right factor, e.g. $\lVert z\rVert$;
the largest patch relative to its parameter; the smallest $|\gamma_i|$ of an MLP-side norm).

The contextual run uses `numeric.check.reference` (written from the architecture, not from the
derivation); only the patched run uses the generated kernel.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from numeric import kernels
from numeric.check.reference import forward, norm, random_params
from numeric.kernels import runtime
from symbolic import limits
from symbolic.errors import CtxpatchInputError, PatchConditionError, bad_value
from symbolic.limits import shown
from symbolic.spec import BlockSpec

BOUNDS = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 1e-1}
MIN_UNPATCHED = 1e-2
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Setup:
    """Sizes of one validation run (defaults: small enough for 2 CPU cores, large enough to mean something)."""

    layers: int = 4
    d: int = 16
    m: int = 24
    heads: int = 4
    kv_heads: int = 2  # grouped-query attention when < heads
    rope: bool = True
    context_len: int = 5
    query_len: int = 4
    dtype: str = "float64"
    strategy: str | None = None
    input_strategy: str | None = None
    experts: int | None = None  # a mixture of experts' expert count (None: the spec's)

    def __post_init__(self) -> None:
        """Every size within its bound (`symbolic.limits`), the dtype known, the heads dividing the width."""
        for key, bound in SIZES.items():
            bound.check(f"`{key}` (--{key.replace('_', '-')})", getattr(self, key))
        if self.experts is not None:
            limits.EXPERTS.check("`experts`", self.experts)
        if self.dtype not in DTYPES:
            raise bad_value("validate", "dtype", self.dtype, DTYPES, "(--dtype on the command line: float64 or "
                            "float32.)", kind=CtxpatchInputError)
        if not isinstance(self.rope, bool):
            raise CtxpatchInputError(f"`rope` must be true or false, got {shown(self.rope)}.")
        for key in ("strategy", "input_strategy"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise CtxpatchInputError(f"`{key}` must be a strategy name or None, got "
                                         f"{shown(getattr(self, key))}.")
        if self.heads % self.kv_heads or self.d % self.heads or (self.d // self.heads) % 2:
            raise CtxpatchInputError(f"--heads {self.heads}, --kv-heads {self.kv_heads}, --d {self.d}: the "
                                     "heads must divide d into an even head size, and the kv heads must divide the "
                                     "heads (grouped queries).")


#: The bound of each size of a `Setup`.
SIZES = {"layers": limits.LAYERS, "d": limits.WIDTH, "m": limits.MLP_WIDTH, "heads": limits.HEADS,
         "kv_heads": limits.HEADS, "context_len": limits.TOKENS, "query_len": limits.TOKENS}


def memory_needed(spec: BlockSpec, s: Setup) -> int:
    """An upper estimate of the bytes a `validate` run holds at once, every tensor counted in float64.

    The stack's parameters (all layers, plus one layer's float64 originals), the contextual run's signals
    (u, the MLP input and y of every layer and token), the attention scores of one layer (heads x T x T) and,
    for a mixture, the selected experts' matrices the reference gathers per token (T x m x d per map), and
    temporaries the size of three of a layer's m x d matrices (the conditioning figures' norms and the patched
    products: measured, a run at d = 768, m = 3072 peaks 9% above the estimate without them).
    """
    experts = 0 if spec.moe is None else (s.experts or spec.moe.experts)
    maps = 3 if (spec.moe.expert if spec.moe else spec.mlp.kind) == "gated" else 2
    tokens = s.context_len + s.query_len
    mlp = maps * s.m * s.d + 2 * s.m + 2 * s.d
    gathered = 0
    if spec.moe is not None:
        mlp = experts * (maps * s.m * s.d + 2 * s.m + 2 * s.d) + 3 * experts * s.d + 3 * s.m * s.d + s.d
        gathered = (maps + 1) * tokens * s.m * s.d
    layer = mlp + 4 * s.d * s.d + 6 * s.d
    signals = 3 * s.layers * tokens * s.d + 4 * tokens * s.m
    attention = 4 * s.heads * tokens * tokens
    temporaries = 3 * s.m * s.d
    return 8 * ((s.layers + 1) * layer + signals + attention + gathered + temporaries)


def check_memory(spec: BlockSpec, s: Setup) -> None:
    """Refuse a run whose `memory_needed` exceeds `limits.MEMORY_FRACTION` of the memory available now."""
    available = limits.available_memory()
    need = memory_needed(spec, s)
    if available is None or need <= limits.MEMORY_FRACTION * available:
        return
    gib, allowed = 2**30, limits.MEMORY_FRACTION * available
    experts = f", {s.experts or spec.moe.experts} experts" if spec.moe else ""
    raise CtxpatchInputError(
        f"--layers {s.layers}, --d {s.d}, --m {s.m}, --context-len {s.context_len}, --query-len "
        f"{s.query_len}{experts} need about {need / gib:.3g} GiB, and this machine has {available / gib:.3g} GiB "
        f"of memory available. Allowed: sizes that need at most {limits.MEMORY_FRACTION:.0%} of it "
        f"({allowed / gib:.3g} GiB): lower the widths, the layers or the tokens (or the experts).")


# --------------------------------------------------------------------------- attention


def _rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on (heads, T, hd), half-split convention (as Llama/Gemma in transformers)."""
    hd = x.shape[-1]
    inv = 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = (positions.to(torch.float64)[:, None] * inv[None, :]).to(x.dtype)  # (T, hd/2)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def attention(p: dict, h: torch.Tensor, positions: torch.Tensor, s: Setup) -> torch.Tensor:
    """Causal multi-head softmax attention of (T, d) inputs; kv heads shared by groups of query heads."""
    T, d = h.shape
    hd = d // s.heads
    q = (h @ p["Wq"].T).view(T, s.heads, hd).transpose(0, 1)  # (H, T, hd)
    k = (h @ p["Wk"].T).view(T, s.kv_heads, hd).transpose(0, 1)  # (KV, T, hd)
    v = (h @ p["Wv"].T).view(T, s.kv_heads, hd).transpose(0, 1)
    if s.rope:
        q, k = _rope(q, positions), _rope(k, positions)
    group = s.heads // s.kv_heads
    k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    w = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)
    return (w @ v).transpose(0, 1).reshape(T, d) @ p["Wo"].T


def attention_sublayer(spec: BlockSpec, p: dict, x: torch.Tensor, positions: torch.Tensor,
                       s: Setup) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, mlp_in): the residual base the MLP branch is added to, and the MLP's input."""
    att = spec.attention
    h = norm(att.pre_norm, p.get("att_pre.scale"), p.get("att_pre.bias"), x)
    a = norm(att.post_norm, p.get("att_post.scale"), p.get("att_post.bias"), attention(p, h, positions, s))
    u = norm(att.post_ln, p.get("att_ln.scale"), p.get("att_ln.bias"), x + a)
    return u, (x if spec.residual == "parallel" else u)


def random_layer(spec: BlockSpec, s: Setup, gen: torch.Generator) -> dict:
    """Random parameters of one layer: the MLP sub-block's (canonical names) and attention's."""
    dtype = DTYPES[s.dtype]
    n_exp = None if spec.moe is None else (s.experts or spec.moe.experts)
    mlp = {k: v.to(dtype) for k, v in random_params(spec, s.d, s.m, gen, n_experts=n_exp).items()}
    hd = s.d // s.heads

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * shape[-1] ** -0.5

    p = dict(Wq=rnd(s.heads * hd, s.d), Wk=rnd(s.kv_heads * hd, s.d), Wv=rnd(s.kv_heads * hd, s.d),
             Wo=rnd(s.d, s.heads * hd))
    for name, n in (("att_pre", spec.attention.pre_norm), ("att_post", spec.attention.post_norm),
                    ("att_ln", spec.attention.post_ln)):
        if n is not None:
            offset = 0.0 if n.scale == "one_plus" else 1.0
            p[f"{name}.scale"] = offset + 0.3 * torch.randn(s.d, generator=gen, dtype=torch.float64)
            p[f"{name}.bias"] = 0.3 * torch.randn(s.d, generator=gen, dtype=torch.float64) if n.bias else None
    att = {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in p.items()}
    if spec.shared_pre_norm:  # one norm read by attention and MLP
        att["att_pre.scale"], att["att_pre.bias"] = mlp.get("mlp_pre_norm.scale"), mlp.get("mlp_pre_norm.bias")
    return {"att": att, "mlp": mlp}


# --------------------------------------------------------------------------- the runs


def contextual_run(spec: BlockSpec, layers: list[dict], x: torch.Tensor, s: Setup) -> list[dict]:
    """Per layer: the residual base u and MLP input of every position, and the layer output."""
    positions = torch.arange(x.shape[0])
    out = []
    for p in layers:
        u, mlp_in = attention_sublayer(spec, p["att"], x, positions, s)
        x = forward(spec, p["mlp"], mlp_in, u).y
        out.append({"u": u, "mlp_in": mlp_in, "y": x})
    return out


@dataclass
class Figures:
    per_layer_error: list[float] = field(default_factory=list)  # max over tokens and trials, per layer
    patch_norms: list[list[float]] = field(default_factory=list)  # first trial: [layer][token], largest
    max_rel_error: float = 0.0
    unpatched_rel_error: float = math.inf
    min_right_norm: float = math.inf
    max_relative_patch_norm: float = 0.0
    min_abs_gamma: float = math.inf


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max over tokens of |a - b| / |b| (computed in float64)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    return float((torch.linalg.vector_norm(a - b, dim=-1) / torch.linalg.vector_norm(b, dim=-1)).max())


def patched_run(spec: BlockSpec, layers: list[dict], x: torch.Tensor, ctx: list[dict], c: int, s: Setup,
                fig: Figures, kernel=None) -> torch.Tensor:
    """Algorithm 1: the query alone, each layer patched from the actual patched state below."""
    kernel = kernel or kernels.load(spec, "torch", s.strategy, s.input_strategy)
    positions = torch.arange(x.shape[0])
    for n, p in enumerate(layers):
        u, mlp_in = attention_sublayer(spec, p["att"], x, positions, s)
        extra = {"x": mlp_in} if spec.residual == "parallel" else {}
        params = p["mlp"]
        patches = kernel.block_patches(params, u, ctx[n]["u"][c:], layer=str(n), **extra)
        norms = _conditioning(spec, kernel, params, patches, fig)
        if len(fig.patch_norms) < len(layers):
            fig.patch_norms.append(norms)
        x = kernel.apply(params, patches, u, **extra)
        err = rel_error(x, ctx[n]["y"][c:])
        fig.max_rel_error = max(fig.max_rel_error, err)
        if len(fig.per_layer_error) <= n:
            fig.per_layer_error.append(err)
        fig.per_layer_error[n] = max(fig.per_layer_error[n], err)
    return x


def unpatched_run(spec: BlockSpec, layers: list[dict], x: torch.Tensor, s: Setup) -> torch.Tensor:
    positions = torch.arange(x.shape[0])
    for p in layers:
        u, mlp_in = attention_sublayer(spec, p["att"], x, positions, s)
        x = forward(spec, p["mlp"], mlp_in, u).y
    return x


def _conditioning(spec: BlockSpec, kernel, params: dict, patches: dict, fig: Figures) -> list[float]:
    """Update the conditioning figures; return each token's largest patch / parameter norm."""
    for patch in patches.values():
        if "left" in patch:
            left, right = patch["left"].to(torch.float64), patch["right"].to(torch.float64)
            active = torch.linalg.vector_norm(left, dim=-1) > 0  # MoE: only the selected experts
            if bool(active.any()):
                rn = torch.linalg.vector_norm(right, dim=-1)
                fig.min_right_norm = min(fig.min_right_norm, float(rn[active].min()))
    sizes = list(runtime.relative_sizes(patches, kernel.references(params)).values())
    per_token = torch.stack(sizes).to(torch.float64).amax(0) if sizes else None
    if per_token is not None:
        fig.max_relative_patch_norm = max(fig.max_relative_patch_norm, float(per_token.max()))
    for norm_name, n in spec.norms.items():
        if n.scale != "none":
            w = params[f"{norm_name}.scale"].to(torch.float64)
            gamma = 1 + w if n.scale == "one_plus" else w
            fig.min_abs_gamma = min(fig.min_abs_gamma, float(gamma.abs().min()))
    return [] if per_token is None else [float(v) for v in per_token]


def validate(spec: BlockSpec, setup: Setup = Setup(), trials: int = 3, seed: int = 0, kernel=None) -> dict:
    """Run `trials` random stacks; return the figures as a JSON-ready dict (see the module docstring).

    `kernel` replaces the generated torch kernel (mutation testing feeds wrong ones here).
    """
    limits.TRIALS.check("`trials` (--trials)", trials)
    limits.SEED.check("`seed` (--seed)", seed)
    check_memory(spec, setup)
    t0 = time.perf_counter()
    fig = Figures()
    gen = torch.Generator().manual_seed(seed)
    dtype = DTYPES[setup.dtype]
    refused = []
    for trial in range(trials):
        layers = [random_layer(spec, setup, gen) for _ in range(setup.layers)]
        c, q = setup.context_len, setup.query_len
        x = torch.randn(c + q, setup.d, generator=gen, dtype=torch.float64).to(dtype)
        ctx = contextual_run(spec, layers, x, setup)
        try:
            patched_run(spec, layers, x[c:], ctx, c, setup, fig, kernel)
        except PatchConditionError as exc:  # e.g. a router near-tie in float32: the draw is refused, and shown
            refused.append({"trial": trial, "reason": str(exc)})
            continue
        plain = unpatched_run(spec, layers, x[c:], setup)
        fig.unpatched_rel_error = min(fig.unpatched_rel_error, rel_error(plain, ctx[-1]["y"][c:]))
    # inf: nothing to measure (no rank-1 patch, no norm scale)
    figures = {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(fig).items()}
    out = {"arch": spec.name, "dtype": setup.dtype, "trials": trials, "layers": setup.layers, **figures}
    out["bound"] = BOUNDS[setup.dtype]
    out["refused"] = refused
    out["ok"] = (len(refused) < trials and out["max_rel_error"] <= out["bound"]
                 and out["unpatched_rel_error"] >= MIN_UNPATCHED)
    out["setup"] = asdict(setup)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


@torch.no_grad()
def dynamics(spec: BlockSpec, max_context: int = 24, setup: Setup = Setup(layers=1), seed: int = 0) -> dict:
    r"""The implicit dynamics of Dherin et al.: the patch of one query token as the context grows.

    One random layer; for context lengths k = 1..max_context, the patch of the last query token
    (each patched parameter): its norm, and its cosine with the patch of the longest context
    (Frobenius inner product; for rank-1 patches $\langle u v^\top, u' v'^\top\rangle = (u^\top u')(v^\top v')$).
    """
    gen = torch.Generator().manual_seed(seed)
    layer = random_layer(spec, setup, gen)
    kernel = kernels.load(spec, "torch", setup.strategy, setup.input_strategy)
    dtype = DTYPES[setup.dtype]
    ctx = torch.randn(max_context, setup.d, generator=gen, dtype=torch.float64).to(dtype)
    q = torch.randn(1, setup.d, generator=gen, dtype=torch.float64).to(dtype)
    u, mlp_in = attention_sublayer(spec, layer["att"], q, torch.arange(1), setup)
    extra = {"x": mlp_in} if spec.residual == "parallel" else {}
    steps = []
    for k in range(1, max_context + 1):
        run = contextual_run(spec, [layer], torch.cat([ctx[:k], q]), setup)
        steps.append(kernel.block_patches(layer["mlp"], u, run[0]["u"][k:], **extra))
    out = {"context_len": list(range(1, max_context + 1)), "params": {}}
    final = steps[-1]
    for name in final:
        norms, cosines = [], []
        for p in steps:
            norms.append(_frob(p[name], p[name]) ** 0.5)
            cosines.append(_frob(p[name], final[name]) / max(norms[-1] * _frob(final[name], final[name]) ** 0.5,
                                                              1e-300))
        out["params"][name] = {"norm": norms, "cosine_to_final": cosines}
    return out


def _frob(a: dict, b: dict) -> float:
    """Frobenius inner product of two patches of one parameter (last token; all experts)."""
    if "left" in a:
        return float(((a["left"][-1] * b["left"][-1]).sum(-1) * (a["right"][-1] * b["right"][-1]).sum(-1)).sum())
    key = next(iter(a))
    return float((a[key][-1] * b[key][-1]).sum())


def precision(spec: BlockSpec, trials: int = 8, setup: Setup = Setup(layers=2), seed: int = 0,
              strategy: str | None = None) -> dict:
    r"""Error of the patched run against dtype and conditioning, trial by trial.

    For float64, float32 and bfloat16, `trials` random 2-layer stacks each; every row holds the
    error, the conditioning $\kappa$ = largest patch / parameter norm, and the ratio
    error / ($\kappa\,\epsilon_{\mathrm{dtype}}$), which stays O(1) when the loss of precision is
    the patch's conditioning and not a bug.
    """
    import warnings

    from numeric.kernels.runtime import IllConditionedPatchWarning

    rows = []
    for dtype in ("float64", "float32", "bfloat16"):
        eps = torch.finfo(DTYPES[dtype]).eps
        for t in range(trials):
            s = dataclasses.replace(setup, dtype=dtype, strategy=strategy)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", IllConditionedPatchWarning)  # measured here, not warned
                    r = validate(spec, s, trials=1, seed=seed + t)
            except PatchConditionError as exc:  # e.g. a coordinate rounded to 0 in bfloat16: reported, not hidden
                rows.append({"dtype": dtype, "seed": seed + t, "error": None, "failed": str(exc)})
                continue
            kappa = r["max_relative_patch_norm"] or 0.0
            rows.append({"dtype": dtype, "seed": seed + t, "error": r["max_rel_error"], "conditioning": kappa,
                         "error_over_kappa_eps": r["max_rel_error"] / max(kappa * eps, eps)})
    summary = {}
    for dtype in ("float64", "float32", "bfloat16"):
        ok = [r for r in rows if r["dtype"] == dtype and r["error"] is not None]
        errs = sorted(r["error"] for r in ok)
        summary[dtype] = {"max_rel_error": errs[-1] if errs else None,
                          "median_rel_error": errs[len(errs) // 2] if errs else None,
                          "max_error_over_kappa_eps": max((r["error_over_kappa_eps"] for r in ok), default=None),
                          "failed_trials": sum(r["error"] is None for r in rows if r["dtype"] == dtype)}
    return {"arch": spec.name, "strategy": strategy, "trials": trials, "rows": rows, "summary": summary}
