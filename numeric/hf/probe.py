r"""Probing a model: its decoder layers, what each layer receives and returns, float64 copies.

1. **The decoder layers** (`decoder_layers`): the `nn.ModuleList` whose items are of a class the model declares
   in ``_no_split_modules`` (transformers' unit of placement), else the longest list of identical blocks.
2. **One layer, in float64** (`layer_calls`, `trace`): the model runs once on random token ids with hooks that
   record every layer's call; each layer is then copied to float64 and re-run on what it was given with hooks
   on all its submodules, under `Float64Mode` (transformers' float32 upcasts widened, and reported).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from numeric.hf.offload import get
from symbolic.errors import CtxpatchInputError, ModelInputError, PatchConditionError


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
        raise ModelInputError(f"model type {model.config.model_type!r}: no list of layers found")
    return best


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


def input_of(args, kwargs):
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
                calls[n] = Call(input_of(args, kwargs), first_tensor(out), args, dict(kwargs))
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
    with failing_module(model, f"the probe: one forward of the model on {ids.shape[-1]} random token ids without a "
                               "key/value cache, hooks recording every layer's call"):
        try:
            model(ids, use_cache=False)
        finally:
            for h in handles:
                h.remove()
    missing = [n for n in range(len(layers)) if n not in calls]
    if missing:
        raise ModelInputError(f"layers {missing} of {layers_path} were not called in a forward pass")
    looped = {n: k for n, k in counts.items() if k > 1}
    if looped:
        n, k = next(iter(looped.items()))
        raise ModelInputError(f"layer {n} ({layers_path}.{n}) runs {k} times in one forward (a looped or recurrent "
                              "stack): one patch per layer cannot follow it")
    inside = [o for o in others if not o.startswith(layers_path + ".")]
    if inside:
        raise ModelInputError(f"a second stack of decoder layers runs ({sorted(inside)[0]}, besides {layers_path}): "
                              "its share of the context's effect would be left unpatched")
    return [calls[n] for n in range(len(layers))]


def double(value):
    if isinstance(value, torch.Tensor):
        return value.double() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(double(v) for v in value)
    if isinstance(value, list):
        return [double(v) for v in value]
    if isinstance(value, dict):
        return {k: double(v) for k, v in value.items()}
    return value


def float64_copy(layer):
    """A float64 copy of one layer (the model is left as it is), its experts run by transformers' eager loop:
    the kernels a model selects by default for stacked experts (``grouped_mm``, ``batched_mm``) take no float64,
    so a float32 model loaded the usual way could not be probed otherwise. The copy's config is its own
    (``deepcopy``): the model's experts keep their implementation."""
    layer64 = copy.deepcopy(layer).double().eval()
    for module in layer64.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_experts_implementation", None) not in (None, "eager"):
            config._experts_implementation = "eager"
    return layer64


@torch.no_grad()
def trace(layer64, call: Call, prefix: str = "") -> tuple[dict[str, Call], torch.Tensor, torch.Tensor]:
    """Run a float64 layer copy on its recorded call with hooks on every submodule:
    ({path: Call}, layer input, layer output). ``prefix``: the layer's path in the model (for errors). The
    results of the tensor additions the layer computed, in order, are ``record.sums`` (`Record`): where the
    layer goes on after the MLP's add, the state right after it is one of them."""
    record: dict[str, Call] = {}
    handles = []
    for name, module in layer64.named_modules():
        if not name:
            continue

        def hook(_m, args, kwargs, out, name=name):
            if name not in record:  # copies: a layer may add into a submodule's output in place (Falcon)
                record[name] = Call(_clone(input_of(args, kwargs)), _clone(first_tensor(out)),
                                    arity=len(out) if isinstance(out, tuple) else 0)
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    args, kwargs = double(call.args), double(call.kwargs)
    sums = SumRecorder()
    try:
        with Float64Mode(), sums, failing_module(layer64, "the layer's float64 copy re-run on what it received in "
                                                           "the probe, hooks on every submodule", prefix=prefix):
            out = first_tensor(layer64(*args, **kwargs))
    finally:
        for h in handles:
            h.remove()
    record = Record(record)
    record.sums = sums.results
    return record, input_of(args, kwargs), out


class Record(dict):
    """{module path: `Call`} of one traced layer, and ``sums``: the results of its tensor additions, in order."""

    sums: list = []

_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__radd__,
         torch.Tensor.__iadd__}


class SumRecorder(torch.overrides.TorchFunctionMode):
    """Records a copy of every float tensor a tensor addition returns (``a + b``, ``a += b``, ``torch.add``), in
    order; with ``replace={k: f}``, the k-th addition's result is ``f(result)`` instead (in place for ``+=``)."""

    def __init__(self, replace: dict | None = None):
        super().__init__()
        self.results: list[torch.Tensor] = []
        self.replace = replace or {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _ADDS and isinstance(out, torch.Tensor) and out.is_floating_point():
            k = len(self.results)
            self.results.append(out.detach().clone())
            if k in self.replace:
                new = self.replace[k](out)
                if func in (torch.Tensor.__iadd__, torch.Tensor.add_):
                    with torch.no_grad():
                        out.copy_(new)
                else:
                    out = new
        return out


class failing_module:  # noqa: N801 - a context manager used like a function
    """Turns an exception raised inside transformers' own code while ``root`` runs into a `ModelInputError` that
    names the innermost module that was running (its path: the decoder layer and the submodule), its class, the
    exception's type and what was tried; the exception itself is kept as the cause. ctxpatch's own errors pass."""

    def __init__(self, root, tried: str, prefix: str = ""):
        self.root, self.tried, self.prefix = root, tried, prefix
        self.stack: list[str] = []
        self.handles: list = []

    def __enter__(self):
        for name, module in self.root.named_modules():
            def enter(_m, _a, name=name):
                self.stack.append(name)

            def leave(_m, _a, _o, name=name):
                if self.stack and self.stack[-1] == name:
                    self.stack.pop()
            self.handles.append(module.register_forward_pre_hook(enter))
            self.handles.append(module.register_forward_hook(leave))
        return self

    def __exit__(self, kind, exc, _tb):
        for h in self.handles:
            h.remove()
        if exc is None or isinstance(exc, (CtxpatchInputError, PatchConditionError)) or \
                not isinstance(exc, Exception):
            return False
        inner = self.stack[-1] if self.stack else ""
        path = ".".join(p for p in (self.prefix, inner) if p) or "the model's top module"
        cls = type(get(self.root, inner)).__name__ if inner else type(self.root).__name__
        raise ModelInputError(f"transformers' own code raised {type(exc).__name__} in {path} ({cls}) during "
                              f"{self.tried}: this model type cannot be run so, so its layers cannot be "
                              "probed") from exc


def _clone(t):
    return t.detach().clone() if isinstance(t, torch.Tensor) else t


def same_tensor(a, b) -> bool:
    return a is not None and b is not None and a.shape == b.shape and bool(torch.equal(a, b))


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
