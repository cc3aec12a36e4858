"""The training step as one graph: forward, generated backward, optimizer update.

Inputs: the data inputs, the parameters, the model state (running
statistics), the optimizer state, the random state (`rng.seed`, `rng.step`)
and two f64 scalars, `lr` (this step's rate) and `step` (the optimizer's step
count, from 1).  Outputs: the loss, the metrics, and for every parameter and
state slot — the model state a layer assigns and the random step included —
its new value, named `new:<input>`; `donate` maps each of those to the input it
replaces, so a backend may update in place.  Parameters the loss does not reach are not
touched, as torch skips parameters whose grad is None.

Under mixed precision (`mixed`, dln.compiler.passes.autocast) the forward
graph is autocast before autodiff; the parameters and optimizer state stay
float32.  Under f16 (`16-mixed`) the step also scales its loss as
`torch.amp.GradScaler` does (`_scale_loss`, `_unscale`, `_update_scale`): two more state slots, the scale and
the count of steps since it last changed, and one more output, `found_inf`,
1 when a gradient overflowed and the step left parameters and optimizer
state as they were (the host then does not count it: Adam's step count).

Data-parallel training cuts the same step in two (`build_split_step`, `SplitStep`):
the gradient graph and the update graph, the host averaging the gradients
across ranks in between.
"""

from __future__ import annotations

from dataclasses import dataclass

from dln.compiler.autodiff import grad
from dln.compiler.build import BuiltModel
from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import DType, Graph, Op, Phase, TensorType
from dln.compiler.optimizers import OPTIMIZERS, emit_update
from dln.compiler.passes.autocast import autocast
from dln.compiler.recipe import Objective

# torch.amp.GradScaler's defaults.
SCALER = {"init_scale": 2.0 ** 16, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}


@dataclass(frozen=True)
class StateSlot:
    name: str        # input name: optim.<loss>.<param>.<slot>
    param: str
    slot: str
    type: TensorType
    init: float


@dataclass
class TrainStep:
    graph: Graph
    objective: Objective
    params: list[str]                 # parameters this step updates, in model order
    states: list[StateSlot]
    donate: dict[str, str]            # output name -> the input it replaces
    metrics: list[str]


def state_prefix(objective: Objective) -> str:
    return f"optim.{objective.loss}"


def build_step(model: BuiltModel, objective: Objective, clip_grad: float | None = None,
               mixed: DType | None = None) -> TrainStep:
    b, graph, kept_ids, updated, grads = _backward(model, objective, mixed)
    outputs, metrics = _values(model, kept_ids)
    with b.at(loc=objective.span, label="optimizer", phase=Phase.OPTIMIZER):
        g = {p.name: b.tensor(grads[p.node]) for p in updated}
        params = {p.name: b.tensor(p.node) for p in updated}
        scale = b.tensor(kept_ids["\0scale"]) if mixed is DType.F16 else None
        update, donate, states = _optimizer(b, objective, updated, params, g, clip_grad, scale)
        outputs += update
        # The random state advances with every step, in the graph like the model state layers assign.
        for name, node in _advance(b, model, graph, kept_ids):
            outputs.append((f"new:{name}", node))
            donate[f"new:{name}"] = name
    step_graph = _named(b.finish(outputs), f"{model.name}.step.{objective.loss}")
    return TrainStep(step_graph, objective, [p.name for p in updated], states, donate, metrics)


@dataclass
class SplitStep(TrainStep):
    """The training step as two graphs, for data-parallel training (dln.runtime.distributed): `graph`, the
    forward and backward — the loss, the metrics, the gradient of every parameter the step updates
    (`grad:<name>`), the new model state and random step (donated as `donate` says) — and `update`, the
    optimizer's graph, whose gradient inputs (`grad:<name>`, role "grad") the host has averaged across
    ranks in between: gradient clipping, loss unscaling (16-mixed) and the update see the averaged
    gradients, so every rank makes the same update.  `update_donate` maps its outputs (`new:<param>`,
    `new:<slot>`) to the inputs they replace.  Run back to back on one process, they compute what
    `build_step`'s fused graph does."""

    update: Graph | None = None
    update_donate: dict[str, str] | None = None


def build_split_step(model: BuiltModel, objective: Objective, clip_grad: float | None = None,
                     mixed: DType | None = None) -> SplitStep:
    b, graph, kept_ids, updated, grads = _backward(model, objective, mixed)
    outputs, metrics = _values(model, kept_ids)
    outputs += [(f"grad:{p.name}", grads[p.node]) for p in updated]
    donate: dict[str, str] = {}
    with b.at(loc=objective.span, label="optimizer", phase=Phase.OPTIMIZER):
        for name, node in _advance(b, model, graph, kept_ids):
            outputs.append((f"new:{name}", node))
            donate[f"new:{name}"] = name
    gradients = _named(b.finish(outputs), f"{model.name}.gradients.{objective.loss}")
    # The update graph: parameters, gradients (role "grad": fed averaged), optimizer state, lr and step.
    u = GraphBuilder(f"{model.name}.update.{objective.loss}")
    with u.at(loc=objective.span, label="optimizer", phase=Phase.OPTIMIZER):
        params = {p.name: u.input(p.name, p.type, "param") for p in updated}
        g = {p.name: u.input(f"grad:{p.name}", p.type, "grad") for p in updated}
        scale = u.input(f"{state_prefix(objective)}.amp.scale", TensorType(DType.F32, ()), "state") \
            if mixed is DType.F16 else None
        update_outputs, update_donate, states = _optimizer(u, objective, updated, params, g, clip_grad, scale)
    update = u.finish(update_outputs)
    return SplitStep(gradients, objective, [p.name for p in updated], states, donate, metrics, update,
                     update_donate)


def _backward(model: BuiltModel, objective: Objective, mixed: DType | None):
    """The forward graph of the step's values, differentiated: the builder autodiff extended, the graph
    it started from, the ids of the kept values (`loss`, metrics, `new:<state>`, `\0scale`), the
    parameters updated and the gradient of each."""
    # The values the step returns, as outputs of the graph autodiff extends (which may replace nodes).
    kept = [("loss", model.values[objective.loss]), *model.metrics.items(),
            *((f"new:{name}", node) for name, node in model.updates.items())]
    graph = model.graph.with_outputs(kept)
    if mixed is not None:
        graph = autocast(graph, mixed)
    objective_id = graph.output("loss").id
    if mixed is DType.F16:   # the backward pass starts from loss * scale
        graph, objective_id = _scale_loss(graph, objective_id, f"{state_prefix(objective)}.amp.scale")
    # Frozen parameters (outside `over`) are no sources of the backward pass: autodiff computes no gradient
    # for them (nor for what only they need), and they get no optimizer state.
    chosen = [p for p in model.params if objective.updates(p.name)]
    full, grads, b = grad(graph, objective_id, [p.node for p in chosen])
    updated = [p for p in chosen if grads[p.node] is not None]
    return b, graph, dict(full.outputs), updated, grads


def _values(model: BuiltModel, kept_ids: dict[str, int]) -> tuple[list[tuple[str, int]], list[str]]:
    """The step's first outputs, the loss and the metrics; and the metrics' names."""
    metrics = list(model.metrics)
    return [("loss", kept_ids["loss"]), *((name, kept_ids[name]) for name in metrics)], metrics


def _optimizer(b: GraphBuilder, objective: Objective, updated: list, params: dict[str, Tensor],
               g: dict[str, Tensor], clip_grad: float | None, scale: Tensor | None
               ) -> tuple[list[tuple[str, int]], dict[str, str], list[StateSlot]]:
    """Gradient clipping, loss unscaling (`scale`: 16-mixed) and the update of every parameter of `updated`
    from its gradient: the outputs (`new:<param>`, `new:<slot>`, `found_inf`), what they donate to, and the
    optimizer state slots."""
    opt = objective.optimizer
    hyper = {**OPTIMIZERS[opt.kind].defaults, **opt.hyper}
    outputs: list[tuple[str, int]] = []
    donate: dict[str, str] = {}
    states: list[StateSlot] = []
    lr = b.input("lr", TensorType(DType.F64, ()), "hyper")
    step = b.input("step", TensorType(DType.F64, ()), "hyper")
    found_inf = None
    if scale is not None:
        with b.at(label="amp"):
            g, found_inf = _unscale(b, g, scale)
    if clip_grad is not None and updated:
        with b.at(label="clip_grad"):
            g = _clip(b, g, clip_grad)
    for p in updated:
        slots = {}
        for slot, init in OPTIMIZERS[opt.kind].slots(hyper):
            sname = f"{state_prefix(objective)}.{p.name}.{slot}"
            states.append(StateSlot(sname, p.name, slot, p.type, init))
            slots[slot] = b.input(sname, p.type, "state")
        with b.at(label=f"optimizer.{p.name}"):
            new_p, new_state = emit_update(b, opt.kind, hyper, params[p.name], g[p.name], slots, step, lr)
            if found_inf is not None:   # an overflowing step changes nothing (GradScaler skips it)
                new_p = b.where(found_inf, params[p.name], new_p)
                new_state = {k: b.where(found_inf, slots[k], t) for k, t in new_state.items()}
        outputs.append((f"new:{p.name}", new_p.id))
        donate[f"new:{p.name}"] = p.name
        for slot, t in new_state.items():
            sname = f"{state_prefix(objective)}.{p.name}.{slot}"
            outputs.append((f"new:{sname}", t.id))
            donate[f"new:{sname}"] = sname
    if found_inf is not None:
        with b.at(label="amp"):
            outputs.append(("found_inf", b.cast(found_inf, DType.F32).id))
            for slot, init, new in _update_scale(b, scale, found_inf, state_prefix(objective)):
                states.append(StateSlot(slot, "", slot.rsplit(".", 1)[-1], TensorType(DType.F32, ()), init))
                outputs.append((f"new:{slot}", new.id))
                donate[f"new:{slot}"] = slot
    return outputs, donate, states


def _advance(b: GraphBuilder, model: BuiltModel, graph: Graph, kept_ids: dict[str, int]) -> list[tuple[str, int]]:
    """The new model state (running statistics) and the random step, one more: (name, node) pairs."""
    rng_step = graph.input_named("rng.step")
    rng = b.tensor(rng_step.id) if rng_step is not None else b.input("rng.step", TensorType(DType.I64, ()), "rng")
    return [*((name, kept_ids[f"new:{name}"]) for name in model.updates), ("rng.step", b.add(rng, 1).id)]


def _named(graph: Graph, name: str) -> Graph:
    return Graph(name, graph.nodes, graph.outputs, graph.constraints)


def _clip(b: GraphBuilder, grads: dict[str, Tensor], max_norm: float) -> dict[str, Tensor]:
    """torch.nn.utils.clip_grad_norm_: scale every gradient by min(1, max_norm / (norm + 1e-6))."""
    total = None
    for t in grads.values():
        sq = b.sum(b.mul(t, t))
        total = sq if total is None else b.add(total, sq)
    norm = b.sqrt(total)
    coef = b.minimum(b.div(max_norm, b.add(norm, 1e-6)), 1.0)
    return {k: b.mul(t, b.cast(coef, t.dtype)) for k, t in grads.items()}


def _scale_loss(graph: Graph, loss: int, name: str) -> tuple[Graph, int]:
    """`graph` with the scale input and `loss * scale` (float32, as torch's `scaler.scale(loss)`); the
    scale is kept as an output (`\0scale`) so that the step reads it after autodiff."""
    b = GraphBuilder(graph.name, base=graph)
    node = graph.node(loss)
    with b.at(loc=node.loc, label="amp", phase=Phase.FORWARD):
        scale = b.input(name, TensorType(DType.F32, ()), "state")
        scaled = b.mul(b.cast(b.tensor(loss), DType.F32), scale)
    return b.finish(list(graph.outputs) + [("\0scale", scale)]), scaled.id


def _unscale(b: GraphBuilder, grads: dict[str, Tensor], scale: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """GradScaler.unscale_: every gradient times 1/scale (the reciprocal in double, as torch takes it), and
    whether any element of them is inf or NaN (|g| < inf is false for both)."""
    inv = b.cast(b.div(1.0, b.cast(scale, DType.F64)), DType.F32)
    out, bad = {}, None
    for k, t in grads.items():
        out[k] = b.mul(t, b.cast(inv, t.dtype))
        count = b.sum(b.cast(b.unary(Op.NOT, b.compare(Op.LT, b.unary(Op.ABS, out[k]), float("inf"))), DType.F32))
        bad = count if bad is None else b.add(bad, count)
    found = b.compare(Op.GT, bad, 0.0) if bad is not None else b.const(False, DType.BOOL)
    return out, found


def _update_scale(b: GraphBuilder, scale: Tensor, found_inf: Tensor, prefix: str) -> list[tuple[str, float, Tensor]]:
    """GradScaler.update (torch's _amp_update_scale_): on overflow the scale backs off and the count of
    good steps restarts; after `growth_interval` good steps in a row the scale grows (while it stays
    finite).  The state slots (name, initial value, new value)."""
    tracker = b.input(f"{prefix}.amp.growth_tracker", TensorType(DType.F32, ()), "state")
    good = b.add(tracker, 1.0)
    grow = b.compare(Op.GE, good, float(SCALER["growth_interval"]))
    grown = b.mul(scale, SCALER["growth_factor"])
    grown = b.where(b.compare(Op.LT, b.unary(Op.ABS, grown), float("inf")), grown, scale)
    new_scale = b.where(found_inf, b.mul(scale, SCALER["backoff_factor"]), b.where(grow, grown, scale))
    new_tracker = b.where(found_inf, 0.0, b.where(grow, 0.0, good))
    return [(f"{prefix}.amp.scale", SCALER["init_scale"], new_scale),
            (f"{prefix}.amp.growth_tracker", 0.0, new_tracker)]
