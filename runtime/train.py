"""Training as a file's `train` section says.

One compiled step graph per objective (forward + backward + optimizer
update), run over shuffled mini-batches (their feeds, and among ranks each
rank's part of them: dln.runtime.batches); parameters, model state (running
statistics) and optimizer state are persistent buffers the step updates in
place.  Each epoch reports loss and
accuracy on the training batches and on the held-out data, writes a
checkpoint atomically (weights with the model state, and optimizer state, as safetensors, the rest
as JSON) and resumes from it when run again.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from dln.compiler import pipeline
from dln.compiler.ir import Op
from dln.compiler.limits import DEFAULT_LIMITS, Limits
from dln.compiler.recipe import DEFAULT_OPTIMIZER, Objective, Recipe, model_of, recipe_of, with_over
from dln.compiler.training import TrainStep
from dln.compiler.values import RecordValue
from dln.dsl import ast
from dln.dsl.diagnostics import Diagnostic, DlnError, Note, listing
from dln.runtime import binding, checkpoint, checkpoint_state, data, distributed, monitor
from dln.runtime.api import Model
from dln.runtime.batches import Batches
from dln.runtime.optim import Optimizer
from dln.runtime.schedules import Schedule

SETTING_OVERRIDES = ("epochs", "batch", "seed", "checkpoint", "clip_grad", "validate", "sync_batchnorm")


@dataclass
class History:
    """Per-epoch metrics: `history[-1]["val_accuracy"]`, `history.best("val_loss")`."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    model: Model | None = None

    def __getitem__(self, i: int) -> dict[str, float]:
        return self.epochs[i]

    def __len__(self) -> int:
        return len(self.epochs)

    def best(self, key: str = "val_loss") -> dict[str, float]:
        scored = [e for e in self.epochs if key in e]
        pick = min if "loss" in key else max
        return pick(scored, key=lambda e: e[key])


def find_train(program, name: str | None = None) -> ast.Train:
    trains = program.root.trains
    if not trains:
        raise DlnError(Diagnostic("E0601", f"{program.path} has no train section", None,
                                  (Note("add: train { data = dataset(\"digits\")  minimize loss }"),)))
    if name is not None:
        for t in trains:
            if t.model is not None and t.model.name == name or t.model is None and len(program.root.models) == 1:
                return t
        raise DlnError(Diagnostic("E0601", f"{program.path} has no train section for model {name}", None,
                                  (Note("train sections: " + ", ".join(t.model.name if t.model else "(unnamed)"
                                                                        for t in trains)),)))
    return trains[0]


def recipe_for(model: Model, train: ast.Train | None = None) -> Recipe:
    spec = model.train_spec
    if train is None:
        trains = model.program.root.trains
        train = next((t for t in trains if t.model is None or t.model.name == model.name), None)
    if train is None:
        objective = Objective("loss", None, DEFAULT_OPTIMIZER, spec.decl.span)
        return Recipe(model.name, [objective])
    return recipe_of(train, spec)


def default_objective(model: Model) -> Objective:
    spec = model.train_spec
    if model.program.root.trains:
        return recipe_for(model).objectives[0]
    if "loss" not in spec.values:
        raise DlnError(Diagnostic("E0602", f"model {model.name} has no train section and no value named 'loss'",
                                  spec.decl.name.span))
    return Objective("loss", None, DEFAULT_OPTIMIZER, spec.decl.span)


def train_file(source: str | Path, backend: str | None = None, progress: bool | None = None,
               log: Callable[[str], None] | None = None, debug: bool = False, weights: str | None = None,
               from_text: bool = False, precision: str | None = None, model: str | None = None,
               limits: Limits = DEFAULT_LIMITS, check_numerics: bool = False, strict: bool = True,
               map: Mapping[str, str] | None = None, over: str | list[str] | None = None,
               logdir: str | os.PathLike | bool | None = None, group: distributed.Group | None = None,
               **overrides: Any) -> History:
    """Train as `source`'s train section for `model` (the first section by default) says, from
    `weights` when given (`strict` and `map` as for `Model.load`: transfer learning), every objective
    over the parameters `over` names when given.  `logdir`: the run directory of metrics and pictures
    (dln.runtime.monitor) — a path; None, the checkpoint directory if there is one, else none; True, the
    same but runs/<file stem> (in the current directory) when there is no checkpoint, as `dln train`
    does; False, none.  `group`: train as one rank of several (dln.runtime.distributed); rank 0 alone
    logs and writes."""
    settings = {k: overrides.pop(k) for k in list(overrides) if k in SETTING_OVERRIDES}
    program = pipeline.load(source)
    train = find_train(program, model)
    probe = pipeline.build_model(program, model_of(program, train).name.name, overrides, training=True,
                                 from_text=from_text, limits=limits)
    recipe = recipe_of(train, probe).with_overrides(**settings)
    if over is not None:
        recipe = with_over(recipe, over, probe)
    # --precision (precision=) overrides the train section's.
    compiled = Model(program, probe.name, overrides, backend, seed=recipe.seed, from_text=from_text, debug=debug,
                     precision=precision or recipe.precision, limits=limits)
    log = log or (lambda s: print(s, flush=True))
    if group is not None and not group.leader:
        log, progress, logdir = (lambda s: None), False, False
    if not weights and (map or not strict):   # as `dln train --map` without --weights: a usage error
        raise DlnError(Diagnostic("E0710", "arguments strict and map say how to load weights, which are not given",
                                  None, (Note('dln.train(..., weights="pre.safetensors", strict=False, '
                                              'map={"backbone.": "features."})'),)))
    if weights:
        loaded = compiled.load(weights, strict, map)
        if not strict or map:   # what loaded, so that a misspelled map shows before training
            log(loaded.summary(str(weights)))
    base = Path(program.path).parent if not program.path.startswith("<") else Path.cwd()
    trainer = Trainer(compiled, recipe, base, log=log, progress=progress, debug=debug, check_numerics=check_numerics,
                      group=group)
    if logdir is True:
        stem = Path(program.path).stem if not program.path.startswith("<") else compiled.name
        logdir = recipe.checkpoint or _default_logdir(stem, log)
    elif logdir is None:
        logdir = recipe.checkpoint
    return trainer.fit(Path(logdir) if logdir else None)


def _default_logdir(stem: str, log: Callable[[str], None]) -> Path | None:
    """runs/<stem> in the current directory, unless it cannot be written there (a read-only directory):
    then no run directory, said in a note, rather than no training — nobody asked for this one."""
    path = monitor.default_dir(stem, Path("."))
    try:
        checkpoint.check_output(path, "directory", "the run directory")
    except DlnError as e:
        log(f"note: {e.diagnostics[0].message}; training without metrics files and pictures (--logdir DIR "
            "names another directory)")
        return None
    return path


class Trainer:
    def __init__(self, model: Model, recipe: Recipe, base: Path, log: Callable[[str], None] | None = None,
                 progress: bool | None = None, debug: bool = False, check_numerics: bool = False,
                 group: distributed.Group | None = None) -> None:
        self.model = model
        # Data parallelism: this rank's place (None: one process); only rank 0 logs and writes.
        self.group = group
        self.writes = group is None or group.leader
        self.recipe = recipe
        self.base = base
        self.log = log or (lambda s: print(s, flush=True))
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.debug = debug
        spec = model.train_spec
        # The random state: the seed, and the step count every step graph advances in place.
        be = model.backend
        self.rng = {"rng.seed": be.asarray(np.array(recipe.seed, np.int64)), "rng.step": be.asarray(np.array(0, np.int64))}
        if group is not None and recipe.sync_batchnorm:
            distributed.sync_batchnorm(model)
        self.optimizers = [Optimizer(model, o, recipe.clip_grad, rng=self.rng, debug=debug,
                                     check_numerics=check_numerics, group=group) for o in recipe.objectives]
        self.steps: list[TrainStep] = [opt.train for opt in self.optimizers]
        self.eval_names = [o.loss for o in recipe.objectives] + list(spec.metrics)
        self.history = History(model=model)
        # The feeds of each batch, with the run's generator of augmentation and filled inputs.
        self.batches = Batches(model, recipe, group, np.random.default_rng(recipe.seed + 1))
        # Early stopping: the best validation loss so far, its weights, epochs since.
        self.best_val, self.best_params, self.bad_epochs, self.stopped = math.inf, None, 0, False
        # The state of the last checkpoint written or resumed from (state.json's content).
        self.committed: dict[str, Any] | None = None

    # ---- data ---------------------------------------------------------------------------------------------
    def _data(self) -> tuple[data.Arrays, data.Arrays | None]:
        r = self.recipe
        if r.data is None:
            raise DlnError(Diagnostic("E0601", "the train section has no data = ...", None))
        arrays = data.load(r.data, self.base)
        if isinstance(arrays, data.text.TextData):
            self._take_vocab(arrays.vocab)
        if isinstance(r.validate, float) and r.validate > 0:
            whole = self.batches.whole_example(self._sources(arrays))
            if whole is not None:
                info, symbol = whole
                raise DlnError(Diagnostic(
                    "E0709", f"validate = {r.validate:g} would split one example: input '{info.name}' "
                             f"{info.type} holds the data axis {symbol} twice, so the data set is one example (a "
                             "graph) that every step takes whole", r.spans.get("validate"),
                    (Note(f"'{info.name}' is declared here", info.span),
                     Note("hold out part of it with a mask input instead: loss = sum(cross_entropy(logits, y, "
                          "reduction = \"none\") * mask) / sum(mask)"),
                     Note("or validate on another whole example: validate = npz(\"val.npz\")"))))
            return data.split(arrays, r.validate, r.seed)
        if isinstance(r.validate, RecordValue):
            for name, array, span in r.validate.fields:
                if array not in arrays:
                    raise DlnError(Diagnostic("E0603", f"validate renames input '{name}' to \"{array}\", an array "
                                                       "the data does not have", span,
                                              (Note("the data has " + ", ".join(sorted(arrays))),)))
            return arrays, arrays    # the same data, fed through validate_renames (`evaluate`)
        if r.validate is not None and not isinstance(r.validate, float):
            return arrays, data.load(r.validate, self.base)
        return arrays, None

    def _take_vocab(self, vocab: list[str]) -> None:
        """A character model's weights record its data's vocabulary (for `dln sample`); weights that
        record another were trained on other ids, and training on would scramble them."""
        model = self.model
        if model.vocab is not None and model.vocab != vocab:
            raise DlnError(Diagnostic(
                "E0703", f"the weights of model {model.name} were trained on a vocabulary of {len(model.vocab)} "
                         f"characters, the text data set's has {len(vocab)} (another Python's help texts?)",
                self.recipe.spans.get("data"),
                (Note("start from fresh weights, or train on the text they were trained on"),)))
        model.vocab = vocab

    def _sources(self, arrays: data.Arrays, renames: Mapping[str, str] | None = None) -> dict[str, str]:
        """For each model input: the array feeding it, or a fill (randn, rand, zeros); `renames`
        (validation's) take precedence over the train section's `inputs`."""
        spec = self.model.train_spec
        used = set()
        for step in self.steps:
            used |= {n.attrs["name"] for n in step.graph.nodes if n.op is Op.INPUT and n.attrs["role"] == "input"}
        out = {}
        for info in spec.inputs:
            src = (renames or {}).get(info.name) or self.recipe.inputs.get(info.name, info.name)
            if src in ("randn", "rand", "zeros"):
                out[info.name] = src
            elif src in arrays:
                out[info.name] = src
            elif info.name in used:
                listing = ", ".join(sorted(arrays))
                raise DlnError(Diagnostic("E0603", f"input '{info.name}' has no data: the data has {listing}",
                                          info.span, (Note('map it in the train section: inputs = { '
                                                           f'{info.name} = "..." }}'),)))
        return out

    # ---- the loop -------------------------------------------------------------------------------------------
    def fit(self, logdir: Path | None = None) -> History:
        """Train; with `logdir`, write the run's metrics and pictures there (dln.runtime.monitor)."""
        r = self.recipe
        train, val = self._data()
        sources = self._sources(train)
        val_sources = self._sources(val, r.validate_renames) if val is not None else None
        n = len(next(iter(train.values())))
        if n == 0:
            raise DlnError(Diagnostic("E0603", "the training data is empty", None))
        whole = self.batches.whole_example(sources)
        if whole is not None:
            self.log(f"one whole example: input '{whole[0].name}' {whole[0].type} holds {whole[1]} twice; every "
                     "step takes all of it, unshuffled")
        ranks = self.group.size if self.group is not None else 1
        # Among ranks, `batch` is each rank's: a global batch of ranks·batch rows, as one process would take.
        batch = n if whole is not None else r.batch * ranks
        steps_per_epoch = math.ceil(n / batch)
        schedules = [Schedule(r.schedule, o.optimizer.lr, steps_per_epoch * r.epochs) for o in r.objectives]
        for opt, schedule in zip(self.optimizers, schedules):
            opt.schedule = schedule
        ckpt = Path(r.checkpoint) if r.checkpoint else None
        if ckpt and self.writes:  # found out before training, not after the first epoch
            checkpoint.check_output(ckpt, "directory", "the checkpoint directory")
        start = self._resume(ckpt, schedules) if ckpt else 0
        if self.group is not None:   # the ranks start equal, whatever drew or loaded their weights
            distributed.broadcast_state(self.group, self.model.persistent)
        if self.stopped:
            self.log(f"training stopped early after epoch {start} (checkpoint {ckpt})")
            return self.history
        if start >= r.epochs:
            self.log(f"already trained for {start} epochs (checkpoint {ckpt})")
        run = monitor.open_run(logdir, self.history.epochs, self.log) if logdir else None
        for epoch in range(start, r.epochs):
            began = time.perf_counter()
            order = np.arange(n) if whole is not None else \
                np.random.default_rng(r.seed * 100003 + epoch).permutation(n)
            sums: dict[str, float] = {}
            seen = 0
            batches = range(steps_per_epoch)
            bar = None
            if self.progress:
                from tqdm import tqdm

                bar = tqdm(batches, desc=f"epoch {epoch + 1}/{r.epochs}", leave=False, unit="step",
                           file=sys.stderr)
                batches = bar
            for k in batches:
                idx = order[k * batch:(k + 1) * batch]
                # Among ranks, this rank's rows of the global batch (dln.runtime.batches).
                feeds, rows = self.batches.step(train, sources, idx, whole is not None)
                results = self._step(feeds, schedules, epoch, rows)
                for name, value in results.items():   # among ranks, means over the global batch already
                    sums[name] = sums.get(name, 0.0) + value * len(idx)
                seen += len(idx)
                if bar is not None:   # the step and steps/s are tqdm's own; each objective's mean loss so far
                    bar.set_postfix({**{s.objective.loss: f"{sums[s.objective.loss] / seen:.4f}" for s in self.steps},
                                     "examples/s": f"{seen / (time.perf_counter() - began):.0f}"}, refresh=False)
            if bar is not None:
                bar.close()
            record = {"epoch": epoch + 1, **{k: v / seen for k, v in sums.items()},
                      "lr": schedules[0].lr(self.optimizers[0].count - 1, epoch)}  # the rate of the epoch's last step
            if val is not None:
                record.update({f"val_{k}": v for k, v in self.evaluate(val, val_sources).items()})
            record["time"] = time.perf_counter() - began
            self.history.epochs.append(record)
            self.log(_format_epoch(record, r.epochs))
            val_loss = record.get(f"val_{r.objectives[0].loss}")
            for s in schedules:
                s.end_epoch(val_loss)
            if r.early_stop is not None and val_loss is not None:
                if val_loss < self.best_val:
                    self.best_val, self.best_params, self.bad_epochs = val_loss, self.model.state_dict(), 0
                else:
                    self.bad_epochs += 1
                self.stopped = self.bad_epochs >= r.early_stop
            if self.stopped:
                self.log(f"early stop: no better validation loss for {r.early_stop} epochs; keeping the best weights")
                self.model.load_state_dict(self.best_params)
            if ckpt and self.writes:
                try:
                    self._save(ckpt, epoch + 1, schedules)
                except OSError as e:   # a full disk, a directory made read-only meanwhile
                    raise DlnError(Diagnostic("E0708", f"cannot write the checkpoint in {ckpt} after epoch "
                                                       f"{epoch + 1}: {e}", None,
                                              (Note("the checkpoint before is whole: run again to resume from "
                                                    "it"),))) from None
            if run is not None:
                run.epoch(self.history.epochs)
            if self.stopped:
                break
        if self.group is not None:
            distributed.broadcast_state(self.group, self.model._state, "the model state")
        if run is not None:
            run.finish(self.history.epochs, self._images(*((val, val_sources) if val is not None else (train, sources))))
        return self.history

    def _images(self, arrays: data.Arrays, sources: dict[str, str]) -> dict[str, np.ndarray] | None:
        """The `images` setting's values for the first examples of `arrays`, in evaluation mode; fills
        and the model's own draws from a fixed seed, so the grid depends on the weights alone, and the
        model's draw counter as it was (resuming stays exact)."""
        if not self.recipe.images:
            return None
        n = len(next(iter(arrays.values())))
        idx = np.arange(n if self.batches.whole_example(sources) is not None else min(n, monitor.IMAGE_EXAMPLES))
        feeds = self.batches.make(arrays, sources, idx, fills=np.random.default_rng(monitor.IMAGE_SEED))
        computed = [k for k in self.recipe.images if k not in feeds]
        counter, self.model._rng_step = self.model._rng_step, monitor.IMAGE_SEED
        try:
            values = self.model.run(computed, **feeds) if computed else {}
        finally:
            self.model._rng_step = counter
        return {k: np.asarray(feeds[k] if k in feeds else values[k]) for k in self.recipe.images}

    def _step(self, feeds: dict[str, Any] | None, schedules: list[Schedule], epoch: int,
              rows: tuple[int, int, int] | None = None) -> dict[str, float]:
        """One step of every objective on `feeds`; among ranks, `rows` (this rank's, all ranks', and its
        first row in the global batch) and `feeds` None when this rank has no rows of the batch."""
        spec = self.model.train_spec
        # What the compiler could not prove about sizes is checked here, on the real batch.
        env = binding.bind(spec.inputs, feeds, [c for step in self.steps for c in step.graph.constraints]) \
            if feeds is not None else {}
        shares = rows if self.group is not None else None
        out: dict[str, float] = {}
        for opt, schedule in zip(self.optimizers, schedules):
            when = f"at epoch {epoch + 1}, step {opt.count + 1}"
            for name, value in opt.run(feeds, env, schedule.lr(opt.count, epoch), when, shares).items():
                out.setdefault(name, value)
        return out

    def evaluate(self, arrays: data.Arrays, sources: dict[str, str] | None = None) -> dict[str, float]:
        """Mean objective losses and metrics over `arrays` (validation data), in evaluation mode."""
        sources = sources or self._sources(arrays, self.recipe.validate_renames)
        if self.group is not None:   # per-rank running statistics: rank 0's, the ones it saves
            distributed.broadcast_state(self.group, self.model._state, "the model state")
        spec = self.model.spec
        names = [n for n in self.eval_names if n in spec.values or n in spec.metrics]
        return self.batches.evaluate(arrays, sources, names)

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        source = self.model.program.root.source.text
        return hashlib.sha256((source + repr(sorted(self.model.hparams.items()))).encode()).hexdigest()[:16]

    def _save(self, ckpt: Path, epochs_done: int, schedules: list[Schedule]) -> None:
        """Arrays first, under names of this epoch; then state.json, which names them, replaces the old
        one atomically: that is the commit.  The previous checkpoint's files are kept (state.json names
        them under `previous`) and only older ones deleted, so a crash at any point, or a committed file
        found unreadable later, leaves a whole checkpoint to resume from."""
        be = self.model.backend
        files = {"weights": f"weights-{epochs_done}.safetensors", "optimizer": f"optimizer-{epochs_done}.safetensors"}
        checkpoint.save_arrays(ckpt / files["weights"], self.model.state_dict(), self.model.metadata())
        checkpoint.save_arrays(ckpt / files["optimizer"], {k: v for opt in self.optimizers
                                                           for k, v in opt.state_dict().items()})
        if self.best_params is not None:
            files["best"] = f"best-{epochs_done}.safetensors"
            checkpoint.save_arrays(ckpt / files["best"], self.best_params, self.model.metadata())
        state = {
            "model": self.model.name, "fingerprint": self._fingerprint(), "epochs_done": epochs_done,
            "files": files, "step_counts": [opt.count for opt in self.optimizers],
            "rng_step": int(be.to_numpy(self.rng["rng.step"])),
            # Evaluation draws too (randn_like in evaluation mode), from the model's own counter.
            "eval_rng_step": self.model._rng_step,
            "schedules": [s.state() for s in schedules], "history": [dict(e) for e in self.history.epochs],
            "fill_rng": self.batches.fills.bit_generator.state,
            "early_stop": {"best_val": None if math.isinf(self.best_val) else self.best_val,
                           "bad_epochs": self.bad_epochs, "stopped": self.stopped},
        }
        previous = self.committed
        if previous is not None:
            state["previous"] = {k: v for k, v in previous.items() if k != "previous"}
        checkpoint.save_json(ckpt / "state.json", state)
        self.committed = state
        checkpoint_state.tidy(ckpt, _files_of(state))
        # For people: the latest weights under a stable name (resuming reads the committed files).
        checkpoint.save_arrays(ckpt / "weights.safetensors", self.model.state_dict(), self.model.metadata())

    def _resume(self, ckpt: Path, schedules: list[Schedule]) -> int:
        state = checkpoint.load_json(ckpt / "state.json")
        if state is None:
            if self.writes:
                checkpoint_state.tidy(ckpt, set())   # what a run killed before its first commit wrote
            return 0
        if not isinstance(state, dict):
            raise checkpoint_state.damaged(ckpt, "state.json does not hold an object")
        if isinstance(state.get("model"), str) and state["model"] != self.model.name:
            raise DlnError(Diagnostic("E0703", f"the checkpoint in {ckpt} is of model {state.get('model')}, not "
                                               f"{self.model.name}", None,
                                      (Note("use another checkpoint directory, or delete this one"),)))
        state = checkpoint_state.validate(state, ckpt, len(self.steps))
        if state["fingerprint"] != self._fingerprint():
            self.log(f"note: {self.model.program.path} changed since the checkpoint in {ckpt}; resuming anyway")
        # The latest checkpoint, or the one before when a file of the latest cannot be read.
        candidates = [state] + ([state["previous"]] if state.get("previous") else [])
        for k, chosen in enumerate(candidates):
            try:
                arrays = {kind: checkpoint.load_arrays(ckpt / name) for kind, name in chosen["files"].items()}
                break
            except DlnError as e:
                if e.code != "E0702" or k + 1 == len(candidates):
                    raise
                print(f"warning: {e.diagnostics[0].message}; resuming from the previous checkpoint (after epoch "
                      f"{candidates[k + 1]['epochs_done']}) instead", file=sys.stderr)
        fill_rng = np.random.default_rng()   # everything read and checked before anything is restored
        try:
            fill_rng.bit_generator.state = chosen["fill_rng"]
        except (TypeError, ValueError) as e:
            raise checkpoint_state.damaged(ckpt, f"state.json field 'fill_rng' is not a generator state ({e})") \
                from None
        self._check_optimizer_names(arrays["optimizer"], ckpt)
        if self.writes:   # among ranks, rank 0's directory: the others only read it
            checkpoint_state.tidy(ckpt, _files_of(chosen))
        self.model.load_state_dict(arrays["weights"])
        for opt, count in zip(self.optimizers, chosen["step_counts"]):
            try:   # the count state.json records, which checkpoints made before the arrays held it record alone
                opt.load_state_dict({**arrays["optimizer"], opt.count_key: np.array(count, np.int64)})
            except DlnError as e:
                d = e.diagnostics[0]
                raise DlnError(Diagnostic(d.code, d.message, None, (Note(f"in the checkpoint {ckpt}"),))) from None
        self.batches.fills = fill_rng
        for s, st in zip(schedules, chosen["schedules"]):
            s.restore(st)
        stop = chosen["early_stop"]
        self.best_val = stop["best_val"] if stop["best_val"] is not None else math.inf
        self.bad_epochs, self.stopped = stop["bad_epochs"], stop["stopped"]
        self.best_params = arrays.get("best")
        self.history.epochs = [dict(e) for e in chosen["history"]]
        self.model.backend.copy_into(self.rng["rng.step"], np.array(chosen["rng_step"], np.int64))
        self.model._rng_step = chosen.get("eval_rng_step", 0)
        self.committed = chosen
        self.log(f"resuming from {ckpt} after epoch {chosen['epochs_done']}")
        return chosen["epochs_done"]

    def _check_optimizer_names(self, saved: Mapping[str, Any], ckpt: Path) -> None:
        """The checkpoint's optimizer state must be this run's, slot for slot: a run resumed over other
        parameters (`--over`, a section's `over` edited) would drop the state of those it no longer
        trains, or start those it now trains from none.  (The step counts, `optim.<loss>[.<over>].step`,
        are no slots: no optimizer has a slot named step.)"""
        want = {name for opt in self.optimizers for name in opt.states}
        have = {name for name in saved if not name.endswith(".step") and name != "_empty"}   # slots, not counts
        if have != want:
            def params(slots):   # optim.<loss>.<parameter>.<slot> -> <parameter>
                return {name.split(".", 2)[-1].rsplit(".", 1)[0] for name in slots}

            gone, new = sorted(params(have) - params(want)), sorted(params(want) - params(have))
            listed = "; ".join(f"{what}: {listing(names, 4)}" for what, names in (("trained there, frozen here", gone),
                                                   ("trained here, frozen there", new)) if names)
            raise DlnError(Diagnostic(
                "E0703", f"the checkpoint in {ckpt} trained other parameters than this run does ({listed})", None,
                (Note("it was trained over other parameters (minimize ... over, --over): resume with the same, or "
                      "train into another checkpoint directory"),)))


def _files_of(state: Mapping[str, Any]) -> set[str]:
    """The files a committed state names, its previous checkpoint's included: what must be kept."""
    names = set(state["files"].values())
    if state.get("previous"):
        names |= set(state["previous"]["files"].values())
    return names


def _format_epoch(r: Mapping[str, float], epochs: int) -> str:
    parts = [f"epoch {int(r['epoch']):>{len(str(epochs))}}/{epochs}"]
    for k, v in r.items():
        if k in ("epoch", "time", "lr"):
            continue
        parts.append(f"{k} {100 * v:.2f}%" if "accuracy" in k else f"{k} {v:.4f}")
    parts.append(f"{r['time']:.2f}s")
    return "  ".join(parts)
