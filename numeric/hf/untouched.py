r"""A model left exactly as it was found: its modules, parameters and modes, whatever runs on it.

`untouched(model)`: a block that may change a model in place (peft injecting and unloading an adapter,
weights written for a pass) ends with every module back at its place, every parameter object back in its
module with its values bit for bit and its ``requires_grad``, every module's training mode, also when the
block fails; then it checks that this holds. `folder` checks a path meant to become a folder.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from symbolic.errors import ModelInputError


@contextmanager
def untouched(model: torch.nn.Module, values: list[torch.Tensor] | None = None):
    """The block runs on ``model``; on exit the module tree, the parameter objects, their ``requires_grad``
    and the training modes are restored, and the values of ``values`` (default: every parameter) too. A
    `RuntimeError` if the model still differs afterwards (never silently changed)."""
    tree = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()]
    params = [(m, name, p, p.requires_grad) for m in model.modules() for name, p in m.named_parameters(recurse=False)]
    modes = [(m, m.training) for m in model.modules()]
    saved = [(p, p.detach().clone()) for p in (values if values is not None else [p for *_, p, _ in params])]
    try:
        yield model
    finally:
        with torch.no_grad():
            for parent, name, child in tree:
                if getattr(parent, name) is not child:
                    setattr(parent, name, child)
            for m, name, p, grad in params:
                if getattr(m, name) is not p:
                    setattr(m, name, p)
                p.requires_grad_(grad)
            for p, v in saved:
                if not torch.equal(p, v):
                    p.detach().copy_(v)
            for m, mode in modes:
                m.training = mode
    if any(getattr(parent, name) is not child for parent, name, child in tree) or \
            any(not torch.equal(p, v) for p, v in saved):
        raise RuntimeError("the model could not be restored exactly")


def folder(path) -> Path:
    """``path`` as a folder to write into: refused by name when it, or a folder above it, is a file."""
    target = Path(path)
    for p in (target, *target.parents):
        if p.exists() and not p.is_dir():
            raise ModelInputError(f"{p} is a file; name a folder (created if missing) to write into, got {target}")
    return target
