"""The abstract syntax tree of a `.dln` file.

Plain frozen dataclasses, every node with the `Span` it came from.  The parser
builds them (dsl/parser.py); the compiler's builder walks them
(compiler/builder.py).  Pipes are already desugared: `x -> f(a)` is the
`Call` `f(x, a)` with `piped=True`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator

from dln.dsl.diagnostics import Source, Span


@dataclass(frozen=True, slots=True)
class Ident:
    name: str
    span: Span


# ---- expressions ---------------------------------------------------------------


class Expr:
    __slots__ = ()
    span: Span


@dataclass(frozen=True, slots=True)
class Name(Expr):
    id: str
    span: Span


@dataclass(frozen=True, slots=True)
class Int(Expr):
    value: int
    span: Span


@dataclass(frozen=True, slots=True)
class Float(Expr):
    value: float
    span: Span


@dataclass(frozen=True, slots=True)
class Str(Expr):
    value: str
    span: Span


@dataclass(frozen=True, slots=True)
class Bool(Expr):
    value: bool
    span: Span


@dataclass(frozen=True, slots=True)
class TupleExpr(Expr):
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class ListExpr(Expr):
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Field:
    name: Ident
    value: Expr


@dataclass(frozen=True, slots=True)
class Record(Expr):
    fields: tuple[Field, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Unary(Expr):
    op: str  # "-" or "not"
    operand: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Binary(Expr):
    op: str  # + - * / % @ ** == != < <= > >= and or
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Keyword:
    name: Ident
    value: Expr

    @property
    def span(self) -> Span:
        return self.name.span.to(self.value.span)


@dataclass(frozen=True, slots=True)
class Call(Expr):
    func: Expr
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]
    span: Span
    piped: bool = False  # the first argument came from a pipe

    @property
    def func_name(self) -> str | None:
        return self.func.id if isinstance(self.func, Name) else None


@dataclass(frozen=True, slots=True)
class Slice(Expr):
    start: Expr | None
    stop: Expr | None
    step: Expr | None
    span: Span


@dataclass(frozen=True, slots=True)
class EllipsisExpr(Expr):
    span: Span


@dataclass(frozen=True, slots=True)
class Index(Expr):
    value: Expr
    items: tuple[Expr, ...]  # expressions, Slice or EllipsisExpr
    span: Span


# ---- statements ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TypeExpr:
    dtype: Ident
    dims: tuple[Expr, ...]
    span: Span


class Stmt:
    __slots__ = ()
    span: Span


@dataclass(frozen=True, slots=True)
class Input(Stmt):
    name: Ident
    type: TypeExpr
    span: Span


@dataclass(frozen=True, slots=True)
class Param(Stmt):
    name: Ident
    type: TypeExpr
    init: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Assign(Stmt):
    targets: tuple[Ident, ...]
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class OutputItem:
    name: Ident
    value: Expr | None


@dataclass(frozen=True, slots=True)
class Output(Stmt):
    items: tuple[OutputItem, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Repeat(Stmt):
    var: Ident
    start: Expr
    stop: Expr
    body: tuple[Stmt, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Return(Stmt):
    value: Expr
    span: Span


# ---- declarations ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HParam:
    """A model hyperparameter `dim: int = 128`, or a block argument `x` / `dim: int`."""

    name: Ident
    type: Ident | None  # None: a tensor argument of a block
    default: Expr | None
    span: Span


@dataclass(frozen=True, slots=True)
class Import:
    path: str
    span: Span


@dataclass(frozen=True, slots=True)
class Model:
    name: Ident
    hparams: tuple[HParam, ...]
    body: tuple[Stmt, ...]
    span: Span
    source: Source


@dataclass(frozen=True, slots=True)
class Block:
    name: Ident
    params: tuple[HParam, ...]
    body: tuple[Stmt, ...]
    span: Span
    source: Source


@dataclass(frozen=True, slots=True)
class Setting:
    name: Ident
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Minimize:
    """`minimize loss [over ...] [with ...]`; `over` holds instance names (`D`) and parameter-name
    patterns (`"head.*"`), in source order, or is empty: every parameter the loss reaches."""
    loss: Ident
    over: tuple[Ident | Str, ...]
    optimizer: Expr | None
    span: Span


@dataclass(frozen=True, slots=True)
class Train:
    model: Ident | None
    settings: tuple[Setting, ...]
    objectives: tuple[Minimize, ...]
    span: Span


Decl = Import | Model | Block | Train


@dataclass(frozen=True, slots=True)
class Module:
    source: Source
    decls: tuple[Decl, ...]

    @property
    def models(self) -> list[Model]:
        return [d for d in self.decls if isinstance(d, Model)]

    @property
    def blocks(self) -> list[Block]:
        return [d for d in self.decls if isinstance(d, Block)]

    @property
    def trains(self) -> list[Train]:
        return [d for d in self.decls if isinstance(d, Train)]

    @property
    def imports(self) -> list[Import]:
        return [d for d in self.decls if isinstance(d, Import)]


def names_used(node: object) -> Iterator[str]:
    """Every name an AST node reads (`Name` expressions), in no particular order.

    Iterative, not recursive: an expression may nest thousands deep (a long sum)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Name):
            yield n.id
        elif isinstance(n, tuple):
            stack.extend(n)
        elif hasattr(n, "__dataclass_fields__") and not isinstance(n, (Span, Ident)):
            stack.extend(getattr(n, f.name) for f in fields(n))


# Chains of operators, which nest as deep as they are long.  The evaluator walks each along its spine in
# a loop (dln.compiler.expressions) and the parser does not count its links as nesting (MAX_NESTING).

def chain_next(e: object) -> Expr | None:
    """The next link of a chain `e` is part of, if any: the associative side of an operator of the same
    direction (`(a + b) * c` -> `a + b`; `a ** (b ** c)` -> `b ** c`), the operand of a unary operator
    that is one too (`- - x`), the earlier stage of a pipe (`x -> f -> g` -> `x -> f`)."""
    if isinstance(e, Binary):
        inner = e.right if e.op == "**" else e.left
        return inner if isinstance(inner, Binary) and (inner.op == "**") == (e.op == "**") else None
    if isinstance(e, Unary):
        return e.operand if isinstance(e.operand, Unary) else None
    if isinstance(e, Call) and e.piped and e.args:
        inner = e.args[0]
        return inner if isinstance(inner, Call) and inner.piped else None
    return None


def spine(e: Expr) -> list:
    """`e` and the links of its chain, outermost first."""
    out = [e]
    while (nxt := chain_next(out[-1])) is not None:
        out.append(nxt)
    return out
