r"""Run-time helpers of the generated kernels, written once for NumPy and PyTorch (the array API).

The generated modules (``numeric/kernels/{numpy,torch}/<arch>.py``) print every formula with
SymPy's printers; what is not a formula lives here: the named activations the kernels call
(``gelu_tanh(t)``, ``silu(t)``, ...: the registry's `symbolic.activations.named`, one function each),
the top-k routing of a mixture of experts, the constrained RMSNorm inverse of the stable update (an
iterative solver), and the checks that turn a violated side condition into an error naming the token,
instead of a NaN.

It must not know any architecture: it receives arrays and names only.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy
from array_api_compat import array_namespace

from symbolic.errors import PatchConditionError

RMS_INVERSE_ITERATIONS = 200
ILL_CONDITIONED = 1e-3  # warn when |patch| / |parameter| * eps(dtype) exceeds this


# --------------------------------------------------------------------------- activations
# The registry's activations (`symbolic.activations.named`, the transformers definitions) that the kernels
# call by name; each is the registry's formula, in the order its SymPy expression prints (tests/test_codegen.py
# checks each against the registry on random float64 inputs). Elementwise; dtype and shape are kept.


def relu(t):
    r"""$\max(0, t)$."""
    return array_namespace(t).clip(t, min=0.0)


def relu2(t):
    r"""$\max(0, t)^2$ (squared ReLU)."""
    return relu(t) ** 2


def sigmoid(t):
    r"""$\sigma(t) = 1 / (1 + e^{-t})$."""
    return 1 / (array_namespace(t).exp(-t) + 1)


def silu(t):
    r"""$t\,\sigma(t) = t / (1 + e^{-t})$ (SiLU, swish)."""
    return t / (array_namespace(t).exp(-t) + 1)


def gelu(t):
    r"""$\tfrac{t}{2}\,\bigl(1 + \mathrm{erf}(t / \sqrt 2)\bigr)$ (GELU, the erf form)."""
    return 0.5 * t * (erf(math.sqrt(0.5) * t) + 1)


def gelu_tanh(t):
    r"""$\tfrac{t}{2}\,\bigl(1 + \tanh(\sqrt{2/\pi}\,(t + 0.044715\,t^3))\bigr)$ (GELU, the tanh form:
    ``gelu_new``, ``gelu_pytorch_tanh``)."""
    return 0.5 * t * (array_namespace(t).tanh(math.sqrt(2 / math.pi) * (0.044715 * t**3 + t)) + 1)


def erf(t):
    """The error function, elementwise (not in the array API standard: torch's own, else SciPy's)."""
    xp = array_namespace(t)
    if hasattr(xp, "erf"):
        return xp.erf(t)
    from scipy.special import erf as scipy_erf

    return scipy_erf(t)


# --------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class Routing:
    r"""How a router turns logits into a choice of experts and their weights (`symbolic.spec.MoESpec`).

    Scores $s = \mathrm{softmax}(\ell)$ or $\sigma(\ell)$ (`scoring`); the choice ranks $s + b$ (the
    selection bias $b$, when given) among the `topk_groups` best of `groups` equal groups, a group
    scoring the sum of its two largest $s + b$ (DeepSeek-V3); the weights are the uncorrected $s$.
    ``sparsemixer`` (PhiMoE, at inference): the top-k by the logits, the weight of the j-th a softmax over
    the logits not yet chosen that lie within ``2 jitter_eps`` of it relatively (`SCORES`).
    """

    scoring: str = "softmax"
    groups: int = 1
    topk_groups: int = 1
    jitter_eps: float = 0.0


PLAIN = Routing()

#: How far a score can move per unit change of the logits (max norm): sigmoid' <= 1/4; a softmax score
#: moves by s_i |dl_i - sum_j s_j dl_j| <= 2 max |dl|.
SCORE_LIPSCHITZ = {"sigmoid": 0.25, "softmax": 2.0}


def scores(ell, routing: Routing = PLAIN):
    """(T, 1, E) router logits -> (T, E) scores: the routing's (`SCORES`)."""
    return SCORES[routing.scoring](ell[..., 0, :], routing)


def _softmax(logits, _routing: Routing):
    """Softmax over the experts."""
    xp = array_namespace(logits)
    p = xp.exp(logits - xp.max(logits, axis=-1, keepdims=True))
    return p / xp.sum(p, axis=-1, keepdims=True)


def _sigmoid(logits, _routing: Routing):
    """The elementwise sigmoid."""
    return 1 / (1 + array_namespace(logits).exp(-logits))


def _sparsemixer(logits, routing: Routing):
    r"""PhiMoE's sparsemixer at inference (transformers' ``sparsemixer``, ``training=False``), for every expert e
    as if chosen at its rank: $w_e = e^{\ell_e} / \sum_{i \in M_e} e^{\ell_i}$, $M_e$ the experts ranked at or
    below e (those not yet chosen) that are not masked, $(\ell_e - \ell_i) / \max(|\ell_i|, \ell_e) \le 2\epsilon$
    (a 0/0 does not mask, as in transformers); e itself is in $M_e$, so $0 < w_e \le 1$."""
    xp = array_namespace(logits)
    mine, other = _sparsemixer_pairs(logits)
    kept = _later(logits) & ~(mine - other > 2 * routing.jitter_eps * xp.maximum(xp.abs(other), mine))  # factor >= 0
    return 1 / xp.sum(xp.where(kept, xp.exp(other - mine), xp.zeros_like(mine)), axis=-1)


def _sparsemixer_pairs(logits):
    """(T, E, E) the logit of expert e (row) and of expert i (column)."""
    xp = array_namespace(logits)
    shape = (*logits.shape, logits.shape[-1])
    return xp.broadcast_to(logits[..., :, None], shape), xp.broadcast_to(logits[..., None, :], shape)


def _later(logits, strictly: bool = False):
    """(T, E, E): whether expert i (column) ranks at or below expert e (row), not chosen before e (`strictly`:
    below it, i != e)."""
    rank = _rank(logits)
    return rank[..., None, :] > rank[..., :, None] if strictly else rank[..., None, :] >= rank[..., :, None]


#: The routing weights by `Routing.scoring`, (T, E) logits -> (T, E) scores (of each expert, were it chosen).
SCORES = {"softmax": _softmax, "sigmoid": _sigmoid, "sparsemixer": _sparsemixer}


def _choice(ell, routing: Routing, bias):
    """(T, E) what the top-k ranks: the logits themselves where that ranks as the scores do (no bias,
    no groups: softmax and sigmoid are increasing), else the scores plus the selection bias, -inf
    outside the chosen groups."""
    xp = array_namespace(ell)
    if bias is None and routing.groups == 1:
        return ell[..., 0, :]
    choice = scores(ell, routing) + (0 if bias is None else bias)
    if routing.groups == 1:
        return choice
    allowed = _group_rank(choice, routing) < routing.topk_groups  # (T, G)
    size = choice.shape[-1] // routing.groups
    mask = xp.reshape(xp.broadcast_to(allowed[..., None], (*allowed.shape, size)), choice.shape)
    return xp.where(mask, choice, xp.full_like(choice, -float("inf")))


def _group_scores(choice, routing: Routing):
    """(T, G): each group's sum of its two largest choice scores."""
    xp = array_namespace(choice)
    grouped = xp.reshape(choice, (*choice.shape[:-1], routing.groups, choice.shape[-1] // routing.groups))
    top = xp.sort(grouped, axis=-1, descending=True)
    return top[..., 0] + top[..., 1]


def _group_rank(choice, routing: Routing):
    return _rank(_group_scores(choice, routing))


def _rank(v):
    """The rank of every entry along the last axis, largest first (ties: lower index first)."""
    xp = array_namespace(v)
    order = xp.argsort(v, axis=-1, descending=True, stable=True)
    return xp.argsort(order, axis=-1, stable=True)


def topk_mask(ell, k: int, routing: Routing = PLAIN, bias=None):
    """(T, 1, E) router logits -> (T, E, 1) boolean mask of the k chosen experts (ties: lower index first)."""
    return (_rank(_choice(ell, routing, bias)) < k)[..., None]


def route(ell, k: int, routing: Routing = PLAIN, bias=None):
    r"""The chosen experts' scores ($\mathrm{softmax}(\ell)_e$ or $\sigma(\ell_e)$), 0 elsewhere:
    (T, 1, E) -> (T, E, 1)."""
    xp = array_namespace(ell)
    p = scores(ell, routing)[..., None]
    return xp.where(topk_mask(ell, k, routing, bias), p, xp.zeros_like(p))


def rms_inverse(t, gamma):
    r"""$\arg\min_{y:\ \mathrm{mean}(y^2)=1} \lVert \gamma \odot y - t \rVert^2$, batched over leading axes.

    Stationarity gives $y_k = \gamma_k t_k / (\gamma_k^2 - \mu)$ with $\mu < \min_k \gamma_k^2$
    solving $\mathrm{mean}\big((\gamma_k t_k)^2 / (\gamma_k^2 - \mu)^2\big) = 1$ (increasing in
    $\mu$: bisection). Hard case (on real Gemma activations): no pull on the coordinates of minimal
    $\gamma_k^2$ and the secular function below 1 at $\min\gamma^2$ (no root below it): take
    $\mu = \min\gamma^2$, the regular formula elsewhere, and spread the missing norm
    $d\,(1 - \mathrm{mean}_{k \notin K}(\gamma_k t_k / (\gamma_k^2 - \mu))^2)$ equally over the minimal
    coordinates K (the trust-region "hard case"). arXiv:2511.17864, Appendix B. Solved in float64
    (as the paper prescribes), returned in t's dtype.
    """
    xp = array_namespace(t)
    wide = xp.astype(t, xp.float64)
    g = xp.broadcast_to(xp.astype(gamma, xp.float64) if hasattr(gamma, "dtype") else gamma, t.shape)
    return xp.astype(_rms_inverse_wide(wide, g), t.dtype)


def _rms_inverse_wide(t, g):
    """`rms_inverse` on float64 arrays, g already broadcast to t's shape."""
    xp = array_namespace(t)
    n = t.shape[-1]
    c2 = (g * t) ** 2
    g2 = g**2
    g2min = xp.min(g2, axis=-1, keepdims=True)
    minimal = g2 <= g2min
    regular = ~minimal
    ones = xp.ones_like(g2)

    def secular(mu):
        return xp.mean(xp.where(regular | (c2 > 0), c2 / (g2 - mu) ** 2, 0 * ones), axis=-1, keepdims=True)

    c2_min = xp.sum(xp.where(minimal, c2, 0 * ones), axis=-1, keepdims=True)
    at_min = xp.mean(xp.where(regular, c2 / xp.where(regular, g2 - g2min, ones) ** 2, 0 * ones), axis=-1,
                     keepdims=True)
    hard = (c2_min == 0) & (at_min < 1)
    lo = g2min - xp.sqrt(xp.mean(c2, axis=-1, keepdims=True)) - 1.0
    hi = g2min
    for i in range(RMS_INVERSE_ITERATIONS):
        mid = (lo + hi) / 2
        big = secular(mid) > 1
        hi = xp.where(big, mid, hi)
        lo = xp.where(big, lo, mid)
        if i % 16 == 15 and not bool(xp.any((lo < (lo + hi) / 2) & ((lo + hi) / 2 < hi))):
            break  # every bracket is down to adjacent floats
    mu = xp.where(hard, g2min, lo)
    y = g * t / xp.where(regular | ~hard, g2 - mu, ones)
    missing = xp.clip(n * (1 - at_min), min=0.0)
    fill = xp.sqrt(missing / xp.sum(xp.astype(minimal, t.dtype), axis=-1, keepdims=True))
    y = xp.where(hard & minimal, fill * ones, y)
    # Near the hard case gamma_k^2 - mu cancels (mu within ulps of min gamma^2): mean(y^2) = 1 only to
    # ~1e-7. Every unit-RMS y makes the stable patch exact, so restore the constraint to round-off.
    return y / xp.sqrt(xp.mean(y**2, axis=-1, keepdims=True))


# --------------------------------------------------------------------------- checks


def _violations(value, kind: str, mask=None):
    """Boolean (T,) ... marking where the side condition `value != 0` of `kind` fails."""
    xp = array_namespace(value)
    zero = value == 0
    if kind == "vector":  # the whole vector vanishes
        bad = xp.all(zero, axis=-1)
    else:  # coords: some coordinate vanishes; scalar: a (…, 1) array
        bad = xp.any(zero, axis=-1)
    if mask is not None:
        bad = bad & mask[..., 0]
    while bad.ndim > 1:
        bad = xp.any(bad, axis=-1)
    return bad


def require(value, kind: str, condition: str, layer: str = "", mask=None, n_tokens: int = 1) -> None:
    """Raise `PatchConditionError` naming the tokens where `condition` (value != 0) fails.

    A condition on parameters alone (no token axis) fails for all `n_tokens` tokens at once.
    """
    xp = array_namespace(value)
    bad = _violations(value, kind, mask)
    if bool(xp.any(bad)):
        tokens = list(range(n_tokens)) if bad.ndim == 0 else [int(i) for i in xp.nonzero(bad)[0]]
        raise PatchConditionError(condition, tokens, layer)


def require_finite(name: str, value, layer: str = "") -> None:
    """Raise `PatchConditionError` if an input or a patch holds inf or NaN at some token."""
    xp = array_namespace(value)
    if _sum_finite(xp, value):
        return
    bad = ~xp.isfinite(value)
    while bad.ndim > 1:
        bad = xp.any(bad, axis=-1)
    if bool(xp.any(bad)):
        tokens = [int(i) for i in xp.nonzero(bad)[0]]
        raise PatchConditionError(f"{name} is finite", tokens, layer)


def _sum_finite(xp, value) -> bool:
    """Whether the entries' sum is finite, which proves every entry finite (an infinity or a NaN makes the sum
    infinite or NaN) in one reduction; a sum of finite entries that overflows reads False, and the caller then
    checks the entries one by one."""
    quiet = numpy.errstate(over="ignore", invalid="ignore") if isinstance(value, numpy.ndarray) else nullcontext()
    with quiet:  # NumPy's overflow warning: the False case above
        return bool(xp.isfinite(xp.sum(value)))


def per_expert(value, selected, masked: bool):
    """A patch factor as (T, E, n): broadcast over the experts; `masked` zeroes experts off the top-k."""
    xp = array_namespace(value)
    full = xp.broadcast_to(value, (*selected.shape[:-1], value.shape[-1]))
    return xp.where(selected, full, xp.zeros_like(full)) if masked else full


class IllConditionedPatchWarning(UserWarning):
    """A patch is large against its parameter: the patched run loses precision in low precision dtypes.
    ``layer``: where (as the kernel was told); ``lost``: the relative precision it may cost, |patch| / |P| * eps."""

    def __init__(self, message: str, layer: str = "", lost: float = float("nan")):
        super().__init__(message)
        self.layer, self.lost = layer, lost


def _eps(value) -> float:
    xp = array_namespace(value)
    return float(xp.finfo(value.dtype).eps)


def router_roundoff(w, z_c, z, ell):
    r"""(T, 1, E): per expert, a bound $b_e$ on how far each run's computed router logits lie from the kernel's
    $\ell_C = \mathrm{fl}(W z_C)$ (+ a bias $\beta$): the contextual run's, and the patched run's.

    Let $u = \epsilon/2$ (unit round-off), $n$ the router's input width, $\gamma_m = mu/(1-mu)$. A computed
    inner product satisfies $|\mathrm{fl}(w^\top v) - w^\top v| \le \gamma_n\,|w|^\top|v|$ in any summation
    order, with or without FMA (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., (3.5)): the
    round-off is set by the magnitudes of the products, not by their (possibly cancelling) sum. Per expert let
    $s_C = |W||z_C|$, $s = |W||z|$ and $\Delta = W(z_C - z)$, what the router's patch adds. Two implementations
    of a norm (the model's module, the kernel's formula) agree to $(n + 8)u$ relatively per entry (RMSNorm's:
    its mean of squares $\gamma_n$, halved by the root, and four roundings, on each side). To first order in u:

    - the contextual run computes $W z_C$ in its own order, from its own norm: $|\ell^R - \ell_C| \le
      u\,((3n + 8)s_C + 2|\ell_C|)$ (the last term: the bias additions);
    - the patched run computes $(W + l z^\top) z$ with $l = \mathrm{fl}(\Delta_K / \mathrm{fl}(z^\top z))$,
      $\Delta_K = \mathrm{fl}(\ell_C - \beta - \mathrm{fl}(Wz))$; as $\mathrm{fl}(z^\top z) = z^\top z\,(1 +
      \theta_n)$ (positive terms), $l\,z^\top z = \Delta_K(1 + \theta_{n+3})$. Factored (``apply``:
      $\mathrm{fl}(l\,\mathrm{fl}(z^\top z)) + \mathrm{fl}(Wz)$, its products perhaps in another order) it is
      within $u(2ns + (2n + 4)|\Delta| + 2|\ell_C| + |\beta|)$; written into the weights
      ($\mathrm{fl}(\mathrm{fl}(W + l z^\top) z)$ from the model's own norm) within $u((2n + 1)s + (2n + 4)
      |\Delta| + |\ell_C|) + (n + 8)u(s + |\Delta|)$. With $|\beta| \le |\ell_C| + s_C$: $u((3n + 9)s + s_C +
      (3n + 12)|\Delta| + 3|\ell_C|)$ bounds both.

    $|\Delta|$ is read from its computed value (its own round-off, and $\Delta_K$'s, are $O(nu)(s_C + s)$: of the
    second order once multiplied by u). $b$ is the larger of the two bounds divided by $1 - (4n + 20)u$, which
    covers the second-order terms; where that is not positive (a low precision dtype and a wide router)
    round-off can decide any choice: $b = \infty$. A strategy whose patches never read z (a patched pre-norm:
    the patched run reproduces $z_C$ itself) passes $z = z_C$. These are worst cases: typical errors are
    $\sim\sqrt{n}\,u\,s$ (tests/test_router_margin.py measures them).
    """
    xp = array_namespace(ell)
    unit, n = _eps(ell) / 2, w.shape[-1]
    aw = xp.abs(w)
    s_c, s = xp.abs(z_c) @ aw.T, xp.abs(z) @ aw.T
    delta = xp.abs((z_c - z) @ w.T)
    contextual = (3 * n + 8) * s_c + 2 * xp.abs(ell)
    patched = (3 * n + 9) * s + s_c + (3 * n + 12) * delta + 3 * xp.abs(ell)
    room = 1 - (4 * n + 20) * unit
    return unit * xp.maximum(contextual, patched) / room if room > 0 else xp.full_like(ell, float("inf"))


def require_topk_margin(ell, k: int, layer: str = "", routing: Routing = PLAIN, bias=None, *, roundoff) -> None:
    r"""The contextual choice of experts must be decided by a margin the runs' router logits cannot cross.

    The kernel chooses from its own logits $\ell_C$; the contextual run and the patched run compute theirs
    with round-off, each within ``roundoff`` $b$ (T, 1, E) of $\ell_C$ per expert (`router_roundoff`). All
    three choose alike when every chosen expert $i$ and every other $j$ keep their order over the whole
    interval, $\ell_i - b_i > \ell_j + b_j$; else (a tie, or nearly) a run may select other experts and be
    silently wrong, so the token is refused. Ranking values: the logits (no selection bias, no groups), else
    the scores plus the bias, each within $L \max_e b_e + 4\epsilon\max|s + b|$ (`SCORE_LIPSCHITZ` $L$; the
    score's own rounding); with groups, the chosen groups' margin too (a sum of two scores: twice that).
    """
    xp = array_namespace(ell)
    choice = _choice(ell, routing, bias)
    what = f"the router's top-{k} has a margin above round-off (a tie between the {k}-th and {k + 1}-th expert"
    if bias is None and routing.groups == 1:
        bad = _undecided(choice, k, roundoff[..., 0, :])
    else:  # scores move by <= SCORE_LIPSCHITZ x the logits, + their own rounding
        finite = xp.where(xp.isfinite(choice), xp.abs(choice), xp.zeros_like(choice))
        worst = SCORE_LIPSCHITZ[routing.scoring] * xp.max(roundoff[..., 0, :], axis=-1) \
            + 4 * _eps(ell) * xp.max(finite, axis=-1)
        bad = _undecided(choice, k, xp.broadcast_to(worst[..., None], choice.shape))
    if routing.groups > 1:
        group = _group_scores(scores(ell, routing) + (0 if bias is None else bias), routing)
        bad = bad | _undecided(group, routing.topk_groups, xp.broadcast_to(2 * worst[..., None], group.shape))
        what += f", or between the {routing.topk_groups}-th and {routing.topk_groups + 1}-th group"
    if bool(xp.any(bad)):
        tokens = [int(i) for i in xp.nonzero(bad)[0]]
        raise PatchConditionError(what + ", decides the selection)", tokens, layer)


def _undecided(v, k: int, bound):
    """(T,) whether v's top k (ties: lower index first) can change when each entry moves within +-bound:
    the lowest chosen entry's lower end reaches the highest other entry's upper end (-inf entries: never
    chosen)."""
    xp = array_namespace(v)
    chosen = _rank(v) < k
    inf = xp.full_like(v, float("inf"))
    low = xp.min(xp.where(chosen, v - bound, inf), axis=-1)
    high = xp.max(xp.where(chosen | ~xp.isfinite(v), -inf, v + bound), axis=-1)
    return low <= high


def relative_sizes(patches: dict, references: dict) -> dict:
    r"""Per token, $\lVert\Delta P\rVert / \lVert P\rVert$ of every patch measured against a reference.

    `references` maps a patched parameter to the array its patch is measured against (the matrix, or
    the effective norm scale $\gamma$); biases are not listed (their patch is $\delta$ itself). A
    rank-1 patch measures $\lVert l\rVert\lVert r\rVert$ (the max over experts), a scale patch
    $\gamma \to s\gamma$ measures $|s - 1|$. Returns {name: (T,) array}.
    """
    out = {}
    for name, ref in references.items():
        fields = patches[name]
        xp = array_namespace(ref)
        base = max(_norm(ref), 1e-300)
        if "left" in fields:
            size = xp.linalg.vector_norm(fields["left"], axis=-1) * xp.linalg.vector_norm(fields["right"], axis=-1)
            size = size / base
        elif "scale" in fields:
            size = xp.abs(fields["scale"] - 1)
        else:
            size = xp.linalg.vector_norm(fields["delta"], axis=-1) / base
        out[name] = xp.max(xp.reshape(size, (size.shape[0], -1)), axis=-1)
    return out


_NORMS: dict = {}  # (id of the storage an array reads, where and how it reads it) -> (weak ref, version, norm)


def _norm(ref) -> float:
    """The norm of a reference array, remembered while the storage it reads (the model's parameter, which
    every extraction's parameter views and detached copies read) lives unmodified: the patches of every token,
    candidate and call are measured against the same parameters. Keyed by the storage's identity (torch keeps
    one Python object per storage) and the array's place in it (data pointer, shape, strides, dtype); the
    version counter, which views and detached tensors share with their parameter, tells a write."""
    import weakref

    version = getattr(ref, "_version", None)
    owner = ref.untyped_storage() if hasattr(ref, "untyped_storage") else ref
    key = (id(owner),) if version is None else \
        (id(owner), ref.data_ptr(), tuple(ref.shape), tuple(ref.stride()), str(ref.dtype))
    hit = _NORMS.get(key)
    if hit is not None and hit[0]() is owner and hit[1] == version and version is not None:
        return hit[2]
    xp = array_namespace(ref)
    value = float(xp.linalg.vector_norm(xp.reshape(ref, (-1,))))
    try:
        _NORMS[key] = (weakref.ref(owner, lambda _r, key=key: _NORMS.pop(key, None)), version, value)
    except TypeError:  # an array without weak references (NumPy scalars): not remembered
        pass
    return value


def ill_conditioned(patches: dict, references: dict, dtype=None) -> bool:
    r"""Whether some patch has $\lVert\Delta P\rVert / \lVert P\rVert \cdot \epsilon > 10^{-3}$
    (`warn_ill_conditioned`'s test), with $\epsilon$ of `dtype` (the dtype the patched parameters are
    stored in; default: the references')."""
    ill = ill_tokens(relative_sizes(patches, references), references, dtype)
    return ill is not None and bool(array_namespace(ill).any(ill))


def ill_tokens(sizes: dict, references: dict, dtype=None):
    """(T,) booleans: which tokens' patches are ill-conditioned (`ill_conditioned`'s test, token by token),
    from their `relative_sizes`; None when nothing is measured."""
    ill = None
    for name, size in sizes.items():
        xp = array_namespace(size)
        eps = float(xp.finfo(dtype).eps) if dtype is not None else _eps(references[name])
        this = size * eps > ILL_CONDITIONED
        ill = this if ill is None else (ill | this)
    return ill


def warn_ill_conditioned(patches: dict, references: dict, layer: str = "") -> None:
    r"""Warn when $\lVert\Delta P\rVert / \lVert P\rVert \cdot \epsilon > 10^{-3}$ at some token: the rounding of
    the patched parameter (or of the signal it multiplies) can then cost up to that relative error."""
    warn_sizes(relative_sizes(patches, references), references, layer, stacklevel=4)


def warn_sizes(sizes: dict, references: dict, layer: str = "", stacklevel: int = 3) -> None:
    """`warn_ill_conditioned` from patch sizes already measured (`relative_sizes`)."""
    import warnings

    for name, size in sizes.items():
        xp = array_namespace(size)
        worst, eps = float(xp.max(size)), _eps(references[name])
        limit = ILL_CONDITIONED / eps
        if worst > limit:
            where = f"layer {layer}: " if layer else ""
            warnings.warn(IllConditionedPatchWarning(
                f"{where}the patch of {name} is {worst:.3g} times the parameter's norm (above {limit:.3g} for "
                f"{references[name].dtype}): the patched run may lose up to {worst * eps:.1e} relative precision. "
                "Use a wider dtype, or the stable strategy where available.", layer, worst * eps),
                stacklevel=stacklevel)


def require_mask_margin(ell, k: int, layer: str = "", routing: Routing = PLAIN, roundoff=None) -> None:
    r"""Weights that mask logits by a threshold (`Routing.scoring` ``sparsemixer``): the order of the chosen
    experts and every mask must be decided by a margin the runs' router logits cannot cross.

    A sparsemixer weight jumps where the j-th and (j+1)-th logits swap (the later one's mask set loses the
    earlier) and where $v = (\ell_e - \ell_i) / \max(|\ell_i|, \ell_e)$ crosses $2\epsilon$ for a chosen e and an
    expert i not chosen before it. With the logits known to within $b$ (``roundoff``, (T, 1, E), else
    `require_topk_margin`'s $10^3$ ulps of the token's largest logit) $v$ moves by at most
    $2b (1 + |v|) / \max(|\ell_i|, \ell_e)$ (+ its own rounding): a token whose gap or threshold distance is
    within that is refused (`PatchConditionError`), never patched with other weights. Other routings: no check.
    """
    if routing.scoring != "sparsemixer":
        return
    xp = array_namespace(ell)
    logits = ell[..., 0, :]
    scale = xp.max(xp.abs(logits), axis=-1)
    b = 1e3 * _eps(ell) * (scale + 1.0) if roundoff is None else xp.max(roundoff[..., 0, :], axis=-1)  # (T,)
    s = xp.sort(logits, axis=-1, descending=True)
    top = min(k + 1, logits.shape[-1])
    bad = xp.any(s[..., : top - 1] - s[..., 1:top] <= 2 * b[..., None], axis=-1)  # the order of the top-k
    mine, other = _sparsemixer_pairs(logits)
    factor = xp.maximum(xp.abs(other), mine)  # >= 0; 0 only where both logits are 0 (refused below)
    safe = xp.where(factor == 0, xp.ones_like(factor), factor)
    v = (mine - other) / safe
    room = 2 * b[..., None, None] * (1 + xp.abs(v)) / safe + 8 * _eps(ell) * (xp.abs(v) + 2 * routing.jitter_eps)
    chosen = (_rank(logits) < k)[..., :, None]
    near = chosen & _later(logits, strictly=True) & ((factor == 0) | (xp.abs(v - 2 * routing.jitter_eps) <= room))
    bad = bad | xp.any(xp.any(near, axis=-1), axis=-1)
    if bool(xp.any(bad)):
        tokens = [int(i) for i in xp.nonzero(bad)[0]]
        raise PatchConditionError("the sparsemixer's order of the chosen experts and its masks ((max - l) / max(|l|, "
                                  "max) against 2 jitter_eps) are decided by a margin above round-off", tokens, layer)
