"""A collective (`all_reduce`, `GroupOp.Collective`): no kernel, but a step the host takes between kernels.

Data-parallel training with batch norm's statistics over every rank
(`sync_batchnorm`) sums a few values per channel across the ranks in the
middle of a step.  The fusion planner makes each `all_reduce` a group of its
own, after the one before it (compiler/fusion/planner.py): the kernel before
it stores its operand, the kernels after it read its result.  Its function
copies the operand into the result's buffer and hands that to the program's
`communicate(index, tensor)`, which sums it across the ranks in place — the
runtime sets it (dln.runtime.distributed.Communicator through
torch.distributed: gloo on CPU tensors, nccl on the GPU's own); `index` is
the collective's place among the program's, which run in the graph's order.
Without a communicator (one process: a model's run, `dln bench`) the sum
over one rank is the value itself: the copy alone, as the NumPy interpreter
does.

A recorded step replays the function as one call (kernels/prebound.py),
which reads `communicate` when it runs; a step with collectives is never
captured as a CUDA graph (runtime/step_graphs.py).
"""

from __future__ import annotations

from dln.compiler.fusion.planner import FusionPlan, Group
from dln.kernels.emitter import comment
from dln.kernels.templates import KernelSource, _pointers, _wrap


def collective(plan: FusionPlan, group: Group, k: int) -> KernelSource:
    g = plan.graph
    node = g.node(group.members[0])
    index = sum(other.kind == "collective" for other in plan.groups[:k])
    pointers = _pointers(plan, group, k)
    ordered = [pointers[i] for i in sorted(pointers)]
    operand = pointers[node.inputs[0]].name
    # The result's buffer; none when no kernel reads it (the exchange still happens: every rank takes part).
    result = pointers[node.id].name if node.id in pointers else f"{operand}.clone()"
    where = f" from {node.loc.path.split('/')[-1]}:{node.loc.line}" if node.loc is not None else ""
    weighted = ", weighted by the rank's share of the batch" if node.attrs.get("weighted") else ""
    doc = (f"The sum across the ranks of %{node.inputs[0]} (all_reduce %{node.id}{weighted}){where}: on the "
           f"host between kernels, collective {index} of the step.")
    lines = [f"def {group.name}(program, sizes, {', '.join(p.name for p in ordered)}):",
             '    """' + "\n    ".join(comment(line) for line in _wrap(doc, 100)) + '"""']
    if node.id in pointers:
        lines.append(f"    {result}.copy_({operand})")
    else:
        lines.append(f"    out = {result}")
        result = "out"
    lines += ["    if program.communicate is not None:   # else one process: the sum over one rank is the value",
              f"        program.communicate({index}, {result})"]
    return KernelSource(group.name, "collective", "\n".join(lines) + "\n", ordered, [], [], [], host=True)
