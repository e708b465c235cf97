r"""Patch formulas, solved by SymPy from an ansatz: the one source of truth for every formula.

A *strategy* names which parameters absorb the context and with which ansatz: the input side
makes the inner function see $z_C$ while it is fed $z$; the output side adds $\delta = u_C - u$ on
top of the contextual branch output. Every strategy is declared once, in `STRATEGIES` at the end
of this module (a `symbolic.strategies.Registry`), in preference order, each with its one-line
formula and its source; `ctxpatch check ARCH` lists them with their status for a block.

Each strategy writes the matching equation of one stage (the stages after it are then fed
their contextual inputs), and `sympy.solve` finds the unknown. A strategy whose solution
would restrict the target itself (a scalar unknown with a coordinate-dependent solution, a
target outside the range of a bounded stage, no patchable parameter at all) raises
`Restriction`: the block is then not controllable that way, and `symbolic.controllability`
turns the restriction into a counterexample.

Output-side preference: bias patches first, because they need no side condition at all; then the
elementwise post-norm scale, the paper's Theorem 1 (W_down untouched, d numbers per token); then
rank-1 on W_down; the combined strategies only on request.
"""

from __future__ import annotations

import sympy as sp

from symbolic.activations import x as _ACT_X
from symbolic.algebra import (
    Condition,
    Dot,
    Mean,
    Outer,
    RmsInverse,
    Vec,
    is_zero,
    normalize,
    side_conditions,
)
from symbolic.derivation import (
    Derivation,
    PatchFormula,
    Restriction,
    Step,
    Unavailable,
    solve_for,
)
from symbolic.derive_input import InputSide
from symbolic.model import Block, Params, expert
from symbolic.printing import pstr
from symbolic.ranges import elementwise_range, real_inverse
from symbolic.spec import BlockSpec, allowed_kinds
from symbolic.strategies import Registry, Strategy


class Deriver(InputSide):
    """Derives the patches of one block for one (input, output) strategy pair."""

    def __init__(self, spec: BlockSpec):
        self.spec, self.block = spec, Block(spec)
        self.P = self.block.unpatched()
        s = self.block.signals
        self.z, self.z_C, self.u, self.delta = s["z"], s["z_C"], s["u"], s["delta"]
        self.h_C = s["h_C"]
        self.defs: dict[Vec, sp.Expr] = {}  # intermediates of the output side, in order (see define)

    def ok(self, name: str, kind: str | None = None) -> bool:
        """Whether `name` exists and may be patched (with a patch of `kind`, when given)."""
        if name not in self.block.params:
            return False
        kinds = allowed_kinds(self.spec, name)
        return bool(kinds) if kind is None else kind in kinds

    # ----------------------------------------------------------------- input side

    def input_side(self, strategy: str, steps: list[Step]) -> tuple[list[PatchFormula], Params]:
        ansatz = STRATEGIES.get("input", strategy).ansatz
        if self.spec.residual == "parallel":
            if strategy != "none":
                raise Unavailable("a parallel block's MLP input does not see the context")
            return [], self.P
        return ansatz(self, steps)

    # ----------------------------------------------------------------- output side
    #
    # The output side works with atoms: the contextual MLP output h_C, its normalized form f_C
    # (when there is a post-norm), the target t of the branch output, and the intermediates of
    # the combined strategies. `self.defs` records each atom's definition, in order, so that
    # formulas read like the paper's and verification can expand them back.

    def define(self, name: str, expr: sp.Expr, dim: str = "d") -> Vec:
        atom = Vec(name, dim)
        self.defs[atom] = expr
        return atom

    def expand_defs(self, expr: sp.Expr, keep: tuple[sp.Symbol, ...] = ()) -> sp.Expr:
        for atom, definition in reversed(list(self.defs.items())):
            if atom not in keep:
                expr = expr.subs(atom, definition)
        return expr

    def _h_def(self) -> sp.Expr:
        b, s = self.block, self.block.signals
        ell = s["ell_C"] if self.spec.moe else None
        return b.outer(self.P, self.down_atoms(), ell, self._shared_gate_atom(), normed=True)

    def down_atoms(self) -> dict[str, sp.Expr]:
        r"""What the output maps act on in the contextual run, per group: $a_C$, or $\hat a_C = N_\mathrm{mid}(a_C)$
        with a mid-norm (defined by `start_output`; W_down's rank-1 patch is built on it)."""
        b = self.block
        out = {g: b.hidden_atom(g) for g in b.hidden_groups()}
        if "mlp_mid_norm" in self.spec.norms:
            out[""] = b.signals["ahat_C"]
        return out

    def _shared_gate_atom(self) -> sp.Expr:
        moe = self.spec.moe
        return sp.Symbol("sigma_sg_C", positive=True) if moe and moe.shared_expert == "gated" else sp.S.One

    def start_output(self, steps: list[Step], strategy: str) -> None:
        r"""Atoms for the contextual MLP output (and its normalized form) and the branch target.

        `self.o_C` is the contextual branch output $c\,\mathrm{post}(\phi(h_C))$; `self.t` the target of
        $\mathrm{post}(\phi(h))$, the stage every output strategy patches: with a branch scale $c \ne 1$ it
        is solved from $c\,t = o_C + \delta$.
        """
        b = self.block
        self.defs = {}
        if "mlp_mid_norm" in self.spec.norms:
            self.define("ahat_C", b.down_input(self.P, b.hidden_atom("")), "m")
        self.define("h_C", self._h_def())
        phi_h = b.phi.subs(_act_x(), self.h_C)
        if self.spec.mlp.post_norm is not None:
            self.f_C = self.define("f_C", b.normalized("mlp_post_norm", phi_h))
            o_C = self._norm_out(self.P, "mlp_post_norm", self.f_C)
        else:
            o_C = phi_h
        self.o_C = b.branch_scale * o_C
        target = self.o_C + self.delta if self.spec.skip else self.o_C
        self.t = target
        if b.branch_scale != 1:
            t_ = Vec("t_", "d")
            self.t = solve_for("branch scale: c_branch t = the branch target", b.branch_scale * t_, target, t_,
                               steps, "output", "branch_scale", strategy)

    def t_atom(self) -> Vec:
        """The branch target as an atom t (used by the combined strategies)."""
        return self.define("t", self.t)

    def _norm_out(self, P: Params, norm_name: str, f: sp.Expr) -> sp.Expr:
        """gamma * f + beta: a norm's output from its normalized input f."""
        b = self.block
        return b.gamma(P, norm_name) * f + b.value(P, f"{norm_name}.bias")

    def contextual_output(self) -> sp.Expr:
        """y_C from the atoms: the final norm of u + delta + o_C (or o_C alone without skip)."""
        b = self.block
        return b.final(self.P, b.residual(self.u + self.delta, self.o_C))

    def target_h(self, strategy: str) -> sp.Expr:
        """Pass the branch target back through the post-norm and the output activation."""
        if self.spec.mlp.post_norm is not None:
            norm = self.spec.mlp.post_norm
            raise Restriction(
                "output", "range", "mlp_post_norm",
                _norm_range_text(norm) + ": a generic target o_C + delta lies outside it, and no "
                "allowed parameter of the post-norm absorbs the difference", strategy, {"norm": norm})
        return self._invert_phi(self.t, strategy)

    def _invert_phi(self, t: sp.Expr, strategy: str) -> sp.Expr:
        return self.invert(self.block.phi, t, "output", "out_activation", strategy)

    def invert(self, f: sp.Expr, t: sp.Expr, side: str, stage: str, strategy: str) -> sp.Expr:
        """A real preimage of target t under the elementwise f (`real_inverse`: SymPy's branch that is real at real
        targets), or a Restriction if f is not onto or no branch SymPy finds is real."""
        x = _act_x()
        if f == x:
            return t
        rng = elementwise_range(f)
        if rng.onto is None:
            raise Restriction(side, "undecided", stage, f"cannot decide whether {pstr(f)} is onto R: {rng.proof}",
                              strategy)
        if not rng.onto:
            raise Restriction(side, "range", stage, f"every value of {pstr(f)} lies in {rng.text()} ({rng.proof}), "
                              "so targets outside it are unreachable", strategy, {"range": rng})
        w, tau = sp.Symbol("w", real=True), sp.Dummy("tau", real=True)
        try:
            sols = sp.solve(sp.Eq(f.subs(x, w), tau), w)
        except NotImplementedError:  # e.g. x + sin(x): onto, but SymPy has no closed-form inverse
            sols = []
        if not sols:
            raise Restriction(side, "undecided", stage, f"SymPy finds no inverse of {pstr(f)}", strategy)
        inverse = real_inverse(f, sols, tau)  # SymPy solves over C: a branch may be complex at real targets
        if inverse is None:
            raise Restriction(side, "undecided", stage, f"none of SymPy's inverses of {pstr(f)} "
                              f"({', '.join(pstr(s.subs(tau, sp.Symbol('t'))) for s in sols)}) is a real preimage "
                              "of every real target t", strategy)
        return inverse.subs(tau, t)

    def output_side(self, strategy: str, steps: list[Step]) -> tuple[list[PatchFormula], Params]:
        ansatz = STRATEGIES.get("output", strategy).ansatz
        self.start_output(steps, strategy)
        return ansatz(self, steps)

    def _need(self, *items: str) -> None:
        """Each item is 'param:kind'; raise Unavailable unless every one may be patched so."""
        for item in items:
            p, kind = item.split(":")
            if p not in self.block.params:
                raise Unavailable(f"the block has no parameter {p}")
            if not self.ok(p, kind):
                raise Unavailable(f"a {kind} patch of {p} is not allowed by patch.allow")

    def _require_norm(self, name: str) -> None:
        if name not in self.spec.norms:
            raise Unavailable(f"the block has no {name}")

    def _out_none(self, steps):
        if self.spec.skip:
            raise Unavailable("with a residual skip the branch must add delta")
        return [], self.P

    def _patched_h(self, P2: Params) -> sp.Expr:
        """h of the patched run fed the contextual hidden activations, as h_C + (patch effect)."""
        b, s = self.block, self.block.signals
        hidden = self.down_atoms()
        ell = s["ell_C"] if self.spec.moe else None
        sg = self._shared_gate_atom()
        diff = b.outer(P2, hidden, ell, sg, normed=True) - b.outer(self.P, hidden, ell, sg, normed=True)
        return self.h_C + normalize(sp.expand(normalize(diff)))

    def _down(self, param: str, target: sp.Expr, strategy: str, steps) -> tuple[PatchFormula, Params]:
        """Patch b_down, W_down (rank 1), the selected experts' W_down or the shared W_down towards `target`."""
        b = self.block
        if param == "b_down":
            x = Vec("x_b_down", "d")
            ansatz = lambda v: self.P["b_down"] + v  # noqa: E731
            what, right = "output bias: W_down a_C + b_down + x equals the target", None
        elif param == "experts.W_down":
            right = b.hidden_atom("experts")
            x = Vec("X", "d")
            base = b.expert_matrix(self.P, "W_down", expert)
            ansatz = lambda v: base + Outer(v / Dot(right, right), right)  # noqa: E731
            what = "every selected expert: W_down^(e) + (X / |a_C^(e)|^2) a_C^(e)T; the gated sum adds X sum_j s_j"
        else:
            right = self.down_atoms()["shared" if param.startswith("shared") else ""]
            x = Vec("x_" + param.replace(".", "_"), "d")
            ansatz = lambda v: self.P[param] + Outer(v, right)  # noqa: E731
            what = f"output map: ({param} + x a^T) a, fed the contextual hidden activations, equals the target"
        sol = solve_for(what, self._patched_h(self.P.replace({param: ansatz(x)})), target, x, steps,
                        "output", "outer", strategy)
        if param == "experts.W_down":
            formula = PatchFormula(param, "rank1", sol / Dot(right, right), right, per_expert=True)
        elif param == "b_down":
            formula = PatchFormula(param, "bias", sol)
        else:
            formula = PatchFormula(param, "rank1", sol, right)
        return formula, self.P.replace({param: ansatz(sol)})

    def _out_down_bias(self, steps):
        self._need("b_down:bias")
        formula, P2 = self._down("b_down", self.target_h("down_bias"), "down_bias", steps)
        return [formula], P2

    def _out_down_rank1(self, steps):
        param = "experts.W_down" if self.spec.moe is not None else "W_down"
        self._need(f"{param}:rank1")
        formula, P2 = self._down(param, self.target_h("down_rank1"), "down_rank1", steps)
        return [formula], P2

    def _out_shared_down_rank1(self, steps):
        self._need("shared.W_down:rank1")
        formula, P2 = self._down("shared.W_down", self.target_h("shared_down_rank1"), "shared_down_rank1", steps)
        return [formula], P2

    def _norm_patch(self, norm_name: str, what: str, strategy: str, steps, target, feed):
        """Patch one norm parameter additively (bias, or elementwise scale) and solve."""
        self._require_norm(norm_name)
        param = f"{norm_name}.{what}"
        self._need(f"{param}:{'bias' if what == 'bias' else 'vector'}")
        sym = self.P[param]
        x = Vec("x_" + param.replace(".", "_"), "d")
        sol = solve_for(f"{norm_name}: {param} patched so that the stage outputs its target",
                        feed(self.P.patched(**{param: sym + x})), target, x, steps, "output", norm_name, strategy)
        kind = "bias" if what == "bias" else "vector"
        return [PatchFormula(param, kind, sol)], self.P.patched(**{param: sym + sol})

    def _out_norm_bias(self, steps):
        self._require_norm("mlp_post_norm")
        return self._norm_patch("mlp_post_norm", "bias", "norm_bias", steps, self.t,
                                lambda P: self._norm_out(P, "mlp_post_norm", self.f_C))

    def _out_norm_vector(self, steps):
        self._require_norm("mlp_post_norm")
        return self._norm_patch("mlp_post_norm", "scale", "norm_vector", steps, self.t,
                                lambda P: self._norm_out(P, "mlp_post_norm", self.f_C))

    def _post_ln(self, what: str, strategy: str, steps):
        """Absorb at the LayerNorm after the add: N'(r) = N(r_C), r = u + o_C, r_C = u + delta + o_C."""
        self._require_norm("post_ln")
        b = self.block
        r, r_C = self.define("r", self.u + self.o_C), self.define("r_C", self.u + self.delta + self.o_C)
        n, n_C = self.define("n", b.normalized("post_ln", r)), self.define("n_C", b.normalized("post_ln", r_C))
        return self._norm_patch("post_ln", what, strategy, steps, self._norm_out(self.P, "post_ln", n_C),
                                lambda P: self._norm_out(P, "post_ln", n))

    def _out_post_ln_bias(self, steps):
        return self._post_ln("bias", "post_ln_bias", steps)

    def _out_post_ln_vector(self, steps):
        return self._post_ln("scale", "post_ln_vector", steps)

    def _out_norm_scalar(self, steps):
        """gamma -> s gamma alone: s would have to be coordinate-dependent, so this always restricts."""
        b = self.block
        self._require_norm("mlp_post_norm")
        self._need("mlp_post_norm.scale:scale")
        s = sp.Symbol("s")
        P2 = self.P.patched(**{"mlp_post_norm.scale": b.scaled_norm_weight(self.P, s)})
        sol = solve_for("scalar scale alone: s gamma f_C + beta = t", self._norm_out(P2, "mlp_post_norm", self.f_C),
                        self.t, s, steps, "output", "mlp_post_norm", "norm_scalar")
        return [PatchFormula("mlp_post_norm.scale", "scale", sol)], P2.patched(
            **{"mlp_post_norm.scale": b.scaled_norm_weight(self.P, sol)})

    def _out_down_rank1_norm_scalar(self, steps):
        return self._norm_scalar("W_down", steps)

    def _out_down_bias_norm_scalar(self, steps):
        return self._norm_scalar("b_down", steps)

    def _norm_scalar(self, down: str, steps):
        r"""Strategy (b): aim the MLP output at v with $\gamma \odot v = t - \beta$, then rescale gamma by s. In a
        mixture of experts every selected expert's W_down takes the rank-1 patch (their gated sum reaches v)."""
        b = self.block
        strategy = "down_rank1_norm_scalar" if down == "W_down" else "down_bias_norm_scalar"
        self._require_norm("mlp_post_norm")
        if self.spec.moe is not None and down == "W_down":  # every selected expert's W_down aims at v
            down = "experts.W_down"
        self._need(f"{down}:{'bias' if down == 'b_down' else 'rank1'}", "mlp_post_norm.scale:vector")
        gamma = b.gamma(self.P, "mlp_post_norm")
        beta = b.value(self.P, "mlp_post_norm.bias")
        # gamma_i = 0 (real Gemma 3 270M) cannot reach t_i: aim through gamma_nz (no zero coordinate),
        # and the patched scale is s * gamma_nz, i.e. s * gamma plus an entry s * gamma_nz_i there.
        gamma_nz = self._nonzero_scale(gamma)
        v_, s = Vec("v_", "d"), sp.Symbol("s")
        v_sol = solve_for("choose the MLP output v with gamma_nz * v + beta = t", gamma_nz * v_ + beta,
                          self.t_atom(), v_, steps, "output", "mlp_post_norm", strategy)
        v = self.define("v", v_sol)
        s_sol = solve_for("scalar scale s with s * gamma_nz * f(v) = gamma_nz * v",
                          s * gamma_nz * b.normalized("mlp_post_norm", v), gamma_nz * v, s, steps,
                          "output", "mlp_post_norm", strategy)
        first, P2 = self._down(down, self._invert_phi(v, strategy), strategy, steps)
        scale = PatchFormula("mlp_post_norm.scale", "vector", s_sol * gamma_nz - gamma)
        sym = self.P["mlp_post_norm.scale"]
        return [first, scale], P2.patched(**{"mlp_post_norm.scale": sym + scale.value})

    def _out_stable(self, steps):
        r"""Strategy (c), the paper's Appendix B: $y = \mathrm{RMSinv}_\gamma(t)$, $h^* = \mathrm{RMS}(h_C)\,y$."""
        b = self.block
        self._require_norm("mlp_post_norm")
        self._need("W_down:rank1", "mlp_post_norm.scale:vector")
        norm = self.spec.mlp.post_norm
        if norm.kind != "rms" or self.spec.moe is not None or b.phi != _act_x():
            raise Unavailable("the stable update is derived for an RMS post-norm on a dense or gated MLP")
        gamma = b.gamma(self.P, "mlp_post_norm")
        # Lagrange stationarity of |gamma * y - t|^2 - mu (y^2 - 1), coordinate by coordinate.
        yk, gk, tk, mu = sp.symbols("y_k gamma_k t_k mu", real=True)
        lagrangian = (gk * yk - tk) ** 2 - mu * (yk**2 - 1)
        solve_for("Lagrange: d/dy_k [(gamma_k y_k - t_k)^2 - mu (y_k^2 - 1)] = 0",
                  sp.diff(lagrangian, yk), sp.S.Zero, yk, steps, "output", "mlp_post_norm", "stable")
        t = self.t_atom()
        # gamma_i = 0 (real Gemma 3 270M): the minimizer has y_i = 0, so f*_i = 0 and no remainder
        # reaches t_i. Invert against gamma with those coordinates set to RMS(gamma): the remainder
        # formula below is unchanged (exact for every unit-RMS y), and gives them their scale entry.
        y = self.define("y", RmsInverse(t, self._nonzero_scale(gamma)))
        h_star = self.define("h_star", sp.sqrt(Mean(self.h_C**2)) * y)
        first, P2 = self._down("W_down", h_star, "stable", steps)
        # mean(y^2) = 1 by construction, so f(h*) = RMS(h_C) y / sqrt(RMS(h_C)^2 + eps).
        f_def = normalize(sp.expand(b.normalized("mlp_post_norm", self.defs[h_star]))).subs(Mean(y**2), 1)
        f_star = self.define("f_star", f_def)
        dg = Vec("x_mlp_post_norm_scale", "d")
        d_sol = solve_for("remainder: (gamma + x) f(h*) = t", (gamma + dg) * f_star, t, dg, steps,
                          "output", "mlp_post_norm", "stable")
        sym = self.P["mlp_post_norm.scale"]
        return [first, PatchFormula("mlp_post_norm.scale", "vector", d_sol)], \
            P2.patched(**{"mlp_post_norm.scale": sym + d_sol})

    def _nonzero_scale(self, gamma: sp.Expr) -> Vec:
        r"""$\tilde\gamma_i = \gamma_i$ where $\gamma_i \ne 0$, else $\sqrt{\mathrm{mean}(\gamma^2)}$: a scale with no
        zero coordinate, for the strategies that aim at the target through $\gamma$."""
        # 1 - H(gamma^2) (H(0) = 0) is 1 exactly where gamma_i = 0 and 0 exactly elsewhere.
        zero = 1 - sp.Heaviside(gamma**2, 0)
        return self.define("gamma_nz", gamma + sp.sqrt(Mean(gamma**2)) * zero)

    def patched_output(self, P: Params) -> sp.Expr:
        """y of the run with parameters P, fed the contextual hidden activations (atoms kept)."""
        b, s = self.block, self.block.signals
        ell = s["ell_C"] if self.spec.moe else None
        h = b.outer(P, self.down_atoms(), ell, self._shared_gate_atom(), normed=True)
        return b.final(P, b.residual(self.u, b.branch_out(P, h)))

    def norm_input_conditions(self, P2: Params) -> list[Condition]:
        """A norm with eps = 0 divides by the RMS of its input: that input must not vanish."""
        b, s, out = self.block, self.block.signals, []
        zero_eps = {n for n, e in b.eps.items() if e == 0}
        if "mlp_pre_norm" in zero_eps and self.spec.residual == "sequential":  # a LayerNorm's input: not constant
            layer = self.spec.norms["mlp_pre_norm"].kind == "layer"
            out += [Condition(v - Mean(v) if layer else v, "vector") for v in (s["u"], s["u_C"])]
        if "mlp_mid_norm" in zero_eps:  # the patched run feeds it a_C
            a_C = s["a_C"]
            out.append(Condition(a_C - Mean(a_C) if self.spec.mlp.mid_norm.kind == "layer" else a_C, "vector"))
        if "mlp_post_norm" in zero_eps:
            h2 = normalize(sp.expand(normalize(self._patched_h(P2))))
            c = b.phi.subs(_act_x(), h2)
            out.append(Condition(c - Mean(c) if self.spec.mlp.post_norm.kind == "layer" else c, "vector"))
        if "post_ln" in zero_eps:
            r = self.u + self.o_C  # the LayerNorm after the add sees u + o' = r_C when matched
            out.append(Condition(r + self.delta - Mean(r + self.delta), "vector"))
        return out

    def output_matches(self, P2: Params, strategy: str) -> bool | None:
        """Whether the patched run fed the contextual hidden activations gives y_C exactly."""
        b, s = self.block, self.block.signals
        hidden = self.down_atoms()
        ell = s["ell_C"] if self.spec.moe else None
        # The stable update is exact for any y with mean(y^2) = 1: keep y atomic, use that property.
        keep = (Vec("y", "d"),) if strategy == "stable" else ()
        # The output maps' input (a_C, or mid(a_C)) is fed as an atom on both sides: keep it atomic.
        P_full = P2.replace({k: self.expand_defs(v, keep + (hidden.get("", s["a_C"]),)) for k, v in P2.values.items()})
        h_def = b.outer(self.P, hidden, ell, self._shared_gate_atom(), normed=True)
        y_C = b.final(self.P, b.residual(self.u + self.delta, b.branch_out(self.P, h_def)))
        diff = self.patched_output(P_full) - y_C
        if keep:
            diff = normalize(sp.expand(normalize(diff))).subs(Mean(keep[0] ** 2), 1)
        return is_zero(diff)

    # ----------------------------------------------------------------- whole derivation

    def derive(self, input_strategy: str, output_strategy: str) -> Derivation:
        steps: list[Step] = []
        in_patches, P_in = self.input_side(input_strategy, steps)
        hidden = self.hidden_matches(P_in, input_strategy)
        out_patches, P_out = self.output_side(output_strategy, steps)
        output = self.output_matches(P_out, output_strategy)
        patches = tuple(in_patches + out_patches)
        conditions: list[Condition] = []
        # Conditions of the formulas, of their intermediates, and of the patched run itself (its norms).
        sources = [p.value for p in patches] + list(self.defs.values())
        for expr in sources:
            conditions += [c for c in side_conditions(expr) if c not in conditions]
        conditions += [c for c in self.norm_input_conditions(P_out) if c not in conditions]
        return Derivation(self.spec.name, input_strategy, output_strategy, patches, tuple(steps),
                          tuple(conditions), hidden, output, tuple(self.definitions().items()),
                          tuple((n, p.symbol) for n, p in self.block.params.items()))

    def definitions(self) -> dict[str, sp.Expr]:
        """The signals and intermediates the formulas are written in, each defined from earlier ones."""
        b, s = self.block, self.block.signals
        parallel = self.spec.residual == "parallel"
        out: dict[str, sp.Expr] = {}
        if parallel:
            out["z"] = b.pre(self.P, s["x"])
        else:
            out["z"], out["z_C"] = b.pre(self.P, s["u"]), b.pre(self.P, s["u_C"])
        zc = s["z"] if parallel else s["z_C"]
        for g in b.hidden_groups():
            key = {"": "a_C", "experts": "a_C[e]", "shared": "a_s_C"}[g]
            out[key] = b.hidden(self.P, zc, g)
        if self.spec.moe is not None:
            out["ell_C"] = b.logits(self.P, zc)
            if self.spec.moe.shared_expert == "gated":
                out["sigma_sg_C"] = b.shared_gate(self.P, zc)
        out["delta"] = (sp.Symbol("A(C,x)") - sp.Symbol("A(x)")) if parallel else s["u_C"] - s["u"]
        out.update({atom.name: expr for atom, expr in self.defs.items()})
        return out


def _act_x() -> sp.Symbol:
    return _ACT_X


def _norm_range_text(norm) -> str:
    if norm.kind == "rms":
        return ("an RMSNorm output gamma * f(h) always has mean((o / gamma)^2) "
                + ("< 1" if norm.eps > 0 else "= 1"))
    return "a LayerNorm output gamma * n(h) + beta always has mean((o - beta) / gamma) = 0"


# --------------------------------------------------------------------------- the registry

P1, P2 = "arXiv:2507.16003", "arXiv:2511.17864"
STRATEGIES = Registry((
    # Input side, in preference order.
    Strategy("none", "input", "no patch: a parallel block's MLP input does not see the context",
             Deriver.in_none, f"{P2} (parallel blocks)"),
    Strategy("rank1", "input", "rank-1 patch W -> W + W(z_C - z) z^T / (z^T z) on every input map (bias as "
             "fall-back)", lambda d, steps: d.in_maps("rank1", steps), f"{P1} Theorem; {P2} lemma", counter=4),
    Strategy("bias", "input", "bias patch b -> b + W(z_C - z) on every input map (rank-1 as fall-back)",
             lambda d, steps: d.in_maps("bias", steps), "arXiv:2512.11255", counter=5),
    Strategy("pre_norm_bias", "input", "pre-norm bias patch: the norm outputs z_C",
             lambda d, steps: d.pre_norm("pre_norm_bias", steps), counter=3),
    Strategy("pre_norm_vector", "input", "pre-norm elementwise scale patch: the norm outputs z_C",
             lambda d, steps: d.pre_norm("pre_norm_vector", steps), counter=2),
    Strategy("up_only", "input", "gated MLP, gate frozen: the up map (rank-1 or bias) aims at a_C / sigma(W_gate z)",
             lambda d, steps: d.one_map("up_only", steps), counter=1),
    Strategy("gate_only", "input", "gated MLP, up frozen: the gate map aims at sigma^-1(a_C / (W_up z)) (needs "
             "sigma onto R)", lambda d, steps: d.one_map("gate_only", steps), counter=0),
    # Output side, in preference order: bias patches need no side condition; then Theorem 1's scale;
    # then rank-1 on W_down; the combined strategies only on request.
    Strategy("none", "output", "no patch: without a residual skip there is nothing to add", Deriver._out_none),
    Strategy("down_bias", "output", "output bias patch b_down -> b_down + delta", Deriver._out_down_bias,
             "arXiv:2512.11255", counter=5),
    Strategy("post_ln_bias", "output", "bias patch of the LayerNorm after the residual add",
             Deriver._out_post_ln_bias),
    Strategy("norm_bias", "output", "post-norm bias patch beta -> beta + delta", Deriver._out_norm_bias),
    Strategy("norm_vector", "output", "elementwise post-norm scale patch gamma -> gamma + delta / f(h_C)",
             Deriver._out_norm_vector, f"{P2} Theorem 1"),
    Strategy("down_rank1", "output", "rank-1 patch of W_down adding delta (for MoE: each selected expert takes "
             "delta / sum of gates)", Deriver._out_down_rank1, f"{P2} lemmas", counter=4),
    Strategy("shared_down_rank1", "output", "rank-1 patch of the shared expert's W_down adding delta",
             Deriver._out_shared_down_rank1, counter=6),
    Strategy("down_rank1_norm_scalar", "output", "rank-1 on W_down towards v = t / gamma_nz, scale gamma -> "
             "s gamma_nz with s = sqrt(mean(v^2) + eps) (gamma_nz: zero coordinates of gamma set to RMS(gamma))",
             Deriver._out_down_rank1_norm_scalar, counter=0),
    Strategy("down_bias_norm_scalar", "output", "bias on W_down towards v = t / gamma_nz, scale gamma -> s gamma_nz "
             "with s = sqrt(mean(v^2) + eps)", Deriver._out_down_bias_norm_scalar, counter=1),
    Strategy("stable", "output", "numerically stable update: constrained RMSNorm inverse against gamma_nz, rank-1 "
             "on W_down, remainder in the scale", Deriver._out_stable, f"{P2} Appendix B", counter=2),
    Strategy("post_ln_vector", "output", "elementwise scale patch of the LayerNorm after the residual add",
             Deriver._out_post_ln_vector),
    Strategy("norm_scalar", "output", "scalar rescaling of the post-norm scale alone (never generic: a lemma for "
             "negative verdicts)", Deriver._out_norm_scalar, counter=3),
))
