"""The functions of a `train` section (LANGUAGE.md §8): data, optimizers, schedules,
early stopping, augmentations, and the fills of `inputs = { noise = randn }`.

They exist only inside `train`.  Each is a function with torch's defaults and
its argument kinds as annotations, bound with the same machinery as the model
built-ins (dln.compiler.builtins.bind), so a misspelled argument or a value of
the wrong kind is reported at its place in the file.  Values that torch.optim
or the scheduler would reject (a negative learning rate, betas outside
[0, 1)) are reported at the argument too.  A function returns a `TrainValue`;
dln.compiler.recipe reads the section.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from dln.compiler import builtins as lib
from dln.compiler.builtins import BOOL, FLOAT, INT, STR, Arg, Builtin
from dln.compiler.values import ListValue, TrainValue, TupleValue
from dln.dsl.diagnostics import Diagnostic, DlnError, Span

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


class _Classes(lib.Kind):
    text = "a tuple of class labels, like (0, 1, 2)"

    def convert(self, v):
        if isinstance(v, (TupleValue, ListValue)) and all(isinstance(i, int) and not isinstance(i, bool)
                                                          for i in v.items):
            return tuple(v.items)
        return None


CLASSES = _Classes()


def _value(kind: str, **args: Any) -> TrainValue:
    return TrainValue(kind, tuple(args.items()))


def _at_least(cx: "TrainContext", low: float, **values: float) -> None:
    for name, v in values.items():
        if not low <= v < math.inf:   # NaN and infinity too: from Python (dln.optimizer) they reach here
            raise cx.fail_at(name, f"{cx.name}'s {name} must be >= {low:g}, got {v:g}")


def _fraction(cx: "TrainContext", name: str, v: float, closed: bool = False) -> None:
    """v in [0, 1), or [0, 1] when `closed`."""
    if not (0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0):
        raise cx.fail_at(name, f"{cx.name}'s {name} must be in [0, 1{']' if closed else ')'}, got {v:g}")


# ---- data ---------------------------------------------------------------------------------------------

# The options of `dataset("text", ...)`: the corpus cut into token windows (dln.runtime.text).
TEXT_OPTIONS = ("window", "stride", "chars")


@_train_builtin("data")
def dataset(cx, name: STR, window: INT = None, stride: INT = None, chars: INT = None, classes: CLASSES = None):
    """a built-in data set that works offline; "text" takes window, stride and chars; a labelled one
    `classes`: only the examples of those labels, renumbered 0, 1, ... in the order given"""
    given = {"window": window, "stride": stride, "chars": chars}
    for option, v in given.items():
        if v is None:
            continue
        if name != "text":
            raise cx.fail_at(option, f'{option} is an option of dataset("text") only, not of dataset("{name}")')
        _at_least(cx, 2 if option == "chars" else 1, **{option: v})
    if classes is not None:
        if name == "text":
            raise cx.fail_at("classes", 'classes is an option of the labelled data sets, not of dataset("text")')
        if not classes:
            raise cx.fail_at("classes", "classes must name at least one class")
        if min(classes) < 0:
            raise cx.fail_at("classes", f"class labels are >= 0, got {min(classes)}")
        twice = sorted({c for c in classes if classes.count(c) > 1})
        if twice:
            raise cx.fail_at("classes", f"classes names {', '.join(map(str, twice))} more than once")
        given["classes"] = classes
    return _value("dataset", name=name, **{k: v for k, v in given.items() if v is not None})


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
    _at_least(cx, 0.0, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise cx.fail_at("nesterov", "nesterov momentum needs momentum > 0 and dampening = 0")
    return _value("sgd", lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)


@_train_builtin("optimizer")
def adam(cx, lr: FLOAT = 1e-3, betas: PAIR = (0.9, 0.999), eps: FLOAT = 1e-8, weight_decay: FLOAT = 0.0,
         amsgrad: BOOL = False):
    """torch.optim.Adam"""
    _check_adam(cx, lr, betas, eps, weight_decay)
    return _value("adam", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


@_train_builtin("optimizer")
def adamw(cx, lr: FLOAT = 1e-3, betas: PAIR = (0.9, 0.999), eps: FLOAT = 1e-8, weight_decay: FLOAT = 1e-2,
          amsgrad: BOOL = False):
    """torch.optim.AdamW"""
    _check_adam(cx, lr, betas, eps, weight_decay)
    return _value("adamw", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


@_train_builtin("optimizer")
def rmsprop(cx, lr: FLOAT = 1e-2, alpha: FLOAT = 0.99, eps: FLOAT = 1e-8, weight_decay: FLOAT = 0.0,
            momentum: FLOAT = 0.0, centered: BOOL = False):
    """torch.optim.RMSprop"""
    _at_least(cx, 0.0, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum)
    return _value("rmsprop", lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                  centered=centered)


@_train_builtin("optimizer")
def adagrad(cx, lr: FLOAT = 1e-2, lr_decay: FLOAT = 0.0, weight_decay: FLOAT = 0.0,
            initial_accumulator_value: FLOAT = 0.0, eps: FLOAT = 1e-10):
    """torch.optim.Adagrad"""
    _at_least(cx, 0.0, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
              initial_accumulator_value=initial_accumulator_value, eps=eps)
    return _value("adagrad", lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                  initial_accumulator_value=initial_accumulator_value, eps=eps)


@_train_builtin("optimizer")
def adadelta(cx, lr: FLOAT = 1.0, rho: FLOAT = 0.9, eps: FLOAT = 1e-6, weight_decay: FLOAT = 0.0):
    """torch.optim.Adadelta"""
    _at_least(cx, 0.0, lr=lr, eps=eps, weight_decay=weight_decay)
    _fraction(cx, "rho", rho, closed=True)
    return _value("adadelta", lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)


def _check_adam(cx, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    _at_least(cx, 0.0, lr=lr, eps=eps, weight_decay=weight_decay)
    if not all(0.0 <= b < 1.0 for b in betas):
        raise cx.fail_at("betas", f"{cx.name}'s betas must each be in [0, 1), got ({betas[0]:g}, {betas[1]:g})")


# ---- schedules: the learning rate per optimizer step ----------------------------------------------

@_train_builtin("schedule")
def constant(cx):
    """the optimizer's learning rate throughout"""
    return _value("constant")


@_train_builtin("schedule")
def cosine(cx, warmup: INT = 0, min_lr: FLOAT = 0.0):
    """linear warm-up for `warmup` steps, then cosine decay to min_lr at the last step"""
    _at_least(cx, 0, warmup=warmup, min_lr=min_lr)
    return _value("cosine", warmup=warmup, min_lr=min_lr)


@_train_builtin("schedule", "step")
def _step(cx, every: INT, gamma: FLOAT = 0.1):
    """multiply the rate by gamma every `every` epochs (torch's StepLR)"""
    _at_least(cx, 1, every=every)
    _at_least(cx, 0, gamma=gamma)
    return _value("step", every=every, gamma=gamma)


@_train_builtin("schedule")
def exponential(cx, gamma: FLOAT):
    """multiply the rate by gamma every epoch (torch's ExponentialLR)"""
    _at_least(cx, 0, gamma=gamma)
    return _value("exponential", gamma=gamma)


@_train_builtin("schedule")
def linear(cx, warmup: INT = 0):
    """linear warm-up for `warmup` steps, then linear decay to 0 at the last step"""
    _at_least(cx, 0, warmup=warmup)
    return _value("linear", warmup=warmup)


@_train_builtin("schedule")
def plateau(cx, patience: INT = 10, factor: FLOAT = 0.1):
    """multiply the rate by factor when the validation loss stalls (torch's ReduceLROnPlateau)"""
    _at_least(cx, 0, patience=patience)
    _fraction(cx, "factor", factor)
    return _value("plateau", patience=patience, factor=factor)


# ---- the rest -------------------------------------------------------------------------------------------

@_train_builtin("stop")
def patience(cx, epochs: INT):
    """stop when the validation loss has not improved for `epochs` epochs; keep the best weights"""
    _at_least(cx, 1, epochs=epochs)
    return _value("patience", epochs=epochs)


@_train_builtin("augment")
def random_crop(cx, size: INT, padding: INT = 0):
    """a random size x size crop of the zero-padded image"""
    _at_least(cx, 1, size=size)
    _at_least(cx, 0, padding=padding)
    return _value("random_crop", size=size, padding=padding)


@_train_builtin("augment")
def hflip(cx, p: FLOAT = 0.5):
    """a horizontal flip with probability p"""
    _fraction(cx, "p", p, closed=True)
    return _value("hflip", p=p)


@_train_builtin("augment")
def gaussian_noise(cx, std: FLOAT):
    """N(0, std^2) noise added to the inputs"""
    _at_least(cx, 0, std=std)
    return _value("gaussian_noise", std=std)


FILLS = ("randn", "rand", "zeros")


# ---- calling one --------------------------------------------------------------------------------------------

class TrainContext:
    """What a train-section function sees of its call: its name and where its arguments are."""

    def __init__(self, name: str, span: Span, spans: Mapping[str, Span]) -> None:
        self.name = name
        self.span = span
        self.spans = spans

    def fail_at(self, arg: str, message: str) -> DlnError:
        return DlnError(Diagnostic("E0208", message, self.spans.get(arg, self.span)))


def call(b: Builtin, args: list[Arg], kwargs, span: Span) -> TrainValue:
    bound, spans = lib.bind(b, args, kwargs, span, piped=False)
    value = b.fn(TrainContext(b.name, span, spans), **bound)
    return TrainValue(value.kind, value.args, span)
