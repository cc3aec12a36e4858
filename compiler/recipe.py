"""The `train` section: settings checked and turned into a `Recipe`.

The names of LANGUAGE.md §8 (`dataset`, `npz`, `adam`, `cosine`, ...) exist only
here.  Each is a function with torch's defaults, bound with the same
machinery as the model built-ins, so a misspelled argument or a value of the
wrong kind is reported at its place in the file.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from dln.compiler import builtins as lib
from dln.compiler.builtins import BOOL, FLOAT, INT, STR, Arg, Builtin
from dln.compiler.optimizers import OPTIMIZERS
from dln.compiler.values import ListValue, RecordValue, TrainValue, TupleValue, Value, describe
from dln.dsl import ast
from dln.dsl.diagnostics import Diagnostic, DlnError, Note, Span

TRAIN_BUILTINS: dict[str, Builtin] = {}


def _train_builtin(category: str, name: str | None = None):
    def register(fn):
        key = name or fn.__name__.lstrip("_")
        TRAIN_BUILTINS[key] = Builtin(key, fn, category)
        return fn
    return register


class _Pair(lib.Kind):
    text = "a pair of numbers, like (0.9, 0.999)"

    def convert(self, v):
        if isinstance(v, TupleValue) and len(v.items) == 2 and all(
                isinstance(i, (int, float)) and not isinstance(i, bool) for i in v.items):
            return tuple(float(i) for i in v.items)
        return None


PAIR = _Pair()


def _value(kind: str, **args: Any) -> TrainValue:
    return TrainValue(kind, tuple(args.items()))


# ---- data ---------------------------------------------------------------------------------------------

@_train_builtin("data")
def dataset(cx, name: STR):
    """a built-in data set that works offline"""
    return _value("dataset", name=name)


@_train_builtin("data")
def npz(cx, path: STR):
    """arrays from a NumPy .npz file, matched to inputs by name"""
    return _value("npz", path=path)


@_train_builtin("data")
def csv(cx, path: STR, target: STR = "label"):
    """a CSV file with a header: the target column becomes `y`, the others `x`"""
    return _value("csv", path=path, target=target)


# ---- optimizers: torch.optim's defaults --------------------------------------------------------------

@_train_builtin("optimizer")
def sgd(cx, lr: FLOAT = 1e-3, momentum: FLOAT = 0.0, dampening: FLOAT = 0.0, weight_decay: FLOAT = 0.0,
        nesterov: BOOL = False):
    """torch.optim.SGD"""
    return _value("sgd", lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)


@_train_builtin("optimizer")
def adam(cx, lr: FLOAT = 1e-3, betas: PAIR = (0.9, 0.999), eps: FLOAT = 1e-8, weight_decay: FLOAT = 0.0,
         amsgrad: BOOL = False):
    """torch.optim.Adam"""
    return _value("adam", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


@_train_builtin("optimizer")
def adamw(cx, lr: FLOAT = 1e-3, betas: PAIR = (0.9, 0.999), eps: FLOAT = 1e-8, weight_decay: FLOAT = 1e-2,
          amsgrad: BOOL = False):
    """torch.optim.AdamW"""
    return _value("adamw", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


@_train_builtin("optimizer")
def rmsprop(cx, lr: FLOAT = 1e-2, alpha: FLOAT = 0.99, eps: FLOAT = 1e-8, weight_decay: FLOAT = 0.0,
            momentum: FLOAT = 0.0, centered: BOOL = False):
    """torch.optim.RMSprop"""
    return _value("rmsprop", lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                  centered=centered)


@_train_builtin("optimizer")
def adagrad(cx, lr: FLOAT = 1e-2, lr_decay: FLOAT = 0.0, weight_decay: FLOAT = 0.0,
            initial_accumulator_value: FLOAT = 0.0, eps: FLOAT = 1e-10):
    """torch.optim.Adagrad"""
    return _value("adagrad", lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                  initial_accumulator_value=initial_accumulator_value, eps=eps)


@_train_builtin("optimizer")
def adadelta(cx, lr: FLOAT = 1.0, rho: FLOAT = 0.9, eps: FLOAT = 1e-6, weight_decay: FLOAT = 0.0):
    """torch.optim.Adadelta"""
    return _value("adadelta", lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)


# ---- schedules: the learning rate per optimizer step ----------------------------------------------

@_train_builtin("schedule")
def constant(cx):
    """the optimizer's learning rate throughout"""
    return _value("constant")


@_train_builtin("schedule")
def cosine(cx, warmup: INT = 0, min_lr: FLOAT = 0.0):
    """linear warm-up for `warmup` steps, then cosine decay to min_lr at the last step"""
    return _value("cosine", warmup=warmup, min_lr=min_lr)


@_train_builtin("schedule", "step")
def _step(cx, every: INT, gamma: FLOAT = 0.1):
    """multiply the rate by gamma every `every` epochs (torch's StepLR)"""
    return _value("step", every=every, gamma=gamma)


@_train_builtin("schedule")
def exponential(cx, gamma: FLOAT):
    """multiply the rate by gamma every epoch (torch's ExponentialLR)"""
    return _value("exponential", gamma=gamma)


@_train_builtin("schedule")
def linear(cx, warmup: INT = 0):
    """linear warm-up for `warmup` steps, then linear decay to 0 at the last step"""
    return _value("linear", warmup=warmup)


@_train_builtin("schedule")
def plateau(cx, patience: INT = 10, factor: FLOAT = 0.1):
    """multiply the rate by factor when the validation loss stalls (torch's ReduceLROnPlateau)"""
    return _value("plateau", patience=patience, factor=factor)


# ---- the rest -------------------------------------------------------------------------------------------

@_train_builtin("stop")
def patience(cx, epochs: INT):
    """stop when the validation loss has not improved for `epochs` epochs; keep the best weights"""
    return _value("patience", epochs=epochs)


@_train_builtin("augment")
def random_crop(cx, size: INT, padding: INT = 0):
    """a random size x size crop of the zero-padded image"""
    return _value("random_crop", size=size, padding=padding)


@_train_builtin("augment")
def hflip(cx, p: FLOAT = 0.5):
    """a horizontal flip with probability p"""
    return _value("hflip", p=p)


@_train_builtin("augment")
def gaussian_noise(cx, std: FLOAT):
    """N(0, std^2) noise added to the inputs"""
    return _value("gaussian_noise", std=std)


FILLS = ("randn", "rand", "zeros")


# ---- the recipe ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OptimizerSpec:
    kind: str
    hyper: dict[str, Any]
    span: Span | None = None

    @property
    def lr(self) -> float:
        return float(self.hyper["lr"])


@dataclass(frozen=True)
class Objective:
    loss: str
    over: str | None
    optimizer: OptimizerSpec
    span: Span


@dataclass
class Recipe:
    model: str
    objectives: list[Objective]
    data: TrainValue | None = None
    validate: float | TrainValue | None = None
    inputs: dict[str, str] = field(default_factory=dict)   # input -> array name or a fill (randn, rand, zeros)
    batch: int = 32
    epochs: int = 10
    seed: int = 0
    clip_grad: float | None = None
    schedule: TrainValue | None = None
    early_stop: int | None = None
    augment: list[TrainValue] = field(default_factory=list)
    checkpoint: str | None = None
    spans: dict[str, Span] = field(default_factory=dict)

    def with_overrides(self, **changes: Any) -> "Recipe":
        import dataclasses
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


DEFAULT_OPTIMIZER = OptimizerSpec("adam", dict(OPTIMIZERS["adam"].defaults))

_SETTINGS = {"data", "validate", "inputs", "optimizer", "batch", "epochs", "seed", "clip_grad", "schedule",
             "early_stop", "augment", "checkpoint"}


def read_recipe(train: ast.Train, model_name: str, values: set[str], instances: set[str]) -> Recipe:
    """Check a train section against its model (the names it may minimize and train over)."""
    diagnostics: list[Diagnostic] = []
    recipe = Recipe(model_name, [])
    default_optimizer = DEFAULT_OPTIMIZER
    seen: dict[str, Span] = {}
    for s in train.settings:
        key = s.name.name
        try:
            if key not in _SETTINGS:
                close = difflib.get_close_matches(key, sorted(_SETTINGS), n=1)
                hint = f"did you mean '{close[0]}'?" if close else "settings: " + ", ".join(sorted(_SETTINGS))
                raise DlnError(Diagnostic("E0601", f"unknown train setting '{key}'", s.name.span, (Note(hint),)))
            if key in seen:
                raise DlnError(Diagnostic("E0306", f"'{key}' is set twice", s.name.span,
                                          (Note("first set here", seen[key]),)))
            seen[key] = s.name.span
            recipe.spans[key] = s.value.span
            value = _eval(s.value)
            if key == "optimizer":
                default_optimizer = _optimizer(value, s.value.span)
            else:
                _apply(recipe, key, value, s.value.span)
        except DlnError as e:
            diagnostics.extend(e.diagnostics)
    for obj in train.objectives:
        try:
            recipe.objectives.append(_objective(obj, default_optimizer, values, instances))
        except DlnError as e:
            diagnostics.extend(e.diagnostics)
    if not train.objectives:
        if "loss" in values:
            recipe.objectives.append(Objective("loss", None, default_optimizer, train.span))
        else:
            diagnostics.append(Diagnostic("E0602", "the train section says nothing to minimize", train.span,
                                          (Note("add: minimize <name of a scalar in the model>"),)))
    if diagnostics:
        raise DlnError(diagnostics)
    return recipe


def _objective(obj: ast.Minimize, default: OptimizerSpec, values: set[str], instances: set[str]) -> Objective:
    if obj.loss.name not in values:
        close = difflib.get_close_matches(obj.loss.name, sorted(values), n=1)
        notes = (Note(f"did you mean '{close[0]}'?"),) if close else ()
        raise DlnError(Diagnostic("E0602", f"the model has no value '{obj.loss.name}' to minimize", obj.loss.span,
                                  notes))
    if obj.over is not None and obj.over.name not in instances:
        known = ", ".join(sorted(instances)) or "none"
        raise DlnError(Diagnostic("E0602", f"'{obj.over.name}' is not a model instance of this model",
                                  obj.over.span, (Note(f"instances: {known}"),)))
    optimizer = default
    if obj.optimizer is not None:
        optimizer = _optimizer(_eval(obj.optimizer), obj.optimizer.span)
    return Objective(obj.loss.name, obj.over.name if obj.over else None, optimizer, obj.span)


def _optimizer(value: Value, span: Span) -> OptimizerSpec:
    if not isinstance(value, TrainValue) or value.kind not in OPTIMIZERS:
        raise DlnError(Diagnostic("E0601", f"expected an optimizer ({', '.join(OPTIMIZERS)}), got {describe(value)}",
                                  span))
    return OptimizerSpec(value.kind, dict(value.args), span)


def _apply(recipe: Recipe, key: str, value: Value, span: Span) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise DlnError(Diagnostic("E0601", f"{key} must be {what}, got {describe(value)}", span))

    is_int = isinstance(value, int) and not isinstance(value, bool)
    if key == "data":
        need(isinstance(value, TrainValue) and value.kind in ("dataset", "npz", "csv"),
             'data: dataset("..."), npz("...") or csv("...")')
        recipe.data = value
    elif key == "validate":
        if isinstance(value, TrainValue):
            need(value.kind in ("dataset", "npz", "csv"), "a fraction or data")
            recipe.validate = value
        else:
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1,
                 "a fraction in [0, 1) or data")
            recipe.validate = float(value)
    elif key == "inputs":
        need(isinstance(value, RecordValue), "a record { input = \"array\" | randn | rand | zeros }")
        for name, v, fspan in value.fields:
            if isinstance(v, str):
                recipe.inputs[name] = v
            elif isinstance(v, TrainValue) and v.kind in FILLS:
                recipe.inputs[name] = v.kind
            else:
                raise DlnError(Diagnostic("E0601", f"input '{name}' must be an array name or randn, rand, zeros",
                                          fspan))
    elif key in ("batch", "epochs"):
        need(is_int and value > 0, "a positive int")
        setattr(recipe, key, value)
    elif key == "seed":
        need(is_int and value >= 0, "a non-negative int")
        recipe.seed = value
    elif key == "clip_grad":
        need(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0, "a positive number")
        recipe.clip_grad = float(value)
    elif key == "schedule":
        need(isinstance(value, TrainValue) and TRAIN_BUILTINS.get(value.kind, None) is not None
             and TRAIN_BUILTINS[value.kind].category == "schedule", "a schedule")
        recipe.schedule = value
    elif key == "early_stop":
        need(isinstance(value, TrainValue) and value.kind == "patience", "patience(epochs)")
        recipe.early_stop = int(value.arg("epochs"))
    elif key == "augment":
        need(isinstance(value, ListValue) and all(isinstance(v, TrainValue) and v.kind in
                                                  ("random_crop", "hflip", "gaussian_noise") for v in value.items),
             "a list of random_crop, hflip, gaussian_noise")
        recipe.augment = list(value.items)
    elif key == "checkpoint":
        need(isinstance(value, str) and value != "", "a directory path")
        recipe.checkpoint = value


class _TrainContext:
    def __init__(self, span: Span) -> None:
        self.span = span


def _eval(e: ast.Expr) -> Value:
    """Train settings are constants and calls of the train-only functions."""
    if isinstance(e, (ast.Int, ast.Float, ast.Str, ast.Bool)):
        return e.value
    if isinstance(e, ast.Unary) and e.op == "-":
        v = _eval(e.operand)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v
    if isinstance(e, ast.TupleExpr):
        return TupleValue(tuple(_eval(i) for i in e.items))
    if isinstance(e, ast.ListExpr):
        return ListValue(tuple(_eval(i) for i in e.items))
    if isinstance(e, ast.Record):
        return RecordValue(tuple((f.name.name, _eval(f.value), f.name.span) for f in e.fields))
    if isinstance(e, ast.Name):
        if e.id in FILLS:
            return TrainValue(e.id, (), e.span)
        if e.id in TRAIN_BUILTINS:
            return _call(TRAIN_BUILTINS[e.id], [], {}, e.span)
        raise DlnError(Diagnostic("E0301", f"unknown name '{e.id}' in a train section", e.span,
                                  _suggest(e.id)))
    if isinstance(e, ast.Call) and isinstance(e.func, ast.Name):
        name = e.func.id
        if name not in TRAIN_BUILTINS:
            raise DlnError(Diagnostic("E0302", f"unknown function '{name}' in a train section", e.func.span,
                                      _suggest(name)))
        args = [Arg(_eval(a), a.span) for a in e.args]
        kwargs = {k.name.name: (Arg(_eval(k.value), k.value.span), k.name.span) for k in e.kwargs}
        return _call(TRAIN_BUILTINS[name], args, kwargs, e.span)
    raise DlnError(Diagnostic("E0601", "a train setting must be a constant or a call like adam(lr = 1e-3)", e.span))


def _call(b: Builtin, args: list[Arg], kwargs, span: Span) -> TrainValue:
    bound, _ = lib.bind(b, args, kwargs, span, piped=False)
    value = b.fn(_TrainContext(span), **bound)
    return TrainValue(value.kind, value.args, span)


def _suggest(name: str) -> tuple[Note, ...]:
    close = difflib.get_close_matches(name, list(TRAIN_BUILTINS) + list(FILLS), n=1)
    return (Note(f"did you mean '{close[0]}'?"),) if close else ()
