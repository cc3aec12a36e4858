"""The built-in functions, layers, losses and initializers of `.dln`.

Each built-in is a Python function registered with `@builtin`; its signature
*is* the language's signature: parameter names are the keyword names users
write, defaults are PyTorch's, and the annotation (one of the `kinds` below)
says what a value may be.  Binding a call's arguments, with every error
pointing at the argument, happens here once for all built-ins.

The function receives a `CallContext` (the graph builder, the call's span,
its parameter scope) and returns a value.  Layers create parameters through
`cx.param` and model state (running statistics) through `cx.state`, whose new
value `cx.assign` records; random ops draw through `cx.random`.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import DType, TensorType
from dln.compiler.symbolic import Dim, Shape
from dln.compiler.values import (DimValue, DTypeValue, FunctionRef, InitSpec, ListValue, TupleValue, Value,
                                 describe)
from dln.dsl.diagnostics import Diagnostic, DlnError, Note, Span


class CallContext(Protocol):
    b: GraphBuilder
    span: Span
    name: str          # the scope name of a layer call (`fc1`, `h.linear_0`)
    training: bool

    def param(self, leaf: str, shape: Shape, init: InitSpec, dtype: DType = DType.F32) -> Tensor: ...
    def state(self, leaf: str, shape: Shape, init: InitSpec, dtype: DType = DType.F32) -> Tensor: ...
    def assign(self, state: Tensor, value: Tensor) -> None: ...
    # U[0, 1) of a stream of its own; `kind`: the built-in drawing (`dropout`), which names it in kernels.
    def random(self, shape: Shape, dtype: DType, kind: str) -> Tensor: ...
    # (seed, step, stream) for an op that draws inside (attention's dropout): a stream of its own.
    def random_stream(self) -> tuple[Tensor, Tensor, int]: ...
    # A stream build's carried recurrent state (None otherwise): read at the start, `carry_out` at the end.
    def carry(self, leaf: str, type_: TensorType) -> Tensor | None: ...
    def carry_out(self, carry: Tensor, value: Tensor) -> None: ...
    def fail(self, code: str, message: str, *notes: Note) -> DlnError: ...
    def arg_span(self, name: str) -> Span: ...
    def fail_at(self, arg: str, code: str, message: str, *notes: Note) -> DlnError: ...
    def note_metric(self, kind: str, **tensors: Tensor) -> None: ...
    def operand(self, v: Value) -> Tensor | int | float: ...


# ---- argument kinds: annotations on built-in parameters -----------------------------------------------


class Kind:
    """What an argument may be; `convert` returns the value or None when it does not fit."""

    text = "a value"

    def convert(self, v: Value) -> Any:
        return v


class _TensorKind(Kind):
    text = "a tensor"

    def convert(self, v):
        return v if isinstance(v, Tensor) else None


class _OperandKind(Kind):
    text = "a tensor or a number"

    def convert(self, v):
        if isinstance(v, (Tensor, int, float)) or isinstance(v, DimValue):
            return v
        return None


class _IntKind(Kind):
    text = "an int"

    def convert(self, v):
        if isinstance(v, bool):
            return None
        if isinstance(v, int):
            return v
        if isinstance(v, DimValue) and isinstance(v.dim, int):
            return v.dim
        return None


class _DimKind(Kind):
    text = "an int or a dimension"

    def convert(self, v):
        if isinstance(v, bool):
            return None
        if isinstance(v, int):
            return v
        if isinstance(v, DimValue):
            return v.dim
        return None


class _FloatKind(Kind):
    text = "a number"

    def convert(self, v):
        if isinstance(v, bool):
            return None
        if isinstance(v, (int, float)):
            return float(v)
        return None


class _BoolKind(Kind):
    text = "true or false"

    def convert(self, v):
        return v if isinstance(v, bool) else None


class _StrKind(Kind):
    text = "a string"

    def convert(self, v):
        return v if isinstance(v, str) else None


class _AxisKind(Kind):
    text = "an axis (an int or a tuple of ints)"

    def convert(self, v):
        if v is None:
            return None
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, TupleValue) and all(isinstance(i, int) and not isinstance(i, bool) for i in v.items):
            return tuple(v.items)
        return None


class _DimsKind(Kind):
    text = "a tuple of sizes"

    def convert(self, v):
        items = v.items if isinstance(v, (TupleValue, ListValue)) else (v,)
        out: list[Dim] = []
        for i in items:
            d = DIM.convert(i)
            if d is None:
                return None
            out.append(d)
        return tuple(out)


class _InitKind(Kind):
    text = "an initializer"

    def convert(self, v):
        if isinstance(v, InitSpec):
            return v
        if isinstance(v, FunctionRef) and v.name in BUILTINS and BUILTINS[v.name].category == "init":
            if required_arguments(BUILTINS[v.name].fn):  # `= constant` needs its value: not an initializer
                return None
            return BUILTINS[v.name].fn(None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return InitSpec("constant", (("value", float(v)),))
        return None


def required_arguments(fn: Callable) -> list[str]:
    """The parameters of a built-in without a default, after the call context."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    return [p.name for p in params if p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


class _DTypeKind(Kind):
    text = "an element type (f32, i64, ...)"

    def convert(self, v):
        return v.dtype if isinstance(v, DTypeValue) else None


class _TensorsKind(Kind):
    text = "a list of tensors"

    def convert(self, v):
        if isinstance(v, (ListValue, TupleValue)) and v.items and all(isinstance(i, Tensor) for i in v.items):
            return list(v.items)
        return None


class _SizesKind(Kind):
    text = "an int or a tuple of ints"

    def convert(self, v):
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, (TupleValue, ListValue)) and all(isinstance(i, int) and not isinstance(i, bool)
                                                          for i in v.items):
            return tuple(v.items)
        return None


TENSOR, OPERAND, INT, DIM, FLOAT, BOOL, STR = _TensorKind(), _OperandKind(), _IntKind(), _DimKind(), \
    _FloatKind(), _BoolKind(), _StrKind()
AXIS, DIMS, INIT, DTYPE, TENSORS, SIZES, ANY = _AxisKind(), _DimsKind(), _InitKind(), _DTypeKind(), \
    _TensorsKind(), _SizesKind(), Kind()


# ---- the registry ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Builtin:
    name: str
    fn: Callable[..., Value]
    category: str            # function | layer | loss | init | random
    owns_params: bool = False
    doc: str = ""

    def parameters(self) -> list[inspect.Parameter]:
        return _parameters(self.fn)


BUILTINS: dict[str, Builtin] = {}


@functools.cache
def _parameters(fn: Callable) -> list[inspect.Parameter]:
    """The language-level parameters: the function's, after the context; kinds resolved."""
    return list(inspect.signature(fn, eval_str=True).parameters.values())[1:]


def builtin(name: str | None = None, category: str = "function", owns_params: bool = False):
    def register(fn):
        key = name or fn.__name__.rstrip("_")
        BUILTINS[key] = Builtin(key, _keyword_callable(fn), category, owns_params, inspect.getdoc(fn) or "")
        return fn
    return register


def _keyword_callable(fn: Callable) -> Callable:
    """`fn`, callable as `fn(cx, **bound)` even when it takes `*args`.

    `bind` returns every argument by name, a variadic one as a tuple under its name
    (`permute`'s `axes`); Python cannot pass that by keyword, so it is spread here.
    The wrapper keeps `fn`'s signature (`__wrapped__`), which `bind` reads.
    """
    params = list(inspect.signature(fn).parameters.values())[1:]
    variadic = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
    if variadic is None:
        return fn
    leading = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    @functools.wraps(fn)
    def call(cx, **kwargs):
        head = [kwargs.pop(n) for n in leading]
        return fn(cx, *head, *kwargs.pop(variadic.name, ()), **kwargs)
    return call



# ---- binding a call --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    value: Value
    span: Span


def bind(b: Builtin, args: list[Arg], kwargs: dict[str, tuple[Arg, Span]], call_span: Span,
         piped: bool) -> tuple[dict[str, Any], dict[str, Span]]:
    """Match a call's arguments to the built-in's parameters; convert each to its kind.

    Returns the keyword arguments for the function and where each was written.
    """
    params = b.parameters()
    bound: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    variadic = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
    positional = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY)]
    extra: list[Arg] = []
    for i, a in enumerate(args):
        if i < len(positional):
            bound[positional[i].name] = a
        elif variadic is not None:
            extra.append(a)
        else:
            limit = len(positional) - (1 if piped else 0)
            took = "takes no positional arguments" if limit == 0 else \
                f"takes at most {limit} positional argument{'s' if limit != 1 else ''}"
            note = " (the first comes from the pipe)" if piped else ""
            raise DlnError(Diagnostic("E0304", f"{b.name} {took}{note}, got {len(args) - (1 if piped else 0)}",
                                      a.span, (Note(signature(b)),)))
    names = {p.name for p in params if p.kind is not p.VAR_POSITIONAL}
    for key, (a, key_span) in kwargs.items():
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            hint = f"did you mean '{close[0]}'?" if close else signature(b)
            raise DlnError(Diagnostic("E0305", f"{b.name} has no argument '{key}'", key_span, (Note(hint),)))
        if key in bound:
            raise DlnError(Diagnostic("E0306", f"argument '{key}' of {b.name} given twice", key_span))
        bound[key] = a
    out: dict[str, Any] = {}
    for p in params:
        kind: Kind = p.annotation if isinstance(p.annotation, Kind) else ANY
        if p.kind is p.VAR_POSITIONAL:
            values = []
            for a in extra:
                v = kind.convert(a.value)
                if v is None:
                    raise _kind_error(b, p.name, kind, a)
                values.append(v)
            out[p.name] = tuple(values)
            continue
        if p.name not in bound:
            if p.default is inspect.Parameter.empty:
                raise DlnError(Diagnostic("E0304", f"{b.name} needs the argument '{p.name}'", call_span,
                                          (Note(signature(b)),)))
            out[p.name] = p.default
            continue
        a = bound[p.name]
        spans[p.name] = a.span
        if a.value is None and p.default is None:
            out[p.name] = None
            continue
        v = kind.convert(a.value)
        if v is None:
            raise _kind_error(b, p.name, kind, a)
        out[p.name] = v
    return out, spans


def _kind_error(b: Builtin, pname: str, kind: Kind, a: Arg) -> DlnError:
    return DlnError(Diagnostic("E0307", f"argument '{pname}' of {b.name} must be {kind.text}, "
                                        f"got {describe(a.value)}", a.span, (Note(signature(b)),)))


def signature(b: Builtin) -> str:
    parts = []
    for p in b.parameters():
        text = p.name if p.kind is not p.VAR_POSITIONAL else f"{p.name}..."
        if p.default is not inspect.Parameter.empty:
            d = p.default
            text += " = " + ("none" if d is None else "true" if d is True else "false" if d is False
                             else f'"{d}"' if isinstance(d, str) else str(d))
        parts.append(text)
    return f"signature: {b.name}({', '.join(parts)})"


# Register the families (import order fixes nothing but the help listing).
from dln.compiler.builtins import (tensor_ops, reductions, shape_ops, nn, conv, recurrent, pooling,  # noqa: E402,F401
                                   losses, inits, attention)


