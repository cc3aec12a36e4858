"""The memory plan: where every stored value lives.

* Graph inputs live in the caller's buffers; parameters and optimizer state
  are persistent, and an output donated to an input (`new:W` -> `W`) is
  written over it when no later kernel reads the old value.
* Values a multi-tensor kernel reads side by side are laid out back to back
  in an **arena**, one per operand position (all gradients in one buffer, in
  parameter order), so one flat index walks every parameter at once.
* Every other stored value gets a **slot**, reused once its last reader has
  run (greedy interval colouring in kernel order).  A slot's size is a
  polynomial in the symbolic dimensions — the largest of its values, term by
  term — so one plan serves every batch size.

`peak_bytes` evaluates the plan for concrete sizes (plan.txt reports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from dln.compiler.ir import DType, Graph
from dln.compiler.symbolic import Dim, Sym, evaluate, numel


@dataclass
class Slot:
    id: int
    dtype: DType
    numel: Dim                     # elements: the largest value it holds, term by term
    values: list[int] = field(default_factory=list)


@dataclass
class Arena:
    """Tensors laid out back to back: `offsets[k]` is where `nodes[k]` starts."""

    name: str
    dtype: DType
    nodes: list[int]
    offsets: list[int]
    numel: int
    persistent: bool               # graph inputs (parameters, state) relocated by the runtime


@dataclass
class MemoryPlan:
    slots: list[Slot] = field(default_factory=list)
    slot_of: dict[int, int] = field(default_factory=dict)
    arenas: list[Arena] = field(default_factory=list)
    arena_of: dict[int, tuple[str, int]] = field(default_factory=dict)   # node -> (arena, offset)
    donated: dict[int, int] = field(default_factory=dict)                 # output node -> input node written over
    outputs: set[int] = field(default_factory=set)                        # stored values the caller receives

    def peak_bytes(self, env: Mapping[str, int]) -> int:
        """Bytes of intermediate memory (slots and non-persistent arenas) for concrete sizes."""
        total = sum(int(evaluate(s.numel, env)) * s.dtype.itemsize for s in self.slots)
        total += sum(a.numel * a.dtype.itemsize for a in self.arenas if not a.persistent)
        return total


def elementwise_max(a: Dim, b: Dim) -> Dim:
    """A polynomial at least as large as both, for non-negative symbols (term-wise maximum)."""
    ta = dict(a.terms) if isinstance(a, Sym) else {(): a}
    tb = dict(b.terms) if isinstance(b, Sym) else {(): b}
    merged = {m: max(ta.get(m, 0), tb.get(m, 0)) for m in set(ta) | set(tb)}
    out: Dim = 0
    for mono, coeff in merged.items():
        term: Dim = coeff
        for s in mono:
            term = term * Sym.var(s)
        out = out + term
    return out


def plan_memory(graph: Graph, reads: list[set[int]], writes: list[set[int]], arenas: list[Arena],
                donations: Mapping[int, int]) -> MemoryPlan:
    """`reads[k]` / `writes[k]`: the values kernel k reads from and writes to memory;
    `donations`: outputs that overwrite an input (already checked safe by the planner)."""
    plan = MemoryPlan(arenas=list(arenas), donated=dict(donations))
    for arena in arenas:
        for node, offset in zip(arena.nodes, arena.offsets):
            plan.arena_of[node] = (arena.name, offset)
    plan.outputs = {i for _, i in graph.outputs}
    produced: dict[int, int] = {}
    last_read: dict[int, int] = {}
    for k, (r, w) in enumerate(zip(reads, writes)):
        for node in r:
            last_read[node] = k
        for node in w:
            produced[node] = k
    temporaries = {n: k for n, k in produced.items() if n not in plan.arena_of and n not in plan.donated}
    assign_slots(graph, plan, temporaries, last_read, len(reads))
    return plan


def assign_slots(graph: Graph, plan: MemoryPlan, produced: dict[int, int], last_read: dict[int, int],
                 kernels: int) -> None:
    """Greedy interval colouring of the temporaries over kernel positions."""
    free: list[Slot] = []
    ending: dict[int, list[int]] = {}
    for node, at in sorted(produced.items(), key=lambda kv: (kv[1], kv[0])):
        # Release slots whose values were last read before this kernel.
        for k in [k for k in ending if k < at]:
            for slot_id in ending.pop(k):
                free.append(plan.slots[slot_id])
        n = graph.node(node)
        size = numel(n.shape)
        slot = next((s for s in free if s.dtype is n.dtype), None)
        if slot is None:
            slot = Slot(len(plan.slots), n.dtype, size)
            plan.slots.append(slot)
        else:
            free.remove(slot)
            slot.numel = elementwise_max(slot.numel, size)
        slot.values.append(node)
        plan.slot_of[node] = slot.id
        end = kernels if node in plan.outputs else last_read.get(node, at)
        ending.setdefault(end, []).append(slot.id)
