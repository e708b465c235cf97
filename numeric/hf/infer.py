r"""What a Hugging Face model's layers are, inferred: a `Layout` of per-layer `Adapter`\ s and `BlockSpec`\ s.

No table of model families: the layout is read from the model itself.

1. **The decoder layers**: the `nn.ModuleList` whose items are of a class the model declares in
   ``_no_split_modules`` (transformers' unit of placement), else the longest list of identical blocks.
2. **One layer, in float64, by probing**: the model runs once on random token ids with hooks that record
   every layer's call; each layer is then copied to float64 and re-run on what it was given with hooks on
   all its submodules. From what each submodule received and returned:

   - the MLP branch: the layer's child named like an MLP (``mlp``, ``feed_forward``, ``ffn``, ``moe``,
     ... or a class named ``*MLP``/``*MoE``/``*FeedForward``), or the parent of the output map
     transformers' tensor-parallel plan marks ``rowwise``; or a branch split over modules
     (`Adapter.chain`): BERT's ``intermediate``/``output`` (post-LN, or pre-LN), and an MLP written on
     the layer itself, up map -> activation module -> down map among its children (OPT, BioGPT, TrOCR);
   - the norms around it: a norm whose output *is* the MLP's input (pre-norm), one whose input is the
     MLP's output (post-norm inside the branch); each norm identified by evaluating the candidates
     (RMSNorm or LayerNorm, scale $w$ or $1 + w$, with or without bias, the module's eps) on inputs
     of several magnitudes, small ones included where eps decides;
   - the residual: $y = u + c\,b$ (sequential; $u$ the pre-norm's input) or $y = x + a + c\,b$
     (parallel; $x$ the layer input, $a$ the attention output), the branch multiplier $c$ fitted and
     recognised in the config (granite's ``residual_multiplier``);
   - the MLP's maps: the linear submodules that received the MLP input (gate/up, or a fused gate_up)
     and the one whose output is the MLP output (down), stacked expert tensors, routers, shared experts;
     biases where the modules have them; storage (out, in) or transposed (GPT-2's Conv1D);
   - the activation: the MLP's activation module's class, else the config's name.

3. **The mandatory equivalence check** (`check_adapter`): the spec's generated kernel (`forward`) must
   reproduce the layer's own output on what the layer was given in the probe run, and the composed
   modules on random inputs of several magnitudes, at every layer, to $10^{-12}$ relative in float64
   (``FLOAT64_BOUND``); where the modules themselves compute in float32 (Gemma's norms, float32 router
   softmaxes: seen by a `torch.overrides.TorchFunctionMode` that records every result's dtype), to
   ``FLOAT32_INSIDE_BOUND``, and the report says so. Where candidates remain (which input map is the
   gate, MoE routing options), the check picks the one that reproduces the module. Nothing else is
   accepted: a failure names the layer, what differs and the closest spec tried.

A user's spec (``spec=``) with a parameter map (``params={canonical name: path in the layer}``)
replaces steps 2's spec and map; the check runs all the same.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import torch

from numeric import offload
from numeric.offload import get
from symbolic.errors import SpecError
from symbolic.spec import ACTIVATIONS, Biases, BlockSpec, MLPSpec, MoESpec, NormSpec

FLOAT64_BOUND = 1e-12
FLOAT32_INSIDE_BOUND = 2e-5
PROBE_TOKENS = 6
MAX_CANDIDATES = 16  # specs tried per layer kind before refusing (each new one costs a derivation)
PROBE_SCALES = (1.0, 1e-3)  # times sqrt(eps) too: where eps decides the norm

#: transformers' activation classes and config names -> the spec's names.
ACTIVATION_CLASSES = {"SiLU": "silu", "SiLUActivation": "silu", "GELUActivation": "gelu", "GELU": "gelu",
                      "PytorchGELUTanh": "gelu_tanh", "GELUTanh": "gelu_tanh", "NewGELUActivation": "gelu_tanh",
                      "FastGELUActivation": "gelu_tanh", "GeluTanh": "gelu_tanh", "ReLU": "relu",
                      "ReLUSquaredActivation": "relu2", "Sigmoid": "sigmoid", "Tanh": "tanh",
                      # BLOOM's own tanh GELU rounds sqrt(2/pi) to 0.79788456: declared as it computes
                      "BloomGelu": "x*(1 + tanh(79788456/100000000*x*(1 + 44715/1000000*x*x)))/2"}
ACTIVATION_NAMES = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                    "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_python": "gelu", "relu": "relu",
                    "relu2": "relu2", "sigmoid": "sigmoid", "tanh": "tanh"}
#: the candidates when neither a module nor the config names the activation (``F.silu`` called as a function):
#: silu first, the gated MLPs' usual one; the equivalence check decides.
UNNAMED_ACTIVATIONS = ("silu", *(a for a in ACTIVATIONS if a not in ("identity", "silu")))
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "mlp_block", "feedforward")
MLP_CLASS_MARKS = ("MLP", "MoE", "Moe", "FeedForward", "Ffn", "FFN")
ATTENTION_MARKS = ("attn", "attention", "self_attention")
EPS_ATTRS = ("eps", "variance_epsilon", "epsilon", "variance_eps")
MULTIPLIER_KEYS = ("residual_multiplier", "residual_scale", "mlp_residual_multiplier")


# --------------------------------------------------------------------------- the records


#: Halves of a fused gate/up tensor: layout -> (axis of the fused dimension, interleaved, which half, stored
#: transposed). ``rows*`` (…, 2 out, in) and ``tcols*`` (…, in, 2 out) matrices, per expert when stacked;
#: ``half*``/``even``/``odd`` (…, 2 out) biases. ``0``/``1``: the first or second half; ``even``/``odd``: the
#: interleaved columns [gate0, up0, gate1, up1, ...] (transformers' experts declaring ``is_concatenated=False``).
FUSED = {"rows0": (-2, False, 0, False), "rows1": (-2, False, 1, False),
         "rows_even": (-2, True, 0, False), "rows_odd": (-2, True, 1, False),
         "tcols0": (-1, False, 0, True), "tcols1": (-1, False, 1, True),
         "tcols_even": (-1, True, 0, True), "tcols_odd": (-1, True, 1, True),
         "half0": (-1, False, 0, False), "half1": (-1, False, 1, False),
         "even": (-1, True, 0, False), "odd": (-1, True, 1, False)}


def fused_index(n: int, interleaved: bool, which: int) -> slice:
    """The indices of one half of a fused dimension of size n."""
    return slice(which, None, 2) if interleaved else slice(which * (n // 2), (which + 1) * (n // 2))


def fuse(first: torch.Tensor, second: torch.Tensor, axis: int, interleaved: bool) -> torch.Tensor:
    """The two halves joined along ``axis`` (negative): concatenated, or interleaved [a0, b0, a1, b1, ...]; the
    inverse of `fused_index`."""
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
    gate).
    """

    path: str
    layout: str = "linear"

    def read(self, layer) -> torch.Tensor:
        t = offload.read(layer, self.path)  # loaded by accelerate's hook when the model offloads it
        if self.layout in FUSED:
            axis, interleaved, which, transposed = FUSED[self.layout]
            index = fused_index(t.shape[axis], interleaved, which)
            t = t[..., index] if axis == -1 else t[..., index, :]
            return t.transpose(-1, -2) if transposed else t
        if self.layout in ("conv1d", "t"):
            return t.transpose(-1, -2)
        if self.layout == "row":
            return t[0]
        return t


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

    @property
    def returns_sum(self) -> bool:
        """Whether the branch module's output is the sub-block's output y (not y - u)."""
        return self.mode == "post_ln" or self.adds_residual


@dataclass(frozen=True)
class Layout:
    """A model's decoder layers (``layers``: their path) and, per layer, its `Adapter`."""

    model_type: str
    layers: str
    kinds: tuple[Adapter, ...]
    encoder: bool = False
    checks: tuple[dict, ...] = ()  # the equivalence check of every layer (`check_adapter`)

    def __getitem__(self, n: int) -> Adapter:
        return self.kinds[n]

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def specs(self) -> list[BlockSpec]:
        """The distinct specs, in layer order."""
        return list(dict.fromkeys(k.spec for k in self.kinds))


# --------------------------------------------------------------------------- finding the layers


def decoder_layers(model) -> str:
    """The path of the model's list of decoder layers."""
    declared = set(getattr(model, "_no_split_modules", None) or ())
    best, best_key = None, None
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        classes = {type(m).__name__ for m in module}
        key = (bool(classes & declared), len(module), -name.count("."))
        if best_key is None or key > best_key:
            best, best_key = name, key
    if best is None:
        raise SpecError(f"model type {model.config.model_type!r}: no list of layers found")
    return best


# --------------------------------------------------------------------------- probing


@dataclass
class Call:
    """What one module received (its first tensor argument) and returned (its first tensor output)."""

    inp: torch.Tensor | None
    out: torch.Tensor | None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    arity: int = 0  # the output was a tuple of this length (0: a tensor)


def first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    if hasattr(value, "last_hidden_state"):
        return value.last_hidden_state
    return None


def _input_of(args, kwargs):
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for key in ("hidden_states", "hidden_state", "x", "input", "inputs"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    return first_tensor(args)


@torch.no_grad()
def layer_calls(model, layers_path: str, ids: torch.Tensor) -> list[Call]:
    """Every layer's call (arguments, output) in one run of the model on ``ids``. Refused: a layer called
    more than once per forward (a looped or recurrent stack: one patch per layer cannot follow it), a layer
    not called, and a second stack of the model's decoder-layer classes that runs (its context effect would
    be left unpatched)."""
    layers = get(model, layers_path)
    calls: dict[int, Call] = {}
    counts: dict[int, int] = {}
    handles = []
    for n, layer in enumerate(layers):
        def hook(_m, args, kwargs, out, n=n):
            counts[n] = counts.get(n, 0) + 1
            if n not in calls:
                calls[n] = Call(_input_of(args, kwargs), first_tensor(out), args, dict(kwargs))
        handles.append(layer.register_forward_hook(hook, with_kwargs=True))
    declared = set(getattr(model, "_no_split_modules", None) or ())
    others: set[str] = set()
    ours = {id(m) for m in layers}
    for name, stack in model.named_modules():  # other lists of the declared layer classes (stacks)
        if not isinstance(stack, torch.nn.ModuleList) or stack is layers:
            continue
        for i, module in enumerate(stack):
            if type(module).__name__ in declared and id(module) not in ours:
                handles.append(module.register_forward_hook(lambda _m, _a, _o, n=f"{name}.{i}": others.add(n)))
    try:
        model(ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in range(len(layers)) if n not in calls]
    if missing:
        raise SpecError(f"layers {missing} of {layers_path} were not called in a forward pass")
    looped = {n: k for n, k in counts.items() if k > 1}
    if looped:
        n, k = next(iter(looped.items()))
        raise SpecError(f"layer {n} ({layers_path}.{n}) runs {k} times in one forward (a looped or recurrent "
                        "stack): one patch per layer cannot follow it")
    inside = [o for o in others if not o.startswith(layers_path + ".")]
    if inside:
        raise SpecError(f"a second stack of decoder layers runs ({sorted(inside)[0]}, besides {layers_path}): its "
                        "share of the context's effect would be left unpatched")
    return [calls[n] for n in range(len(layers))]


def _double(value):
    if isinstance(value, torch.Tensor):
        return value.double() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_double(v) for v in value)
    if isinstance(value, list):
        return [_double(v) for v in value]
    if isinstance(value, dict):
        return {k: _double(v) for k, v in value.items()}
    return value


def float64_copy(layer):
    """A float64 copy of one layer (the model is left as it is)."""
    return copy.deepcopy(layer).double().eval()


@torch.no_grad()
def trace(layer64, call: Call) -> tuple[dict[str, Call], torch.Tensor, torch.Tensor]:
    """Run a float64 layer copy on its recorded call with hooks on every submodule:
    ({path: Call}, layer input, layer output)."""
    record: dict[str, Call] = {}
    handles = []
    for name, module in layer64.named_modules():
        if not name:
            continue

        def hook(_m, args, kwargs, out, name=name):
            if name not in record:  # copies: a layer may add into a submodule's output in place (Falcon)
                record[name] = Call(_clone(_input_of(args, kwargs)), _clone(first_tensor(out)),
                                    arity=len(out) if isinstance(out, tuple) else 0)
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    args, kwargs = _double(call.args), _double(call.kwargs)
    try:
        with Float64Mode():
            out = first_tensor(layer64(*args, **kwargs))
    finally:
        for h in handles:
            h.remove()
    return record, _input_of(args, kwargs), out


def _clone(t):
    return t.detach().clone() if isinstance(t, torch.Tensor) else t


def _same(a, b) -> bool:
    return a is not None and b is not None and a.shape == b.shape and bool(torch.equal(a, b))


# --------------------------------------------------------------------------- norms


def is_norm(module) -> bool:
    name = type(module).__name__
    return ("Norm" in name or "LayerNorm" in name) and "Group" not in name and "Batch" not in name


def _norm_value(v, kind, scale, w, b, eps):
    v = v.double()
    if kind == "layer":
        v = v - v.mean(-1, keepdim=True)
    out = v / torch.sqrt((v * v).mean(-1, keepdim=True) + eps)
    if scale == "plain":
        out = out * w
    elif scale == "one_plus":
        out = out * (1 + w)
    return out + b if b is not None else out


def _eps_candidates(module, cfg) -> list[float]:
    found = [float(getattr(module, a)) for a in EPS_ATTRS if isinstance(getattr(module, a, None), (int, float))]
    found += [float(getattr(cfg, k)) for k in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps",
                                                "epsilon") if isinstance(getattr(cfg, k, None), (int, float))]
    return list(dict.fromkeys(found + [1e-5, 1e-6]))


@torch.no_grad()
def identify_norm(module, cfg, d: int) -> tuple[NormSpec, dict[str, str]]:
    """The norm's spec and its parameters ({'scale'|'bias': attribute}), from its outputs on random inputs
    of several magnitudes (evaluated in float64 on a copy)."""
    m = copy.deepcopy(module).double()
    params = dict(m.named_parameters(recurse=False))
    w = params.get("weight")
    b = params.get("bias")
    if w is not None and w.shape != (d,) or b is not None and b.shape != (d,):
        raise SpecError(f"{type(module).__name__}: parameters of shape {[tuple(p.shape) for p in params.values()]}, "
                        f"not ({d},)")
    gen = torch.Generator().manual_seed(11)
    tries = []
    for eps in _eps_candidates(module, cfg):
        xs = [torch.randn(3, d, generator=gen, dtype=torch.float64) * s
              for s in (1.0, 3.0, math.sqrt(eps) if eps > 0 else 1e-4)]
        xs[-1] = xs[-1] + 0.1 * xs[-1].mean()  # a mean, for LayerNorm vs RMSNorm at small scale
        outs = [m(x) for x in xs]
        for kind in ("rms", "layer"):
            for scale in (("plain", "one_plus") if w is not None else ("none",)):
                errs = [float((_norm_value(x, kind, scale, w, b, eps) - o).norm() / o.norm().clamp_min(1e-300))
                        for x, o in zip(xs, outs, strict=True)]
                tries.append((max(errs), kind, scale, eps))
    err, kind, scale, eps = min(tries)
    if err > FLOAT32_INSIDE_BOUND:
        raise SpecError(f"{type(module).__name__} is none of RMSNorm/LayerNorm with scale w or 1 + w "
                        f"(closest: {kind}, {scale}, eps={eps:g}, relative error {err:.1e})")
    names = {}
    if w is not None:
        names["scale"] = "weight"
    if b is not None:
        names["bias"] = "bias"
    return NormSpec(kind=kind, eps=eps, scale=scale, bias=b is not None), names


# --------------------------------------------------------------------------- the MLP


def find_mlp(layer) -> str:
    for name, _child in layer.named_children():
        if name in MLP_NAMES:
            return name
    for name, child in layer.named_children():
        if any(mark in type(child).__name__ for mark in MLP_CLASS_MARKS):
            return name
    raise SpecError(f"{type(layer).__name__}: no MLP branch (no child named {'/'.join(MLP_NAMES)} or of an "
                    "MLP/MoE/FeedForward class, no up map -> activation module -> down map among its children, "
                    "no BERT-style intermediate/output pair)")


def _activation(mlp, cfg) -> list[str]:
    """Candidate activations: the MLP's activation modules' (by class), the config's; every named one if
    neither names one (each candidate costs a derivation, so the list stays short)."""
    # an activation held as a module attribute is a registered submodule: the scan by class finds it
    found = [ACTIVATION_CLASSES[type(m).__name__] for m in mlp.modules() if type(m).__name__ in ACTIVATION_CLASSES]
    for key in ("hidden_activation", "hidden_act", "activation_function", "activation", "hidden_activation_fn"):
        name = getattr(cfg, key, None)
        if isinstance(name, str) and name in ACTIVATION_NAMES:
            found.append(ACTIVATION_NAMES[name])
    if found:  # what the module or the config names; every named activation only when neither does
        return list(dict.fromkeys(found))
    return list(UNNAMED_ACTIVATIONS)


def _linears(mlp, mlp_path: str, record: dict[str, Call]) -> list[tuple[str, torch.nn.Module, Call]]:
    out = []
    for name, module in mlp.named_modules():
        w = getattr(module, "weight", None)
        if name and isinstance(w, torch.Tensor) and w.dim() == 2 and not is_norm(module):
            call = record.get(f"{mlp_path}.{name}")
            if call is not None:
                out.append((name, module, call))
    return out


def _matrix(path: str, module, call: Call) -> Param:
    w = module.weight
    d_in, d_out = call.inp.shape[-1], call.out.shape[-1]
    if "Conv1D" in type(module).__name__ or (w.shape == (d_in, d_out) and d_in != d_out):
        return Param(f"{path}.weight", "conv1d")
    return Param(f"{path}.weight")


def dense_maps(mlp, mlp_path: str, record: dict[str, Call],
               residual: torch.Tensor | None = None) -> list[tuple[str, dict[str, Param], Biases]]:
    """Candidate (kind, parameter map, biases) of a dense or gated MLP, the gate/up order both ways."""
    mcall = record[mlp_path]
    lin = _linears(mlp, mlp_path, record)
    ins = [x for x in lin if _same(x[2].inp, mcall.inp)]
    outs = [x for x in lin if _same(x[2].out, mcall.out)]
    if not outs and residual is not None:  # MLP(z, u) = u + down(...): the down map's output is the difference
        outs = [x for x in lin if x[2].out is not None and x[2].out.shape == mcall.out.shape and
                float((mcall.out - residual - x[2].out).norm()) <= 1e-12 * float(mcall.out.norm())]
    called = {id(mod.weight) for _n, mod, _c in lin}
    raw = [f"{n} {tuple(p.shape)}" for n, p in mlp.named_parameters() if p.dim() >= 2 and id(p) not in called]
    if not ins and not outs and raw:  # matrices its forward uses directly (DBRX's experts: flat (E*m, d) w1/v1/w2)
        raise SpecError(f"{mlp_path} ({type(mlp).__name__}): no linear module reads its input or gives its output; "
                        f"the matrices {', '.join(raw)} are used by its forward directly, a layout not modelled")
    if len(outs) != 1 or not ins:
        raise SpecError(f"{mlp_path} ({type(mlp).__name__}): expected linear maps fed by its input and one whose "
                        f"output is its output; found {len(ins)} input and {len(outs)} output maps")
    down_name, down, dcall = outs[0]
    m = dcall.inp.shape[-1]
    base = {"W_down": _matrix(f"{mlp_path}.{down_name}", down, dcall)}
    mid = next((n for n, mod in mlp.named_modules() if n and is_norm(mod) and
                _same(record.get(f"{mlp_path}.{n}", Call(None, None)).out, dcall.inp)), None)
    if mid is not None:  # a norm on the hidden activations before W_down (BitNet's ffn_sub_norm)
        base["__mid__"] = Param(f"{mlp_path}.{mid}")
    bias = {"down": getattr(down, "bias", None) is not None}
    if bias["down"]:
        base["b_down"] = Param(f"{mlp_path}.{down_name}.bias")
    candidates = []
    if len(ins) == 1:
        name, mod, call = ins[0]
        width = call.out.shape[-1]
        if width == m:
            params = {**base, "W_up": _matrix(f"{mlp_path}.{name}", mod, call)}
            if mod.bias is not None:
                params["b_up"] = Param(f"{mlp_path}.{name}.bias")
            return [("dense", params, Biases(up=mod.bias is not None, down=bias["down"]))]
        if width == 2 * m and mod.bias is None:  # fused gate_up
            for gate, up in (("rows0", "rows1"), ("rows1", "rows0")):
                params = {**base, "W_gate": Param(f"{mlp_path}.{name}.weight", gate),
                          "W_up": Param(f"{mlp_path}.{name}.weight", up)}
                candidates.append(("gated", params, Biases(down=bias["down"])))
            return candidates
        raise SpecError(f"{mlp_path}.{name}: output width {width}, neither the hidden width {m} nor twice it")
    if len(ins) == 2:
        ordered = sorted(ins, key=lambda x: 0 if any(k in x[0] for k in ("gate", "w1", "wi_0")) else 1)
        for g, u in (ordered, ordered[::-1]):
            params = {**base, "W_gate": _matrix(f"{mlp_path}.{g[0]}", g[1], g[2]),
                      "W_up": _matrix(f"{mlp_path}.{u[0]}", u[1], u[2])}
            if g[1].bias is not None:
                params["b_gate"] = Param(f"{mlp_path}.{g[0]}.bias")
            if u[1].bias is not None:
                params["b_up"] = Param(f"{mlp_path}.{u[0]}.bias")
            candidates.append(("gated", params, Biases(gate=g[1].bias is not None, up=u[1].bias is not None,
                                                       down=bias["down"])))
        return candidates
    raise SpecError(f"{mlp_path}: {len(ins)} linear maps read the MLP input; 1 (dense or fused) or 2 (gated) "
                    "are modelled")


def moe_maps(mlp, mlp_path: str, record: dict[str, Call], cfg) -> list[tuple[MoESpec, dict[str, Param]]]:
    """Candidate (MoE spec, parameter map) of a mixture of experts with stacked expert tensors."""
    experts = next(((n, m) for n, m in mlp.named_children()
                    if any(p.dim() == 3 for p in m.parameters(recurse=False))), None)
    if experts is None:
        raise SpecError(f"{mlp_path}: a mixture of experts without stacked expert tensors is not modelled")
    ename, emod = experts
    d = record[mlp_path].inp.shape[-1]  # the model width
    E, expert_params = expert_maps(emod, f"{mlp_path}.{ename}", d)
    router = next(((n, m) for n, m in mlp.named_modules() if n and n != ename and not n.startswith(ename + ".") and
                   isinstance(getattr(m, "weight", None), torch.Tensor) and tuple(m.weight.shape) == (E, d)), None)
    if router is None:
        raise SpecError(f"{mlp_path}: no router of shape ({E}, {d}) found")
    rname, rmod = router
    own = {n: t for n, t in [*rmod.named_parameters(recurse=False), *rmod.named_buffers(recurse=False)]}
    extra = sorted(set(own) - {"weight", "bias", "e_score_correction_bias"})
    if extra:
        raise SpecError(f"{mlp_path}.{rname}: router parameters/buffers {extra} are not modelled")
    router_params = {}
    if own.get("bias") is not None:
        router_params["b_router"] = Param(f"{mlp_path}.{rname}.bias")
    if own.get("e_score_correction_bias") is not None:
        router_params["b_select"] = Param(f"{mlp_path}.{rname}.e_score_correction_bias")
    block_bias = getattr(mlp, "expert_bias", None)  # LFM2-MoE: the selection bias a buffer of the block, not the router
    if isinstance(block_bias, torch.Tensor) and tuple(block_bias.shape) == (E,) and "b_select" not in router_params:
        router_params["b_select"] = Param(f"{mlp_path}.expert_bias")
    params = {**expert_params, "W_router": Param(f"{mlp_path}.{rname}.weight"), **router_params}
    for n, m in mlp.named_children():
        if n in (ename, rname):
            continue
        if rname.startswith(n + "."):  # the router sits inside this child: nothing else may
            if sum(p.numel() for p in m.parameters()) != sum(p.numel() for p in rmod.parameters()):
                raise SpecError(f"{mlp_path}.{n}: parameters besides the router {rname} are not modelled")
            continue
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and tuple(w.shape) == (1, d):
            params["shared.w_gate"] = Param(f"{mlp_path}.{n}.weight", "row")
            continue
        sub = {k: v for k, v in m.named_modules() if isinstance(getattr(v, "weight", None), torch.Tensor)}
        names = {k.split(".")[-1] for k in sub if k}
        if {"gate_proj", "up_proj", "down_proj"} <= names:
            for canon, key in (("shared.W_gate", "gate_proj"), ("shared.W_up", "up_proj"),
                               ("shared.W_down", "down_proj")):
                if getattr(sub[key], "bias", None) is not None:
                    raise SpecError(f"{mlp_path}.{n}.{key}: a shared-expert bias is not modelled")
                params[canon] = Param(f"{mlp_path}.{n}.{key}.weight")
        elif list(m.parameters()):
            raise SpecError(f"{mlp_path}.{n} ({type(m).__name__}): a part of the mixture that is not modelled")
    if "shared.w_gate" in params and "shared.W_gate" not in params:
        raise SpecError(f"{mlp_path}: a shared-expert gate without a shared expert")
    shared = "none" if "shared.W_gate" not in params else "gated" if "shared.w_gate" in params else "plain"
    top_k = getattr(cfg, "num_experts_per_tok", None) or getattr(cfg, "moe_topk", None) or \
        getattr(cfg, "top_k", None)
    if not isinstance(top_k, int):
        raise SpecError(f"{mlp_path}: the config names no top-k (num_experts_per_tok)")
    renorm = bool(getattr(cfg, "norm_topk_prob", False))
    sigmoid = "b_select" in params or getattr(cfg, "scoring_func", "") == "sigmoid"
    groups = (getattr(cfg, "n_group", None) or 1, getattr(cfg, "topk_group", None) or 1)
    scale = float(getattr(cfg, "routed_scaling_factor", None) or 1.0)
    routings = [("sigmoid" if sigmoid else "softmax", "before_topk", renorm),
                ("sigmoid" if sigmoid else "softmax", "before_topk", not renorm)]
    if not sigmoid:
        routings.append(("softmax", "after_topk", False))
    weightings = ("output", "input") if getattr(cfg, "model_type", "").startswith("llama4") else ("output",)
    routings += [("softmax" if sigmoid else "sigmoid", "before_topk", r) for r in (renorm, not renorm)]
    out = []
    for g in dict.fromkeys([groups, (1, 1)]):
        for rs in dict.fromkeys([scale, 1.0]):
            for (scoring, softmax, rn), weighting in itertools.product(routings, weightings):
                try:
                    moe = MoESpec(experts=E, top_k=top_k, softmax=softmax, renormalize=rn, shared_expert=shared,
                                  expert="gated", scoring=scoring, selection_bias="b_select" in params,
                                  groups=g[0], topk_groups=g[1], routed_scale=rs, router_bias="b_router" in params,
                                  weighting=weighting, expert_bias="experts.b_down" in params)
                except ValueError:
                    continue
                out.append((moe, params))
    out.sort(key=lambda c: c[0].weighting != weightings[-1])  # a type that names input weighting: it first
    return out


def expert_maps(emod, path: str, d: int) -> tuple[int, dict[str, Param]]:
    r"""(E, the canonical expert parameters) of stacked experts: ``gate_up_proj`` and ``down_proj``, with their
    biases ``gate_up_proj_bias`` (E, 2m) and ``down_proj_bias`` (E, d) where the module has them.

    Storage as transformers' experts declare it (``use_experts_implementation``: ``is_transposed``,
    ``is_concatenated``), else read from the shapes: (E, 2m, d) and (E, d, m) stored (out, in), (E, d, 2m) and
    (E, m, d) stored (in, out); gate and up the two halves of the fused dimension, or its even and odd entries
    (interleaved, gpt-oss).
    """
    stacked = {n: p for n, p in emod.named_parameters(recurse=False)}
    names = {"gate_up_proj", "down_proj"}
    biased = names | {"gate_up_proj_bias", "down_proj_bias"}
    if set(stacked) not in (names, biased):
        raise SpecError(f"{path}: expert tensors {sorted(stacked)}; modelled: gate_up_proj, down_proj, with or "
                        "without their biases gate_up_proj_bias, down_proj_bias")
    if getattr(emod, "has_post_expert_norm", False) is True:
        raise SpecError(f"{path}: a norm after each expert (has_post_expert_norm) is not modelled")
    E = stacked["gate_up_proj"].shape[0]
    gu, dn = tuple(stacked["gate_up_proj"].shape[1:]), tuple(stacked["down_proj"].shape[1:])
    plain = gu[1] == d and dn[0] == d and gu[0] == 2 * dn[1]  # (E, 2m, d) and (E, d, m)
    transposed = gu[0] == d and dn[1] == d and gu[1] == 2 * dn[0]  # (E, d, 2m) and (E, m, d)
    declared = getattr(emod, "is_transposed", None)
    if isinstance(declared, bool) and plain and transposed:
        plain = not declared  # square shapes: the declaration decides
    if not (plain or transposed) or isinstance(declared, bool) and declared == plain:
        raise SpecError(f"{path}: gate_up_proj {gu} and down_proj {dn} per expert fit neither (2m, {d}) with "
                        f"({d}, m) nor ({d}, 2m) with (m, {d})"
                        + ("" if not isinstance(declared, bool) else f" as declared (is_transposed={declared})"))
    halves = ("_even", "_odd") if getattr(emod, "is_concatenated", True) is False else ("0", "1")
    fused = "rows" if plain else "tcols"
    params = {"experts.W_gate": Param(f"{path}.gate_up_proj", fused + halves[0]),
              "experts.W_up": Param(f"{path}.gate_up_proj", fused + halves[1]),
              "experts.W_down": Param(f"{path}.down_proj", "linear" if plain else "t")}
    if "down_proj_bias" in stacked:
        bias = ("even", "odd") if halves[0] == "_even" else ("half0", "half1")
        params.update({"experts.b_gate": Param(f"{path}.gate_up_proj_bias", bias[0]),
                       "experts.b_up": Param(f"{path}.gate_up_proj_bias", bias[1]),
                       "experts.b_down": Param(f"{path}.down_proj_bias")})
    return E, params


def expert_activations(mlp, cfg, act: str) -> list[tuple[str, str]]:
    r"""Candidate (σ, ψ) of the experts' gate $a = σ(\mathrm{gate}) \odot ψ(\mathrm{up})$: the clamped GLU of
    gpt-oss first where the experts (``limit``, ``alpha``) or the config (``swiglu_limit``, ``swiglu_alpha``)
    declare one, $σ(x) = \min(x, L)\,\mathrm{sigmoid}(α \min(x, L))$, $ψ(x) = \max(-L, \min(x, L)) + 1$;
    then ``act`` with ψ the identity. The equivalence check decides."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    declared = [(getattr(m, "limit", None), getattr(m, "alpha", None)) for m in mlp.modules()]
    declared.append((getattr(cfg, "swiglu_limit", None), getattr(cfg, "swiglu_alpha", None)))
    out = [(act, "identity")]
    limit, alpha = next(((lim, a) for lim, a in declared if number(lim) and number(a)), (None, None))
    if limit is not None:
        g = f"Min(x, {float(limit)!r})"
        out.insert(0, (f"{g}*sigmoid({float(alpha)!r}*{g})", f"Max({-float(limit)!r}, {g}) + 1"))
    return out


# --------------------------------------------------------------------------- one layer


@dataclass
class Flow:
    """The data flow around the MLP branch of one layer (paths relative to the layer)."""

    mlp: str
    pre: str | None
    post: str | None
    mode: str
    scale: float
    attn: str = ""
    shared_pre_norm: bool = False
    adds_residual: bool = False
    chain: tuple[str, ...] = ()  # a split branch (`Adapter.chain`); ``mlp`` is then the branch module
    act: str = ""  # the activation module of a chain, when it is one of its own (it runs; the others are skipped)
    maps: tuple[str, str] = ()  # a chain's up and down maps (linear modules)


def _fit(r: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(c, relative residual) of r ≈ c b."""
    c = float((r * b).sum() / (b * b).sum().clamp_min(1e-300))
    return c, float((r - c * b).norm() / r.norm().clamp_min(1e-300))


def _recognise(c: float, cfg) -> float:
    if abs(c - 1.0) <= 1e-9:
        return 1.0
    for key in MULTIPLIER_KEYS:
        v = getattr(cfg, key, None)
        if isinstance(v, (int, float)) and abs(v - c) <= 1e-9 * max(1.0, abs(v)):
            return float(v)
    return c


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(tokens, width): a layer reshapes its states to rows before the MLP (OPT)."""
    return t.reshape(-1, t.shape[-1])


def _same_rows(a, b) -> bool:
    return a is not None and b is not None and _same(_rows(a), _rows(b))


def _split_flow(layer64, record: dict[str, Call], y: torch.Tensor) -> Flow | None:
    """BERT's split MLP: ``intermediate`` (up map, activation) and ``output`` (down map, the add of the residual),
    the layer's output being ``output``'s. Post-LN: y = LN(u + W_down a), the LayerNorm inside ``output``;
    pre-LN: y = u + W_down a with a norm before the up map, a child of the layer (Megatron-BERT, XLM-RoBERTa-XL)
    or the first of ``intermediate`` (RoBERTa-PreLayerNorm)."""
    inter, out = getattr(layer64, "intermediate", None), getattr(layer64, "output", None)
    if inter is None or out is None or not hasattr(inter, "dense") or not hasattr(out, "dense"):
        return None
    if "intermediate" not in record or "output" not in record or not _same(record["output"].out, y):
        return None
    maps = ("intermediate.dense", "output.dense")
    post = next((f"output.{n}" for n, m in out.named_children() if is_norm(m)), None)
    if post is not None:
        return Flow("output", None, post, "post_ln", 1.0, adds_residual=True, chain=("intermediate",), maps=maps)
    none = Call(None, None)
    inner = next((f"intermediate.{n}" for n, m in inter.named_children() if is_norm(m) and
                  _same(record.get(f"intermediate.{n}", none).out, record.get(maps[0], none).inp)), None)
    if inner is not None:
        return Flow("output", inner, None, "sequential", 1.0, adds_residual=True, chain=("intermediate",), maps=maps)
    pre = next((n for n, m in layer64.named_children() if is_norm(m) and n in record and
                _same(record[n].out, record["intermediate"].inp)), None)
    if pre is None:
        return None
    return Flow("output", pre, None, "sequential", 1.0, adds_residual=True, chain=(pre, "intermediate"), maps=maps)


def _is_linear(module) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 2 and not is_norm(module)


def _virtual_flow(layer64, record: dict[str, Call], y: torch.Tensor, cfg) -> Flow | None:
    """An MLP written on the layer itself (OPT, BioGPT, TrOCR): children up map -> activation module -> down map,
    no MLP module. Pre-LN: y = u + c fc2(σ(fc1(norm(u)))), the branch module ``fc2``; post-LN (OPT with
    ``do_layer_norm_before=False``, TrOCR): y = LN(u + fc2(σ(fc1(u)))), the branch module the LayerNorm."""
    kids = {n: m for n, m in layer64.named_children() if n in record}
    norms = [n for n, m in kids.items() if is_norm(m)]
    for act, module in kids.items():
        if type(module).__name__ not in ACTIVATION_CLASSES:
            continue
        up = next((n for n, m in kids.items() if _is_linear(m) and _same(record[n].out, record[act].inp)), None)
        down = next((n for n, m in kids.items() if _is_linear(m) and _same(record[n].inp, record[act].out)), None)
        if up is None or down is None:
            continue
        z, h = record[up].inp, _rows(record[down].out)
        pre = next((n for n in norms if _same(record[n].out, z)), None)
        if pre is not None:
            c, err = _fit(_rows(y) - _rows(record[pre].inp), h)
            if err <= 1e-12:
                return Flow(down, pre, None, "sequential", _recognise(c, cfg), chain=(pre, up, act), act=act,
                            maps=(up, down))
        for post in norms:  # the norm that gives y from u + h
            c, err = _fit(_rows(record[post].inp) - _rows(z), h)
            if _same_rows(record[post].out, y) and err <= 1e-12 and abs(c - 1) <= 1e-12:
                return Flow(post, None, post, "post_ln", 1.0, chain=(up, act, down), act=act, maps=(up, down))
    return None


def _post_ln_flow(layer64, record: dict[str, Call], mlp: str, y: torch.Tensor) -> Flow | None:
    """A post-LN block around an MLP module (GPT-1): y = LN(u + MLP(u)), u the MLP's input, the norm a child of
    the layer; the MLP's maps one up map fed by its input and one down map giving its output. The chain is the
    MLP module, the branch module the LayerNorm."""
    mcall = record[mlp]
    for name, module in layer64.named_children():
        if not is_norm(module) or name not in record or not _same_rows(record[name].out, y):
            continue
        c, err = _fit(_rows(record[name].inp) - _rows(mcall.inp), _rows(mcall.out))
        if err > 1e-12 or abs(c - 1) > 1e-12:
            continue
        lin = _linears(get(layer64, mlp), mlp, record)
        ups = [n for n, _m, call in lin if _same(call.inp, mcall.inp)]
        downs = [n for n, _m, call in lin if _same(call.out, mcall.out)]
        if len(ups) == 1 and len(downs) == 1:
            return Flow(name, None, name, "post_ln", 1.0, chain=(mlp,), maps=(f"{mlp}.{ups[0]}", f"{mlp}.{downs[0]}"))
    return None


def flow(layer64, record: dict[str, Call], x: torch.Tensor, y: torch.Tensor, cfg) -> Flow:
    split = _split_flow(layer64, record, y)
    if split is not None:
        return split
    try:
        mlp = find_mlp(layer64)
    except SpecError:
        virtual = _virtual_flow(layer64, record, y, cfg)
        if virtual is None:
            raise
        return virtual
    mcall = record.get(mlp)
    if mcall is None or mcall.inp is None or mcall.out is None:
        raise SpecError(f"{mlp} was not called with a tensor in the layer's forward")
    norms = {n: c for n, c in record.items() if is_norm(get(layer64, n)) and not n.startswith(mlp + ".")}
    pre = next((n for n, c in norms.items() if _same(c.out, mcall.inp)), None)
    post = next((n for n, c in norms.items() if _same(c.inp, mcall.out)), None)
    b = norms[post].out if post else mcall.out
    u = norms[pre].inp if pre else mcall.inp
    c, err = _fit(y - u, b)
    if err <= 1e-12:
        return Flow(mlp, pre, post, "sequential", _recognise(c, cfg))
    if post is None and _same(mcall.out, y):  # the MLP adds the residual itself: MLP(z, u) = u + branch
        c, err = _fit(y - u, mcall.out - u)
        if err <= 1e-12 and abs(c - 1) <= 1e-12:
            return Flow(mlp, pre, post, "sequential", 1.0, adds_residual=True)
    post_ln = _post_ln_flow(layer64, record, mlp, y) if post is None else None
    if post_ln is not None:
        return post_ln
    if _same(u, x):
        attn = [n for n in record if "." not in n and any(k in n.lower() for k in ATTENTION_MARKS)]
        for a in attn:
            c, err = _fit(y - x - record[a].out, b)
            if err <= 1e-12:
                shared = pre is not None and _same(record[a].inp, mcall.inp)
                return Flow(mlp, pre, post, "parallel", _recognise(c, cfg), a, shared)
    raise SpecError(f"the output of {mlp} is not added to the residual stream as y = u + c * branch (sequential) "
                    f"or y = x + attention + c * branch (parallel): relative residual {err:.1e}")


def layer_adapters(layer64, record, x, y, cfg, model_type: str, name: str) -> tuple[Flow, list[Adapter]]:
    """Every candidate Adapter (with its spec) of one layer, most likely first."""
    fl = flow(layer64, record, x, y, cfg)
    d = x.shape[-1]
    norm_params: dict[str, Param] = {}
    pre_spec = post_spec = None
    if fl.pre:
        pre_spec, names = identify_norm(get(layer64, fl.pre), cfg, d)
        norm_params.update({f"mlp_pre_norm.{k}": Param(f"{fl.pre}.{v}") for k, v in names.items()})
    if fl.post:
        post_spec, names = identify_norm(get(layer64, fl.post), cfg, d)
        canon = "post_ln" if fl.mode == "post_ln" else "mlp_post_norm"
        norm_params.update({f"{canon}.{k}": Param(f"{fl.post}.{v}") for k, v in names.items()})
    if fl.chain:
        return fl, _split_adapters(layer64, record, fl, pre_spec, post_spec, norm_params, cfg, model_type, name)
    mlp = get(layer64, fl.mlp)
    acts = _activation(mlp, cfg)
    is_moe = any(p.dim() == 3 for p in mlp.parameters())
    attention = dataclasses.replace(BlockSpec.__dataclass_fields__["attention"].default_factory(),
                                    pre_norm=pre_spec if fl.shared_pre_norm else None)
    out = []
    if is_moe:  # the named activation only (a derivation per candidate); every one, silu first, if none is named
        maps = moe_maps(mlp, fl.mlp, record, cfg)
        for base in (acts if tuple(acts) == UNNAMED_ACTIVATIONS else acts[:1]):
            for act, up_act in expert_activations(mlp, cfg, base):
                for moe, params in maps:
                    mspec = MLPSpec(kind="moe", activation=act, up_activation=up_act, pre_norm=pre_spec,
                                    post_norm=post_spec, branch_scale=fl.scale)
                    spec = BlockSpec(name=name, mlp=mspec, residual=fl.mode, shared_pre_norm=fl.shared_pre_norm,
                                     attention=attention, moe=moe, hf_model_types=(model_type,))
                    out.append(_adapter(spec, fl, {**params, **norm_params}))
        return fl, out
    residual = None
    if fl.adds_residual:
        residual = record[fl.pre].inp if fl.pre else record[fl.mlp].inp
    for kind, params, biases in dense_maps(mlp, fl.mlp, record, residual):
        mid_spec, mid = None, params.pop("__mid__", None)
        if mid is not None:
            mid_spec, names = identify_norm(get(layer64, mid.path), cfg, record[mid.path].inp.shape[-1])
            params.update({f"mlp_mid_norm.{k}": Param(f"{mid.path}.{v}") for k, v in names.items()})
        for act in acts:
            mspec = MLPSpec(kind=kind, activation=act, bias=biases, pre_norm=pre_spec, post_norm=post_spec,
                            branch_scale=fl.scale, mid_norm=mid_spec)
            spec = BlockSpec(name=name, mlp=mspec, residual=fl.mode, shared_pre_norm=fl.shared_pre_norm,
                             attention=attention, hf_model_types=(model_type,))
            out.append(_adapter(spec, fl, {**params, **norm_params}))
    # most likely first: the named activation with each map order before the other activations
    first = [a for a in out if a.spec.mlp.activation == acts[0]]
    return fl, first + [a for a in out if a.spec.mlp.activation != acts[0]]


def _split_adapters(layer64, record: dict[str, Call], fl: Flow, pre: NormSpec | None, post: NormSpec | None,
                    norm_params: dict[str, Param], cfg, model_type: str, name: str) -> list[Adapter]:
    """A branch split over modules (`Flow.chain`): one up map, the activation, one down map, a pre-LN or a
    post-LN after the add."""
    params = dict(norm_params)
    biases = {}
    for canon, path in zip(("up", "down"), fl.maps, strict=True):
        module = get(layer64, path)
        params[f"W_{canon}"] = _matrix(path, module, record[path])
        biases[canon] = getattr(module, "bias", None) is not None
        if biases[canon]:
            params[f"b_{canon}"] = Param(f"{path}.bias")
    acts = _activation(get(layer64, fl.act or fl.maps[0].rpartition(".")[0]), cfg)
    ln = post if fl.mode == "post_ln" else None
    out = []
    for act in acts:
        mspec = MLPSpec(kind="dense", activation=act, bias=Biases(**biases), pre_norm=pre, post_ln=ln,
                        branch_scale=fl.scale)
        spec = BlockSpec(name=name, mlp=mspec, hf_model_types=(model_type,))
        out.append(_adapter(spec, fl, params))
    return out


def _adapter(spec: BlockSpec, fl: Flow, params: dict[str, Param]) -> Adapter:
    if fl.chain:  # the chain's modules but its activation are skipped in the factored run: the branch module computes
        return Adapter(spec, fl.mode, fl.chain[0], fl.mlp, params, skip=tuple(p for p in fl.chain if p != fl.act),
                       adds_residual=fl.adds_residual, chain=fl.chain)
    if fl.mode == "parallel":
        return Adapter(spec, "parallel", fl.pre, fl.post or fl.mlp, params, attn_module=fl.attn,
                       skip=(fl.mlp,) if fl.post else ())
    u_module = fl.pre or fl.mlp
    return Adapter(spec, "sequential", u_module, fl.post or fl.mlp, params, skip=(fl.mlp,) if fl.post else (),
                   adds_residual=fl.adds_residual)


# --------------------------------------------------------------------------- the check


_CASTS = {torch.Tensor.to, torch.Tensor.float, torch.Tensor.half, torch.Tensor.bfloat16, torch.Tensor.type,
          torch.Tensor.type_as}
_FACTORIES = {torch.full, torch.zeros, torch.ones, torch.empty}  # float in the default dtype unless told


class Float64Mode(torch.overrides.TorchFunctionMode):
    """Runs modules in float64 throughout: a cast of a float64 tensor to a narrower float dtype (the float32
    upcasts inside transformers' norms and routers, written for half precision) returns the tensor unchanged,
    and a float tensor created without a dtype (``torch.full((), torch.finfo(dtype).min)``: float32, which
    float64's minimum overflows) is float64. ``widened``: the casts and creations it widened; ``narrow``:
    calls that still returned a narrower float tensor."""

    def __init__(self):
        super().__init__()
        self.widened: set[str] = set()
        self.narrow: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        wanted = kwargs.get("dtype")
        if isinstance(wanted, torch.dtype) and wanted.is_floating_point and wanted != torch.float64 and \
                any(isinstance(a, torch.Tensor) and a.dtype == torch.float64 for a in args):
            kwargs["dtype"] = torch.float64
            self.widened.add(f"{getattr(func, '__name__', func)}(dtype=)")
        elif func in _FACTORIES and wanted is None and "out" not in kwargs and \
                torch.get_default_dtype() != torch.float64 and (func is not torch.full or isinstance(
                    kwargs.get("fill_value", args[1] if len(args) > 1 else None), float)):
            kwargs["dtype"] = torch.float64
            self.widened.add(f"{func.__name__}()")
        out = func(*args, **kwargs)
        t = first_tensor(out)
        if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64):
            return out
        if func in _CASTS and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.float64:
            self.widened.add(func.__name__)
            return args[0]
        self.narrow.add(getattr(func, "__name__", str(func)))
        return out


def _branch_modules(layer64, adapter: Adapter, u: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
    """The layer's own modules composed as the adapter says: y (sequential) from u, or y - u + u for a
    parallel block (the attention part is u itself)."""
    spec = adapter.spec
    if adapter.chain:
        return _chained(layer64, adapter, u)
    if adapter.mode == "parallel":
        z = get(layer64, adapter.u_module)(x)
    else:
        z = get(layer64, adapter.u_module)(u) if adapter.u_module not in adapter.skip and \
            adapter.u_module != adapter.branch_module else u
    mlp_path = adapter.skip[0] if adapter.skip else adapter.branch_module
    if adapter.adds_residual:
        return first_tensor(get(layer64, mlp_path)(z, u))
    h = first_tensor(get(layer64, mlp_path)(z))
    if adapter.skip:
        h = get(layer64, adapter.branch_module)(h)
    return u + spec.mlp.branch_scale * h  # the layer's multiplier, fitted from its own output


def _chained(layer64, adapter: Adapter, u: torch.Tensor) -> torch.Tensor:
    """y of a split branch (`Adapter.chain`): its modules in order, then the branch module."""
    h = u
    for path in adapter.chain:
        h = first_tensor(get(layer64, path)(h))
    end = get(layer64, adapter.branch_module)
    if adapter.adds_residual:  # BERT's output(h, u): u + W_down h, normalised after the add in a post-LN block
        return first_tensor(end(h, u))
    if adapter.mode == "post_ln":  # LN(u + h): the chain ended with the down map
        return end(u + h)
    return u + adapter.spec.mlp.branch_scale * end(h)


def _kernel_forward(adapter: Adapter, params: dict, u, x):
    from numeric import kernels

    kernel = kernels.load(adapter.spec, "torch")
    return kernel.forward(params, u, **({"x": x} if adapter.mode == "parallel" else {}))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@torch.no_grad()
def product_modules(layer64, adapter: Adapter, u: torch.Tensor, bound: float) -> tuple[tuple[str, str], ...]:
    """(matrix, module path) of every contextual product of the spec's kernel (its `GIVEN`) that a bias-free
    ``nn.Linear`` of the layer computes: the module holds the whole matrix as its weight, runs once in the
    branch, and its output equals the kernel's `products` on a random input of the probe's shape (to the
    adapter check's ``bound``). In the contextual run such a module's output *is* that product, which the
    patches then take from it (`numeric.hf.contextual_bases`) instead of reading the matrix once more.
    Sequential and post-LN blocks (a parallel block's MLP input does not see the context)."""
    from numeric import kernels

    if adapter.mode == "parallel":
        return ()
    kernel = kernels.load(adapter.spec, "torch")
    modules = {}
    for canon in kernel.GIVEN:
        p = adapter.params.get(canon)
        if p is None or p.layout != "linear" or not p.path.endswith(".weight"):
            continue
        path = p.path[:-len(".weight")]
        module = get(layer64, path)
        if isinstance(module, torch.nn.Linear) and module.bias is None:
            modules[canon] = path
    if not modules:
        return ()
    ru = torch.randn(u[0].shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    seen: dict[str, list] = {c: [] for c in modules}
    handles = [get(layer64, path).register_forward_hook(lambda _m, _a, out, c=c: seen[c].append(_rows(out)))
               for c, path in modules.items()]
    try:
        with Float64Mode():
            _branch_modules(layer64, adapter, ru[None], None)
    finally:
        for h in handles:
            h.remove()
    ours = kernel.products({canon: p.read(layer64) for canon, p in adapter.params.items()}, ru)
    return tuple((c, path) for c, path in modules.items() if len(seen[c]) == 1 and _rel(seen[c][0], ours[c]) <= bound)


@torch.no_grad()
def check_adapter(layer64, adapter: Adapter, u: torch.Tensor, x: torch.Tensor | None, y: torch.Tensor) -> dict:
    """The spec's kernel against the layer: on the probe run's own (u, x) -> y, and against the composed
    modules on random inputs of several magnitudes. Errors relative to the branch (y - u)."""
    gen = torch.Generator().manual_seed(5)
    branch = y - u
    try:
        params = {canon: p.read(layer64) for canon, p in adapter.params.items()}
        ours = _kernel_forward(adapter, params, u[0], None if x is None else x[0])
    except Exception as exc:  # noqa: BLE001 - a candidate that cannot even run is a failed candidate
        return {"error": float("inf"), "bound": FLOAT64_BOUND, "float32_inside": [], "why": f"{exc}"[:200]}
    errors = [_rel(ours - u[0], branch[0])]
    mode = Float64Mode()
    eps = min((n.eps for n in adapter.spec.norms.values() if n.eps > 0), default=1e-6)
    for s in PROBE_SCALES + (math.sqrt(eps),):
        ru = torch.randn(u[0].shape, generator=gen, dtype=torch.float64) * s
        rx = None if x is None else torch.randn(x[0].shape, generator=gen, dtype=torch.float64) * s
        with mode:
            theirs = _branch_modules(layer64, adapter, ru[None], None if rx is None else rx[None])[0]
        ours = _kernel_forward(adapter, params, ru, rx)
        errors.append(_rel(ours - ru, theirs - ru))
    narrow = sorted(mode.narrow)
    bound = FLOAT32_INSIDE_BOUND if narrow else FLOAT64_BOUND
    return {"error": max(errors), "bound": bound, "float32_inside": narrow, "widened": sorted(mode.widened)}


# --------------------------------------------------------------------------- the layout


def spec_name(model_type: str) -> str:
    name = "".join(ch if ch.isalnum() else "_" for ch in model_type)
    return name if name[:1].isalpha() else "m_" + name


@torch.no_grad()
def infer(model, spec: BlockSpec | None = None, params: dict[str, str] | None = None, seed: int = 0) -> Layout:
    """The model's `Layout`, every layer checked (`check_adapter`); a SpecError otherwise."""
    cfg = model.config
    model_type = cfg.model_type
    path = decoder_layers(model)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    if vocab < 2:
        raise SpecError(f"model type {model_type!r}: no vocabulary size in the config")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (1, PROBE_TOKENS), generator=gen)
    device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
    calls = layer_calls(model, path, ids.to(device))
    layers = get(model, path)
    kinds, checks, seen = [], [], {}
    for n, call in enumerate(calls):
        layer64 = float64_copy(layers[n])
        record, x, y = trace(layer64, call)
        signature = _signature(layers[n])
        tried = []
        candidates = seen.get(signature)
        if candidates is None:
            if spec is not None:
                fl = flow(layer64, record, x, y, cfg)
                candidates = [_user_adapter(spec, fl, params)]
            else:
                _, candidates = layer_adapters(layer64, record, x, y, cfg, model_type, spec_name(model_type))
        chosen = None
        for cand in candidates[:MAX_CANDIDATES]:
            u = _u_of(cand, record, x)
            result = check_adapter(layer64, cand, u, x if cand.mode == "parallel" else None, y)
            tried.append((result["error"], cand, result))
            if result["error"] <= result["bound"]:
                chosen = (cand, result)
                break
        if chosen is None:
            err, cand, result = min(tried, key=lambda t: t[0])
            eps = renorm_epsilon(layer64, cand, record, x)
            raise SpecError(f"layer {n} ({path}.{n}): no spec reproduces the module's MLP branch; closest: "
                            f"{describe(cand.spec)}, relative error {err:.1e} > {result['bound']:.0e}"
                            + (f" ({result['why']})" if result.get("why") else "")
                            + (f"; the module renormalises the top-k weights as s / (sum s + {eps:.1e}), an epsilon "
                               "in the denominator that the spec language does not model" if eps else ""))
        cand, result = chosen
        arity = record[cand.branch_module].arity
        if arity != cand.arity:
            cand = dataclasses.replace(cand, arity=arity)
        seen[signature] = [cand] + [c for c in candidates if c is not cand]
        products = product_modules(layer64, cand, _u_of(cand, record, x), result["bound"])
        if products != cand.products:
            cand = dataclasses.replace(cand, products=products)
        kinds.append(cand)
        checks.append({"layer": n, **result})
        del layer64
    kinds = _named(kinds, model_type)
    can_generate = getattr(model, "can_generate", lambda: False)()
    encoder = not (can_generate or getattr(cfg, "is_decoder", False))  # every token sees the later ones
    return Layout(model_type, path, tuple(kinds), encoder=encoder, checks=tuple(checks))


@torch.no_grad()
def renorm_epsilon(layer64, adapter: Adapter, record: dict[str, Call], x: torch.Tensor) -> float | None:
    r"""The $\epsilon$ of a renormalisation $s_j / (\sum_k s_k + \epsilon)$ that explains a failed MoE candidate, or
    None: on the probe run, the module's routed output must be, token by token, the candidate's times
    $S / (S + \epsilon)$ ($S$ the sum of the selected scores) with one $\epsilon > 0$ (LFM2-MoE adds 1e-6)."""
    from numeric import reference

    moe = adapter.spec.moe
    call = record.get(adapter.branch_module)
    if moe is None or not moe.renormalize or moe.shared_expert != "none" or adapter.mode != "sequential" or \
            adapter.skip or adapter.spec.mlp.post_norm is not None or call is None:
        return None
    params = {canon: p.read(layer64) for canon, p in adapter.params.items()}
    u = _u_of(adapter, record, x)[0]
    ours = _rows(_kernel_forward(adapter, params, u, None) - u) / adapter.spec.mlp.branch_scale  # (T, d)
    theirs, z = _rows(call.out), _rows(call.inp)
    r = (theirs * ours).sum(-1) / (ours * ours).sum(-1).clamp_min(1e-300)  # (T,) per-token factor
    if float((theirs - r[:, None] * ours).norm()) > 1e-10 * float(theirs.norm()):
        return None
    logits = z @ params["W_router"].T + params.get("b_router", 0.0)
    total = reference.select(adapter.spec, logits, params.get("b_select"))[1].sum(-1)  # (T,) S
    eps = total * (1 / r - 1)
    lo, hi = float(eps.min()), float(eps.max())
    return hi if lo > 0 and hi - lo <= 1e-2 * hi else None


def _named(kinds: list[Adapter], model_type: str) -> list[Adapter]:
    """Distinct specs get distinct names (``<type>``, ``<type>_k1``, ...) so kernels do not collide."""
    distinct = list(dict.fromkeys(k.spec for k in kinds))
    if len(distinct) <= 1:
        return kinds
    rename = {s: dataclasses.replace(s, name=f"{s.name}_k{i}" if i else s.name) for i, s in enumerate(distinct)}
    return [dataclasses.replace(k, spec=rename[k.spec]) for k in kinds]


def _u_of(adapter: Adapter, record: dict[str, Call], x: torch.Tensor) -> torch.Tensor:
    """u of the probe run: the u module's input (sequential), x + attention (parallel)."""
    if adapter.mode == "parallel":
        return x + record[adapter.attn_module].out
    return record[adapter.u_module].inp.reshape(x.shape[:-1] + (-1,))  # OPT's MLP sees (tokens, d) rows


def _signature(layer) -> tuple:
    return tuple((n, type(m).__name__, tuple((k, tuple(p.shape)) for k, p in m.named_parameters(recurse=False)))
                 for n, m in layer.named_modules())


def _user_adapter(spec: BlockSpec, fl: Flow, params: dict[str, str] | None) -> Adapter:
    if not params:
        raise SpecError("a spec for a Hugging Face model needs params={canonical name: parameter path in the layer}")
    from symbolic.spec import patchable_parameters

    allowed = set(patchable_parameters(spec))
    unknown = sorted(set(params) - allowed)
    missing = sorted(allowed - set(params))
    if unknown or missing:
        raise SpecError(f"params: unknown canonical names {unknown}, missing {missing}; the spec's names: "
                        f"{', '.join(sorted(allowed))}")
    layouts = {}
    for canon, where in params.items():
        path, _, layout = where.partition(":")
        layouts[canon] = Param(path, layout or "linear")
    return _adapter(spec, fl, layouts)


def describe(spec: BlockSpec) -> str:
    m = spec.mlp
    parts = [spec.residual, m.kind, m.activation]
    if m.post_ln:
        parts.append(f"post-LN {m.post_ln.kind}/{m.post_ln.scale} after the add")
    if m.pre_norm:
        parts.append(f"pre {m.pre_norm.kind}/{m.pre_norm.scale}")
    if m.post_norm:
        parts.append(f"post {m.post_norm.kind}/{m.post_norm.scale}")
    b = [k for k in ("gate", "up", "down") if getattr(m.bias, k)]
    if b:
        parts.append("bias " + "+".join(b))
    if m.branch_scale != 1.0:
        parts.append(f"branch x{m.branch_scale:g}")
    if spec.moe:
        e = spec.moe
        parts.append(f"moe E={e.experts} k={e.top_k} {e.scoring} {e.softmax}{' renorm' if e.renormalize else ''}"
                     f"{' select-bias' if e.selection_bias else ''}{' router-bias' if e.router_bias else ''}"
                     f"{f' groups {e.topk_groups}/{e.groups}' if e.groups > 1 else ''}"
                     f"{f' scale {e.routed_scale:g}' if e.routed_scale != 1 else ''} shared={e.shared_expert}")
    return ", ".join(parts)


def check_ids(context_ids, query_ids, model) -> None:
    """Refuse ids that are not (1, n >= 1) integer tensors inside the model's vocabulary."""
    for name, ids in (("context_ids", context_ids), ("query_ids", query_ids)):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] < 1 or \
                ids.dtype not in (torch.int64, torch.int32):
            raise SpecError(f"{name} must be an integer tensor of shape (1, n) with n >= 1, got "
                            f"{getattr(ids, 'shape', type(ids).__name__)} {getattr(ids, 'dtype', '')}")
        if int(ids.min()) < 0 or int(ids.max()) >= model.config.vocab_size:
            raise SpecError(f"{name} holds token ids outside [0, {model.config.vocab_size})")


def cached(model, cache) -> dict:
    """Keyword arguments that run `model` on a key/value cache (None: a new one) and return it extended
    (`kv_cache`): ``cache=`` since transformers 5.24, ``past_key_values=`` before (read from the signature of
    the model's forward)."""
    import inspect

    keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {keyword: cache, "use_cache": True}


def kv_cache(out, model):
    """The key/value cache of a run with ``use_cache=True`` (`cached`); a SpecError for a model that keeps
    none (GPT-1). The output's field is ``cache`` since transformers 5.24, ``past_key_values`` before."""
    fields = getattr(out, "__dataclass_fields__", {})
    cache = getattr(out, "cache" if "cache" in fields else "past_key_values", None)
    if cache is None:
        raise SpecError(f"model type {model.config.model_type!r} returns no key/value cache: the token-by-token runs "
                        "(materialized patches, generation) need one; the factored logits do not")
    return cache


def last_logits_only(model) -> dict:
    """Ask a causal LM for the last position's logits only (the contextual pass needs the states)."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
