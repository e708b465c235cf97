r"""Input-controllable inner and output-controllable outer functions give a perfect patch
(Goldwaser, Munn, Gonzalvo, Dherin 2025, arXiv:2511.17864, Theorem 5), in abstract notation.

The inner function $F(z, \theta)$ ($z \in \mathbb{R}^d$, parameters $\theta \in \mathbb{R}^p$, hidden
$a \in \mathbb{R}^m$) is *input controllable*: for all $z_1, z_2$ a parameter $\mathrm{ThP}(z_1, z_2)$
makes $F(z_1, \mathrm{ThP}(z_1, z_2)) = F(z_2, \theta)$. The outer function $G(a, \phi)$ is *output
controllable*: for all $a, \Delta$, $G(a, \mathrm{PhP}(a, \Delta)) = G(a, \phi) + \Delta$. Then the block
$u + G(F(z, \theta), \phi)$ with both patches reproduces the contextual output $u_C + G(a_C, \phi)$.

The corollaries (pre-norm llama, post-norm olmo2, sandwich gemma3, post-LN bert, biases gpt2, gated
llama, parallel gptj, MoE mixtral, shared expert qwen2_moe) are the block theorems of those
architectures (proofs.blocks). The instances interpret the four maps by a model of both hypotheses:
$F(z, \theta) = (\Sigma z + \Sigma\theta)\mathbf 1$, $\mathrm{ThP}(z_1, z_2) = \theta + (\Sigma z_2 - \Sigma z_1) e_1$,
$G(a, \phi) = \phi + (\Sigma a) \mathbf 1$, $\mathrm{PhP}(a, \Delta) = \phi + \Delta$.

Run: python -m proofs.controllability [--json]; exits 0 when every theorem is verified.
"""

from __future__ import annotations

from fractions import Fraction

from proofs.writing import script, step, theorem
from symbolic.kernel import Fn, Theorem, Vector, apply, equation, vec

d, m, p = Vector("d"), Vector("m"), Vector("p")
F, ThP = Fn.map("F", (d, p), m), Fn.map("ThP", (d, d), p)
G, PhP = Fn.map("G", (m, d), d), Fn.map("PhP", (m, d), d)
theta, phi = vec("theta", "p"), vec("phi", "d")
z, z_C, u, u_C = vec("z", "d"), vec("z_C", "d"), vec("u", "d"), vec("u_C", "d")
a_C = apply(F, z_C, theta)  # the contextual hidden activations
z1, z2, a, dl = vec("z_1", "d"), vec("z_2", "d"), vec("a", "m"), vec("Delta", "d")

COROLLARIES = {"pre-norm": "llama", "post-norm": "olmo2", "sandwich norm": "gemma3", "post-LN": "bert",
               "biases": "gpt2", "gated MLP": "llama", "parallel block": "gptj",
               "MoE router and experts": "mixtral", "shared expert": "qwen2_moe"}


def _sum(v):
    return sum(v, Fraction(0))


def _models():
    def f(model, zz, th):
        return tuple([_sum(zz) + _sum(th)] * model.size("m"))

    def thp(model, v1, v2):
        th = model.var(theta)
        return (th[0] + _sum(v2) - _sum(v1),) + th[1:]

    def g(model, aa, ph):
        return tuple(x + _sum(aa) for x in ph)

    def php(model, aa, delta):
        return tuple(x + y for x, y in zip(model.var(phi), delta, strict=True))

    return (("F", f), ("ThP", thp), ("G", g), ("PhP", php))


def controllability() -> Theorem:
    return theorem(
        "controllability", "Input-controllable inner and output-controllable outer give a perfect patch",
        given=(equation(apply(F, z1, apply(ThP, z1, z2)), apply(F, z2, theta), forall=(z1, z2)),
               equation(apply(G, a, apply(PhP, a, dl)), apply(G, a, phi) + dl, forall=(a, dl))),
        show=(u + apply(G, apply(F, z, apply(ThP, z, z_C)), apply(PhP, a_C, u_C - u)), "=", u_C + apply(G, a_C, phi)),
        proof=[
            step(u + apply(G, a_C, apply(PhP, a_C, u_C - u)), "input controllability of F at z_1 = z, z_2 = z_C",
                 rewrite=((1, ((z1, z), (z2, z_C))),)),
            step(u + apply(G, a_C, phi) + (u_C - u), "output controllability of G at a = a_C, Delta = u_C - u",
                 rewrite=((2, ((a, a_C), (dl, u_C - u))),)),
            step(u_C + apply(G, a_C, phi), "algebra"),
        ], reference="arXiv:2511.17864, Theorem 5", models=_models())


THEOREMS = {"controllability": controllability}

if __name__ == "__main__":
    raise SystemExit(script(list(THEOREMS) + sorted(set(COROLLARIES.values()))))
