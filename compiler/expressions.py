"""Evaluating expressions: constants fold in Python, tensors become nodes.

Numbers, strings, hyperparameters and dimensions are computed while
compiling; as soon as a tensor takes part, the operation emits nodes.  A
dimension meeting a tensor becomes a scalar tensor (`x / B`).
"""

from __future__ import annotations

import operator
import re
from typing import TYPE_CHECKING, Any

from dln.compiler import builtins as lib
from dln.compiler import inline
from dln.compiler.emit import DEFAULT_FLOAT, Tensor, result_dtype
from dln.compiler.numbers import const_problem
from dln.compiler.ir import DTYPES, DType, Op, TensorType
from dln.compiler.symbolic import Dim, Sym, dim_at_most
from dln.compiler.values import (BlockRef, DimValue, DTypeValue, FunctionRef, Instance, ListValue, ModelRef,
                                 RecordValue, TupleValue, Value, describe)
from dln.dsl import ast
from dln.dsl.diagnostics import Diagnostic, DlnError, Note, Span
from dln.dsl.parser import INT_LIMIT  # integer constants stay within an i64, give or take the sign

if TYPE_CHECKING:
    from dln.compiler.build import Frame, ModelBuilder

_COMPARE = {"==": Op.EQ, "!=": Op.NE, "<": Op.LT, "<=": Op.LE, ">": Op.GT, ">=": Op.GE}
_PY_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
               ">=": operator.ge}
_ARITH = {"+": Op.ADD, "-": Op.SUB, "*": Op.MUL, "/": Op.DIV, "%": Op.MOD, "**": Op.POW}


class Evaluator:
    def __init__(self, builder: "ModelBuilder | None") -> None:
        self.m = builder

    # ---- entry points --------------------------------------------------------------------------------
    def eval(self, frame: "Frame", e: ast.Expr) -> Value:
        method = getattr(self, "_" + type(e).__name__)
        return method(frame, e)

    def eval_const(self, frame: "Frame", e: ast.Expr) -> Any:
        """A value needed while compiling (a hyperparameter's default): no tensors, no calls (an
        evaluator without a model builder refuses every call, however deep: see `_Call`)."""
        v = self.eval(frame, e)
        if isinstance(v, DimValue) and isinstance(v.dim, int):
            return v.dim
        if not isinstance(v, (int, float, bool, str)):
            raise DlnError(Diagnostic("E0307", f"a hyperparameter's default must be a constant, got {describe(v)}",
                                      e.span))
        return v

    def owning_kind(self, frame: "Frame", call: ast.Call) -> str | None:
        """The kind of a call that owns parameters (for naming), else None."""
        if not isinstance(call.func, ast.Name):
            return None
        name = call.func.id
        binding = frame.env.get(name)
        if binding is not None:
            return None  # a local value: an instance application reuses its parameters
        decl = frame.globals.get(name)
        if isinstance(decl, (ast.Block, ast.Model)):
            return name
        b = lib.BUILTINS.get(name)
        return name if b is not None and b.owns_params else None

    # ---- atoms --------------------------------------------------------------------------------------------
    def _Name(self, frame, e: ast.Name) -> Value:
        if self.m is None:
            if e.id in frame.env:
                return frame.env[e.id].value
            raise DlnError(Diagnostic("E0301", f"unknown name '{e.id}'", e.span))
        if e.id in DTYPES and e.id not in frame.env:
            return DTypeValue(DTYPES[e.id])
        return self.m.lookup(frame, e.id, e.span)

    def _Int(self, frame, e: ast.Int) -> Value:
        return e.value

    def _Float(self, frame, e: ast.Float) -> Value:
        return e.value

    def _Str(self, frame, e: ast.Str) -> Value:
        return e.value

    def _Bool(self, frame, e: ast.Bool) -> Value:
        return e.value

    def _TupleExpr(self, frame, e: ast.TupleExpr) -> Value:
        return TupleValue(tuple(self.eval(frame, i) for i in e.items))

    def _ListExpr(self, frame, e: ast.ListExpr) -> Value:
        return ListValue(tuple(self.eval(frame, i) for i in e.items))

    def _Record(self, frame, e: ast.Record) -> Value:
        seen: set[str] = set()
        fields = []
        for f in e.fields:
            if f.name.name in seen:
                raise DlnError(Diagnostic("E0306", f"field '{f.name.name}' given twice", f.name.span))
            seen.add(f.name.name)
            fields.append((f.name.name, self.eval(frame, f.value), f.name.span))
        return RecordValue(tuple(fields))

    def _Slice(self, frame, e: ast.Slice) -> Value:
        raise DlnError(Diagnostic("E0307", "a slice is only allowed inside [...]", e.span))

    def _EllipsisExpr(self, frame, e: ast.EllipsisExpr) -> Value:
        raise DlnError(Diagnostic("E0307", "'...' is only allowed inside [...]", e.span))

    # ---- operators ------------------------------------------------------------------------------------
    # A chain of operators (`x + x + ... + x`, `a ** b ** ... ** z`, `- - x`) nests as deep as it is long;
    # it is walked along its spine in a loop, so that only the other operands recurse and a sum of
    # thousands of terms compiles (dsl/parser.py bounds the nesting that still recurses).
    def _Unary(self, frame, e: ast.Unary) -> Value:
        spine = ast.spine(e)
        v = self.eval(frame, spine[-1].operand)
        for u in reversed(spine):
            v = self._unary(u, v)
        return v

    def _unary(self, e: ast.Unary, v: Value) -> Value:
        if e.op == "-":
            if isinstance(v, Tensor):
                with self.m.b.at(loc=e.span):
                    return self.m.b.neg(v)
            if isinstance(v, DimValue):
                return DimValue(-v.dim)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return -v
            raise DlnError(Diagnostic("E0307", f"cannot negate {describe(v)}", e.span))
        if isinstance(v, bool):
            return not v
        if isinstance(v, Tensor) and v.dtype is DType.BOOL:
            with self.m.b.at(loc=e.span):
                return self.m.b.unary(Op.NOT, v)
        raise DlnError(Diagnostic("E0307", f"'not' needs a bool, got {describe(v)}", e.span))

    def _Binary(self, frame, e: ast.Binary) -> Value:
        spine = ast.spine(e)
        if e.op != "**":  # ((a + b) + c) + d: a, then b and c and d each added as it is evaluated
            v = self.eval(frame, spine[-1].left)
            for b in reversed(spine):
                v = self._binary(frame, b, v, self.eval(frame, b.right))
            return v
        # a ** (b ** (c ** d)): a, b, c, d in the order written, then the powers from the right
        lefts = [self.eval(frame, b.left) for b in spine]
        v = self.eval(frame, spine[-1].right)
        for b, left in zip(reversed(spine), reversed(lefts)):
            v = self._binary(frame, b, left, v)
        return v

    def _binary(self, frame, e: ast.Binary, a: Value, b: Value) -> Value:
        if not isinstance(a, Tensor) and not isinstance(b, Tensor):
            return self._const_binary(e, a, b)
        if self.m is None:  # pragma: no cover - constants have no tensors
            raise AssertionError
        for side, v in (("left", a), ("right", b)):
            if not isinstance(v, (Tensor, int, float, DimValue)):
                raise DlnError(Diagnostic("E0307", f"'{e.op}' cannot take {describe(v)}",
                                          e.left.span if side == "left" else e.right.span))
        gb = self.m.b
        notes = self._operand_notes(frame, (e.left, e.right))
        with gb.at(loc=e.span, notes=notes):
            x, y = self.operand(a), self.operand(b)
            if e.op not in ("and", "or", "@"):
                self._check_constants(e, x, y, notes)
            if e.op == "@":
                if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                    raise gb.fail("E0203", "'@' needs two tensors")
                return gb.matmul(x, y)
            if e.op in _COMPARE:
                return gb.compare(_COMPARE[e.op], x, y)
            if e.op in ("and", "or"):
                for v in (x, y):
                    if not (isinstance(v, bool) or isinstance(v, Tensor) and v.dtype is DType.BOOL):
                        raise gb.fail("E0206", f"'{e.op}' needs bool values, got {describe(v)}")
                return gb.logical(Op.AND if e.op == "and" else Op.OR, x, y)
            return gb.binary(_ARITH[e.op], x, y) if e.op != "**" else gb.pow(x, y)

    def _check_constants(self, e: ast.Binary, x, y, notes: tuple[Note, ...]) -> None:
        """A number meeting a tensor becomes a constant of the result's type: it must fit there."""
        dtype = result_dtype(x, y)
        if e.op == "/" and not dtype.is_float:
            dtype = DEFAULT_FLOAT
        for v, side in ((x, e.left), (y, e.right)):
            problem = None if isinstance(v, Tensor) else const_problem(v, dtype)
            if problem is not None:
                raise DlnError(Diagnostic("E0208", problem, side.span, notes))

    def operand(self, v: Value) -> Tensor | int | float:
        """A value as an operand of a tensor operation: dimensions become scalar tensors."""
        if isinstance(v, DimValue):
            return v.dim if isinstance(v.dim, int) else self.m.b.symsize(v.dim)
        return v

    def _const_binary(self, e: ast.Binary, a: Value, b: Value) -> Value:
        if e.op == "@":
            raise DlnError(Diagnostic("E0203", f"'@' needs two tensors, got {describe(a)} and {describe(b)}",
                                      e.span))
        if e.op in ("and", "or"):
            if isinstance(a, bool) and isinstance(b, bool):
                return (a and b) if e.op == "and" else (a or b)
            raise DlnError(Diagnostic("E0206", f"'{e.op}' needs bool values", e.span))
        if isinstance(a, DimValue) or isinstance(b, DimValue):
            return self._dim_binary(e, a, b)
        if e.op in _PY_COMPARE:
            numbers = type(a) in (int, float) and type(b) in (int, float)
            # Any two values of one kind can be equal; only numbers, strings and bools are ordered.
            same = type(a) is type(b) and (e.op in ("==", "!=") or type(a) in (str, bool))
            if numbers or same:
                return _PY_COMPARE[e.op](a, b)
            notes = (Note(f"'{e.op}' orders numbers, strings and bools; other values compare with == and !="),) \
                if type(a) is type(b) else ()
            raise DlnError(Diagnostic("E0307", f"cannot compare {describe(a)} with {describe(b)}", e.span, notes))
        if e.op == "+" and isinstance(a, str) and isinstance(b, str):
            return a + b
        for v in (a, b):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise DlnError(Diagnostic("E0307", f"'{e.op}' cannot take {describe(v)}", e.span))
        try:
            if e.op in ("+", "-", "*"):
                result = a + b if e.op == "+" else a - b if e.op == "-" else a * b
                if isinstance(result, int) and abs(result) > INT_LIMIT:
                    raise DlnError(Diagnostic("E0208", f"the constant {a} {e.op} {b} is too large "
                                                       "(beyond 2**63)", e.span))
                return result
            if e.op == "/":
                return a / b
            if e.op == "%":
                return a % b
            if e.op == "**":
                return _const_power(e, a, b)
        except (ZeroDivisionError, OverflowError) as err:
            raise DlnError(Diagnostic("E0208", f"cannot compute this constant: {err}", e.span)) from None
        raise DlnError(Diagnostic("E0307", f"'{e.op}' needs tensors", e.span))

    def _dim_binary(self, e: ast.Binary, a: Value, b: Value) -> Value:
        da = a.dim if isinstance(a, DimValue) else a
        db = b.dim if isinstance(b, DimValue) else b
        for v in (da, db):
            if isinstance(v, bool) or not isinstance(v, (int, float, Sym)):
                raise DlnError(Diagnostic("E0307", f"'{e.op}' cannot take {describe(v)}", e.span))
        if e.op in ("+", "-", "*") and not isinstance(da, float) and not isinstance(db, float):
            return DimValue({"+": operator.add, "-": operator.sub, "*": operator.mul}[e.op](da, db))
        if e.op in _PY_COMPARE and isinstance(da, (int, float)) and isinstance(db, (int, float)):
            return _PY_COMPARE[e.op](da, db)
        if self.m is None:
            raise DlnError(Diagnostic("E0307", f"'{e.op}' of a dimension needs a tensor context", e.span))
        # Anything else is computed at run time on scalar tensors.
        gb = self.m.b
        with gb.at(loc=e.span):
            x, y = self.operand(a), self.operand(b)
            if e.op in _COMPARE:
                return gb.compare(_COMPARE[e.op], x, y)
            return gb.pow(x, y) if e.op == "**" else gb.binary(_ARITH[e.op], x, y)

    def _operand_notes(self, frame, exprs) -> tuple[Note, ...]:
        """Where each operand named by a plain name was declared (once per name: `x and x`)."""
        notes = []
        names = dict.fromkeys(x.id for x in exprs if isinstance(x, ast.Name) and x.id in frame.env)
        for name in names:
            bnd = frame.env[name]
            if isinstance(bnd.value, Tensor) and bnd.span is not None:
                notes.append(Note(f"{name} declared at {bnd.span} as {bnd.value.type}", bnd.span))
        return tuple(notes)

    # ---- calls -----------------------------------------------------------------------------------------------
    def _Call(self, frame, e: ast.Call) -> Value:
        if self.m is None:
            raise DlnError(Diagnostic("E0307", "a hyperparameter's default must be a constant", e.span))
        # A pipe `x -> f -> g -> ...` is a chain too: every stage's function is found first, last stage
        # first (as when each call evaluated its function, then its piped argument), then the stages run.
        spine = ast.spine(e)
        if len(spine) == 1:
            return self._call(frame, e, self._callee(frame, e))
        callees = [self._callee(frame, c) for c in spine]
        value = self.eval(frame, spine[-1].args[0])
        for c, callee in zip(reversed(spine), reversed(callees)):
            value = self._call(frame, c, callee, (value,))
        return value

    def _callee(self, frame, e: ast.Call) -> Value:
        if isinstance(e.func, ast.Name) and not (e.func.id in DTYPES and e.func.id not in frame.env):
            return self.m.lookup(frame, e.func.id, e.func.span, called=True)
        return self.eval(frame, e.func)

    def _call(self, frame, e: ast.Call, callee: Value, piped: tuple[Value, ...] = ()) -> Value:
        """Call `callee` as `e` says; `piped`: the value of its first argument, when evaluated already."""
        args = [lib.Arg(piped[0] if k == 0 and piped else self.eval(frame, a), a.span)
                for k, a in enumerate(e.args)]
        kwargs: dict[str, tuple[lib.Arg, Span]] = {}
        override: str | None = None
        for k in e.kwargs:
            if k.name.name in kwargs:
                raise DlnError(Diagnostic("E0306", f"argument '{k.name.name}' given twice", k.name.span))
            value = self.eval(frame, k.value)
            if k.name.name == "name" and (not isinstance(callee, FunctionRef) or lib.BUILTINS[callee.name].owns_params):
                override = _check_override(value, k.value.span)
                continue
            kwargs[k.name.name] = (lib.Arg(value, k.value.span), k.name.span)
        m = self.m
        scope_name = override or m.call_names.get(id(e)) or self._fallback_name(frame, e, callee)
        if isinstance(callee, FunctionRef):
            return self._call_builtin(frame, e, lib.BUILTINS[callee.name], args, kwargs, scope_name)
        if isinstance(callee, BlockRef):
            with m.b.at(loc=e.span, label=".".join(frame.prefix + (scope_name,))):
                return inline.call_block(m, frame, callee.decl, args, kwargs, e, scope_name)
        if isinstance(callee, ModelRef):
            return inline.make_instance(m, frame, callee.decl, args, kwargs, e, scope_name)
        if isinstance(callee, Instance):
            if override is not None:
                raise DlnError(Diagnostic("E0305", "an instance keeps the name it was made with", e.span))
            with m.b.at(loc=e.span):
                return inline.apply_instance(m, frame, callee, args, kwargs, e)
        raise DlnError(Diagnostic("E0307", f"{describe(callee)} cannot be called", e.func.span))

    def _fallback_name(self, frame, e: ast.Call, callee: Value) -> str:
        kind = self.owning_kind(frame, e) or (callee.name if isinstance(callee, FunctionRef) else "call")
        counts = frame.names.counts
        key = f"<{kind}>"
        k = counts.get(key, 0)
        counts[key] = k + 1
        return f"{kind}_{k}"

    def _call_builtin(self, frame, e: ast.Call, b: lib.Builtin, args, kwargs, scope_name: str) -> Value:
        bound, spans = lib.bind(b, args, kwargs, e.span, e.piped)
        m = self.m
        label = ".".join(frame.prefix + (scope_name,)) if b.owns_params else None
        cx = _CallContext(m, frame, e.span, scope_name, spans)
        if b.category == "loss" and isinstance(bound.get("target"), Tensor):
            m.loss_targets.append(bound["target"].id)
        with m.b.at(loc=e.span, label=label):
            return b.fn(cx, **bound)

    # ---- indexing ----------------------------------------------------------------------------------------
    def _Index(self, frame, e: ast.Index) -> Value:
        v = self.eval(frame, e.value)
        if isinstance(v, (TupleValue, ListValue)):
            if len(e.items) != 1:
                raise DlnError(Diagnostic("E0207", "a tuple takes one index", e.span))
            i = self.eval(frame, e.items[0])
            if isinstance(i, DimValue) and isinstance(i.dim, int):
                i = i.dim
            if not isinstance(i, int) or isinstance(i, bool):
                raise DlnError(Diagnostic("E0307", f"a tuple index must be an int, got {describe(i)}",
                                          e.items[0].span))
            if not -len(v.items) <= i < len(v.items):
                raise DlnError(Diagnostic("E0207", f"index {i} is out of range for {describe(v)}", e.items[0].span))
            return v.items[i]
        if not isinstance(v, Tensor):
            raise DlnError(Diagnostic("E0307", f"cannot index {describe(v)}", e.value.span))
        with self.m.b.at(loc=e.span):
            return self._index_tensor(frame, e, v)

    def _index_tensor(self, frame, e: ast.Index, x: Tensor) -> Tensor:
        items = list(e.items)
        ellipses = [i for i, it in enumerate(items) if isinstance(it, ast.EllipsisExpr)]
        if len(ellipses) > 1:
            raise DlnError(Diagnostic("E0207", "an index may hold one '...'", items[ellipses[1]].span))
        explicit = len(items) - len(ellipses)
        if explicit > x.rank:
            raise DlnError(Diagnostic("E0207", f"{explicit} indices for {x.type}", e.span))
        if ellipses:
            k = ellipses[0]
            items = items[:k] + [None] * (x.rank - explicit) + items[k + 1:]
        else:
            items += [None] * (x.rank - explicit)
        starts, stops, steps, keep = [], [], [], []
        for axis, (it, d) in enumerate(zip(items, x.shape)):
            if it is None or isinstance(it, ast.Slice) and it.start is None and it.stop is None and it.step is None:
                starts.append(0), stops.append(d), steps.append(1), keep.append(axis)
            elif isinstance(it, ast.Slice):
                step = 1 if it.step is None else self._index_int(frame, it.step, allow_dim=False)
                if step <= 0:
                    raise DlnError(Diagnostic("E0207", "slice steps must be positive", it.step.span))
                lo = 0 if it.start is None else self._bound(frame, it.start, d, axis)
                hi = d if it.stop is None else self._bound(frame, it.stop, d, axis)
                if dim_at_most(lo, hi) is False:
                    hi = lo  # an empty slice, as in NumPy
                else:
                    self._require(lo, hi, f"slice {lo}:{hi} of axis {axis} starts after it stops", it.span)
                starts.append(lo), stops.append(hi), steps.append(step), keep.append(axis)
            else:
                i = self._index_int(frame, it, allow_dim=True)
                self._check_index(i, d, axis, it.span)
                i = i + d if isinstance(i, int) and i < 0 else i
                starts.append(i), stops.append(i + 1), steps.append(1)
        out = self.m.b.slice(x, starts, stops, steps)
        return self.m.b.reshape(out, tuple(out.shape[a] for a in keep))

    def _check_index(self, i: Dim, d: Dim, axis: int, span: Span) -> None:
        """An index must fall inside its axis: proven now, or required of the inputs."""
        message = f"index {i} is out of range for axis {axis} of size {d}"
        if isinstance(i, int) and isinstance(d, int):
            if not -d <= i < d:
                raise DlnError(Diagnostic("E0207", message, span))
            return
        # i >= 0 needs i + 1 <= d; a negative int needs -i <= d.
        low = -i if isinstance(i, int) and i < 0 else i + 1
        self._require(low, d, message, span)

    def _require(self, low: Dim, high: Dim, message: str, span: Span) -> None:
        """low <= high: proven now, refuted now (E0207), or required of the inputs when they bind."""
        with self.m.b.at(loc=span, notes=()):
            self.m.b.at_most(low, high, "E0207", message)

    def _index_int(self, frame, expr: ast.Expr, allow_dim: bool) -> Dim:
        v = self.eval(frame, expr)
        if isinstance(v, DimValue) and (allow_dim or isinstance(v.dim, int)):
            return v.dim
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        raise DlnError(Diagnostic("E0307", f"an index must be an int or a dimension, got {describe(v)}",
                                  expr.span))

    def _bound(self, frame, expr: ast.Expr, d: Dim, axis: int) -> Dim:
        """A slice bound as a position in 0..d.  Negative bounds count from the end.  On an axis
        of known size a bound beyond it clamps, as in NumPy; on a symbolic axis it must fall
        inside the axis (the result's size depends on it), which the inputs are required to meet."""
        v = self._index_int(frame, expr, allow_dim=True)
        if isinstance(v, int) and isinstance(d, int):
            return min(max(v + d if v < 0 else v, 0), d)
        message = f"slice bound {v} is out of range for axis {axis} of size {d}"
        if dim_at_most(v, -1):  # counts from the end: needs -v <= d
            self._require(-v, d, message, expr.span)
            return d + v
        self._require(0, v, message, expr.span)
        self._require(v, d, message, expr.span)
        return v


class _CallContext:
    """What a built-in sees of the call being compiled (see builtins.CallContext)."""

    def __init__(self, m: "ModelBuilder", frame: "Frame", span: Span, name: str, spans: dict[str, Span]) -> None:
        self.m = m
        self.frame = frame
        self.b = m.b
        self.span = span
        self.name = name
        self.training = m.training
        self.sync_batchnorm = m.sync_batchnorm   # batch statistics over every rank's rows (all_reduce)
        self._spans = spans

    def param(self, leaf: str, shape, init, dtype: DType = DType.F32) -> Tensor:
        return self.m.make_param(self.frame, self.frame.prefix + (self.name, leaf), shape, init, dtype, self.span,
                                 self._spans.get("init"))

    def state(self, leaf: str, shape, init, dtype: DType = DType.F32) -> Tensor:
        return self.m.make_state(self.frame, self.frame.prefix + (self.name, leaf), shape, init, dtype, self.span)

    def assign(self, state: Tensor, value: Tensor) -> None:
        self.m.assign(state, value)

    def carry(self, leaf: str, type_: TensorType) -> Tensor | None:
        return self.m.make_carry(self.frame.prefix + (self.name, leaf), type_, self.span)

    def carry_out(self, carry: Tensor, value: Tensor) -> None:
        self.m.carry_out(carry, value)

    def random(self, shape, dtype: DType, kind: str) -> Tensor:
        return self.m.random(shape, dtype, kind)

    def random_stream(self):
        return self.m.random_stream()

    def fail(self, code: str, message: str, *notes: Note) -> DlnError:
        return DlnError(Diagnostic(code, message, self.span, notes))

    def arg_span(self, name: str) -> Span:
        return self._spans.get(name, self.span)

    def fail_at(self, arg: str, code: str, message: str, *notes: Note) -> DlnError:
        """An error about one argument, underlining it where it is written (else the call)."""
        return DlnError(Diagnostic(code, message, self.arg_span(arg), notes))

    def note_metric(self, kind: str, **tensors: Tensor) -> None:
        if kind in self.m.metrics or kind != "accuracy":
            return
        b = self.b
        logits, target = tensors["logits"], tensors["target"]
        with b.at(label=f"metric.{kind}"):
            hits = b.compare(Op.EQ, b.argmax(logits, -1), b.cast(target, DType.I64))
            self.m.metrics[kind] = b.mean(b.cast(hits, logits.dtype)).id

    def operand(self, v: Value):
        if isinstance(v, DimValue):
            return self.b.dim_value(v.dim, DType.I64) if not isinstance(v.dim, int) else v.dim
        return v


def _const_power(e: ast.Binary, a: int | float, b: int | float) -> int | float:
    """a ** b of two numbers, refusing what no element type holds before computing it:
    `9 ** 9 ** 9` has 370 million digits, and Python would take minutes to write them."""
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        if (abs(a).bit_length() - 1) * b >= 64 or abs(a ** b) > INT_LIMIT:
            raise DlnError(Diagnostic("E0208", f"the constant {a} ** {b} is too large (beyond 2**63)", e.span))
    result = a ** b
    if isinstance(result, complex):
        base = f"({a})" if a < 0 else str(a)
        raise DlnError(Diagnostic("E0208", f"{base} ** {b} is not a real number", e.span,
                                  (Note("a negative number to a fractional power is complex; torch gives nan"),)))
    return result


def _check_override(value: Value, span: Span) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", value):
        raise DlnError(Diagnostic("E0208", f"name = ... must be a string like \"pos\" or \"enc.fc\", got "
                                           f"{describe(value)}", span))
    return value
