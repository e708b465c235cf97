"""The lines of a generated kernel as a person would write them, within `WIDTH` characters.

- An assignment too long for its line is split: its largest sub-expression that prints as a unit (a sum,
  which prints as one operand, else a call) becomes an assignment of its own, until the line fits. Only
  whole operands move: the code computes the same operations (the terms of a sum may print in another
  order, SymPy's order of names, and round differently in the last place).
- Temporaries are numbered ``t0, t1, ...`` in the order the function assigns them.
- A literal (a dict, a tuple) that does not fit on one line is written one entry per line.

Nothing here knows a formula: it receives assignments and a printer (``code``) and returns assignments.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import sympy as sp
from sympy.core.function import Application

from symbolic.codegen.lower import Assign, Function, depends_on

WIDTH = 120
INDENT = "    "
TEMPORARY = re.compile(r"t\d+")

Code = Callable[[sp.Expr, Function], str]


def laid_out(fn: Function, code: Code, prefix: Callable[[str], str], width: int = WIDTH) -> Function:
    """`fn` with its long assignments split and its temporaries renumbered in emission order.

    ``code(expr, fn)`` prints an expression of `fn`; ``prefix(target)`` is what its line holds before the
    expression (``"    z = "``). An expression with no part to move out stays on its long line."""
    out = Function([], set(fn.per_expert), fn.result, dict(fn.given), dict(fn.plain))
    taken = [int(a.target[1:]) for a in fn.body if TEMPORARY.fullmatch(a.target)]
    scratch = iter(sp.numbered_symbols("t", start=max(taken, default=-1) + 1))  # names as long as the final ones
    for a in fn.body:
        _append(out, a, code, lambda target: width - len(prefix(target)), scratch)
    return renumbered(out)


def _append(fn: Function, a: Assign, code: Code, room: Callable[[str], int], scratch) -> None:
    """Append `a` to `fn`, first moving out parts of its expression (recursively) until it fits."""
    expr = a.expr
    while len(code(expr, fn)) > room(a.target):
        part = _largest_part(expr, fn, code)
        if part is None:
            break
        temp = next(scratch)
        _append(fn, Assign(temp.name, part), code, room, scratch)
        expr = expr.xreplace({part: temp})
    fn.body.append(Assign(a.target, expr))
    if depends_on(expr, fn.per_expert):
        fn.per_expert.add(a.target)


def _largest_part(expr: sp.Expr, fn: Function, code: Code) -> sp.Expr | None:
    """The part to move out: the longest sum (an operand in parentheses, or a call's argument: a pre-activation),
    else the longest call; never a product or a power, whose factors print among their neighbours'."""
    parts = [e for e in sp.preorder_traversal(expr) if e is not expr and isinstance(e, (sp.Add, Application))]
    if not parts:
        return None
    parts = sorted(set(parts), key=sp.default_sort_key)
    sums = [e for e in parts if isinstance(e, sp.Add)]
    return max(sums or parts, key=lambda e: len(code(e, fn)))


def renumbered(fn: Function) -> Function:
    """`fn` with its temporaries renamed ``t0, t1, ...`` in the order it assigns them."""
    temps = [a.target for a in fn.body if TEMPORARY.fullmatch(a.target)]
    names = {old: f"t{i}" for i, old in enumerate(temps)}
    symbols = {s: sp.Symbol(names[s.name]) for a in fn.body for s in a.expr.free_symbols if s.name in names}
    body = [Assign(names.get(a.target, a.target), a.expr.xreplace(symbols)) for a in fn.body]
    per_expert = {names.get(n, n) for n in fn.per_expert}
    return Function(body, per_expert, fn.result, dict(fn.given), dict(fn.plain))


def literal(entries: Sequence[str], open_: str, close: str, indent: str, width: int = WIDTH,
            lead: str = "", trail: str = "") -> str:
    """``lead + open_ + entries + close + trail`` on one line of `width` if it fits (a tuple of one keeps its
    comma), else one entry per line, indented one level below `indent`."""
    one = ", ".join(entries) + ("," if open_ == "(" and len(entries) == 1 else "")
    line = f"{indent}{lead}{open_}{one}{close}{trail}"
    if len(line) <= width:
        return line
    inner = indent + INDENT
    return "\n".join([f"{indent}{lead}{open_}", *(f"{inner}{e}," for e in entries), f"{indent}{close}{trail}"])


def call(function: str, args: Sequence[str], indent: str, width: int = WIDTH) -> str:
    """``function(args)`` on one line of `width` if it fits, else one argument per line."""
    line = f"{indent}{function}({', '.join(args)})"
    if len(line) <= width:
        return line
    return "\n".join([f"{indent}{function}(", *(f"{indent}{INDENT}{a}," for a in args), f"{indent})"])
