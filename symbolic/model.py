r"""The symbolic block: a spec turned into SymPy expressions, stage by stage.

The MLP sub-block of one token is split into the theory's stages (arXiv:2511.17864: the inner function up to
the hidden activations, the outer function after them; docs/theory.md, "Theory"):

    z = pre(u)                 pre-norm (or identity)
    q = inner(z)               pre-activations: the input maps W_gate, W_up, router, ...
    a = sigma(q)               hidden activations (the MLP's "inner function" ends here)
    h = outer(a)               W_down mid(a) + b_down (mid: the mid-norm or identity; for MoE: the gated
                               sum over selected experts)
    o = c post(phi(h))         output activation, the post-norm inside the branch, the branch scale c
    r = base + o               the residual add (base = u; 0 without skip)
    y = post_ln(r)             the LayerNorm after the add (BERT), or identity

Every stage takes a parameter environment (`Params`), so the same code builds the contextual
run (unpatched parameters) and the patched no-context run (parameters replaced by
``W + outer(x, z)``, ``b + x``, ``s * gamma`` ...). A parallel block feeds the MLP the token's
own input in both runs, so its pre-activations never see the context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import sympy as sp

from symbolic.activations import activation
from symbolic.activations import x as act_var
from symbolic.spec import BlockSpec, NormSpec, patchable_parameters
from symbolic.terms import EXPERT, Dot, EMat, EVec, ExpertGate, Gate, Mat, MatVec, Mean, Sel, Vec

D, M, NE, MS = "d", "m", "n_E", "m_s"  # model width, MLP width, number of experts, shared width

#: The generic expert index in per-expert patch formulas and the rank in the top-k sum.
expert = EXPERT
rank = sp.Symbol("j", integer=True, positive=True)
top_k = sp.Symbol("k", integer=True, positive=True)
#: The routed experts' scale (DeepSeek-V3's routed_scaling_factor): multiplies the routed sum, not the shared expert.
ROUTED_SCALE = sp.Symbol("rho", real=True, nonzero=True)
#: The epsilon of the top-k renormalisation s_j / (sum_k s_k + eps) (LFM2-MoE's 1e-6).
RENORM_EPS = sp.Symbol("epsilon_route", positive=True)
#: The MLP branch's output multiplier (Granite's residual_multiplier): r = u + c_branch o.
BRANCH_SCALE = sp.Symbol("c_branch", real=True, nonzero=True)


@dataclass(frozen=True)
class Param:
    """One patchable parameter: its canonical name, symbol and role in the block."""

    name: str
    symbol: sp.Symbol
    role: str  # input | output | bias_in | bias_out | norm_scale | norm_bias | constant (read, never patched)
    stage: str  # pre | inner | outer | post | post_ln
    per_expert: bool = False


@dataclass
class Params:
    """Values of the parameters in one run: the symbols, or patched expressions of them."""

    values: dict[str, sp.Expr] = field(default_factory=dict)

    def __getitem__(self, name: str) -> sp.Expr:
        return self.values[name]

    def patched(self, **changes: sp.Expr) -> Params:
        return Params({**self.values, **changes})

    def replace(self, changes: dict[str, sp.Expr]) -> Params:
        return Params({**self.values, **changes})


NORM_SYMBOLS = {"mlp_pre_norm": "pre", "mlp_mid_norm": "mid", "mlp_post_norm": "post", "post_ln": "ln"}
NORM_WIDTHS = {"mlp_mid_norm": M}  # the others act on the model width


class Block:
    """A `BlockSpec` in the vector algebra. See the module docstring for the stages."""

    def __init__(self, spec: BlockSpec):
        self.spec = spec
        self.sigma = activation(spec.mlp.activation)
        self.psi = activation(spec.mlp.up_activation)
        self.phi = activation(spec.mlp.out_activation)
        self.eps = {name: self._eps(name, n) for name, n in spec.norms.items()}
        moe = spec.moe
        self.routed_scale = sp.S.One if moe is None or moe.routed_scale == 1 else ROUTED_SCALE
        self.renorm_eps = sp.S.Zero if moe is None or not moe.renormalize_eps else RENORM_EPS
        self.branch_scale = sp.S.One if spec.mlp.branch_scale == 1 else BRANCH_SCALE

    @property
    def constants(self) -> list[tuple[sp.Symbol, float]]:
        """The block's named constants and their values: the norms' eps, the routed experts' scale, the branch
        scale, the top-k count where formulas use it."""
        out = [(eps, float(self.spec.norms[n].eps)) for n, eps in self.eps.items() if eps != 0]
        if self.routed_scale != 1:
            out.append((self.routed_scale, float(self.spec.moe.routed_scale)))
        if self.renorm_eps != 0:
            out.append((self.renorm_eps, float(self.spec.moe.renormalize_eps)))
        if self.branch_scale != 1:
            out.append((self.branch_scale, float(self.spec.mlp.branch_scale)))
        if self.input_weighted():  # the top-k sum has no weights to sum: its formulas count the experts, k
            out.append((top_k, float(self.spec.moe.top_k)))
        return out

    # ----------------------------------------------------------------- parameters

    @cached_property
    def params(self) -> dict[str, Param]:
        out: dict[str, Param] = {}
        for name in patchable_parameters(self.spec):
            out[name] = self._param(name)
        return out

    def _param(self, name: str) -> Param:
        if "." in name and name.split(".")[0] in NORM_SYMBOLS:
            norm_name, what = name.split(".")
            tag = NORM_SYMBOLS[norm_name]
            norm, width = self.spec.norms[norm_name], NORM_WIDTHS.get(norm_name, D)
            if what == "scale":
                sym = Vec(("w_" if norm.scale == "one_plus" else "gamma_") + tag, width)
                return Param(name, sym, "norm_scale", _norm_stage(norm_name))
            return Param(name, Vec("beta_" + tag, width), "norm_bias", _norm_stage(norm_name))
        group, _, base = name.rpartition(".")
        mlp_width = MS if group == "shared" else M
        suffix = "_s" if group == "shared" else ""
        if base == "W_router":
            return Param(name, Mat("W_router", NE, D), "input", "inner")
        if base == "b_select":  # only the router's choice reads it (lowered into the routing; see outer)
            return Param(name, Vec("b_select", NE), "constant", "inner")
        if group == "experts" and base.startswith("b_"):  # expert biases: read, never patched
            width = D if base == "b_down" else M
            return Param(name, Vec(base, width), "constant", "outer" if base == "b_down" else "inner", True)
        if base == "w_gate":
            return Param(name, Vec("w_sg", D), "input", "inner")
        if base in ("W_gate", "W_up"):
            return Param(name, Mat(base + suffix, mlp_width, D), "input", "inner", group == "experts")
        if base == "W_down":
            return Param(name, Mat(base + suffix, D, mlp_width), "output", "outer", group == "experts")
        width = {"b_down": D, "b_router": NE}.get(base, M)
        role = "bias_out" if base == "b_down" else "bias_in"
        return Param(name, Vec(base, width), role, "outer" if base == "b_down" else "inner")

    def unpatched(self) -> Params:
        return Params({n: p.symbol for n, p in self.params.items()})

    def value(self, P: Params, name: str, fallback: sp.Expr = sp.S.Zero) -> sp.Expr:
        """A parameter's value in `P`, or `fallback` if the block has no such parameter."""
        return P.values.get(name, fallback)

    def expert_bias(self, P: Params, name: str, e: sp.Expr) -> sp.Expr:
        """Row e of the stacked expert bias `experts.<name>` (0 if the experts have no biases)."""
        key = f"experts.{name}"
        return EVec(P[key], e) if key in P.values else sp.S.Zero

    def expert_matrix(self, P: Params, name: str, e: sp.Expr) -> sp.Expr:
        """The (possibly patched) matrix `experts.<name>` of expert `e`."""
        value = P[f"experts.{name}"]
        if value == self.params[f"experts.{name}"].symbol:
            return EMat(value, e)
        return value.subs(expert, e)

    # ----------------------------------------------------------------- norms

    def _eps(self, name: str, norm: NormSpec) -> sp.Expr:
        if norm.eps == 0:
            return sp.S.Zero
        return sp.Symbol(f"epsilon_{NORM_SYMBOLS[name]}", positive=True)

    def scaled_norm_weight(self, P: Params, s: sp.Expr) -> sp.Expr:
        r"""The stored post-norm weight after $\gamma \to s\,\gamma$ (Gemma stores w with $\gamma = 1 + w$)."""
        w = P["mlp_post_norm.scale"]
        return s * (1 + w) - 1 if self.spec.mlp.post_norm.scale == "one_plus" else s * w

    def gamma(self, P: Params, norm_name: str) -> sp.Expr:
        norm = self.spec.norms[norm_name]
        if norm.scale == "none":
            return sp.S.One
        w = P[f"{norm_name}.scale"]
        return 1 + w if norm.scale == "one_plus" else w

    def normalized(self, norm_name: str, v: sp.Expr) -> sp.Expr:
        r"""$f(v) = c / \sqrt{\mathrm{mean}(c^2) + \epsilon}$ with $c = v$ (RMS) or $v - \mathrm{mean}(v)$."""
        norm = self.spec.norms[norm_name]
        c = v - Mean(v) if norm.kind == "layer" else v
        return c / sp.sqrt(Mean(c**2) + self.eps[norm_name])

    def norm(self, P: Params, norm_name: str, v: sp.Expr) -> sp.Expr:
        if norm_name not in self.spec.norms:
            return v
        beta = self.value(P, f"{norm_name}.bias")
        return self.gamma(P, norm_name) * self.normalized(norm_name, v) + beta

    # ----------------------------------------------------------------- stages

    def pre(self, P: Params, u: sp.Expr) -> sp.Expr:
        return self.norm(P, "mlp_pre_norm", u)

    def input_maps(self) -> list[str]:
        """Parameters that act on z (the inner function's input maps), in order."""
        return [n for n, p in self.params.items() if p.role == "input"]

    def preact(self, P: Params, name: str, z: sp.Expr, e: sp.Expr = expert) -> sp.Expr:
        """Pre-activation of input map `name` at input z (for expert maps, of expert e)."""
        if name == "shared.w_gate":
            return Dot(P[name], z)
        if name.startswith("experts."):
            base = name.split(".")[1]
            return MatVec(self.expert_matrix(P, base, e), z) + self.expert_bias(P, "b_" + base.split("_")[1], e)
        bias = self.value(P, input_bias(name)) if input_bias(name) else 0
        return MatVec(P[name], z) + bias

    def act(self, v: sp.Expr) -> sp.Expr:
        return self.sigma.subs(act_var, v)

    def up_act(self, v: sp.Expr) -> sp.Expr:
        """psi(v): the up map's activation of a gated map (identity unless the spec names one)."""
        return self.psi.subs(act_var, v)

    def input_weighted(self) -> bool:
        """Whether the routing weight scales each expert's input (Llama 4) instead of its output."""
        return self.spec.moe is not None and self.spec.moe.weighting == "input"

    def hidden(self, P: Params, z: sp.Expr, group: str = "", e: sp.Expr = expert,
               ell: sp.Expr | None = None) -> sp.Expr:
        """Hidden activations a = sigma(W_gate z) * psi(W_up z) (gated) or sigma(W_up z) (dense).

        With input weighting an expert reads s_e z, s_e = weight(ell, e) by the logits `ell` (default: the
        router's logits at z with parameters P)."""
        prefix = f"{group}." if group else ""
        if group == "experts" and self.input_weighted():
            z = ExpertGate(self.logits(P, z) if ell is None else ell, e) * z
        kind = self._kind(group)
        up = self.preact(P, prefix + "W_up", z, e)
        if kind == "gated":
            return self.act(self.preact(P, prefix + "W_gate", z, e)) * self.up_act(up)
        return self.act(up)

    def _kind(self, group: str) -> str:
        if group == "experts":
            return self.spec.moe.expert
        if group == "shared":
            return self.spec.moe.shared_kind
        return self.spec.mlp.kind

    def hidden_groups(self) -> list[str]:
        """'' for a plain MLP; 'experts' (and 'shared') for a mixture of experts."""
        if self.spec.moe is None:
            return [""]
        return ["experts"] + (["shared"] if self.spec.moe.shared_expert != "none" else [])

    def logits(self, P: Params, z: sp.Expr) -> sp.Expr:
        return self.preact(P, "W_router", z)

    def gate(self, ell: sp.Expr, j: sp.Expr) -> sp.Expr:
        r"""Routing weight of the j-th selected expert; renormalized over the top-k if the spec says so,
        $s_j / (\sum_i s_i + \epsilon)$ with the spec's `renormalize_eps` $\epsilon$ (0 unless given)."""
        if self.spec.moe.gates_sum_to_one:
            i = sp.Symbol("i", integer=True, positive=True)
            return Gate(ell, j) / (sp.Sum(Gate(ell, i), (i, 1, top_k)) + self.renorm_eps)
        return Gate(ell, j)

    def shared_gate(self, P: Params, z: sp.Expr) -> sp.Expr:
        if self.spec.moe.shared_expert != "gated":
            return sp.S.One
        return 1 / (1 + sp.exp(-self.preact(P, "shared.w_gate", z)))

    def down_input(self, P: Params, a: sp.Expr) -> sp.Expr:
        r"""What W_down acts on: $N_\mathrm{mid}(a)$ with a mid-norm (BitNet's ``ffn_sub_norm``), else $a$."""
        return self.norm(P, "mlp_mid_norm", a)

    def outer(self, P: Params, hidden: dict[str, sp.Expr], ell: sp.Expr | None = None,
              shared_gate: sp.Expr = sp.S.One, normed: bool = False) -> sp.Expr:
        r"""h = W_down mid(a) + b_down; for MoE $\rho \sum_j s_j W_\mathrm{down}^{(e_j)} a^{(e_j)}$ (+ gated shared
        expert, + the mixture's own output bias $b_\mathrm{down}$ where the spec declares one). `normed`: `hidden`
        already holds mid(a) (the output side's atom $\hat a_C$).

        `Sel` and `Gate` are the spec's router as functions of the logits alone (scores, the constant
        selection bias, groups): equal logits give equal choices and weights, whatever the router.
        """
        if self.spec.moe is None:
            a = hidden[""] if normed else self.down_input(P, hidden[""])
            return MatVec(P["W_down"], a) + self.value(P, "b_down")
        e_j = Sel(ell, rank)
        weight = sp.S.One if self.input_weighted() else self.gate(ell, rank)  # input weighting: inside a
        routed = weight * (MatVec(self.expert_matrix(P, "W_down", e_j), hidden["experts"].subs(
            expert, e_j)) + self.expert_bias(P, "b_down", e_j))
        h = self.routed_scale * sp.Sum(routed, (rank, 1, top_k)) + self.value(P, "b_down")  # b_down: JetMoE's
        if "shared" in hidden:
            h += shared_gate * MatVec(P["shared.W_down"], hidden["shared"])
        return h

    def branch_out(self, P: Params, h: sp.Expr) -> sp.Expr:
        """o = c_branch post(phi(h)) (c_branch = 1 unless the spec scales the branch)."""
        return self.branch_scale * self.norm(P, "mlp_post_norm", self.phi.subs(act_var, h))

    def residual(self, base: sp.Expr, o: sp.Expr) -> sp.Expr:
        return base + o if self.spec.skip else o

    def final(self, P: Params, r: sp.Expr) -> sp.Expr:
        return self.norm(P, "post_ln", r)

    # ----------------------------------------------------------------- whole runs

    def forward(self, P: Params, u: sp.Expr, base: sp.Expr) -> dict[str, sp.Expr]:
        """All signals of one run from the MLP input `u` and the residual base, fully expanded."""
        z = self.pre(P, u)
        sig: dict[str, sp.Expr] = {"z": z}
        hidden = {g: self.hidden(P, z, g) for g in self.hidden_groups()}
        sig.update({f"a{'.' + g if g else ''}": a for g, a in hidden.items()})
        ell = None
        if self.spec.moe is not None:
            ell = sig["logits"] = self.logits(P, z)
        h = self.outer(P, hidden, ell, self.shared_gate(P, z) if self.spec.moe else sp.S.One)
        o = self.branch_out(P, h)
        r = self.residual(base, o)
        sig.update(h=h, o=o, r=r, y=self.final(P, r))
        return sig

    @cached_property
    def signals(self) -> dict[str, Vec]:
        """Atomic symbols for the signals of both runs (suffix _C: with context)."""
        names = {"u": D, "x": D, "delta": D, "z": D, "a": M, "h": D, "o": D, "r": D, "y": D}
        out = {n: Vec(n, dim) for n, dim in names.items()}
        out.update({n + "_C": Vec(n + "_C", dim) for n, dim in names.items() if n not in ("x", "delta")})
        out["a_s"], out["a_s_C"] = Vec("a_s", MS), Vec("a_s_C", MS)
        out["ahat"], out["ahat_C"] = Vec("ahat", M), Vec("ahat_C", M)  # mid(a): what W_down acts on
        out["ell"], out["ell_C"] = Vec("ell", NE), Vec("ell_C", NE)
        return out

    def hidden_atom(self, group: str, ctx: bool = True) -> sp.Expr:
        """The atomic hidden activation of a group in the contextual run (for output-side solves)."""
        s = self.signals
        if group == "experts":
            return EVec(s["a_C" if ctx else "a"], expert)
        if group == "shared":
            return s["a_s_C" if ctx else "a_s"]
        return s["a_C" if ctx else "a"]


def input_bias(name: str) -> str | None:
    """The bias of input map `name` (`W_gate` -> `b_gate`, `W_router` -> `b_router`), if it can have one."""
    return "b_" + name.split("_")[1] if name in ("W_gate", "W_up", "W_router") else None


def _norm_stage(norm_name: str) -> str:
    return {"mlp_pre_norm": "pre", "mlp_mid_norm": "outer", "mlp_post_norm": "post", "post_ln": "post_ln"}[norm_name]
