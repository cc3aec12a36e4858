"""The training step as one graph: forward, generated backward, optimizer update.

Inputs: the data inputs, the parameters, the model state (running
statistics), the optimizer state, the random state (`rng.seed`, `rng.step`)
and two f64 scalars, `lr` (this step's rate) and `step` (the optimizer's step
count, from 1).  Outputs: the loss, the metrics, and for every parameter and
state slot — the model state a layer assigns and the random step included —
its new value, named `new:<input>`; `donate` maps each of those to the input it
replaces, so a backend may update in place.  Parameters the loss does not reach are not
touched, as torch skips parameters whose grad is None.
"""

from __future__ import annotations

from dataclasses import dataclass

from dln.compiler.autodiff import grad
from dln.compiler.build import BuiltModel
from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import DType, Graph, Phase, TensorType
from dln.compiler.optimizers import OPTIMIZERS, emit_update
from dln.compiler.recipe import Objective


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


def build_step(model: BuiltModel, objective: Objective, clip_grad: float | None = None) -> TrainStep:
    # The values the step returns, as outputs of the graph autodiff extends (which may replace nodes).
    kept = [("loss", model.values[objective.loss]), *model.metrics.items(),
            *((f"new:{name}", node) for name, node in model.updates.items())]
    graph = model.graph.with_outputs(kept)
    # Frozen parameters (outside `over`) are no sources of the backward pass: autodiff computes no gradient
    # for them (nor for what only they need), and they get no optimizer state.
    chosen = [p for p in model.params if objective.updates(p.name)]
    full, grads, b = grad(graph, kept[0][1], [p.node for p in chosen])
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
            outputs.append((f"new:{p.name}", new_p.id))
            donate[f"new:{p.name}"] = p.name
            for slot, t in new_state.items():
                sname = f"{state_prefix(objective)}.{p.name}.{slot}"
                outputs.append((f"new:{sname}", t.id))
                donate[f"new:{sname}"] = sname
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
