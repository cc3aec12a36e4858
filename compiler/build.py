"""From the AST of a model to its graph: scopes, hyperparameters, inlining.

`build_model` walks a model's statements with a `Frame` per body being run
(the model, each inlined block, each application of a model instance, each
`repeat` iteration sharing its enclosing frame).  Expressions evaluate to
values (dln.compiler.values); tensor operations emit typed nodes through the
`GraphBuilder`, so every shape is known, or constrained, as soon as the line
that makes it is read.  Errors are collected per statement: a statement that
fails poisons the names it binds, so one mistake is reported once.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Mapping

from dln.compiler import builtins as lib
from dln.compiler.builtins.inits import resolve as resolve_init
from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.expressions import Evaluator
from dln.compiler.ir import DTYPES, DType, Graph, TensorType
from dln.compiler.shapes import ShapeError
from dln.compiler.naming import ScopeNames
from dln.compiler.program import HPARAM_TYPES, Program, check_overrides, coerce_hparam
from dln.compiler.symbolic import Dim, Sym
from dln.compiler.values import (BlockRef, DimValue, FunctionRef, InitSpec, Instance, ModelRef, TupleValue,
                                 Value, describe)
from dln.dsl import ast
from dln.dsl.diagnostics import Diagnostic, DlnError, Note, Span


@dataclass(frozen=True)
class InputInfo:
    name: str
    type: TensorType
    span: Span
    node: int


@dataclass(frozen=True)
class ParamInfo:
    name: str
    type: TensorType
    init: InitSpec
    span: Span
    node: int


@dataclass
class BuiltModel:
    """A model's graph and what the runtime needs to feed and read it."""

    name: str
    graph: Graph                      # outputs: the declared outputs
    values: dict[str, int]            # every tensor bound at the model's top level
    inputs: list[InputInfo]
    params: list[ParamInfo]
    symbols: dict[str, Span]          # symbolic dimensions and where they were introduced
    metrics: dict[str, int]           # e.g. "accuracy" -> node
    instances: dict[str, tuple[str, ...]]
    hparams: dict[str, Any]
    training: bool
    decl: ast.Model

    @property
    def outputs(self) -> list[str]:
        return self.graph.output_names


@dataclass
class Binding:
    value: Value
    span: Span | None
    kind: str  # input | param | let | hparam | dim | loop


class _Poisoned(Exception):
    """A statement used a name whose own statement failed: stay quiet, it was reported."""


@dataclass
class Frame:
    env: dict[str, Binding]
    globals: Mapping[str, ast.Model | ast.Block]
    prefix: tuple[str, ...]
    names: ScopeNames
    kind: str                          # model | block | instance
    reuse: bool = False                # parameters may exist already (a re-applied instance)
    outputs: list[tuple[str, Value, Span]] = field(default_factory=list)
    returned: tuple[Value, Span] | None = None
    poisoned: set[str] = field(default_factory=set)
    top: bool = False                  # the model being built (inputs become graph inputs)


POISON = object()


class ModelBuilder:
    def __init__(self, program: Program, decl: ast.Model, hparams: Mapping[str, Any], training: bool) -> None:
        self.program = program
        self.decl = decl
        self.training = training
        self.b = GraphBuilder(f"{decl.name.name}.{'train' if training else 'eval'}")
        self.hparam_values = dict(hparams)
        self.params: dict[str, ParamInfo] = {}
        self.inputs: dict[str, InputInfo] = {}
        self.symbols: dict[str, Span] = {}
        self.metrics: dict[str, int] = {}
        self.instances: dict[str, tuple[str, ...]] = {}
        self.diagnostics: list[Diagnostic] = []
        self.call_names: dict[int, str] = {}
        self.rng: tuple[Tensor, Tensor] | None = None
        self.streams = 0
        self.eval = Evaluator(self)

    # ---- entry -----------------------------------------------------------------------------------------
    def build(self) -> BuiltModel:
        frame = Frame({}, self.program.visible(self.decl.source.path), (), ScopeNames(), "model", top=True)
        for name, value in self.hparam_values.items():
            frame.env[name] = Binding(value, _hparam_span(self.decl, name), "hparam")
        self.run_body(frame, self.decl.body)
        outputs = []
        for name, value, span in frame.outputs:
            if isinstance(value, Tensor):
                outputs.append((name, value))
            elif value is not POISON:
                self.diagnostics.append(Diagnostic("E0307", f"output '{name}' must be a tensor, got "
                                                            f"{describe(value)}", span))
        if not frame.outputs and not self.diagnostics:
            self.diagnostics.append(Diagnostic("E0310", f"model {self.decl.name.name} declares no output",
                                               self.decl.name.span))
        if self.diagnostics:
            raise DlnError(_dedupe(self.diagnostics))
        values = {k: v.value.id for k, v in frame.env.items() if isinstance(v.value, Tensor)}
        return BuiltModel(
            name=self.decl.name.name,
            graph=self.b.finish(outputs),
            values=values,
            inputs=list(self.inputs.values()),
            params=list(self.params.values()),
            symbols=self.symbols,
            metrics=self.metrics,
            instances=self.instances,
            hparams=self.hparam_values,
            training=self.training,
            decl=self.decl,
        )

    # ---- statements ------------------------------------------------------------------------------------
    def run_body(self, frame: Frame, body: tuple[ast.Stmt, ...]) -> None:
        for stmt in body:
            if frame.returned is not None:
                self.diagnostics.append(Diagnostic("E0310", "statement after return", stmt.span))
                return
            try:
                self.run_stmt(frame, stmt)
            except DlnError as e:
                self.diagnostics.extend(e.diagnostics)
                self._poison(frame, stmt)
            except _Poisoned:
                self._poison(frame, stmt)

    def _poison(self, frame: Frame, stmt: ast.Stmt) -> None:
        names: list[str] = []
        if isinstance(stmt, ast.Assign):
            names = [t.name for t in stmt.targets]
        elif isinstance(stmt, (ast.Input, ast.Param)):
            names = [stmt.name.name]
        elif isinstance(stmt, ast.Output):
            names = [i.name.name for i in stmt.items if i.value is not None]
            frame.outputs += [(i.name.name, POISON, i.name.span) for i in stmt.items]
        for n in names:
            frame.env[n] = Binding(POISON, None, "let")

    def run_stmt(self, frame: Frame, stmt: ast.Stmt) -> None:
        if isinstance(stmt, ast.Assign):
            value = self.eval_named(frame, stmt.targets[0].name, stmt.value)
            self.bind_targets(frame, stmt.targets, value, stmt.value.span)
        elif isinstance(stmt, ast.Input):
            self.run_input(frame, stmt)
        elif isinstance(stmt, ast.Param):
            self.run_param(frame, stmt)
        elif isinstance(stmt, ast.Output):
            self.run_output(frame, stmt)
        elif isinstance(stmt, ast.Repeat):
            self.run_repeat(frame, stmt)
        elif isinstance(stmt, ast.Return):
            if frame.kind != "block":
                raise DlnError(Diagnostic("E0310", "return is only allowed in a block", stmt.span,
                                          (Note("a model marks its results with output"),)))
            frame.returned = (self.eval_named(frame, "out", stmt.value), stmt.value.span)
        else:  # pragma: no cover - the parser makes no other statements
            raise AssertionError(stmt)

    def eval_named(self, frame: Frame, binding: str, expr: ast.Expr) -> Value:
        """Evaluate the right-hand side of `binding = expr`, naming its layers by rule 2."""
        self.call_names.update(frame.names.assign(binding, expr, lambda c: self.eval.owning_kind(frame, c)))
        with self.b.at(label=".".join(frame.prefix + (binding,))):
            return self.eval.eval(frame, expr)

    def bind_targets(self, frame: Frame, targets: tuple[ast.Ident, ...], value: Value, span: Span) -> None:
        if len(targets) > 1:
            if not isinstance(value, TupleValue):
                raise DlnError(Diagnostic("E0309", f"cannot unpack {describe(value)} into {len(targets)} names",
                                          span))
            if len(value.items) != len(targets):
                raise DlnError(Diagnostic("E0309", f"{len(targets)} names on the left, {len(value.items)} values "
                                                   f"on the right", span))
            for t, v in zip(targets, value.items):
                self.bind(frame, t, v, "let")
        else:
            self.bind(frame, targets[0], value, "let")

    def bind(self, frame: Frame, target: ast.Ident, value: Value, kind: str) -> None:
        old = frame.env.get(target.name)
        if old is not None and old.kind == "dim":
            raise DlnError(Diagnostic("E0308", f"'{target.name}' is a dimension and cannot be rebound",
                                      target.span, (Note(f"{target.name} is introduced here", old.span),)))
        if old is not None and old.kind == "hparam":
            raise DlnError(Diagnostic("E0308", f"'{target.name}' is a hyperparameter and cannot be rebound",
                                      target.span, (Note("declared here", old.span),)))
        frame.env[target.name] = Binding(value, target.span, kind)

    def run_input(self, frame: Frame, stmt: ast.Input) -> None:
        if frame.kind == "block":
            raise DlnError(Diagnostic("E0310", "a block takes tensors as arguments, not inputs", stmt.span))
        if not frame.top:
            return  # inputs of an applied instance are bound by `apply_instance`
        if stmt.name.name in self.inputs:
            raise DlnError(Diagnostic("E0306", f"input '{stmt.name.name}' is declared twice", stmt.name.span,
                                      (Note("first declared here", self.inputs[stmt.name.name].span),)))
        type_ = self.eval_type(frame, stmt.type, introduce=True)
        with self.b.at(loc=stmt.span, label=stmt.name.name):
            t = self.b.input(stmt.name.name, type_, "input")
        self.inputs[stmt.name.name] = InputInfo(stmt.name.name, type_, stmt.span, t.id)
        self.bind(frame, stmt.name, t, "input")

    def run_param(self, frame: Frame, stmt: ast.Param) -> None:
        type_ = self.eval_type(frame, stmt.type, introduce=False)
        init = self.eval.eval(frame, stmt.init)
        spec = lib.INIT.convert(init)
        if spec is None:
            raise DlnError(Diagnostic("E0307", f"a parameter's initializer must be an initializer or a number, "
                                               f"got {describe(init)}", stmt.init.span))
        t = self.make_param(frame, frame.prefix + (stmt.name.name,), type_.shape, spec, type_.dtype, stmt.span)
        self.bind(frame, stmt.name, t, "param")

    def run_output(self, frame: Frame, stmt: ast.Output) -> None:
        if frame.kind == "block":
            raise DlnError(Diagnostic("E0310", "a block returns its value with return, not output", stmt.span))
        for item in stmt.items:
            if item.value is not None:
                value = self.eval_named(frame, item.name.name, item.value)
                self.bind(frame, item.name, value, "let")
            else:
                value = self.lookup(frame, item.name.name, item.name.span)
            if any(name == item.name.name for name, _, _ in frame.outputs):
                raise DlnError(Diagnostic("E0306", f"'{item.name.name}' is output twice", item.name.span))
            frame.outputs.append((item.name.name, value, item.name.span))

    def run_repeat(self, frame: Frame, stmt: ast.Repeat) -> None:
        bounds = []
        for e in (stmt.start, stmt.stop):
            v = self.eval.eval(frame, e)
            if isinstance(v, DimValue) and isinstance(v.dim, int):
                v = v.dim
            if not isinstance(v, int) or isinstance(v, bool):
                raise DlnError(Diagnostic("E0307", f"repeat bounds must be ints known when compiling, got "
                                                   f"{describe(v)}", e.span))
            bounds.append(v)
        saved_prefix, saved_names = frame.prefix, frame.names
        saved_var = frame.env.get(stmt.var.name)
        try:
            for i in range(bounds[0], bounds[1]):
                frame.prefix = saved_prefix + (stmt.var.name, str(i))
                frame.names = ScopeNames()
                frame.env[stmt.var.name] = Binding(i, stmt.var.span, "loop")
                self.run_body(frame, stmt.body)
        finally:
            frame.prefix, frame.names = saved_prefix, saved_names
            if saved_var is None:
                frame.env.pop(stmt.var.name, None)
            else:
                frame.env[stmt.var.name] = saved_var

    # ---- names and types -----------------------------------------------------------------------------------
    def lookup(self, frame: Frame, name: str, span: Span) -> Value:
        if name in frame.env:
            value = frame.env[name].value
            if value is POISON:
                raise _Poisoned()
            return value
        decl = frame.globals.get(name)
        if isinstance(decl, ast.Model):
            return ModelRef(decl)
        if isinstance(decl, ast.Block):
            return BlockRef(decl)
        if name in lib.BUILTINS:
            return FunctionRef(name)
        candidates = list(frame.env) + list(frame.globals) + list(lib.BUILTINS)
        close = difflib.get_close_matches(name, candidates, n=1)
        notes = (Note(f"did you mean '{close[0]}'?"),) if close else ()
        if name in _TRAIN_ONLY:
            notes = (Note(f"'{name}' exists only inside a train section"),)
        raise DlnError(Diagnostic("E0301", f"unknown name '{name}'", span, notes))

    def eval_type(self, frame: Frame, t: ast.TypeExpr, introduce: bool) -> TensorType:
        """A declared type; with `introduce`, unknown names become symbolic dimensions."""
        dtype = DTYPES.get(t.dtype.name)
        if dtype is None:
            close = difflib.get_close_matches(t.dtype.name, list(DTYPES), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "element types: " + ", ".join(DTYPES)
            raise DlnError(Diagnostic("E0105", f"unknown element type '{t.dtype.name}'", t.dtype.span,
                                      (Note(hint),)))
        dims: list[Dim] = []
        for d in t.dims:
            if introduce and isinstance(d, ast.Name) and d.id not in frame.env and d.id not in frame.globals:
                self.symbols.setdefault(d.id, d.span)
                frame.env[d.id] = Binding(DimValue(Sym.var(d.id)), d.span, "dim")
            v = self.eval.eval(frame, d)
            if isinstance(v, DimValue):
                v = v.dim
            if isinstance(v, bool) or not isinstance(v, (int, Sym)):
                raise DlnError(Diagnostic("E0307", f"a dimension must be an int or a dimension name, got "
                                                   f"{describe(v)}", d.span))
            if isinstance(v, int) and v < 0:
                raise DlnError(Diagnostic("E0208", f"a dimension cannot be negative, got {v}", d.span))
            dims.append(v)
        return TensorType(dtype, tuple(dims))

    # ---- parameters and randomness --------------------------------------------------------------------------
    def make_param(self, frame: Frame, path: tuple[str, ...], shape: tuple[Dim, ...], init: InitSpec,
                   dtype: DType, span: Span) -> Tensor:
        name = ".".join(path)
        if not all(isinstance(d, int) for d in shape):
            raise DlnError(Diagnostic("E0202", f"parameter {name} needs a known shape, got "
                                               f"[{', '.join(map(str, shape))}]", span))
        existing = self.params.get(name)
        if existing is not None:
            if frame.reuse:
                if existing.type.shape != tuple(shape):
                    raise DlnError(Diagnostic("E0201", f"instance parameter {name} was made as {existing.type}, "
                                                       f"this application needs {list(shape)}", span,
                                              (Note("first made here", existing.span),)))
                return self.b.tensor(existing.node)
            raise DlnError(Diagnostic("E0306", f"two parameters are named {name}", span,
                                      (Note("the first is made here", existing.span),
                                       Note('give one a different name with name = "..."'))))
        type_ = TensorType(dtype, tuple(shape))
        spec = resolve_init(init, shape)
        with self.b.at(loc=span, label=name):
            t = self.b.input(name, type_, "param", init=spec)
        self.params[name] = ParamInfo(name, type_, spec, span, t.id)
        return t

    def random(self, shape: tuple[Dim, ...], dtype: DType) -> Tensor:
        if self.rng is None:
            with self.b.at(label="rng"):
                self.rng = (self.b.input("rng.seed", TensorType(DType.I64, ()), "rng"),
                            self.b.input("rng.step", TensorType(DType.I64, ()), "rng"))
        stream = self.streams
        self.streams += 1
        return self.b.rand(shape, self.rng[0], self.rng[1], stream, dtype)

    # ---- blocks and instances -----------------------------------------------------------------------------
    def call_block(self, frame: Frame, decl: ast.Block, args: list[lib.Arg], kwargs: dict[str, tuple[lib.Arg, Span]],
                   call: ast.Call, scope_name: str) -> Value:
        env: dict[str, Binding] = {}
        params = list(decl.params)
        if len(args) > len(params):
            raise DlnError(Diagnostic("E0304", f"block {decl.name.name} takes {len(params)} arguments, got "
                                               f"{len(args)}", args[len(params)].span,
                                      (Note("declared here", decl.name.span),)))
        given: dict[str, tuple[lib.Arg, Span | None]] = {p.name.name: (a, None) for p, a in zip(params, args)}
        for key, (a, key_span) in kwargs.items():
            if key not in {p.name.name for p in params}:
                raise DlnError(Diagnostic("E0305", f"block {decl.name.name} has no argument '{key}'", key_span,
                                          (Note("declared here", decl.name.span),)))
            if key in given:
                raise DlnError(Diagnostic("E0306", f"argument '{key}' given twice", key_span))
            given[key] = (a, key_span)
        block_globals = self.program.visible(decl.source.path)
        default_frame = Frame(env, block_globals, (), ScopeNames(), "block")
        for p in params:
            if p.name.name in given:
                a = given[p.name.name][0]
                value, span = a.value, a.span
            elif p.default is not None:
                value, span = self.eval.eval(default_frame, p.default), p.default.span
            else:
                raise DlnError(Diagnostic("E0304", f"block {decl.name.name} needs the argument '{p.name.name}'",
                                          call.span, (Note("declared here", decl.name.span),)))
            env[p.name.name] = Binding(self._check_block_arg(decl, p, value, span), p.name.span, "let")
        inner = Frame(env, block_globals, frame.prefix + (scope_name,), ScopeNames(), "block", reuse=frame.reuse)
        self.run_body(inner, decl.body)
        if inner.returned is None:
            if not any(isinstance(s, ast.Return) for s in decl.body):
                raise DlnError(Diagnostic("E0310", f"block {decl.name.name} does not return a value",
                                          decl.name.span))
            raise _Poisoned()
        return inner.returned[0]

    def _check_block_arg(self, decl: ast.Block, p: ast.HParam, value: Value, span: Span) -> Value:
        if p.type is None:
            if not isinstance(value, Tensor):
                raise DlnError(Diagnostic("E0307", f"argument '{p.name.name}' of block {decl.name.name} must be a "
                                                   f"tensor, got {describe(value)}", span,
                                          (Note("scalar arguments are declared with a type, e.g. dim: int",
                                                p.span),)))
            return value
        if p.type.name not in HPARAM_TYPES:
            raise DlnError(Diagnostic("E0401", f"unknown argument type '{p.type.name}'", p.type.span,
                                      (Note("types: " + ", ".join(HPARAM_TYPES)),)))
        if isinstance(value, DimValue) and isinstance(value.dim, int):
            value = value.dim
        try:
            return coerce_hparam(p.type.name, value, from_text=False)
        except ValueError:
            raise DlnError(Diagnostic("E0401", f"argument '{p.name.name}' of block {decl.name.name} must be "
                                               f"{_article(p.type.name)}, got {describe(value)}", span,
                                      (Note("declared here", p.span),))) from None

    def make_instance(self, frame: Frame, decl: ast.Model, args: list[lib.Arg],
                      kwargs: dict[str, tuple[lib.Arg, Span]], call: ast.Call, scope_name: str) -> Instance:
        if args:
            raise DlnError(Diagnostic("E0304", f"calling model {decl.name.name} makes an instance and takes "
                                               "keyword hyperparameters only", args[0].span,
                                      (Note(f"apply the instance to tensors: G = {decl.name.name}(...); G(x)"),)))
        values = {k: a.value for k, (a, _) in kwargs.items()}
        spans = {k: s for k, (_, s) in kwargs.items()}
        check_overrides(decl, values, next(iter(spans.values()), call.span))
        hparams = resolve_hparams(self.program, decl, values, from_text=False, spans=spans)
        prefix = frame.prefix + (scope_name,)
        self.instances[".".join(prefix)] = prefix
        return Instance(decl, hparams, prefix, call.span)

    def apply_instance(self, frame: Frame, inst: Instance, args: list[lib.Arg],
                       kwargs: dict[str, tuple[lib.Arg, Span]], call: ast.Call) -> Value:
        decl = inst.decl
        inputs = [s for s in decl.body if isinstance(s, ast.Input)]
        if len(args) > len(inputs):
            raise DlnError(Diagnostic("E0304", f"model {decl.name.name} has {len(inputs)} inputs, got {len(args)} "
                                               "arguments", args[len(inputs)].span))
        given = {i.name.name: a for i, a in zip(inputs, args)}
        for key, (a, key_span) in kwargs.items():
            if key not in {i.name.name for i in inputs}:
                raise DlnError(Diagnostic("E0305", f"model {decl.name.name} has no input '{key}'", key_span))
            given[key] = a
        env = {k: Binding(v, _hparam_span(decl, k), "hparam") for k, v in inst.hparams.items()}
        inner = Frame(env, self.program.visible(decl.source.path), inst.prefix, ScopeNames(), "instance",
                      reuse=inst.applications > 0)
        for i in inputs:
            if i.name.name not in given:
                raise DlnError(Diagnostic("E0304", f"model {decl.name.name} needs the input '{i.name.name}'",
                                          call.span, (Note("declared here", i.span),)))
            self._bind_instance_input(inner, decl, i, given[i.name.name])
        inst.applications += 1
        self.run_body(inner, decl.body)
        outs = [v for _, v, _ in inner.outputs]
        if any(v is POISON for v in outs):
            raise _Poisoned()
        if not outs:
            raise DlnError(Diagnostic("E0310", f"model {decl.name.name} has no output to return", call.span))
        return outs[0] if len(outs) == 1 else TupleValue(tuple(outs))

    def _bind_instance_input(self, frame: Frame, decl: ast.Model, stmt: ast.Input, arg: lib.Arg) -> None:
        value = arg.value
        if not isinstance(value, Tensor):
            raise DlnError(Diagnostic("E0307", f"input '{stmt.name.name}' of {decl.name.name} must be a tensor, "
                                               f"got {describe(value)}", arg.span))
        # Declared dimension names not known yet bind to the argument's sizes.
        for d, actual in zip(stmt.type.dims, value.shape):
            if isinstance(d, ast.Name) and d.id not in frame.env and d.id not in frame.globals:
                frame.env[d.id] = Binding(DimValue(actual), d.span, "dim")
        declared = self.eval_type(frame, stmt.type, introduce=False)
        mismatch = Diagnostic("E0201", f"input '{stmt.name.name}' of {decl.name.name} is declared {declared}, "
                                       f"got {value.type}", arg.span, (Note("declared here", stmt.span),))
        if declared.rank != value.rank or declared.dtype is not value.dtype:
            raise DlnError(mismatch)
        with self.b.at(loc=arg.span):
            for want, got in zip(declared.shape, value.shape):
                try:
                    self.b.shapes.unify(want, got, "E0201", mismatch.message)
                except ShapeError:
                    raise DlnError(mismatch) from None
        frame.env[stmt.name.name] = Binding(value, stmt.name.span, "input")


# ---- hyperparameters ------------------------------------------------------------------------------------------

def resolve_hparams(program: Program, decl: ast.Model, overrides: Mapping[str, Any], from_text: bool,
                    spans: Mapping[str, Span] | None = None) -> dict[str, Any]:
    """Every hyperparameter's value: the override, else the default (which may use earlier ones)."""
    spans = spans or {}
    values: dict[str, Any] = {}
    frame = Frame({}, program.visible(decl.source.path), (), ScopeNames(), "model")
    evaluator = Evaluator(None)
    for h in decl.hparams:
        type_name = h.type.name if h.type else "int"
        if type_name not in HPARAM_TYPES:
            raise DlnError(Diagnostic("E0401", f"unknown hyperparameter type '{type_name}'", h.type.span,
                                      (Note("types: " + ", ".join(HPARAM_TYPES)),)))
        if h.name.name in overrides:
            raw, span = overrides[h.name.name], spans.get(h.name.name, h.span)
        elif h.default is not None:
            raw, span = evaluator.eval_const(frame, h.default), h.default.span
        else:
            raise DlnError(Diagnostic("E0403", f"hyperparameter '{h.name.name}' of {decl.name.name} has no value",
                                      h.span, (Note(f"give it a default or set it: --set {h.name.name}=..."),)))
        try:
            value = coerce_hparam(type_name, raw, from_text=from_text and h.name.name in overrides)
        except ValueError as e:
            raise DlnError(Diagnostic("E0401", f"hyperparameter '{h.name.name}' is declared {type_name}: {e}", span,
                                      (Note("declared here", h.span),))) from None
        values[h.name.name] = value
        frame.env[h.name.name] = Binding(value, h.span, "hparam")
    return values


def build_model(program: Program, name: str | None = None, overrides: Mapping[str, Any] | None = None,
                training: bool = False, from_text: bool = False) -> BuiltModel:
    decl = program.model(name)
    overrides = dict(overrides or {})
    check_overrides(decl, overrides)
    hparams = resolve_hparams(program, decl, overrides, from_text)
    return ModelBuilder(program, decl, hparams, training).build()


def _hparam_span(decl: ast.Model, name: str) -> Span | None:
    for h in decl.hparams:
        if h.name.name == name:
            return h.span
    return None


def _article(type_name: str) -> str:
    return f"an {type_name}" if type_name == "int" else f"a {type_name}"


def _dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple] = set()
    out = []
    for d in diagnostics:
        key = (d.code, d.message, str(d.span))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


# Names that mean something only inside `train` (LANGUAGE.md §8).
_TRAIN_ONLY = {"dataset", "npz", "csv", "patience", "random_crop", "hflip", "gaussian_noise", "randn", "rand",
               "sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "cosine", "step", "exponential", "plateau"}
