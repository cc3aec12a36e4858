"""Parameter names, LANGUAGE.md §6, rule 2.

Before a binding `NAME = expr` is evaluated, the calls in `expr` that own
parameters (layers, block calls, model instances) are listed in source order.
One such call is named `NAME`; several are named `NAME.<kind>_<k>`.  A name
bound a second time in the same scope uses `NAME_1`, `NAME_2`, ... (only
bindings that name layers count).  Calls with `name = "..."` keep that name
and are not counted.
"""

from __future__ import annotations

import re

from typing import Callable, Iterator

from dln.dsl import ast


def safe_name(text: str, limit: int = 40) -> str:
    """An identifier fragment from user text: letters, digits and underscores only."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)[:limit].strip("_")


def calls_in(expr: ast.Expr) -> Iterator[ast.Call]:
    """Every call inside `expr`, in no particular order."""
    stack: list[object] = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, ast.Call):
            yield e
            stack.append(e.func)
            stack.extend(e.args)
            stack.extend(k.value for k in e.kwargs)
        elif isinstance(e, ast.Binary):
            stack += [e.left, e.right]
        elif isinstance(e, ast.Unary):
            stack.append(e.operand)
        elif isinstance(e, (ast.TupleExpr, ast.ListExpr)):
            stack.extend(e.items)
        elif isinstance(e, ast.Record):
            stack.extend(f.value for f in e.fields)
        elif isinstance(e, ast.Index):
            stack.append(e.value)
            stack.extend(e.items)
        elif isinstance(e, ast.Slice):
            stack.extend(x for x in (e.start, e.stop, e.step) if x is not None)


def has_name_override(call: ast.Call) -> bool:
    return any(k.name.name == "name" for k in call.kwargs)


class ScopeNames:
    """Naming state of one parameter scope: how often each binding name has named layers."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def assign(self, binding: str, expr: ast.Expr, kind_of: Callable[[ast.Call], str | None]) -> dict[int, str]:
        """Names for the parameter-owning calls of `expr`, keyed by `id(call)`.

        `kind_of(call)` is the call's kind (`linear`, a block's name, a model's
        name) when it owns parameters, else None.
        """
        owning = [(c, kind_of(c)) for c in calls_in(expr) if not has_name_override(c)]
        owning = sorted(((c, k) for c, k in owning if k is not None),
                        key=lambda ck: (ck[0].span.line, ck[0].span.col))
        if not owning:
            return {}
        seen = self.counts.get(binding, 0)
        self.counts[binding] = seen + 1
        base = binding if seen == 0 else f"{binding}_{seen}"
        if len(owning) == 1:
            return {id(owning[0][0]): base}
        per_kind: dict[str, int] = {}
        names: dict[int, str] = {}
        for call, kind in owning:
            k = per_kind.get(kind, 0)
            per_kind[kind] = k + 1
            names[id(call)] = f"{base}.{kind}_{k}"
        return names
