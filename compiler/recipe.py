"""The `train` section: settings checked and turned into a `Recipe`.

Settings are constants and calls of the train-only functions
(dln.compiler.train_functions: `dataset`, `adam`, `cosine`, ...).
`read_recipe` checks a section against its model: the names it minimizes (a
scalar each), the instances and parameter-name patterns it trains over, the
inputs it fills or renames; `model_of` finds the model a section trains.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Collection, Mapping

from dln.compiler.builtins import Arg
from dln.compiler.ir import TensorType
from dln.compiler.optimizers import OPTIMIZERS
from dln.compiler.passes.autocast import MIXED
from dln.compiler.program import Program
from dln.compiler.train_functions import FILLS, TRAIN_BUILTINS, call
from dln.compiler.values import ListValue, RecordValue, TrainValue, TupleValue, Value, describe
from dln.dsl import ast
from dln.dsl.diagnostics import Diagnostic, DlnError, Note, Span, listing

if TYPE_CHECKING:
    from dln.compiler.build import BuiltModel

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
    """One `minimize`: `over` holds the fnmatch-style patterns of the parameters it updates (an
    instance `D` is `"D.*"`), None for every parameter the loss reaches."""
    loss: str
    over: tuple[str, ...] | None
    optimizer: OptimizerSpec
    span: Span

    def updates(self, param: str) -> bool:
        return self.over is None or any(fnmatchcase(param, p) for p in self.over)


@dataclass
class Recipe:
    model: str
    objectives: list[Objective]
    data: TrainValue | None = None
    # A fraction held out, other data, or the training data with inputs renamed (`{ mask = "val_mask" }`).
    validate: float | TrainValue | RecordValue | None = None
    inputs: dict[str, str] = field(default_factory=dict)   # input -> array name or a fill (randn, rand, zeros)
    batch: int = 32
    epochs: int = 10
    seed: int = 0
    clip_grad: float | None = None
    schedule: TrainValue | None = None
    early_stop: int | None = None
    augment: list[TrainValue] = field(default_factory=list)
    checkpoint: str | None = None
    images: list[str] = field(default_factory=list)   # values drawn as a grid at the end (images.png)
    precision: str | None = None   # a mixed mode (dln.compiler.passes.autocast.MIXED); None: float32
    # Batch norm's batch statistics over every rank's rows (dln.runtime.distributed); one process: no change.
    sync_batchnorm: bool = False
    spans: dict[str, Span] = field(default_factory=dict)

    @property
    def validate_renames(self) -> dict[str, str]:
        """validate = { input = "array" }: the inputs validation feeds from other arrays of the training
        data (a graph's held-out nodes: the same graph, another mask)."""
        return {name: array for name, array, _ in self.validate.fields} \
            if isinstance(self.validate, RecordValue) else {}

    def with_overrides(self, **changes: Any) -> "Recipe":
        """The recipe with settings given outside the file (`--epochs 5`, `dln.train(..., batch=32)`),
        checked as the train section's own settings are."""
        import dataclasses

        recipe = dataclasses.replace(self, inputs=dict(self.inputs), spans=dict(self.spans))
        for key, value in changes.items():
            if value is not None:
                _apply(recipe, key, value, None)
        return recipe


DEFAULT_OPTIMIZER = OptimizerSpec("adam", dict(OPTIMIZERS["adam"].defaults))

_SETTINGS = {"data", "validate", "inputs", "optimizer", "batch", "epochs", "seed", "clip_grad", "schedule",
             "early_stop", "augment", "checkpoint", "images", "precision", "sync_batchnorm"}


def model_of(program: Program, train: ast.Train) -> ast.Model:
    """The model a train section trains: the one it names, or the file's only model."""
    if train.model is not None:
        return program.model(train.model.name, train.model.span)
    return program.model(None, train.span)


def recipe_of(train: ast.Train, spec: "BuiltModel") -> Recipe:
    """`read_recipe` against a model built in training mode."""
    types = {name: spec.graph.node(node).type for name, node in spec.values.items()}
    for name in spec.graph.output_names:
        types.setdefault(name, spec.graph.output(name).type)
    return read_recipe(train, spec.name, set(types), set(spec.instances), types=types,
                       inputs=[i.name for i in spec.inputs], params=[p.name for p in spec.params])


def read_recipe(train: ast.Train, model_name: str, values: Collection[str], instances: Collection[str],
                types: Mapping[str, TensorType] | None = None, inputs: Collection[str] | None = None,
                params: Collection[str] | None = None) -> Recipe:
    """Check a train section against its model: the names it may minimize (with their types,
    when given: objectives are scalars) and train over, its inputs (when given), and that each
    `over` pattern names some parameter (when `params`, the parameter names in model order, are given)."""
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
            if key == "images":   # names of the model's values, not train-section constants
                recipe.images = _images(s.value, values, types, model_name)
                continue
            value = _eval(s.value)
            if key == "optimizer":
                default_optimizer = _optimizer(value, s.value.span)
            else:
                _apply(recipe, key, value, s.value.span)
                if key in ("inputs", "validate") and isinstance(value, RecordValue) and inputs is not None:
                    _check_inputs(value, inputs, model_name, "to fill" if key == "inputs" else "to rename")
        except DlnError as e:
            diagnostics.extend(e.diagnostics)
    for obj in train.objectives:
        try:
            recipe.objectives.append(_objective(obj, default_optimizer, values, instances, types, params))
        except DlnError as e:
            diagnostics.extend(e.diagnostics)
    if not train.objectives:
        if "loss" in values:
            try:
                _check_scalar("loss", types, train.span, "the default objective")
                recipe.objectives.append(Objective("loss", None, default_optimizer, train.span))
            except DlnError as e:
                diagnostics.extend(e.diagnostics)
        else:
            diagnostics.append(Diagnostic("E0602", "the train section says nothing to minimize", train.span,
                                          (Note("add: minimize <name of a scalar in the model>"),)))
    if diagnostics:
        raise DlnError(diagnostics)
    return recipe


def _objective(obj: ast.Minimize, default: OptimizerSpec, values: Collection[str], instances: Collection[str],
               types: Mapping[str, TensorType] | None, params: Collection[str] | None) -> Objective:
    if obj.loss.name not in values:
        close = difflib.get_close_matches(obj.loss.name, sorted(values), n=1)
        notes = (Note(f"did you mean '{close[0]}'?"),) if close else ()
        raise DlnError(Diagnostic("E0602", f"the model has no value '{obj.loss.name}' to minimize", obj.loss.span,
                                  notes))
    _check_scalar(obj.loss.name, types, obj.loss.span, "an objective")
    patterns = tuple(_over_pattern(item, instances, params) for item in obj.over)
    optimizer = default
    if obj.optimizer is not None:
        optimizer = _optimizer(_eval(obj.optimizer), obj.optimizer.span)
    return Objective(obj.loss.name, patterns or None, optimizer, obj.span)


def with_over(recipe: Recipe, over: Any, spec: "BuiltModel") -> Recipe:
    """The recipe with every objective trained over `over` as given outside the file
    (`dln.train(..., over="head.*")`, `dln train --over`): a parameter-name pattern or an instance's
    name, or a list of them, checked as the file's `over` is."""
    import dataclasses

    patterns = over_patterns(over, spec)
    return dataclasses.replace(recipe, objectives=[dataclasses.replace(o, over=patterns) for o in recipe.objectives])


def over_patterns(over: Any, spec: "BuiltModel") -> tuple[str, ...]:
    """`over` given in Python (`dln.train(over=...)`, `dln.optimizer(model, over=...)`): a parameter-name
    pattern or an instance's name, or a list of them, as the patterns an Objective holds."""
    items = [over] if isinstance(over, str) else over
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(i, str) for i in items):
        raise DlnError(Diagnostic("E0710", f"argument over must be a parameter-name pattern, an instance's name, "
                                           f"or a list of them, got {over!r:.40}"))
    params = [p.name for p in spec.params]
    return tuple(_over_pattern(ast.Ident(i, None) if i in spec.instances else ast.Str(i, None), spec.instances,
                               params) for i in items)


def _over_pattern(item: ast.Ident | ast.Str, instances: Collection[str], params: Collection[str] | None) -> str:
    """An `over` item as a parameter-name pattern: instance `D` is `"D.*"`; a quoted pattern is
    fnmatch-style (`*`, `?`, `[...]`) over the full names `dln params` lists, and must match one."""
    if isinstance(item, ast.Ident):
        if item.name not in instances:
            known = ", ".join(sorted(instances)) or "none"
            raise DlnError(Diagnostic("E0602", f"'{item.name}' is not a model instance of this model", item.span,
                                      (Note(f"instances: {known}"),
                                       Note(f'to train parameters by name, quote a pattern: over "{item.name}.*"'))))
        return f"{item.name}.*"
    if params is not None and not any(fnmatchcase(p, item.value) for p in params):
        names = list(params)
        close = difflib.get_close_matches(item.value, names, n=1)
        notes = ((Note(f"did you mean '{close[0]}'?"),) if close else ()) + \
            (Note(f"parameters: {listing(names) or 'none'}"), Note('a pattern matches whole names: "fc1.*", "layer.?.attn.*"'))
        raise DlnError(Diagnostic("E0602", f'no parameter matches "{item.value}"', item.span, notes))
    return item.value


def _check_scalar(name: str, types: Mapping[str, TensorType] | None, span: Span, what: str) -> None:
    t = types.get(name) if types is not None else None
    if t is not None and t.rank != 0:
        raise DlnError(Diagnostic("E0602", f"{what} must be a scalar: '{name}' is {t}", span,
                                  (Note("reduce it first, e.g. mean(...) or sum(...)"),)))


def _check_inputs(value: RecordValue, inputs: Collection[str], model_name: str, what: str) -> None:
    """Every field of `inputs = { ... }` (`validate = { ... }`) names an input of the model."""
    for name, _, span in value.fields:
        if name not in inputs:
            close = difflib.get_close_matches(name, sorted(inputs), n=1)
            hint = f"did you mean '{close[0]}'?" if close else \
                f"its inputs: {', '.join(inputs)}" if inputs else "it has no inputs"
            raise DlnError(Diagnostic("E0601", f"model {model_name} has no input '{name}' {what}", span,
                                      (Note(hint),)))


def _images(e: ast.Expr, values: Collection[str], types: Mapping[str, TensorType] | None,
            model_name: str) -> list[str]:
    """`images = [noisy, recon, x]`: values of the model (inputs included), each example of which can be
    drawn as one square picture (`image_size`)."""
    if not isinstance(e, ast.ListExpr) or not e.items or not all(isinstance(i, ast.Name) for i in e.items):
        raise DlnError(Diagnostic("E0601", "images must be a list of the model's values, e.g. images = [x, recon]",
                                  e.span))
    names: dict[str, Span] = {}
    for item in e.items:
        if item.id not in values:
            close = difflib.get_close_matches(item.id, sorted(values), n=1)
            raise DlnError(Diagnostic("E0601", f"model {model_name} has no value '{item.id}' to draw", item.span,
                                      (Note(f"did you mean '{close[0]}'?"),) if close else ()))
        if item.id in names:
            raise DlnError(Diagnostic("E0306", f"'{item.id}' is drawn twice", item.span,
                                      (Note("first listed here", names[item.id]),)))
        names[item.id] = item.span
        t = types.get(item.id) if types is not None else None
        if t is not None:
            _check_image(item, t)
    return list(names)


def _check_image(item: ast.Name, t: TensorType) -> None:
    """A drawable value: floats, the batch first, each example a known number of values that
    `image_size` can lay out as a picture."""
    def refuse(why: str, note: str) -> DlnError:
        return DlnError(Diagnostic("E0601", f"images: '{item.id}' {t} cannot be drawn: {why}", item.span,
                                   (Note(note),)))

    if not t.dtype.is_float:
        raise refuse("its elements are not floats", "draw a float value (pixels), e.g. the reconstruction")
    if t.rank < 2 or isinstance(t.shape[0], int):
        raise refuse("it needs the batch first, then each example's values",
                     "draw a value of shape [B, 64] or [B, 1, 8, 8]")
    if not all(isinstance(d, int) for d in t.shape[1:]):
        raise refuse("the size of each example is not a constant", "give its dimensions as numbers or hyperparameters")
    if image_size(tuple(t.shape[1:])) is None:
        raise refuse(f"{math.prod(t.shape[1:])} values an example are not a square, nor [1, H, W]",
                     "draw values that hold one gray picture an example: [B, 64] (8 x 8), [B, 1, 8, 8], [B, 8, 8]")


def image_size(example: tuple[int, ...]) -> tuple[int, int] | None:
    """The height and width of one example drawn as a gray picture: the last two axes when the axes
    before them hold one value ([1, 8, 8], [8, 8]); else a square of all its values (64 -> 8 x 8)."""
    if len(example) >= 2 and math.prod(example[:-2]) == 1:
        return example[-2], example[-1]
    side = math.isqrt(math.prod(example))
    return (side, side) if side * side == math.prod(example) and side > 0 else None


def _optimizer(value: Value, span: Span) -> OptimizerSpec:
    if not isinstance(value, TrainValue) or value.kind not in OPTIMIZERS:
        raise DlnError(Diagnostic("E0601", f"expected an optimizer ({', '.join(OPTIMIZERS)}), got {describe(value)}",
                                  span))
    return OptimizerSpec(value.kind, dict(value.args), span)


def _apply(recipe: Recipe, key: str, value: Value, span: Span | None) -> None:
    """Set one setting after checking it; `span` is None for a setting given outside the file."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            where = "" if span is not None else " (as given outside the file)"
            raise DlnError(Diagnostic("E0601", f"{key} must be {what}, got {describe(value)}{where}", span))

    is_int = isinstance(value, int) and not isinstance(value, bool)
    if key == "data":
        need(isinstance(value, TrainValue) and value.kind in ("dataset", "npz", "csv"),
             'data: dataset("..."), npz("...") or csv("...")')
        recipe.data = value
    elif key == "validate":
        if isinstance(value, TrainValue):
            need(value.kind in ("dataset", "npz", "csv"), "a fraction, data or a record of renamed inputs")
            recipe.validate = value
        elif isinstance(value, RecordValue):
            # `{}` renames nothing: validation would be the training data itself, reported as held out
            need(bool(value.fields), "a fraction, data or a record of renamed inputs (at least one)")
            for name, v, fspan in value.fields:
                if not isinstance(v, str):
                    raise DlnError(Diagnostic("E0601", f"validate: input '{name}' must be renamed to an array "
                                                       f"name, got {describe(v)}", fspan,
                                              (Note(f'validate = {{ {name} = "val_{name}" }} feeds it from the '
                                                    f'array val_{name} of the training data'),)))
            recipe.validate = value
        else:
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1,
                 "a fraction in [0, 1), data or a record of renamed inputs")
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
    elif key == "precision":
        need(isinstance(value, str) and value in MIXED, " or ".join(f'"{m}"' for m in MIXED))
        recipe.precision = value
    elif key == "sync_batchnorm":
        need(isinstance(value, bool), "true or false")
        recipe.sync_batchnorm = value


def _eval(e: ast.Expr) -> Value:
    """Train settings are constants and calls of the train-only functions."""
    if isinstance(e, (ast.Int, ast.Float, ast.Str, ast.Bool)):
        return e.value
    if isinstance(e, ast.Unary) and e.op == "-":
        negations = ast.spine(e)  # `- - 1`, however long, in a loop (dsl/parser.py's MAX_NESTING)
        v = _eval(negations[-1].operand)
        if all(u.op == "-" for u in negations) and isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if len(negations) % 2 else v
    if isinstance(e, ast.TupleExpr):
        return TupleValue(tuple(_eval(i) for i in e.items))
    if isinstance(e, ast.ListExpr):
        return ListValue(tuple(_eval(i) for i in e.items))
    if isinstance(e, ast.Record):
        fields: dict[str, ast.Field] = {}
        for f in e.fields:
            if f.name.name in fields:
                raise DlnError(Diagnostic("E0306", f"field '{f.name.name}' given twice", f.name.span,
                                          (Note("first given here", fields[f.name.name].name.span),)))
            fields[f.name.name] = f
        return RecordValue(tuple((f.name.name, _eval(f.value), f.name.span) for f in e.fields))
    if isinstance(e, ast.Name):
        if e.id in FILLS:
            return TrainValue(e.id, (), e.span)
        if e.id in TRAIN_BUILTINS:
            return call(TRAIN_BUILTINS[e.id], [], {}, e.span)
        raise DlnError(Diagnostic("E0301", f"unknown name '{e.id}' in a train section", e.span,
                                  _suggest(e.id)))
    if isinstance(e, ast.Call) and isinstance(e.func, ast.Name):
        name = e.func.id
        if name not in TRAIN_BUILTINS:
            raise DlnError(Diagnostic("E0302", f"unknown function '{name}' in a train section", e.func.span,
                                      _suggest(name)))
        args = [Arg(_eval(a), a.span) for a in e.args]
        kwargs: dict[str, tuple[Arg, Span]] = {}
        for k in e.kwargs:
            if k.name.name in kwargs:
                raise DlnError(Diagnostic("E0306", f"argument '{k.name.name}' given twice", k.name.span))
            kwargs[k.name.name] = (Arg(_eval(k.value), k.value.span), k.name.span)
        return call(TRAIN_BUILTINS[name], args, kwargs, e.span)
    raise DlnError(Diagnostic("E0601", "a train setting must be a constant or a call like adam(lr = 1e-3)", e.span))


def _suggest(name: str) -> tuple[Note, ...]:
    close = difflib.get_close_matches(name, list(TRAIN_BUILTINS) + list(FILLS), n=1)
    return (Note(f"did you mean '{close[0]}'?"),) if close else ()
