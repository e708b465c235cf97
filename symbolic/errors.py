"""The errors of ctxpatch, by kind, and what the command line makes of them.

Bad input is a `CtxpatchInputError` (a `ValueError`; exit 2): its message names what is wrong (the file, the
field, the value received) and what is allowed. Two kinds of it have a class of their own:

- `SpecError`: a block spec is invalid (a catalog entry, a user's TOML, a field or its value, a strategy,
  a spec's parameter map), or a user's spec does not reproduce the model it was declared for;
- `ModelInputError`: a model, or what is passed with it, is not what the operation takes (token ids outside
  the vocabulary, a model without a key/value cache, a bad ``mode=``, ``computed_in=`` or ``applied=``, a
  module that is not a causal LM, a layer whose structure no spec reproduces).

The base class itself is raised for the rest: a command-line option outside what it allows, an optional
dependency an option needs.

`PatchConditionError` is not bad input: it is an `ArithmeticError`, raised where a side condition of the
derivation fails at some tokens for these values (the patch would be inf or NaN), and the command line
reports it as a failed check (exit 1). Nothing here prints or exits; `ctxpatch.cli` does that.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CtxpatchInputError(ValueError):
    """Bad input: something given to ctxpatch is not what the operation takes (exit 2)."""


class SpecError(CtxpatchInputError):
    """A block spec (catalog entry, user TOML, field, strategy, parameter map) is invalid, or a user's spec does
    not reproduce the model it was declared for."""


class ModelInputError(CtxpatchInputError):
    """A model, or what is passed with it (token ids, a mode, a protocol), is not what the operation takes."""


def suggest(value: str, allowed: Iterable[str]) -> str:
    """A 'did you mean' hint for a misspelled name, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def bad_value(source: str, field: str, value: object, allowed: Iterable[object], hint: str = "",
              kind: type[CtxpatchInputError] = SpecError) -> CtxpatchInputError:
    """The one message shape for a field with a value outside its allowed set (a `SpecError` unless ``kind``
    says which bad input it is)."""
    allowed = list(allowed)
    shown = ", ".join(repr(a) for a in allowed)
    near = suggest(str(value), [str(a) for a in allowed]) if isinstance(value, str) else ""
    return kind(
        f"{source}: field `{field}` has the value {value!r}, which is not allowed. "
        f"Allowed: {shown}.{near}{(' ' + hint) if hint else ''}"
    )


class PatchConditionError(ArithmeticError):
    """A side condition of the derivation fails at some tokens: the patch would be inf or NaN.

    Raised by the generated kernels (``numeric.kernels.runtime``) with the condition as the
    derivation states it (e.g. ``z != 0``) and the token indices where it fails.
    """

    def __init__(self, condition: str, tokens: list[int], layer: str = ""):
        self.condition, self.tokens, self.layer = condition, list(tokens), layer
        where = f"layer {layer}, " if layer else ""
        shown = ", ".join(map(str, self.tokens[:8])) + (" ..." if len(self.tokens) > 8 else "")
        super().__init__(
            f"{where}token {shown}: the side condition `{condition}` of the derived patch fails, so the "
            "patch is undefined there (it would be inf or NaN). Check the inputs of these tokens "
            "(a zero vector, a non-finite value) or choose another strategy (`ctxpatch check --strategy`).")
