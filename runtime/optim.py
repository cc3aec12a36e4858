"""An optimizer bound to a compiled model: the training step, driven from Python.

    opt = dln.optimizer(model, "adam", lr=1e-3, clip_grad=1.0)
    loss = opt.step(state=s, action=a, target=t)      # forward, backward, update: one step graph
    q = model(state=s)["q"]                           # evaluation mode sees the new weights

Each optimizer holds one compiled step (`pipeline.train_step`: the forward,
the generated backward and the update, with `torch.optim`'s semantics), its
optimizer state as backend buffers, the step count and a learning-rate
schedule.  The parameters are the model's own buffers, updated in place by the
step, so `model(...)` between steps, and other optimizers of the same model
(a GAN's two, each `over` its instance), see every update.  `dln train`'s
Trainer runs its objectives through this class too.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from dln.compiler import pipeline
from dln.compiler.builtins import Arg
from dln.compiler.ir import Op
from dln.compiler.optimizers import OPTIMIZERS
from dln.compiler.recipe import Objective, OptimizerSpec, over_patterns
from dln.compiler.train_functions import TRAIN_BUILTINS, call
from dln.compiler.training import state_prefix
from dln.compiler.values import TupleValue
from dln.dsl.diagnostics import Diagnostic, DlnError, Note
from dln.runtime import binding, distributed, gradient_sync, numerics
from dln.runtime.api import Model, _check_arg, _check_count, _kind
from dln.runtime.backends import MERGES_PRODUCTS
from dln.runtime.numpy_ops import np_dtype
from dln.runtime.schedules import Schedule

SCHEDULES = tuple(name for name, b in TRAIN_BUILTINS.items() if b.category == "schedule")


class Optimizer:
    """One objective of a model (a scalar `loss`, the parameters `over` an instance or all) and its
    optimizer: the fused training step and the state it keeps between steps."""

    def __init__(self, model: Model, objective: Objective, clip_grad: float | None = None,
                 schedule: Schedule | None = None, rng: dict[str, Any] | None = None, debug: bool = False,
                 check_numerics: bool = False, group: distributed.Group | None = None) -> None:
        self.model = model
        self.objective = objective
        # Among ranks (`group`), the step in two graphs, the gradients averaged in between.
        build = pipeline.train_step if group is None else pipeline.split_step
        self.train = build(model.train_spec, objective, clip_grad, debug, model.mixed,
                           merge=MERGES_PRODUCTS[model.backend.name])
        be = model.backend
        dtypes = {k: np.asarray(v).dtype for k, v in model.parameters().items()}
        # A parameter's slots take its type; the loss scaler's (16-mixed) their own, float32.
        self.states: dict[str, Any] = {
            s.name: be.asarray(np.full(tuple(int(d) for d in s.type.shape), s.init,
                                       dtype=dtypes[s.param] if s.param in dtypes else np_dtype(s.type.dtype)))
            for s in self.train.states}
        # The random state (the seed, and the step count every step graph advances in place): shared by
        # the optimizers of one model, so that two objectives draw different numbers.
        self.rng = rng if rng is not None else model.step_rng()
        self.persistent = {**model.persistent, **self.states, **self.rng}
        if group is None:
            self.prepared, self.sync = be.prepare(self.train.graph, self.persistent, self.train.donate), None
        else:
            self.sync = gradient_sync.GradientSync(group, self.train, be, self.persistent, self.rng)
            self.prepared = self.sync.gradients
        self.inputs = {n.attrs["name"] for n in self.train.graph.nodes if n.op is Op.INPUT}
        self.schedule = schedule or Schedule(None, objective.optimizer.lr, 1)
        self.count = 0          # optimizer steps taken (torch's `state["step"]`)
        self.skipped = 0        # steps a gradient overflow skipped (16-mixed), not counted in `count`
        self.epoch = 0          # for the epoch-based schedules (step, exponential, plateau)
        self.check_numerics = check_numerics   # find the op that makes a NaN or inf (dln.runtime.numerics)
        self.metrics: dict[str, float] = {}

    @property
    def count_key(self) -> str:
        """The step count's name in `state_dict()`, beside the state slots (`optim.<loss>.<param>.<slot>`):
        `optim.<loss>.step`, or `optim.<loss>.<over>.step` (two optimizers of one loss, over two instances)."""
        over = ",".join(p.removesuffix(".*") for p in self.objective.over or ())
        return f"{state_prefix(self.objective)}.{over + '.' if over else ''}step"

    # ---- stepping ------------------------------------------------------------------------------------------
    def step(self, *args: Any, **inputs: Any) -> float:
        """One training step on the batch `inputs` (by name, as `model(...)` takes them): the loss before
        the update, as a float.  The model's metrics of this step are in `opt.metrics` afterwards."""
        self.model._by_name(args, "opt.step(")
        spec = self.model.train_spec
        feeds, env = self.model.feeds(spec, self.train.graph, inputs)
        # The step's random state is its own persistent buffer, not the evaluation counter `feeds` adds.
        feeds = {k: v for k, v in feeds.items() if k not in self.rng}
        results = self.run(feeds, env, self.lr, f"at step {self.count + 1}")
        self.metrics = {k: v for k, v in results.items() if k != self.objective.loss}
        return results[self.objective.loss]

    def run(self, feeds: Mapping[str, Any] | None, env: Mapping[str, int], lr: float, when: str,
            rows: tuple[int, int, int] | None = None) -> dict[str, float]:
        """The step on checked feeds at rate `lr`: the loss and the metrics by name.  `when` says, in an
        error, which step made the loss NaN or infinite.  Among ranks, `rows`: this rank's rows, the global
        batch's, and its first row there (`feeds` None when this rank has none); the loss and metrics are
        then the whole batch's."""
        backend, train = self.model.backend, self.train
        hyper = {"lr": np.array(lr, np.float64), "step": np.array(self.count + 1, np.float64)}
        feeds = {**{name: v for name, v in (feeds or {}).items() if name in self.inputs}, **hyper}
        check = self.check_numerics and (rows is None or rows[0] > 0)
        kept = numerics.keep(train.graph, feeds, self.persistent, backend.to_numpy) if check else None
        if self.sync is None:
            results = self.prepared.run(feeds, env)
            means = {k: float(backend.to_numpy(results[k])) for k in ("loss", *train.metrics)}
        else:   # the loss and metrics: means over every rank's rows
            mine, total, first = rows if rows is not None else (1, self.sync.group.size, 0)   # equal shares
            results, means = self.sync.run(feeds if mine else None, env, hyper, mine, total, first)
        # Counted once it ran: a step that failed on its batch (an index out of range) updated nothing,
        # and the next one takes its place (Adam's bias correction, the schedule's position).  So does a
        # step whose gradients overflowed under loss scaling: GradScaler skips `optimizer.step()`.
        skipped = "found_inf" in results and float(backend.to_numpy(results["found_inf"])) > 0
        self.count += not skipped
        self.skipped += skipped
        if kept is not None:
            numerics.check_step(train.graph, results, kept, env, backend.to_numpy, when, self.objective.span)
        loss = means["loss"]
        if not math.isfinite(loss) and not skipped:   # a skipped step's loss may overflow: the scale backs off
            raise DlnError(Diagnostic("E0704", f"the loss {self.objective.loss} became {loss} {when}",
                                      self.objective.span, (Note("try a smaller learning rate or clip_grad = 1.0"),)))
        out = {self.objective.loss: loss}
        for m in train.metrics:
            out.setdefault(m, means[m])
        if "found_inf" in results:   # 1 for a skipped step: an epoch's mean is the fraction skipped
            out["amp_skipped"] = float(skipped)
        return out

    # ---- the learning rate -----------------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The rate of the next step, as the schedule gives it."""
        return self.schedule.lr(self.count, self.epoch)

    @lr.setter
    def lr(self, value: float) -> None:
        """Set the base rate, which the schedule scales (the rate itself under the constant schedule)."""
        self.schedule.base = _rate("lr", value)

    def end_epoch(self, val_loss: float | None = None) -> None:
        """Advance the epoch-based schedules (step, exponential; plateau, by `val_loss`), as torch's
        `scheduler.step()` at the end of an epoch."""
        if val_loss is not None:
            val_loss = _scalar("val_loss", val_loss)
        elif self.schedule.kind == "plateau":
            raise DlnError(Diagnostic("E0710", "the plateau schedule needs the validation loss: "
                                               "opt.end_epoch(val_loss=...)", self.objective.span))
        self.schedule.end_epoch(val_loss)
        self.epoch += 1

    # ---- state --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """The optimizer state (`optim.<loss>.<param>.<slot>`) and the step count (`count_key`), as
        NumPy arrays: what a safetensors file holds."""
        be = self.model.backend
        return {**{k: be.to_numpy(v).copy() for k, v in self.states.items()},
                self.count_key: np.array(self.count, np.int64)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """The state `state_dict` gave, checked whole before anything is written."""
        be = self.model.backend
        where = self.objective.span
        if not isinstance(state, Mapping):
            raise DlnError(Diagnostic("E0703", f"load_state_dict takes a mapping from names to arrays, got "
                                               f"{_kind(state)}", where))
        problems, arrays = [], {}
        for name in [*self.states, self.count_key]:
            if name not in state:
                problems.append(f"missing: {name}")
                continue
            try:
                arrays[name] = binding.to_numpy(state[name])
            except binding.NotAnArray as e:
                problems.append(f"{name} {e}")
                continue
            a = arrays[name]
            want = be.to_numpy(self.states[name]).shape if name in self.states else ()
            if not binding.real_dtype(a):
                problems.append(f"{name} is an array of {a.dtype}, not of numbers")
            elif a.shape != want:
                problems.append(f"{name} has shape {a.shape}, this optimizer's is {want}")
            elif name == self.count_key and not (np.isfinite(a) and a >= 0 and a == np.floor(a)):
                problems.append(f"{name} must be a count of steps (an integer >= 0), got {a}")
        if problems:
            raise DlnError(Diagnostic("E0703", f"the optimizer state does not match this optimizer of model "
                                               f"{self.model.name}: " + "; ".join(problems), where))
        for name, v in self.states.items():
            be.copy_into(v, arrays[name])
        self.count = int(arrays[self.count_key])


def optimizer(model: Any, name: str = "adam", lr: float | None = None, loss: str = "loss",
              over: str | list[str] | None = None,
              clip_grad: float | None = None, schedule: str | tuple | None = None, total_steps: int | None = None,
              **hyper: Any) -> Optimizer:
    """An optimizer for `model`'s scalar value `loss`, as a train section's `minimize loss over X with
    name(lr = ..., ...)` says.

    `name`: sgd, adam, adamw, rmsprop, adagrad or adadelta, with torch.optim's hyperparameter names and
    defaults, set by keyword (`momentum=0.9, nesterov=True`, `betas=(0.5, 0.999)`, ...).  `over`: the parameters updated, as
    a train section's `over` names them: an instance of the model, a parameter-name pattern (`"head.*"`),
    or a list of them; the others stay frozen.  `clip_grad`: the largest gradient norm (clip_grad_norm_).
    `schedule`: a schedule's name ("constant", "step", "exponential", "linear", "cosine", "plateau") or
    (name, {options}), as the train section writes them; cosine and linear need `total_steps`."""
    _check_arg("model", model, Model, "a model made by dln.compile")
    _check_arg("name", name, str, "an optimizer's name")
    _check_arg("loss", loss, str, "the name of a scalar value")
    if name not in OPTIMIZERS:
        raise DlnError(Diagnostic("E0710", f"unknown optimizer '{name}'", None,
                                  (Note("optimizers: " + ", ".join(OPTIMIZERS)),)))
    if lr is not None:
        hyper["lr"] = _rate("lr", lr)
    spec = model.train_spec
    where = spec.decl.name.span
    if loss not in spec.values:
        raise DlnError(Diagnostic("E0602", f"model {model.name} has no value '{loss}'", where))
    rank = spec.graph.node(spec.values[loss]).type.rank
    if rank != 0:
        raise DlnError(Diagnostic("E0710", f"argument loss must name a scalar: '{loss}' has rank {rank}", where,
                                  (Note("reduce it first in the model, e.g. mean(...) or sum(...)"),)))
    if clip_grad is not None:
        clip_grad = _rate("clip_grad", clip_grad)
        if clip_grad == 0:
            raise DlnError(Diagnostic("E0710", "argument clip_grad must be a positive number, got 0"))
    if total_steps is not None:
        _check_count("total_steps", total_steps, 1)
    opt_spec = OptimizerSpec(name, dict(_train_call(name, hyper).args))
    kind = _train_call(*_schedule_call(schedule)) if schedule is not None else None
    if kind is not None and kind.kind in ("cosine", "linear") and total_steps is None:
        raise DlnError(Diagnostic("E0710", f"the {kind.kind} schedule needs total_steps: the step at which the "
                                           "rate reaches its end"))
    objective = Objective(loss, over_patterns(over, spec) if over is not None else None, opt_spec, where)
    return Optimizer(model, objective, clip_grad, Schedule(kind, opt_spec.lr, total_steps or 1), debug=model.debug)


def _rate(name: str, value: Any) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not (0 <= float(value) < math.inf):
        raise DlnError(Diagnostic("E0710", f"argument {name} must be a number >= 0, got {_kind(value)}"))
    return float(value)


def _scalar(name: str, value: Any) -> float:
    """A number given as a Python number, or as a NumPy array or torch tensor of one element."""
    try:
        a = binding.to_numpy(value)
    except binding.NotAnArray:
        a = None
    if a is None or a.size != 1 or a.dtype.kind not in "iuf" or isinstance(value, (bool, np.bool_)):
        raise DlnError(Diagnostic("E0710", f"argument {name} must be a number, got {_kind(value)}"))
    return float(a.reshape(()))


def _schedule_call(schedule: Any) -> tuple[str, dict[str, Any]]:
    """`"cosine"` or `("cosine", {"warmup": 100})`: the schedule's name and options."""
    if isinstance(schedule, str):
        schedule = (schedule, {})
    ok = isinstance(schedule, tuple) and len(schedule) == 2 and isinstance(schedule[0], str) \
        and isinstance(schedule[1], Mapping) and all(isinstance(k, str) for k in schedule[1])
    if not ok or schedule[0] not in SCHEDULES:
        raise DlnError(Diagnostic("E0710", f"argument schedule must be a schedule's name or (name, {{options}}), "
                                           f"got {_kind(schedule)}", None,
                                  (Note("schedules: " + ", ".join(SCHEDULES)),)))
    return schedule[0], dict(schedule[1])


def _train_call(name: str, options: Mapping[str, Any]):
    """The train-section function `name` called with `options`: checked as the file's settings are (a
    misspelled option, a negative rate, betas outside [0, 1)), each mistake an E0710."""
    def value(v: Any) -> Any:
        v = v.item() if isinstance(v, np.generic) else v
        return TupleValue(tuple(value(i) for i in v)) if isinstance(v, (tuple, list)) else v

    kwargs = {k: (Arg(value(v), None), None) for k, v in options.items()}
    try:
        return call(TRAIN_BUILTINS[name], [], kwargs, None)
    except DlnError as e:
        d = e.diagnostics[0]
        raise DlnError(Diagnostic("E0710", d.message, None, d.notes)) from None
