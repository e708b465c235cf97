r"""The input side of a derivation: the ansatzes that make the MLP's inner function see $z_C$ while fed $z$.

`InputSide` is the half of `symbolic.derive.Deriver` that writes the input-side equations: every input
map patched rank-1 on its matrix or on its bias (`in_maps`), one map of a gated MLP absorbing the whole
change of its hidden activation (`one_map`), the pre-norm's bias or scale (`pre_norm`), and the check
that the patched hidden activations equal the contextual ones (`hidden_matches`). Each ansatz is named
in `symbolic.derive.STRATEGIES`; the output side and the shared atoms live in `Deriver`.
"""

from __future__ import annotations

import sympy as sp

from symbolic.activations import is_opaque
from symbolic.activations import x as ACT_X
from symbolic.algebra import Outer, Vec, is_zero
from symbolic.derivation import PatchFormula, Restriction, Step, Unavailable, interval_text, solve_for
from symbolic.model import Params, expert, input_bias
from symbolic.printing import pstr


class InputSide:
    """Input-side ansatzes of a `symbolic.derive.Deriver` (it provides `spec`, `block`, `P`, `z`, `z_C`, `ok`
    and `invert`)."""

    def in_none(self, steps: list[Step]) -> tuple[list[PatchFormula], Params]:
        raise Unavailable("a sequential block needs an input-side patch")

    def in_maps(self, strategy: str, steps: list[Step]) -> tuple[list[PatchFormula], Params]:
        """Every input map patched (rank-1 on its matrix, or its bias), each falling back on the other."""
        b = self.block
        if strategy == "bias" and not any(p.role == "bias_in" and self.ok(n, "bias") for n, p in b.params.items()):
            raise Unavailable("no input map has a bias that may be patched")
        patches, changes = [], {}
        for name in b.input_maps():
            param = self._map_method(name, strategy)
            formula, value = self._input_map(name, param, strategy, steps)
            patches.append(formula)
            changes[param] = value
        return patches, self.P.replace(changes)

    def _map_method(self, name: str, strategy: str) -> str:
        bias = input_bias(name)
        has_bias = bias in self.block.params
        order = [name, bias] if strategy == "rank1" else [bias, name]
        for p in order:
            if p is not None and (p != bias or has_bias) and self.ok(p, "bias" if p == bias else "rank1"):
                return p
        why = f"neither {name} nor {bias} may be patched" if has_bias else f"{name} may not be patched and has no bias"
        raise Restriction("input", "fixed", name,
                          f"{name} z is unchanged by every allowed patch ({why}), so the hidden "
                          "activations cannot follow z_C", strategy, {"map": name})

    def _input_map(self, name: str, param: str, strategy: str,
                   steps: list[Step]) -> tuple[PatchFormula, sp.Expr]:
        b, z, z_C = self.block, self.z, self.z_C
        p = b.params[param]
        target = b.preact(self.P, name, z_C)
        tag = param.replace(".", "_")
        if param == "shared.w_gate":
            x = sp.Symbol("x_" + tag)
            value = p.symbol + x * z
        elif param.startswith("b_"):
            x = Vec("x_" + tag, p.symbol.dim)
            value = p.symbol + x
        else:
            x = Vec("x_" + tag, p.symbol.rows)
            base = b.expert_matrix(self.P, param.split(".")[1], expert) if p.per_expert else p.symbol
            value = base + Outer(x, z)
        P2 = self.P.replace({param: value})
        lhs = b.preact(P2, name, z)
        sol = solve_for(f"input map {name}: {param} patched so that it maps z like z_C", lhs, target,
                        x, steps, "input", name, strategy)
        if param.startswith("b_"):
            return PatchFormula(param, "bias", sol), value.subs(x, sol)
        if param == "shared.w_gate":
            return PatchFormula(param, "rank1", sol, z), value.subs(x, sol)
        return PatchFormula(param, "rank1", sol, z, p.per_expert), value.subs(x, sol)

    def one_map(self, strategy: str, steps: list[Step]) -> tuple[list[PatchFormula], Params]:
        """Gated MLP: one of the two maps absorbs the whole change of a = sigma(g) * p."""
        b = self.block
        if self.spec.mlp.kind != "gated":
            raise Unavailable("only a gated MLP can split its hidden activation between two maps")
        if is_opaque(b.sigma):
            raise Unavailable("the activation is the module's own map, whose formula this strategy needs (inverse, "
                              "zeros)")
        a_C = b.signals["a_C"]
        name = "W_up" if strategy == "up_only" else "W_gate"
        other = "W_gate" if strategy == "up_only" else "W_up"
        o = b.preact(self.P, other, self.z)
        if strategy == "up_only":  # a_C = sigma(g) * psi(p'): p' = psi^-1(a_C / sigma(g))
            self._require_sparse_zeros(b.sigma, "W_gate", strategy)
            target = self.invert(b.psi, a_C / b.act(o), "input", "up_activation", strategy)
        else:  # g' = sigma^-1(a_C / psi(p))
            self._require_sparse_zeros(b.psi, "W_up", strategy)
            target = self.invert(b.sigma, a_C / b.up_act(o), "input", "activation", strategy)
        param = self._map_method(name, "rank1")
        x = Vec("x_" + param, b.params[param].symbol.rows if param.startswith("W") else "m")
        value = self.P[param] + (Outer(x, self.z) if param.startswith("W") else x)
        sol = solve_for(f"{param} alone makes sigma(g) * p equal a_C", b.preact(self.P.replace({param: value}), name,
                        self.z), target, x, steps, "input", name, strategy)
        formula = PatchFormula(param, "rank1", sol, self.z) if param.startswith("W") else PatchFormula(
            param, "bias", sol)
        return [formula], self.P.replace({param: value.subs(x, sol)})

    def _require_sparse_zeros(self, f: sp.Expr, frozen: str, strategy: str) -> None:
        """Dividing by f(frozen map's output) is generic only if f vanishes on a null set (not ReLU's half-line)."""
        w = sp.Symbol("w", real=True)
        zeros = sp.solveset(f.subs(ACT_X, w), w, sp.S.Reals)
        if isinstance(zeros, sp.ConditionSet):
            raise Restriction("input", "undecided", "activation", f"SymPy cannot find the zeros of {pstr(f)}",
                              strategy)
        measure = _measure(zeros)
        if measure is None:
            raise Restriction("input", "undecided", "activation", f"SymPy cannot measure the zeros of {pstr(f)}",
                              strategy)
        if measure != 0:
            raise Restriction("input", "unsolvable", "activation",
                              f"{pstr(f)} vanishes on {interval_text(zeros)}: where {frozen} z falls there, a = 0 "
                              "whatever the other map is, while a_C need not be", strategy, {"zeros": zeros})

    def pre_norm(self, strategy: str, steps: list[Step]) -> tuple[list[PatchFormula], Params]:
        b, s = self.block, self.block.signals
        param = "mlp_pre_norm." + ("bias" if strategy == "pre_norm_bias" else "scale")
        if not self.ok(param, "bias" if strategy == "pre_norm_bias" else "vector"):
            raise Unavailable(f"{param} is not a patchable parameter of this block")
        x = Vec("x_pre", "d")
        sym = b.params[param].symbol
        P2 = self.P.patched(**{param: sym + x})
        sol = solve_for(f"pre-norm: {param} patched so that pre(u) = pre(u_C)", b.pre(P2, s["u"]),
                        b.pre(self.P, s["u_C"]), x, steps, "input", "pre_norm", strategy)
        kind = "bias" if strategy == "pre_norm_bias" else "vector"
        return [PatchFormula(param, kind, sol)], P2.patched(**{param: sym + sol})

    def hidden_matches(self, P2: Params, input_strategy: str) -> bool | None:
        """Whether the patched no-context pre-activations and hidden activations equal the contextual ones."""
        b, s = self.block, self.block.signals
        u_in, u_in_C = (s["x"], s["x"]) if self.spec.residual == "parallel" else (s["u"], s["u_C"])
        if input_strategy.startswith("pre_norm"):
            # The maps after the norm are unpatched, so equal norm outputs give equal hidden activations.
            return is_zero(b.pre(P2, u_in) - b.pre(self.P, u_in_C))
        else:
            z, z_C = (s["z"], s["z"]) if self.spec.residual == "parallel" else (s["z"], s["z_C"])
        a_C = {s["a_C"]: b.hidden(self.P, z_C)} if self.spec.moe is None else {}
        checks = [(b.hidden(P2, z, g) - b.hidden(self.P, z_C, g)).subs(a_C) for g in b.hidden_groups()]
        if self.spec.moe is not None:
            checks.append(b.logits(P2, z) - b.logits(self.P, z_C))
            checks.append(b.shared_gate(P2, z) - b.shared_gate(self.P, z_C))
        results = [is_zero(c) for c in checks]
        return True if all(r is True for r in results) else None


def _measure(zeros: sp.Set):
    """The Lebesgue measure of a set of zeros; 0 for a countable one (finite sets and images of the integers, such
    as the zeros of sin, whose measure SymPy does not compute); None when it cannot be told."""
    try:
        return zeros.measure
    except NotImplementedError:
        parts = zeros.args if isinstance(zeros, sp.Union) else (zeros,)
        countable = all(isinstance(p, sp.FiniteSet) or (isinstance(p, sp.ImageSet) and all(
            b.is_subset(sp.S.Integers) for b in p.base_sets)) for p in parts)
        return 0 if countable else None
