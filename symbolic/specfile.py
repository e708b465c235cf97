"""Reading a spec file safely: its text, its TOML, its fields typed and bounded, its name and activations.

Everything here runs before a spec is built: the file's size, the nesting of its tables, the conversion of its
numbers (`parse_document`), each field's type, length and range (`Table`), the block's name (`check_name`) and
its activations (`check_activation`), against the bounds of `symbolic.limits`. A problem is a `SpecError` naming
the file, the field, the value and what is allowed. `symbolic.spec_read` builds the dataclasses from what is read.
"""

from __future__ import annotations

import keyword
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from symbolic import limits
from symbolic.errors import SpecError, bad_value, suggest
from symbolic.limits import shown

#: Named elementwise functions. Anything else is read as a SymPy expression in `x`.
ACTIVATIONS = ("identity", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "relu2")


def check_reference(arg: object, what: str = "ARCH_OR_TOML",
                    allowed: str = "a catalog name or the path of a .toml spec file") -> str:
    """A catalog name or a spec file's path as given (``what`` names the argument, ``allowed`` says what it may be):
    a string without NUL bytes, at most `limits.PATH_CHARS` characters and `limits.PATH_PART_CHARS` between
    slashes."""
    if isinstance(arg, Path):
        arg = str(arg)
    problem = None
    if not isinstance(arg, str):
        problem = f"it is of type {type(arg).__name__}, not a string"
    elif "\0" in arg:
        problem = "it holds a NUL byte"
    elif len(arg) > limits.PATH_CHARS or any(len(part) > limits.PATH_PART_CHARS for part in arg.split("/")):
        problem = f"it is longer than a path can be ({len(arg)} characters)"
    if problem:
        raise SpecError(f"{what} has the value {shown(arg)}, which is not allowed ({problem}). Allowed: {allowed} "
                        f"(at most {limits.PATH_CHARS} characters, {limits.PATH_PART_CHARS} between slashes).")
    return arg


def read_text(path: str | Path) -> str:
    """The text of a spec file: a regular file of UTF-8 text, at most `limits.SPEC_BYTES` bytes (a device, a pipe
    or a huge file is refused before it is read). Raises `SpecError` with the file name on any problem."""
    path = Path(path)
    try:
        if path.is_dir():
            raise SpecError(f"{path}: is a folder, not a spec file. Allowed: a catalog name or a .toml file.")
        if path.exists() and not path.is_file():
            raise SpecError(f"{path}: is not a regular file (a device, a pipe or a socket). Allowed: a catalog name "
                            "or a .toml file.")
        with path.open("rb") as f:
            raw = f.read(limits.SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec file ({exc.strerror or exc}).") from None
    if len(raw) > limits.SPEC_BYTES:
        raise SpecError(f"{path}: the spec file has more than {limits.SPEC_BYTES} bytes; at most {limits.SPEC_BYTES} "
                        "are allowed (a spec declares one block: the catalog's largest has under 1 KiB).")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                        "TOML spec files must be UTF-8.") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as text mode reads them


def parse_document(text: str, source: str) -> dict[str, Any]:
    """The TOML document of a spec file (at most `limits.SPEC_BYTES` bytes, tables and arrays nested at most
    `limits.SPEC_DEPTH` deep, numbers Python can convert)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.SPEC_BYTES:
        raise SpecError(f"{source}: the spec has {size} bytes; at most {limits.SPEC_BYTES} are allowed (a spec "
                        "declares one block: the catalog's largest has under 1 KiB).")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: not valid TOML: {exc}.") from None
    except RecursionError:  # tomllib reads nested inline tables and arrays recursively
        raise SpecError(f"{source}: tables or arrays nest too deeply for the TOML reader; at most "
                        f"{limits.SPEC_DEPTH} levels are allowed.") from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise SpecError(f"{source}: {_long_number(text)} has more digits than Python converts "
                        f"({sys.get_int_max_str_digits()}). Allowed: the numbers of a spec are small (eps from 0 to 1, "
                        f"experts from 1 to {limits.EXPERTS.hi}).") from None
    _check_depth(data, source)
    return data


def _long_number(text: str) -> str:
    """Where the number too long to convert is: its line and field, for the message."""
    digits = sys.get_int_max_str_digits()
    match = re.search(rf"\d{{{digits + 1},}}", text) if digits else None
    if match is None:
        return "a number"
    line = text.count("\n", 0, match.start()) + 1
    key = text[text.rfind("\n", 0, match.start()) + 1:match.start()].split("=")[0].strip()
    return f"the number on line {line}" + (f" (field `{key[:40]}`)" if key else "")


def _check_depth(data: Any, source: str) -> None:
    """Refuse tables and arrays nested deeper than `limits.SPEC_DEPTH` (walked without recursion)."""
    stack = [(data, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if depth > limits.SPEC_DEPTH:
            raise SpecError(f"{source}: `{where}` nests tables or arrays {depth} levels deep; at most "
                            f"{limits.SPEC_DEPTH} are allowed.")
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            if isinstance(item, dict | list):
                stack.append((item, depth + 1, f"{where}.{key}" if where else str(key)))


class Table:
    """A TOML table being read: typed getters that raise `SpecError` naming source and field."""

    def __init__(self, source: str, prefix: str, data: Any):
        if not isinstance(data, dict):
            raise SpecError(
                f"{source}: `{prefix or 'the file'}` must be a table, got {type(data).__name__} {shown(data)}."
            )
        self.source, self.prefix, self.data, self.used = source, prefix, data, set()

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def get(self, key: str, types: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in _tuple(types))
        if not ok:
            names = " or ".join(t.__name__ for t in _tuple(types))
            raise SpecError(
                f"{self.source}: field `{self.path(key)}` must be of type {names}, "
                f"got {type(value).__name__} {shown(value)}."
            )
        size = {str: limits.TEXT_CHARS, list: limits.LIST_ITEMS}.get(type(value))
        if size is not None and len(value) > size:
            unit = "characters" if isinstance(value, str) else "entries"
            raise SpecError(f"{self.source}: field `{self.path(key)}` has {len(value)} {unit} ({shown(value)}); "
                            f"at most {size} are allowed.")
        return value

    def number(self, key: str, bound: limits.Bound, default: Any) -> Any:
        """A numeric field, checked against ``bound`` before any arithmetic touches it."""
        value = self.get(key, int if bound.integer else (float, int), default)
        return value if value is None else bound.check(f"{self.source}: field `{self.path(key)}`", value, SpecError)

    def choice(self, key: str, allowed: tuple[str, ...], default: str | None) -> Any:
        value = self.get(key, str, default)
        if value is not None and value not in allowed:
            raise bad_value(self.source, self.path(key), value, allowed)
        return value

    def sub(self, key: str) -> Table | None:
        self.used.add(key)
        return Table(self.source, self.path(key), self.data[key]) if key in self.data else None

    def finish(self, allowed: tuple[str, ...]) -> None:
        for key in self.data:
            if key not in allowed:
                raise SpecError(
                    f"{self.source}: unknown field `{self.path(key)}` (value {shown(self.data[key])})."
                    f"{suggest(key, allowed)} Allowed fields here: {', '.join(allowed)}."
                )


def _tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def check_name(name: object) -> None:
    """A block's name names the generated kernel module (``DIR/torch/<name>.py``) and the report files."""
    problem = None
    if not isinstance(name, str) or not name:
        problem = "it is not a nonempty string"
    elif len(name) > limits.NAME_CHARS:
        problem = f"it has {len(name)} characters"
    elif not (name.isascii() and name.isidentifier()):
        problem = "it is not an identifier"
    elif keyword.iskeyword(name):
        problem = "it is a Python keyword, so the kernel module could not be imported"
    elif name.startswith("__"):
        problem = "names beginning with '__' are Python's (__init__.py is the kernel package's own file)"
    if problem:
        raise SpecError(f"field `name` has the value {shown(name)}, which is not allowed ({problem}): it names the "
                        f"generated kernel module and the report files. Allowed: at most {limits.NAME_CHARS} ASCII "
                        "letters, digits and underscores, not starting with a digit or '__', not a Python keyword "
                        "(e.g. \"my_block\")")


def check_activation(where: str, value: object) -> None:
    """A named activation, or a custom expression that `symbolic.activations.parse_custom` accepts."""
    if not isinstance(value, str):
        raise SpecError(f"field `{where}` must be a string, got {type(value).__name__} {shown(value)}")
    if value in ACTIVATIONS:
        return
    from symbolic.activations import activation  # SymPy only for custom expressions

    try:
        activation(value)
    except ValueError as exc:
        raise SpecError(f"field `{where}` has the value {shown(value)}: {exc}. Allowed: a real expression in x "
                        f"within these bounds, or one of {', '.join(ACTIVATIONS)}") from None
