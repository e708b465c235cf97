r"""Models dispatched by accelerate: a layer's parameters read and written through accelerate's own hooks.

``from_pretrained(..., device_map="auto", max_memory=..., offload_folder=...)`` places layers on
several devices and offloads the rest to CPU or disk: an offloaded module's parameters sit on the
meta device, and the module's ``AlignDevicesHook`` (``module._hf_hook``, ``offload=True``) loads
them from its ``weights_map`` onto its ``execution_device`` just before the module's forward and
drops them after. This module

- reads a parameter the way that hook does (`read`: `accelerate.utils.align_module_device`), on
  the device of the layer that uses it;
- writes dense patched values for one forward (`write`): in place for a resident parameter, and
  for an offloaded one by laying the values over the hook's ``weights_map`` (`Overlay`), which
  the hook then loads as it loads any weight; `restore` puts the very same map back;
- names the layer when accelerate's machinery fails (`located`, `OffloadError`).

It must not remove, replace or leave changed any of accelerate's hooks, write into an offloaded
weight's storage (a disk-offloaded weight may be a memory map of the checkpoint), or import
accelerate for a model that was not dispatched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch

from symbolic.errors import CtxpatchInputError, PatchConditionError

#: Exceptions that accelerate's loading (files, maps, devices) raises; ours pass through unchanged.
ACCELERATE_FAILURES = (RuntimeError, OSError, KeyError, ValueError)


def failures() -> tuple[type[BaseException], ...]:
    """`ACCELERATE_FAILURES` and safetensors' error (a checkpoint file that went missing or changed)."""
    try:
        from safetensors import SafetensorError
    except ImportError:
        return ACCELERATE_FAILURES
    return (*ACCELERATE_FAILURES, SafetensorError)
HINT = ("the model was dispatched by accelerate; check that its offload folder and checkpoint files still "
        "exist and that device_map / max_memory place every module")


class OffloadError(RuntimeError):
    """accelerate's machinery failed while a layer's parameters were loaded, read or written.

    ``layer`` names where (``layer 3``), once known."""

    def __init__(self, message: str, layer: str = ""):
        super().__init__(message)
        self.layer = layer


def get(root, path: str):
    """The submodule or tensor at a dotted path (list items by index)."""
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def _offloads(module) -> bool:
    hook = getattr(module, "_hf_hook", None)
    return hook is not None and bool(getattr(hook, "offload", False))


def offloading_module(layer, path: str) -> tuple[torch.nn.Module | None, str]:
    """The module whose accelerate hook offloads the tensor `path` of `layer`, and the tensor's name
    relative to it (its key in the hook's ``weights_map``); ``(None, path)`` for a resident tensor.

    The hook is on the tensor's own module, or on an ancestor that places its submodules
    (``place_submodules=True``)."""
    parts = path.split(".")
    chain = [layer]
    for part in parts[:-1]:
        chain.append(get(chain[-1], part))
    for depth in range(len(chain) - 1, -1, -1):
        module = chain[depth]
        if _offloads(module) and (depth == len(chain) - 1 or module._hf_hook.place_submodules):
            return module, ".".join(parts[depth:])
    return None, path


def read(layer, path: str) -> torch.Tensor:
    """The tensor `path` of `layer`, detached, on its execution device: loaded by the module's
    accelerate hook (`align_module_device`) when it is offloaded. Never written to."""
    owner, key = offloading_module(layer, path)
    if owner is None:
        t = get(layer, path).detach()
        if t.is_meta:
            raise OffloadError(f"{path}: the parameter is on the meta device and no accelerate hook with "
                               f"offload=True holds it, so its values cannot be read; {HINT}")
        return t
    from accelerate.utils import align_module_device

    try:
        with align_module_device(owner):
            return get(owner, key).detach()
    except failures() as exc:
        raise OffloadError(f"{path}: accelerate could not load it ({type(exc).__name__}: {exc}); {HINT}") from exc


def execution_device(layer, path: str) -> torch.device | None:
    """Where the layer computes with tensor `path`: its hook's execution device, else the tensor's own."""
    owner, _ = offloading_module(layer, path)
    if owner is not None:
        return torch.device(owner._hf_hook.execution_device)
    t = get(layer, path)
    return None if t.is_meta else t.device


class Overlay(Mapping):
    """A hook's ``weights_map`` with some tensors replaced (for one forward); the rest read through."""

    def __init__(self, base: Mapping, values: dict[str, torch.Tensor]):
        self.base, self.values = base, values

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.values[key] if key in self.values else self.base[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)


Undo = Callable[[], None]


def write(layer, dense: dict[str, torch.Tensor]) -> list[Undo]:
    """Make `layer` compute with `dense` values ({name: tensor}; ``path[e]`` a stacked-expert slice);
    returns what `restore` needs to put everything back exactly.

    A resident parameter is overwritten in place (its original kept); an offloaded one is given to
    its hook through an `Overlay` of the ``weights_map``: the stored weight is never written."""
    undo: list[Undo] = []
    laid: dict[int, tuple[torch.nn.Module, dict[str, torch.Tensor]]] = {}
    for name, value in dense.items():
        path, _, index = name.partition("[")
        owner, key = offloading_module(layer, path)
        if owner is None:
            undo.append(_write_resident(layer, path, index, value))
            continue
        values = laid.setdefault(id(owner), (owner, {}))[1]
        if not index:
            values[key] = value
            continue
        if key not in values:
            values[key] = read(layer, path).clone()  # the stored tensor, then its patched slices
        values[key][item(index)] = value
    for owner, values in laid.values():
        undo.append(_lay_over(owner, values))
    return undo


def item(index: str) -> int | slice:
    """The index of a slice name ``path[e]`` (a stacked expert) or ``path[a:b]`` (a flat expert's rows, DBRX), given
    what follows the ``[``."""
    start, colon, stop = index[:-1].partition(":")
    return slice(int(start), int(stop)) if colon else int(start)


def _write_resident(layer, path: str, index: str, value: torch.Tensor) -> Undo:
    view = get(layer, path)
    view = view[item(index)] if index else view
    original = view.detach().clone()
    view.detach().copy_(value)
    return lambda: view.detach().copy_(original)


def _lay_over(owner, values: dict[str, torch.Tensor]) -> Undo:
    hook = owner._hf_hook
    base = hook.weights_map
    hook.weights_map = Overlay(base, values)

    def undo():
        hook.weights_map = base
    return undo


def restore(undo: list[Undo]) -> None:
    """Undo `write`, last write first."""
    for step in reversed(undo):
        step()


def dispatched(model) -> bool:
    """Whether accelerate placed hooks on the model (`dispatch_model`, ``from_pretrained(device_map=...)``)."""
    return any(hasattr(m, "_hf_hook") for m in model.modules())


@contextmanager
def located(model, layers: str):
    """Run model passes so that a failure inside accelerate's machinery names the layer it happened in.

    Forward pre-hooks on every layer and its submodules remember where the pass is; an exception of
    `failures` becomes an `OffloadError` ``layer n (model.layers.n.mlp.up_proj): ...`` (``after layer
    n`` for the final norm and head). Ours (`CtxpatchInputError`, `PatchConditionError`, an `OffloadError` that
    names its layer) pass through. A no-op for a model accelerate did not dispatch."""
    if not dispatched(model):
        yield
        return
    where = ["before layer 0 (the embeddings)"]
    handles = []
    for n, block in enumerate(get(model, layers)):
        for name, module in block.named_modules(prefix=f"{layers}.{n}"):
            handles.append(module.register_forward_pre_hook(
                lambda _m, _a, place=f"layer {n} ({name})": where.__setitem__(0, place)))
        handles.append(block.register_forward_hook(lambda _m, _a, _o, n=n: where.__setitem__(0, f"after layer {n}")))
    try:
        yield
    except (CtxpatchInputError, PatchConditionError):
        raise
    except failures() as exc:
        if isinstance(exc, OffloadError) and exc.layer:
            raise
        place = where[0]
        shown = str(exc) if isinstance(exc, OffloadError) else f"{type(exc).__name__}: {exc}; {HINT}"
        raise OffloadError(f"{place}: {shown}", layer=place) from exc
    finally:
        for h in handles:
            h.remove()


def reload_dispatched(model, folder, max_memory: dict | None = None, device_map="auto", **kwargs):
    """`model` saved to `folder` (safetensors) and loaded back dispatched by accelerate: layers placed
    by ``device_map`` under ``max_memory`` ({device: "150MB", "cpu": ...}), the rest offloaded to
    disk under ``folder/offload``; eager attention, the same dtype, eval mode. ``kwargs`` go to
    ``from_pretrained`` (``experts_implementation="eager"`` for a float64 MoE model)."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=model.dtype, attn_implementation="eager", device_map=device_map, max_memory=max_memory,
        offload_folder=folder / "offload", **kwargs).eval()


def placement(model) -> dict[str, int]:
    """How many of the model's parameters accelerate left where: {"meta": offloaded, "cpu": ..., "cuda:0": ...}."""
    counts: dict[str, int] = {}
    for p in model.parameters():
        counts[str(p.device)] = counts.get(str(p.device), 0) + 1
    return counts
