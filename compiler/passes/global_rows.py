"""Random draws counted by global example, for data parallelism: a row's numbers are one process's.

A random op draws element i of its tensor from counter i (dln.runtime.philox).  Among ranks, rank r holds
rows [lo, lo + b) of each global batch; counted from 0, every rank would draw the first rows' numbers —
the same dropout masks on every rank, and not those one process draws for these rows.  This pass gives
every random op whose leading axis is the data's batch axis a third input, `rng.row` (an i64 scalar: the
rank's first row in the global batch, 0 in one process), and the backends count from row × (elements
per row): the counters, and so the masks, are those of a single process at the global batch.

Random ops inside loop bodies, or whose leading axis is not the batch (a time-major [T, B, H]), keep their
counters: the ranks draw alike there.  So the built-ins draw over the batch batch-major (the dropout between
stacked recurrent layers, whose sequence is time-major, draws its mask as [B, T, H]).
"""

from __future__ import annotations

from dln.compiler.ir import DType, Graph, Node, Op, TensorType
from dln.compiler.passes.rewrite import rewrite

ROW = "rng.row"


def global_rows(graph: Graph) -> Graph:
    batch = {n.type.shape[0] for n in graph.nodes if n.op is Op.INPUT and n.attrs["role"] == "input"
             and n.type.rank > 0 and not isinstance(n.type.shape[0], int)}
    if not any(_counted(n, batch) for n in graph.nodes):
        return graph
    row: list[int] = []

    def rule(b, n: Node) -> int | None:
        if not _counted(n, batch):
            return None
        if not row:   # the input, once, before the first draw that reads it
            row.append(b.input(ROW, TensorType(DType.I64, ()), "rng").id)
        return b.emit(Op.RAND, [b.tensor(i) for i in (*n.inputs, row[0])], n.attrs.replace(type=n.type)).id

    return rewrite(graph, rule)


def _counted(n: Node, batch: set) -> bool:
    return n.op is Op.RAND and len(n.inputs) == 2 and n.type.rank > 0 and n.type.shape[0] in batch
