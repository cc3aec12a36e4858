"""The compiler's steps, in order.  Each is a pure function.

    text ──parse──► AST ──load──► Program (the file and its imports)
         ──build_model──► BuiltModel: typed graph, shapes inferred, parameters named
         ──horizontal──► with `merge` (the backends that gain from it): products sharing an operand
                         merged (mu/logvar, D(real) and D(fake)), before autodiff so that the backward's
                         weight gradients merge too
         ──forward_graph──► the graph of the requested values, optimized (in evaluation mode,
                            per-channel affine maps folded into the conv or matmul before them)
         ──train_step──► forward + backward + optimizer update, optimized
         ──split_step──► the same step as two graphs, the gradients and the update, for the host to
                         average the gradients across ranks in between (data parallelism); its random
                         draws counted by global row (`global_rows`)
         ──gradient_graph──► forward + backward alone: a loss and its gradients
         ──lower──► what a backend runs: every composite it has no kernel for decomposed
                    into primitives (the backends call it in `prepare`)
         ──(kernels)──► fusion plan and Triton source, in dln.kernels

Between passes the IR checker runs when `debug` is on.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from dln.compiler.autodiff import grad
from dln.compiler.build import BuiltModel, build_model
from dln.compiler.ir import DType, Graph
from dln.compiler.passes.autocast import autocast
from dln.compiler.passes.cse import cse
from dln.compiler.passes.dce import dce
from dln.compiler.passes.decompose import Keep, decompose, keep_none
from dln.compiler.passes.detach import strip_detach
from dln.compiler.passes.fold import fold
from dln.compiler.passes.fold_affine import fold_affine
from dln.compiler.passes.global_rows import global_rows
from dln.compiler.passes.horizontal import horizontal
from dln.compiler.passes.verify import verify
from dln.compiler.program import load
from dln.compiler.recipe import Objective
from dln.compiler.training import SplitStep, TrainStep, build_split_step, build_step

__all__ = ["load", "build_model", "forward_graph", "train_step", "split_step", "gradient_graph", "optimize", "lower",
           "PASSES"]

# The optimization passes, in order.
PASSES: list[tuple[str, Callable[[Graph], Graph]]] = [
    # `detach` only matters to autodiff, which has run by now.
    ("strip_detach", strip_detach),
    # Fold constants and exact identities (x * 1, reshape to the same shape, ...).
    ("fold", fold),
    # One node per distinct computation: VJPs recompute what the forward had.
    ("cse", cse),
    # Folding may expose more: once more, then drop what no output needs.
    ("fold", fold),
    ("dce", dce),
]


def optimize(graph: Graph, debug: bool = False) -> Graph:
    if debug:
        verify(graph, "build")
    for name, run in PASSES:
        graph = run(graph)
        if debug:
            verify(graph, name)
    return graph


def forward_graph(model: BuiltModel, outputs: Sequence[str] | None = None, debug: bool = False,
                  mixed: DType | None = None, merge: bool = False, rows: bool = False) -> Graph:
    """The graph computing `outputs` (declared outputs by default; any named value or metric may be asked
    for), and the new value of every model state the build assigns (`new:<name>`, donated to it by
    `model.state_donations()`): a run in training mode updates the running statistics.  `mixed`: the
    type of the products under mixed precision (dln.compiler.passes.autocast), None for float32.
    `merge`: products sharing an operand become one (`horizontal`; after folding, so that a batch norm
    still folds into the weight before it).  `rows`: random draws over the batch counted from a global row
    (`global_rows`: one rank's share of a global batch draws one process's numbers for its rows)."""
    names = list(outputs) if outputs is not None else model.outputs
    pairs = []
    for name in names:
        if name in model.graph.output_names:
            pairs.append((name, model.graph.output(name).id))
        elif name in model.values:
            pairs.append((name, model.values[name]))
        else:
            pairs.append((name, model.metrics[name]))
    g = model.graph.with_outputs(pairs + model.state_outputs() + model.carry_outputs())
    g = autocast(g, mixed) if mixed is not None else g
    g = optimize(global_rows(g) if rows else g, debug)
    if not model.training:
        # Evaluation: batch norm (any per-channel scale and shift) moves into the weights before it.
        folded = fold_affine(g)
        if folded is not g:
            g = optimize(folded, debug)
    return _merged(g, debug) if merge else g


def _merged(graph: Graph, debug: bool) -> Graph:
    merged = horizontal(graph)
    if debug:
        verify(merged, "horizontal")
    return graph if merged is graph else optimize(merged, debug)


def _merged_model(model: BuiltModel, roots: Sequence[int], debug: bool) -> BuiltModel:
    """`model` with the products that `roots` need merged (`horizontal`: ids kept, nodes only added), for
    autodiff to differentiate: a GAN's `d_loss` step merges `D(real)` with `D(fake)`, not with the
    `D(fake)` only `g_loss` reads."""
    merged = horizontal(model.graph.with_outputs([(f"\0{k}", i) for k, i in enumerate(roots)]))
    if debug:
        verify(merged, "horizontal")
    return dataclasses.replace(model, graph=merged.with_outputs(model.graph.outputs))


def train_step(model: BuiltModel, objective: Objective, clip_grad: float | None = None,
               debug: bool = False, mixed: DType | None = None, merge: bool = False) -> TrainStep:
    """`mixed`: as for `forward_graph`; under f16 the step scales its loss (`build_step`).  `merge`: the
    products the step needs that share an operand become one before autodiff (`horizontal`)."""
    if merge:
        roots = [model.values[objective.loss], *model.metrics.values(), *model.updates.values()]
        model = _merged_model(model, roots, debug)
    step = build_step(model, objective, clip_grad, mixed)
    step.graph = optimize(step.graph, debug)
    return step


def split_step(model: BuiltModel, objective: Objective, clip_grad: float | None = None,
               debug: bool = False, mixed: DType | None = None, merge: bool = False) -> SplitStep:
    """`train_step` cut where data parallelism exchanges the gradients (dln.compiler.training.SplitStep):
    `step.graph` computes the loss, the metrics and `grad:<name>`; `step.update` takes them averaged and
    updates parameters and optimizer state; each optimized on its own."""
    if merge:
        roots = [model.values[objective.loss], *model.metrics.values(), *model.updates.values()]
        model = _merged_model(model, roots, debug)
    step = build_split_step(model, objective, clip_grad, mixed)
    # Each rank's random draws counted from its first row in the global batch: one process's masks.
    step.graph = optimize(global_rows(step.graph), debug)
    step.update = optimize(step.update, debug)
    return step


def gradient_graph(model: BuiltModel, loss: str, debug: bool = False, mixed: DType | None = None,
                   merge: bool = False) -> Graph:
    """The value of scalar `loss` (`loss`), its gradient for every parameter it reaches (`grad:<name>`) and
    the new model state: forward and backward without an optimizer (`Model.value_and_grad`); `mixed` and
    `merge` as for `train_step` (no loss scaling: the gradients are the float32 parameters' own)."""
    if merge:
        model = _merged_model(model, [model.values[loss], *model.updates.values()], debug)
    # Outputs named before autodiff, which may replace nodes (a composite's decomposition), read after.
    forward = model.graph.with_outputs([("loss", model.values[loss])] + model.state_outputs())
    if mixed is not None:
        forward = autocast(forward, mixed)
    full, grads, _ = grad(forward, forward.output("loss").id, [p.node for p in model.params])
    outputs = list(full.outputs) + [(f"grad:{p.name}", grads[p.node]) for p in model.params
                                    if grads[p.node] is not None]
    return optimize(full.with_outputs(outputs), debug)


def lower(graph: Graph, keep: Keep = keep_none, debug: bool = False) -> Graph:
    """`graph` as a backend runs it: the composites `keep` refuses (those it has no kernel for) replaced by
    their decompositions, then optimized again (the same graph when there were none)."""
    lowered = decompose(graph, keep)
    return graph if lowered is graph else optimize(lowered, debug)
