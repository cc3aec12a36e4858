"""What each kernel does and costs: FLOPs, bytes moved, arithmetic intensity (plan.txt).

Bytes are modeled HBM traffic: every value a kernel reads from memory once,
every value it stores once (caches are assumed to serve repeated reads of a
tile).  Symbolic sizes are evaluated at a given binding (the batch size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from dln.compiler.cost import flops, nbytes
from dln.compiler.fusion.planner import FusionPlan, Group
from dln.compiler.ir import Graph, Node
from dln.compiler.naming import value_name
from dln.compiler.printer import op_name
from dln.compiler.symbolic import evaluate


@dataclass
class KernelCost:
    name: str
    kind: str
    nodes: list[Node]              # computed by the kernel (members and what they inline)
    flops: int
    read_bytes: int
    write_bytes: int

    @property
    def bytes(self) -> int:
        return self.read_bytes + self.write_bytes

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else 0.0


def computed_nodes(plan: FusionPlan, group: Group) -> list[Node]:
    return plan.computed[group.id]


def kernel_costs(plan: FusionPlan, env: Mapping[str, int]) -> list[KernelCost]:
    g = plan.graph
    out = []
    for k, group in enumerate(plan.groups):
        nodes = computed_nodes(plan, group)
        work = sum(flops(g, n, env) for n in nodes)
        read = sum(nbytes(g.node(r), env) for r in plan.reads[k])
        written = sum(nbytes(g.node(s), env) for s in group.stores)
        out.append(KernelCost(group.name, group.kind, nodes, work, read, written))
    return out


def source_lines(nodes: list[Node]) -> str:
    by_file: dict[str, set[int]] = {}
    for n in nodes:
        if n.loc is not None:
            by_file.setdefault(n.loc.path, set()).add(n.loc.line)
    return "; ".join(f"{path}:{','.join(str(x) for x in sorted(lines))}" for path, lines in by_file.items())


def format_plan(plan: FusionPlan, env: Mapping[str, int], compiled: Mapping[str, list] | None = None) -> str:
    """plan.txt: the kernels in launch order, then the memory plan."""
    g = plan.graph
    costs = kernel_costs(plan, env)
    binding = ", ".join(f"{k} = {v}" for k, v in sorted(env.items())) or "no symbolic sizes"
    lines = [f"fusion plan for {g.name}: {len(plan.groups)} kernels ({binding})", ""]
    for cost, group in zip(costs, plan.groups):
        lines.append(f"{cost.name}  [{cost.kind}]")
        lines.append(f"  fuses    {_node_list(g, cost.nodes)}")
        lines.append(f"  stores   {', '.join(f'%{s}' for s in group.stores) or '-'}")
        if group.updates:
            lines.append(f"  updates  {', '.join(group.updates)}")
        if group.splits > 1:
            what = "K" if group.domain.kind == "matmul" else "the reduced columns"
            lines.append(f"  splits   {what} {group.splits} ways (planned for the target at this batch), then an "
                         "ordered second stage")
        lines.append(f"  source   {source_lines(cost.nodes) or '-'}")
        lines.append(f"  cost     {cost.flops:,} FLOPs, {cost.bytes:,} bytes (read {cost.read_bytes:,}, write "
                     f"{cost.write_bytes:,}), {cost.intensity:.2f} FLOPs/byte")
        results = [r for name, rs in (compiled or {}).items() if name == cost.name or name.startswith(cost.name + "_")
                   for r in rs]   # a two-stage kernel's stages are compiled apart (`k7_..._partial`, `k7_..._sum`)
        for result in results:
            flag = "" if result.fits else "  <-- does not fit"
            stage = result.name[len(cost.name) + 1:]
            lines.append(f"  {result.target:<8} {stage + ': ' if stage else ''}{result.describe()}{flag}")
        lines.append("")
    total_bytes = sum(c.bytes for c in costs)
    total_flops = sum(c.flops for c in costs)
    lines.append(f"total: {len(costs)} kernels, {total_flops:,} FLOPs, {total_bytes:,} bytes moved")
    lines.append("")
    lines += format_memory(plan, env)
    return "\n".join(lines) + "\n"


def format_memory(plan: FusionPlan, env: Mapping[str, int]) -> list[str]:
    mem = plan.memory
    g = plan.graph
    output_names = {i: name for name, i in g.outputs}
    lines = ["memory plan"]
    for slot in mem.slots:
        size = int(evaluate(slot.numel, env)) * slot.dtype.itemsize
        values = ", ".join(f"%{v} {value_name(g, v, output_names)}" for v in slot.values)
        lines.append(f"  slot {slot.id}: {slot.dtype}[{slot.numel}] = {size:,} bytes, holds {values}")
    for arena in mem.arenas:
        kind = "persistent" if arena.persistent else "workspace"
        names = ", ".join(g.node(n).attrs.get("name", f"%{n}") if g.node(n).op.value == "input" else f"%{n}"
                          for n in arena.nodes)
        lines.append(f"  arena {arena.name} ({kind}): {arena.dtype}[{arena.numel}] back to back: {names}")
    if mem.donated:
        pairs = ", ".join(f"%{o} -> {g.node(i).attrs['name']}" for o, i in mem.donated.items())
        lines.append(f"  written in place: {pairs}")
    lines.append(f"  peak activation memory: {mem.peak_bytes(env):,} bytes")
    return lines


def _node_list(g: Graph, nodes: list[Node]) -> str:
    shown = [f"%{n.id} {op_name(n)}" for n in nodes[:16]]
    more = f" ... ({len(nodes)} nodes)" if len(nodes) > 16 else ""
    return ", ".join(shown) + more
