"""Plain text and LaTeX of kernel terms (for messages and reports; nothing here is trusted)."""

from __future__ import annotations

from symbolic.kernel.terms import App, BVar, Fn, ILit, Lit, Sum, Term, Var, Vector, children

GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu",
         "xi", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega", "ell"}
BINDERS = ("j", "i", "l", "n", "p")


def _names(t: Term) -> set:
    out, stack = set(), [t]
    while stack:
        x = stack.pop()
        if isinstance(x, Var):
            out.add(x.name)
        stack.extend(children(x))
    return out


class _Printer:
    def __init__(self, t: Term, tex: bool):
        self.tex, self.taken = tex, _names(t)

    def binder(self, depth: int) -> str:
        for b in BINDERS + tuple(f"j{k}" for k in range(2, 99)):
            if b not in self.taken:
                self.taken.add(b)
                return b
        return "j"

    def name(self, n: str) -> str:
        n = n.split("%")[0]  # a kernel-owned variable is shown by the name it was made from
        if not self.tex:
            return n
        head, _, sub = n.partition("_")
        primes = head.count("'")
        head = head.replace("'", "")
        head = "\\" + head if head in GREEK else (head if len(head) == 1 else rf"\mathrm{{{head}}}")
        head += "'" * primes
        sub = sub.replace("_", ",").replace("'", "")
        return head + (rf"_{{\mathrm{{{sub}}}}}" if sub else "")

    def show(self, t: Term, bound: list, prec: int = 0) -> str:
        if isinstance(t, Var):
            return self.name(t.name)
        if isinstance(t, Lit):
            v = t.value
            s = str(v.numerator) if v.denominator == 1 else (rf"\frac{{{v.numerator}}}{{{v.denominator}}}"
                                                             if self.tex else f"{v.numerator}/{v.denominator}")
            return f"({s})" if (v < 0 or v.denominator != 1) and prec > 1 else s
        if isinstance(t, ILit):
            return str(t.n)
        if isinstance(t, BVar):
            return bound[-1 - t.level] if t.level < len(bound) else "?"
        if isinstance(t, Sum):
            j = self.binder(len(bound))
            body = self.show(t.body, bound + [j], 2)
            hi = self.show(t.hi, bound)
            s = rf"\sum_{{{j}=1}}^{{{hi}}} {body}" if self.tex else f"sum_{{{j}=1..{hi}}} {body}"
            return f"({s})" if prec > 1 else s
        return self.app(t, bound, prec)

    def app(self, t: App, bound: list, prec: int) -> str:
        op, a = t.op, t.args
        s = lambda x, p=0: self.show(x, bound, p)  # noqa: E731
        if op == "add":
            right = s(a[1], 1)
            out = f"{s(a[0], 1)} - {right[1:]}" if right.startswith("-") and not right.startswith("-(") else (
                f"{s(a[0], 1)} + {right}")
            return f"({out})" if prec > 1 else out
        if op == "neg":
            return f"-{s(a[0], 3)}"
        if op == "mul":
            factors = self.factors(t)
            parts = []
            for base, n in factors:
                b = s(base, 3)
                parts.append(b if n == 1 else (f"{{{b}}}^{{{n}}}" if self.tex else f"{b}**{n}"))
            out = (r" \, " if self.tex else "*").join(parts)
            return f"({out})" if prec > 2 else out
        if op == "div":
            if self.tex:
                return rf"\frac{{{s(a[0])}}}{{{s(a[1])}}}"
            out = f"{s(a[0], 2)}/{s(a[1], 3)}"
            return f"({out})" if prec > 2 else out
        if op == "sqrt":
            return rf"\sqrt{{{s(a[0])}}}" if self.tex else f"sqrt({s(a[0])})"
        if op == "matvec":
            return rf"{s(a[0], 3)} {s(a[1], 3)}" if self.tex else f"({s(a[0], 3)} @ {s(a[1], 3)})"
        if op == "dot":
            return rf"{{{s(a[0], 3)}}}^\top {s(a[1], 3)}" if self.tex else f"dot({s(a[0])}, {s(a[1])})"
        if op == "outer":
            return rf"{s(a[0], 3)} {{{s(a[1], 3)}}}^\top" if self.tex else f"outer({s(a[0])}, {s(a[1])})"
        if op == "frob":
            return rf"\langle {s(a[0])}, {s(a[1])} \rangle_F" if self.tex else f"frob({s(a[0])}, {s(a[1])})"
        if op == "at":
            return rf"{{{s(a[0], 3)}}}^{{({s(a[1])})}}" if self.tex else f"{s(a[0], 3)}[{s(a[1])}]"
        if op == "num" and self.tex:
            return s(a[0], prec)
        name = op.name if isinstance(op, Fn) else op
        head = (self.name(name) if isinstance(op, Fn) else rf"\mathrm{{{name}}}") if self.tex else name
        inner = ", ".join(s(x) for x in a)
        return rf"{head}\left({inner}\right)" if self.tex else f"{head}({inner})"

    def factors(self, t: Term) -> list:
        flat: list = []

        def walk(x):
            if isinstance(x, App) and x.op == "mul":
                walk(x.args[0]), walk(x.args[1])
            else:
                flat.append(x)

        walk(t)
        out: list = []
        for f in flat:
            if out and out[-1][0] == f:
                out[-1] = (f, out[-1][1] + 1)
            else:
                out.append((f, 1))
        return out


def text(t: Term) -> str:
    return _Printer(t, False).show(t, [])


def latex(t: Term) -> str:
    return _Printer(t, True).show(t, [])


def kind_of(t: Term) -> str:
    return "vector" if isinstance(t.ty, Vector) else "scalar"


def hypothesis_text(h) -> str:
    q = f"for all {', '.join(text(b) for b in h.binders)}: " if h.binders and h.kind != "definition" else ""
    if h.kind == "definition":
        head = text(h.expr) + (f"[{', '.join(text(b) for b in h.binders)}]" if h.binders else "")
        return f"{head} := {text(h.rhs)}"
    if h.kind == "equation":
        return f"{q}{text(h.expr)} = {text(h.rhs)}"
    body = {"positive": "> 0", "nonzero": "!= 0", "coords": "!= 0"}.get(h.kind, h.kind)
    every = "every coordinate of " if h.kind == "coords" and isinstance(h.expr.ty, Vector) else ""
    return f"{q}{every}{text(h.expr)} {body}"


def hypothesis_latex(h) -> str:
    q = rf"\forall {', '.join(latex(b) for b in h.binders)}:\ " if h.binders else ""
    if h.kind == "definition":
        head = f"{{{latex(h.expr)}}}^{{({latex(h.binders[0])})}}" if h.binders else latex(h.expr)
        return rf"{head} := {latex(h.rhs)}"
    if h.kind == "equation":
        return rf"{q}{latex(h.expr)} = {latex(h.rhs)}"
    if h.kind == "coords" and isinstance(h.expr.ty, Vector):
        return rf"{q}\left({latex(h.expr)}\right)_i \neq 0 \ \forall i"
    rel = "> 0" if h.kind == "positive" else r"\neq 0"
    return rf"{q}{latex(h.expr)} {rel}"
