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
    # The values the step returns, as outputs of the graph autodiff extends (which may replace nodes).
    kept = [("loss", model.values[objective.loss]), *model.metrics.items(),
            *((f"new:{name}", node) for name, node in model.updates.items())]
    graph = model.graph.with_outputs(kept)
    if mixed is not None:
        graph = autocast(graph, mixed)
    scaler = mixed is DType.F16
    objective_id = graph.output("loss").id
    if scaler:   # the backward pass starts from loss * scale
        graph, objective_id = _scale_loss(graph, objective_id, f"{state_prefix(objective)}.amp.scale")
    # Frozen parameters (outside `over`) are no sources of the backward pass: autodiff computes no gradient
    # for them (nor for what only they need), and they get no optimizer state.
    chosen = [p for p in model.params if objective.updates(p.name)]
    full, grads, b = grad(graph, objective_id, [p.node for p in chosen])
    kept_ids = dict(full.outputs)
    updated = [p for p in chosen if grads[p.node] is not None]
    opt = objective.optimizer
    hyper = {**OPTIMIZERS[opt.kind].defaults, **opt.hyper}
    outputs: list[tuple[str, int]] = [("loss", kept_ids["loss"])]
    metrics = []
    for name in model.metrics:
        outputs.append((name, kept_ids[name]))
        metrics.append(name)
    donate: dict[str, str] = {}
    states: list[StateSlot] = []
    with b.at(loc=objective.span, label="optimizer", phase=Phase.OPTIMIZER):
        lr = b.input("lr", TensorType(DType.F64, ()), "hyper")
        step = b.input("step", TensorType(DType.F64, ()), "hyper")
        g = {p.name: b.tensor(grads[p.node]) for p in updated}
        found_inf = None
        if scaler:
            with b.at(label="amp"):
                g, found_inf = _unscale(b, g, b.tensor(kept_ids["\0scale"]))
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
                new_p, new_state = emit_update(b, opt.kind, hyper, b.tensor(p.node), g[p.name], slots, step, lr)
                if found_inf is not None:   # an overflowing step changes nothing (GradScaler skips it)
                    new_p = b.where(found_inf, b.tensor(p.node), new_p)
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
                for slot, init, new in _update_scale(b, b.tensor(kept_ids["\0scale"]), found_inf,
                                                     state_prefix(objective)):
                    states.append(StateSlot(slot, "", slot.rsplit(".", 1)[-1], TensorType(DType.F32, ()), init))
                    outputs.append((f"new:{slot}", new.id))
                    donate[f"new:{slot}"] = slot
        # The random state advances with every step, in the graph like the model state layers assign.
        rng_step = graph.input_named("rng.step")
        rng = b.tensor(rng_step.id) if rng_step is not None else b.input("rng.step", TensorType(DType.I64, ()), "rng")
        for name, node in [*((name, kept_ids[f"new:{name}"]) for name in model.updates),
                           ("rng.step", b.add(rng, 1).id)]:
            outputs.append((f"new:{name}", node))
            donate[f"new:{name}"] = name
    step_graph = b.finish(outputs)
    step_graph = Graph(f"{model.name}.step.{objective.loss}", step_graph.nodes, step_graph.outputs,
                       step_graph.constraints)
    return TrainStep(step_graph, objective, [p.name for p in updated], states, donate, metrics)


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
