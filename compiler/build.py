"""From the AST of a model to its graph: scopes, hyperparameters, inlining.

`build_model` walks a model's statements with a `Frame` per body being run
(the model, each inlined block, each application of a model instance, each
`repeat` iteration sharing its enclosing frame; dln.compiler.frames); blocks
and instances are expanded by dln.compiler.inline.  Expressions evaluate to
values (dln.compiler.values); tensor operations emit typed nodes through the
`GraphBuilder`, so every shape is known, or constrained, as soon as the line
that makes it is read.  Errors are collected per statement: a statement that
fails poisons the names it binds, so one mistake is reported once.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

from dln.compiler import builtins as lib
from dln.compiler.builtins.inits import problem as init_problem, resolve as resolve_init
from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.expressions import Evaluator
from dln.compiler.frames import POISON, Binding, Frame, Poisoned
from dln.compiler.inline import expanding, hparam_span, reapplied_mismatch
from dln.compiler.ir import DTYPES, DType, Graph, TensorType
from dln.compiler.limits import DEFAULT_LIMITS, LimitExceeded, Limits, exceeded, too_deep
from dln.compiler.model import BuiltModel, CarryInfo, InputInfo, ParamInfo, StateInfo  # noqa: F401  (re-exported)
from dln.compiler.naming import ScopeNames
from dln.compiler.program import HPARAM_TYPES, Program, check_overrides, coerce_hparam
from dln.compiler.symbolic import Dim, Sym, format_shape
from dln.compiler.train_functions import FILLS, TRAIN_BUILTINS
from dln.compiler.values import (BlockRef, DimValue, FunctionRef, InitSpec, Instance, ModelRef, TupleValue, Value,
                                 describe)
from dln.dsl import ast
from dln.dsl.diagnostics import Diagnostic, DlnError, Note, Span, dedupe


class ModelBuilder:
    def __init__(self, program: Program, decl: ast.Model, hparams: Mapping[str, Any], training: bool,
                 limits: Limits = DEFAULT_LIMITS, stream: bool = False, sync_batchnorm: bool = False) -> None:
        self.program = program
        self.decl = decl
        self.training = training
        self.sync_batchnorm = sync_batchnorm
        self.stream = stream
        self.carries: dict[str, CarryInfo] = {}
        self.carried: dict[str, int] = {}
        self.limits = limits
        self.unrolled = 0  # repeat iterations run so far, against limits.max_unroll
        self.b = GraphBuilder(f"{decl.name.name}.{'train' if training else 'eval'}", max_nodes=limits.max_nodes)
        self.hparam_values = dict(hparams)
        self.params: dict[str, ParamInfo] = {}
        self.state: dict[str, StateInfo] = {}
        self.updates: dict[str, int] = {}        # state name -> node of its latest assigned value
        self.state_of: dict[int, str] = {}       # node read as a state's value -> the state's name
        self.inputs: dict[str, InputInfo] = {}
        self.symbols: dict[str, Span] = {}
        self.metrics: dict[str, int] = {}
        self.loss_targets: list[int] = []
        self.instances: dict[str, tuple[str, ...]] = {}
        self.diagnostics: list[Diagnostic] = []
        self.call_names: dict[int, str] = {}
        self.rng: tuple[Tensor, Tensor] | None = None
        self.streams = 0
        self.eval = Evaluator(self)
        # The models and blocks being expanded, outermost first, with the call that expanded each.
        self.expanding: list[tuple[ast.Model | ast.Block, Span | None]] = []

    # ---- entry -----------------------------------------------------------------------------------------
    def build(self) -> BuiltModel:
        frame = Frame({}, self.program.visible(self.decl.source.path), (), ScopeNames(), "model", top=True)
        for name, value in self.hparam_values.items():
            frame.env[name] = Binding(value, hparam_span(self.decl, name), "hparam")
        try:
            with expanding(self, self.decl, None):
                self.run_body(frame, self.decl.body)
        except LimitExceeded as e:
            raise DlnError(dedupe(self.diagnostics + e.diagnostics)) from None
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
            raise DlnError(dedupe(self.diagnostics))
        values = {k: v.value.id for k, v in frame.env.items() if isinstance(v.value, Tensor)}
        graph = self.b.finish(outputs)
        return BuiltModel(
            name=self.decl.name.name,
            graph=graph,
            values=values,
            inputs=list(self.inputs.values()),
            params=list(self.params.values()),
            symbols=self.symbols,
            metrics=_metrics(self.metrics, values, graph),
            instances=self.instances,
            hparams=self.hparam_values,
            training=self.training,
            decl=self.decl,
            loss_targets=tuple(self.loss_targets),
            state=list(self.state.values()),
            updates=dict(self.updates),
            carries=list(self.carries.values()),
            carried=dict(self.carried),
        )

    # ---- statements ------------------------------------------------------------------------------------
    def run_body(self, frame: Frame, body: tuple[ast.Stmt, ...]) -> None:
        for stmt in body:
            if frame.returned is not None:
                self.diagnostics.append(Diagnostic("E0310", "statement after return", stmt.span))
                return
            try:
                self.run_stmt(frame, stmt)
            except LimitExceeded:
                raise
            except RecursionError:
                # What MAX_NESTING (dsl/parser.py) and MAX_EXPANSION_DEPTH (inline.py) let through and
                # still overflows Python's stack: reported at the innermost statement, and the build stops.
                raise too_deep(stmt.span) from None
            except DlnError as e:
                self.diagnostics.extend(e.diagnostics)
                self._poison(frame, stmt)
            except Poisoned:
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
            notes = ()
            if isinstance(init, FunctionRef) and init.name in lib.BUILTINS:
                needed = lib.required_arguments(lib.BUILTINS[init.name].fn)
                if needed and lib.BUILTINS[init.name].category == "init":
                    notes = (Note(f"{init.name} needs {', '.join(needed)}: write {init.name}({', '.join(needed)} = ...)"),)
            raise DlnError(Diagnostic("E0307", f"a parameter's initializer must be an initializer or a number, "
                                               f"got {describe(init)}", stmt.init.span, notes))
        t = self.make_param(frame, frame.prefix + (stmt.name.name,), type_.shape, spec, type_.dtype, stmt.span,
                            stmt.init.span)
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
        # Checked before unrolling: the trip count is known, and a huge one would only run out of memory.
        trips = max(0, bounds[1] - bounds[0])
        if self.unrolled + trips > self.limits.max_unroll:
            limit = self.limits.max_unroll
            message = (f"repeat would unroll {trips:,} more times after {self.unrolled:,} iterations of repeats, "
                       f"more than {limit:,} in all" if self.unrolled else
                       f"repeat would unroll {trips:,} times, more than {limit:,}")
            raise exceeded("max_unroll", limit, message, stmt.start.span.to(stmt.stop.span))
        self.unrolled += trips
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
    def lookup(self, frame: Frame, name: str, span: Span, called: bool = False) -> Value:
        """The value of `name`; `called`: it names the function of a call (`f(x)`, `x -> f`)."""
        if name in frame.env:
            value = frame.env[name].value
            if value is POISON:
                raise Poisoned()
            return value
        decl = frame.globals.get(name)
        if isinstance(decl, ast.Model):
            return ModelRef(decl)
        if isinstance(decl, ast.Block):
            return BlockRef(decl)
        if name in lib.BUILTINS:
            return FunctionRef(name)
        if name in _TRAIN_ONLY:
            raise DlnError(Diagnostic("E0301", f"unknown name '{name}'", span,
                                      (Note(f"'{name}' exists only inside a train section"),)))
        if called:
            callables = [k for k, b in frame.env.items() if isinstance(b.value, Instance)]
            close = difflib.get_close_matches(name, callables + list(frame.globals) + list(lib.BUILTINS), n=1)
            notes = (Note(f"did you mean '{close[0]}'?"),) if close else ()
            raise DlnError(Diagnostic("E0302", f"unknown function or layer '{name}'", span, notes))
        close = difflib.get_close_matches(name, list(frame.env) + list(frame.globals) + list(lib.BUILTINS), n=1)
        notes = (Note(f"did you mean '{close[0]}'?"),) if close else ()
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
                   dtype: DType, span: Span, init_span: Span | None = None) -> Tensor:
        """A parameter of the model (or the existing one, in a re-applied instance).

        `span` is the statement or call making it; `init_span` where its initializer is written.
        """
        name = ".".join(path)
        if not all(isinstance(d, int) for d in shape):
            raise DlnError(Diagnostic("E0202", f"parameter {name} needs a known shape, got "
                                               f"{format_shape(shape)}", span))
        if any(d < 0 for d in shape):
            raise DlnError(Diagnostic("E0208", f"parameter {name} cannot have a negative size, got "
                                               f"{format_shape(shape)}", span))
        problem = init_problem(init, shape, dtype)
        if problem is not None:
            raise DlnError(Diagnostic(problem[0], f"parameter {name}: {problem[1]}", init_span or span))
        existing = self.params.get(name)
        if existing is not None:
            if frame.reuse:
                if existing.type.shape != tuple(shape):
                    raise reapplied_mismatch(frame, name, str(existing.type), format_shape(shape), existing.span)
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

    def make_state(self, frame: Frame, path: tuple[str, ...], shape: tuple[int, ...], init: InitSpec,
                   dtype: DType, span: Span) -> Tensor:
        """The current value of a piece of model state, declared here (or met again, in a re-applied
        instance: then the value a previous application assigned, as a torch module called twice
        sees the running statistics its first call updated)."""
        name = ".".join(path)
        existing = self.state.get(name)
        if existing is not None:
            if not frame.reuse:
                raise DlnError(Diagnostic("E0306", f"two pieces of model state are named {name}", span,
                                          (Note("the first is made here", existing.span),
                                           Note('give one a different name with name = "..."'))))
            if existing.type.shape != tuple(shape):
                raise reapplied_mismatch(frame, name, str(existing.type), format_shape(shape), existing.span)
            t = self.b.tensor(self.updates.get(name, existing.node))
        else:
            if name in self.params:
                raise DlnError(Diagnostic("E0306", f"a parameter and a piece of model state are both named {name}",
                                          span, (Note("the parameter is made here", self.params[name].span),)))
            type_ = TensorType(dtype, tuple(shape))
            spec = resolve_init(init, shape)
            with self.b.at(loc=span, label=name):
                t = self.b.input(name, type_, "buffer", init=spec)
            self.state[name] = StateInfo(name, type_, spec, span, t.id)
        self.state_of[t.id] = name
        return t

    def assign(self, state: Tensor, value: Tensor) -> None:
        """Record `value` as the new value of the state `state` was read from: an output the runtime
        writes over the state after the run.  Detached: no gradient flows through a running statistic."""
        name = self.state_of[state.id]
        info = self.state[name]
        with self.b.at(label=name):
            value = self.b.detach(self.b.broadcast_to(self.b.cast(value, info.type.dtype), info.type.shape))
        self.updates[name] = value.id
        self.state_of[value.id] = name

    def make_carry(self, path: tuple[str, ...], type_: TensorType, span: Span) -> Tensor | None:
        """In a stream build, the state a recurrent layer starts from: a graph input fed by the runtime
        (zeros, then the value the previous run ended with).  None in other builds."""
        if not self.stream:
            return None
        name = ".".join(path)
        if name in self.carries:
            raise DlnError(Diagnostic("E0306", f"two recurrent states are named {name}", span,
                                      (Note("the first is made here", self.carries[name].span),
                                       Note('give one a different name with name = "..."'))))
        with self.b.at(loc=span, label=name):
            t = self.b.input(name, type_, "carry")
        self.carries[name] = CarryInfo(name, type_, span, t.id)
        return t

    def carry_out(self, carry: Tensor, value: Tensor) -> None:
        """`value` is the state the layer reading `carry` ends with: the output `carry:<name>`."""
        name = self.b.node(carry).attrs["name"]
        with self.b.at(label=name):
            self.carried[name] = self.b.detach(self.b.cast(value, carry.dtype)).id

    def random(self, shape: tuple[Dim, ...], dtype: DType, kind: str) -> Tensor:
        seed, step, stream = self.random_stream()
        return self.b.rand(shape, seed, step, stream, dtype, kind)

    def random_stream(self) -> tuple[Tensor, Tensor, int]:
        """(seed, step, stream): a stream of its own of the counter-based generator (one per random op)."""
        if self.rng is None:
            with self.b.at(label="rng"):
                self.rng = (self.b.input("rng.seed", TensorType(DType.I64, ()), "rng"),
                            self.b.input("rng.step", TensorType(DType.I64, ()), "rng"))
        self.streams += 1
        return self.rng[0], self.rng[1], self.streams - 1

    def resolve_hparams(self, decl: ast.Model, values: Mapping[str, Any], spans: Mapping[str, Span]) -> dict[str, Any]:
        """The hyperparameters of an instance of `decl` made with keyword `values`."""
        return resolve_hparams(self.program, decl, values, from_text=False, spans=spans)


def _metrics(noted: Mapping[str, int], values: Mapping[str, int], graph: Graph) -> dict[str, int]:
    """The metrics training reports: `accuracy`, which the first cross_entropy with class indices notes,
    counts every row; a value the model itself binds as `accuracy` at its top level takes its place when
    it is a scalar (the fraction of a graph's masked nodes classified right), and otherwise keeps the
    name for itself, leaving no accuracy to report."""
    metrics = dict(noted)
    if "accuracy" in values:
        node = graph.node(values["accuracy"])
        if node.type.rank == 0:
            metrics["accuracy"] = node.id
        else:
            metrics.pop("accuracy", None)
    return metrics


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
            notes = (Note("declared here", h.span),) if span != h.span else ()
            raise DlnError(Diagnostic("E0401", f"hyperparameter '{h.name.name}' is declared {type_name}: {e}", span,
                                      notes)) from None
        values[h.name.name] = value
        frame.env[h.name.name] = Binding(value, h.span, "hparam")
    return values


def build_model(program: Program, name: str | None = None, overrides: Mapping[str, Any] | None = None,
                training: bool = False, from_text: bool = False, limits: Limits = DEFAULT_LIMITS,
                stream: bool = False, sync_batchnorm: bool = False) -> BuiltModel:
    """`stream`: each recurrent layer given no initial state reads it from a graph input and returns
    its final state (`BuiltModel.carries`), so that generation carries it from one run to the next.
    `sync_batchnorm`: batch norm in training takes its statistics across ranks (`all_reduce`)."""
    decl = program.model(name)
    overrides = dict(overrides or {})
    check_overrides(decl, overrides)
    hparams = resolve_hparams(program, decl, overrides, from_text)
    return ModelBuilder(program, decl, hparams, training, limits, stream, sync_batchnorm).build()


# Names that mean something only inside `train` (LANGUAGE.md §8): its functions and fills, less the
# model built-ins of the same name (`linear` is a layer and a schedule, `zeros` an initializer and a fill).
_TRAIN_ONLY = frozenset(TRAIN_BUILTINS).union(FILLS) - frozenset(lib.BUILTINS)
