r"""Where a layer's canonical parameters live: `Param`, `Adapter` and `Layout`, the records of an inferred model.

A `Layout` holds, per decoder layer, an `Adapter`: the layer's `BlockSpec`, where its MLP-side modules live
and how each canonical parameter (``W_gate``, ``experts.W_down``, ...) maps onto the model's storage (a path
and a storage layout, `Param`). `numeric.hf.infer` builds it; everything that reads or writes a layer's
parameters goes through it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from numeric.hf import offload
from symbolic.spec import BlockSpec


@dataclass(frozen=True)
class FusedHalf:
    """One half of a fused gate/up tensor: the ``axis`` of its fused dimension (-2: the rows of a matrix, -1: its
    columns or a bias's entries), whether the halves are ``interleaved`` (even and odd entries) or
    concatenated, ``which`` half (0 the first, 1 the second), and whether the matrix is stored ``transposed``
    (in, out)."""

    axis: int
    interleaved: bool
    which: int
    transposed: bool

    def index(self, n: int) -> slice:
        """The indices of this half in a fused dimension of size n."""
        if self.interleaved:
            return slice(self.which, None, 2)
        return slice(self.which * (n // 2), (self.which + 1) * (n // 2))


#: The storage layouts of a half of a fused gate/up tensor. ``rows*`` (…, 2 out, in) and ``tcols*`` (…, in,
#: 2 out) matrices, per expert when stacked; ``half*``/``even``/``odd`` (…, 2 out) biases. ``0``/``1``: the first
#: or second half; ``even``/``odd``: the interleaved columns [gate0, up0, gate1, up1, ...] (transformers'
#: experts declaring ``is_concatenated=False``).
FUSED = {"rows0": FusedHalf(-2, False, 0, False), "rows1": FusedHalf(-2, False, 1, False),
         "rows_even": FusedHalf(-2, True, 0, False), "rows_odd": FusedHalf(-2, True, 1, False),
         "tcols0": FusedHalf(-1, False, 0, True), "tcols1": FusedHalf(-1, False, 1, True),
         "tcols_even": FusedHalf(-1, True, 0, True), "tcols_odd": FusedHalf(-1, True, 1, True),
         "half0": FusedHalf(-1, False, 0, False), "half1": FusedHalf(-1, False, 1, False),
         "even": FusedHalf(-1, True, 0, False), "odd": FusedHalf(-1, True, 1, False)}


def fuse(first: torch.Tensor, second: torch.Tensor, axis: int, interleaved: bool) -> torch.Tensor:
    """The two halves joined along ``axis`` (negative): concatenated, or interleaved [a0, b0, a1, b1, ...]; the
    inverse of `FusedHalf.index`."""
    if not interleaved:
        return torch.cat([first, second], axis)
    return torch.stack([first, second], axis).flatten(axis - 1, axis)


@dataclass(frozen=True)
class Param:
    """Where a canonical parameter lives in a layer: a path, and how it is stored.

    ``layout``: ``linear`` (out, in) as the canonical matrix; ``conv1d`` (in, out), GPT-2; ``t``
    (…, in, out) stacked experts stored transposed; a half of a fused gate/up tensor (`FUSED`: the first or
    second half of the rows of (…, 2 out, in), of the columns of a transposed (…, in, 2 out), of a (…, 2 out)
    bias, or their interleaved even/odd entries); ``row`` a (1, d) matrix used as a vector (a shared-expert
    gate). ``rows``: stacked experts stored flat, (E rows, d), expert e its rows e rows .. (e + 1) rows (DBRX:
    ``w1``/``v1`` (out, in) per expert, ``w2`` (in, out), layout ``t``); a patch of expert e names the slice
    ``path[a:b]``.
    """

    path: str
    layout: str = "linear"
    rows: int = 0  # experts stored flat, (E * rows, d): expert e is rows e*rows .. (e+1)*rows (DBRX)

    def read(self, layer) -> torch.Tensor:
        if self.layout == "activation":  # not a tensor: the module's own activation map (`ACTIVATION_CALLS`)
            return module_activation(offload.get(layer, self.path))
        t = offload.read(layer, self.path)  # loaded by accelerate's hook when the model offloads it
        if self.rows:
            t = t.reshape(-1, self.rows, t.shape[-1])
        if self.layout in FUSED:
            half = FUSED[self.layout]
            index = half.index(t.shape[half.axis])
            t = t[..., index] if half.axis == -1 else t[..., index, :]
            return t.transpose(-1, -2) if half.transposed else t
        if self.layout in ("conv1d", "t"):
            return t.transpose(-1, -2)
        if self.layout == "row":
            return t[0]
        return t


def _gemma3n(mlp):
    """Gemma 3n's MLP: activation sparsity (a cut at mean + k std of the gate's pre-activations) before act_fn."""
    if getattr(mlp, "activation_sparsity", 0.0) > 0.0:
        return lambda q: mlp.act_fn(mlp._gaussian_topk(q))
    return mlp.act_fn


#: MLP modules whose forward computes more than their activation module between the gate and the product: the map
#: of their pre-activations, by class. Any other MLP's own map is its activation module (`module_activation`).
ACTIVATION_CALLS = {"Gemma3nTextMLP": _gemma3n}
ACTIVATION_ATTRS = ("act_fn", "activation_fn", "act", "activation")


def module_activation(mlp):
    """The MLP module's own map of its gate pre-activations (the spec's ``activation = "module"``)."""
    call = ACTIVATION_CALLS.get(type(mlp).__name__)
    if call is not None:
        return call(mlp)
    return next(getattr(mlp, a) for a in ACTIVATION_ATTRS if callable(getattr(mlp, a, None)))


def has_module_activation(mlp) -> bool:
    return type(mlp).__name__ in ACTIVATION_CALLS or any(
        isinstance(getattr(mlp, a, None), torch.nn.Module) for a in ACTIVATION_ATTRS)


@dataclass(frozen=True)
class Adapter:
    """How one kind of layer maps onto a spec.

    ``mode`` says how the MLP branch meets the residual stream:
    ``sequential``: u is the input of ``u_module``; the output of ``branch_module`` is added to u.
    ``parallel``: x (the layer input) is the input of ``u_module`` (the MLP's pre-norm), the
    attention output is the output of ``attn_module``, u = x + attention; ``branch_module``'s output
    is added to both. ``post_ln``: u is the input of ``u_module``; ``branch_module`` returns the
    sub-block's output y itself (BERT's output LayerNorm after the add).

    ``chain``: a branch split over several modules of the layer, the ones from u to the branch module's
    input in order (BERT's ``intermediate``, after its pre-LN where it has one; OPT's ``fc1`` and activation
    written on the layer itself, after its pre-LN): the branch module is then fed their output h and
    gives ``c * branch`` (OPT's ``fc2``), ``u + branch`` or ``LN(u + branch)`` from (h, u) (BERT's
    ``output``, ``adds_residual``), or ``LN(u + h)`` (the post-LN of OPT with ``do_layer_norm_before=False``
    and TrOCR: the chain ends with the down map).

    ``products``: (matrix, module path) pairs of modules whose output in the contextual run is the kernel's
    contextual product of that matrix (its ``GIVEN``; checked numerically, `product_modules`): the patches
    take those products from the contextual run instead of reading the matrix once more.

    ``parts``: a branch spread over sibling modules that read the same input and whose outputs the layer sums
    (Granite 4 hybrid's MoE and shared MLP): the branch module's output is then the whole branch in the
    patched run, and each part returns zeros. ``outer_scale`` $\alpha$ and ``after_add``: the state right after
    the add is $r = \alpha u + \beta\\,b$ (MiniMax: $\alpha\\,\\mathrm{norm}(u) + \beta\\,\\mathrm{MoE}$, u then the
    norm's output), the spec's ``branch_scale`` is $\beta / \alpha$, and the layer may go on after it with
    position-wise computation that reads no other token (Gemma 4's per-layer input and layer scalar, Gemma 3n's
    AltUp correction): the patches make $r$ exact, so all that follows is (docs/theory.md).
    """

    spec: BlockSpec
    mode: str
    u_module: str
    branch_module: str
    params: dict[str, Param]
    attn_module: str = ""
    skip: tuple[str, ...] = ()  # modules before the branch module that the patched run does not need
    adds_residual: bool = False  # the branch module returns u + branch itself (BLOOM's, MPT's MLP(h, residual))
    arity: int = 0  # the branch module returns a tuple of this length (Llama 4's MoE: output, router logits)
    chain: tuple[str, ...] = ()  # a split branch: the modules from u to the branch module (see above)
    products: tuple[tuple[str, str], ...] = ()  # (matrix, module) pairs: see above
    parts: tuple[str, ...] = ()  # modules whose outputs the layer adds to the branch module's (see above)
    outer_scale: float = 1.0  # the state after the add is outer_scale * (u + c * branch) (see above)
    after_add: bool = False  # position-wise, context-free computation follows the add (see above)

    @property
    def last_module(self) -> str:
        """The last module of the branch to run: the branch module, or the last of its summed `parts`."""
        return self.parts[-1] if self.parts else self.branch_module

    @property
    def returns_sum(self) -> bool:
        """Whether the branch module's output is the sub-block's output y (not y - u)."""
        return self.mode == "post_ln" or self.adds_residual


@dataclass(frozen=True)
class Layout:
    """A model's decoder layers (``layers``: their path) and, per layer, its `Adapter` (None for a layer without
    an MLP branch)."""

    model_type: str
    layers: str
    kinds: tuple[Adapter, ...]
    encoder: bool = False
    checks: tuple[dict, ...] = ()  # the equivalence check of every layer (`check_adapter`)

    def __getitem__(self, n: int) -> Adapter | None:
        return self.kinds[n]

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def specs(self) -> list[BlockSpec]:
        """The distinct specs, in layer order (layers without an MLP have none)."""
        return list(dict.fromkeys(k.spec for k in self.kinds if k is not None))

    def patched(self) -> list[tuple[int, Adapter]]:
        """(n, adapter) of every layer with an MLP branch: the layers the patches change. A layer without one
        (`kinds` holds None: Nemotron-H's Mamba and attention layers) runs as it is; the next layer with an MLP
        absorbs what it changed (docs/theory.md, "The theory's full reach")."""
        return [(n, k) for n, k in enumerate(self.kinds) if k is not None]


def token_rows(t: torch.Tensor) -> torch.Tensor:
    """(T, d): the states of a batch of one, whether a layer holds them as (1, T, d) or as (T, d) rows (OPT)."""
    return t.reshape(-1, t.shape[-1])


def parameter_view(layer, name: str) -> torch.Tensor:
    """The parameter (or the stacked-expert slice ``path[e]``) a patch name refers to, detached, for
    reading: a view of a resident parameter; one loaded by accelerate's hook for an offloaded one."""
    path, _, index = name.partition("[")
    p = offload.read(layer, path)
    return p[offload.item(index)] if index else p


def layer_params(layer, adapter: Adapter) -> dict[str, torch.Tensor]:
    """A layer's canonical parameters (views of its own), in one dtype: a parameter that transformers keeps
    in float32 in a model of another dtype (DeepSeek-V3's router weight and selection bias since
    transformers 5.24: ``_keep_in_fp32_modules_strict``) is cast to the dtype of the others, the dtype of the
    residual stream the kernels compute in (the model itself computes that router in float32 whatever its
    dtype, as it computes RMSNorm: the float32 upcasts `numeric.hf.probe.Float64Mode` widens)."""
    params = {canon: p.read(layer) for canon, p in adapter.params.items()}
    tensors = {k: v for k, v in params.items() if isinstance(v, torch.Tensor)}  # not the module's own activation
    dtypes = Counter(t.dtype for t in tensors.values() if t.is_floating_point())
    if len(dtypes) > 1:
        common = dtypes.most_common(1)[0][0]
        params.update({k: v.to(common) if v.is_floating_point() else v for k, v in tensors.items()})
    return params
