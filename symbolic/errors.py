"""Exceptions that the command line turns into exit codes.

`SpecError` is bad input (exit 2): its message names the file, the field, the value received
and what is allowed. Nothing here prints or exits; `ctxpatch.cli` does that.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SpecError(ValueError):
    """A block spec (catalog entry, user TOML, command-line choice) is invalid."""


def suggest(value: str, allowed: Iterable[str]) -> str:
    """A 'did you mean' hint for a misspelled name, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def bad_value(source: str, field: str, value: object, allowed: Iterable[object], hint: str = "") -> SpecError:
    """The one message shape for a field with a value outside its allowed set."""
    allowed = list(allowed)
    shown = ", ".join(repr(a) for a in allowed)
    near = suggest(str(value), [str(a) for a in allowed]) if isinstance(value, str) else ""
    return SpecError(
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
