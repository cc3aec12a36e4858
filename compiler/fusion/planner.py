"""The fusion planner: which nodes become kernels, and which kernels fuse which nodes.

Over a whole graph — for training, forward + backward + optimizer update:

1. **Realize.**  Choose the values that live in memory: outputs, matrix
   products and convolutions (`GroupOp.Contraction`), reductions, scatters,
   the operands contraction and composite kernels load (through strided
   views where they compose to one), the tables a gather indexes, and
   values so expensive and widely used that recomputing them costs more than
   storing them (cost.py).  An `all_reduce` (the sum across ranks) is
   realized with its operand: the host exchanges it between kernels, from
   memory to memory.  A `scan` is realized with its operands and the
   `result` nodes that read it: each result is one buffer its kernel writes.  Everything else (elementwise chains, views,
   constants, random numbers) is computed inline wherever it is used — a
   dropout mask is recomputed in the backward pass, never stored.
2. **Group.**  In program order, each realized value joins the kernel that
   profits most among those it may legally join (legality.py), or starts a
   kernel of its own: epilogues join their matrix product or convolution,
   softmax, its log, cross-entropy and its gradient share one pass over the
   rows.  A collective is a group alone, after the one before it: every
   rank exchanges in the graph's order.
3. **Fill the GPU** (when planning for a target: a machine and a batch,
   target.py; fill.py).  A weight gradient's product keeps the optimizer
   update in its epilogue only if its grid still gives every SM a program;
   otherwise the update leaves it (for step 4) and a product whose output
   tiles cannot fill the SMs splits its K; a reduction over few rows splits
   its columns.  Split kernels run in two stages, partial sums then their
   deterministic combination with the epilogue (cost.best_split picks S).
4. **Batch the optimizer.**  The per-parameter updates are the same
   computation over different tensors: they become one multi-tensor kernel
   over parameters, gradients and state laid out back to back (memory.py).
5. **Order** the kernels topologically and plan memory (memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from dln.compiler import composites
from dln.compiler.fusion import cost
from dln.compiler.fusion import index as ix
from dln.compiler.fusion.domain import LEAVES, POINTWISE, POSITIONAL, REDUCE, Domain, Reads, node_domain, reads
from dln.compiler.fusion.fill import fill_gpu
from dln.compiler.fusion.legality import may_join
from dln.compiler.fusion.memory import Arena, MemoryPlan, plan_memory
from dln.compiler.fusion.target import Target
from dln.compiler.naming import arena_name, kernel_name
from dln.compiler.ir import Graph, GroupOp, Node, Op, Phase
from dln.compiler.symbolic import evaluate, numel


# The kind of a kernel split in two stages (fill.py), by its domain's kind.
SPLIT_KINDS = {"matmul": "splitk", "convolution": "splitk_convolution", "reduction": "split_reduction"}


@dataclass
class Group:
    """One kernel: the realized nodes it computes, over one domain."""

    id: int
    domain: Domain
    members: list[int]
    stores: list[int] = field(default_factory=list)       # members written to memory
    multi: list[list[int]] | None = None                   # multi-tensor: members per parameter
    name: str = ""
    updates: list[str] = field(default_factory=list)       # the inputs it writes new values of (the optimizer's)
    splits: int = 1                                        # > 1: K (a product's) or columns split this many ways

    @property
    def kind(self) -> str:
        if self.multi:
            return "multi_tensor"
        if self.splits > 1:
            return SPLIT_KINDS[self.domain.kind]
        return self.domain.kind

    def stored_results(self, graph: Graph) -> dict[int, list[int]]:
        """A group of a node with several results (a scan's, a composite's): result index -> the `result`
        nodes of it the kernel stores (several where CSE left two of one result; none for a result unread)."""
        out: dict[int, list[int]] = {}
        for m in self.members[1:]:
            if m in self.stores:
                out.setdefault(graph.node(m).attrs["index"], []).append(m)
        return out


class Planner:
    def __init__(self, graph: Graph, sizes: Mapping[str, int] | None = None) -> None:
        self.graph = graph
        self.env = {s: (sizes or {}).get(s, cost.REPRESENTATIVE) for s in graph.symbols()}  # sizes the cost model prices
        self.realized: set[int] = set()
        self.groups: list[Group] = []
        self.group_of: dict[int, int] = {}
        self._edges: dict[int, set[int]] = {}   # group -> groups it reads from
        self.walks: dict[tuple[int, ix.Index], Reads] = {}   # `reads_at`'s, handed on to the plan
        self._ancestors: dict[int, set[int]] = {}   # group -> every group it reads from; reset by a new edge

    def is_realized(self, node_id: int) -> bool:
        return node_id in self.realized

    # ---- 1. realize -------------------------------------------------------------------------------------
    def realize(self) -> None:
        g = self.graph
        r = self.realized
        r.update(i for _, i in g.outputs)
        for n in g.nodes:
            if n.op in REDUCE or n.op in GroupOp.Contraction or n.op is Op.SCATTER_ADD:
                r.add(n.id)
            if n.op in GroupOp.Contraction:
                for operand in n.inputs:
                    r.add(self._strided_base(operand))
            if n.op is Op.GATHER:
                r.add(self._strided_base(n.inputs[0]))
            if n.op in GroupOp.Region or n.op in GroupOp.Composite and not composites.of(n).strided:
                # The loop kernel (a composite's) reads its operands whole, contiguous (a view is stored once,
                # outside).
                r.add(n.id)
                r.update(n.inputs)
            elif n.op in GroupOp.Composite:
                # Flash attention reads its operands through their views, with strides, as a matrix product
                # does: the heads of q, k, v are no copies of the projection.
                r.add(n.id)
                r.update(self._strided_base(operand) for operand in n.inputs)
            if n.op is Op.RESULT:
                r.add(n.id)
            if n.op in GroupOp.Collective:
                # The host sums the operand across ranks between kernels: the kernel before stores it whole,
                # the kernels after read the sum.
                r.add(n.id)
                r.add(n.inputs[0])
        # Outputs that are leaves or inputs are produced by copying kernels; inputs stay inputs.
        r.difference_update(n.id for n in g.nodes if n.op is Op.INPUT)
        self._realize_shared()

    def _strided_base(self, node_id: int) -> int:
        """The node whose memory a strided read of `node_id` reaches through views.  When the
        views compose to no strided access (a reshape of a transpose), the view is stored."""
        g = self.graph
        top = g.node(node_id)
        n, at = top, ix.domain_vars(top.shape, "i")
        while n.op in ix.VIEWS:
            src = g.node(n.inputs[0])
            at = ix.view_index(n, at, src.shape)
            n = src
        if ix.has_div(ix.linear(at, n.shape)):
            return node_id
        return n.id

    def _realize_shared(self) -> None:
        """Store inline values that several kernels would otherwise each recompute at a cost."""
        g = self.graph
        users = g.users()
        for n in g.nodes:
            if n.id in self.realized or n.op in LEAVES or n.op is Op.INPUT or n.op in ix.VIEWS or n.shape == ():
                continue  # scalars are computed once per program: never worth storing
            if n.op not in POINTWISE:
                continue
            if len(users[n.id]) < 2:
                continue  # not shared
            # Past RECOMPUTE_OPS inlined ops a shared value is stored whatever its number of users: the
            # walk stops there, so a chain of thousands of ops costs a bounded walk per node.
            found = reads(g, n, ix.domain_vars(n.shape, "i"), self.is_realized, most=cost.RECOMPUTE_OPS + 1)
            if cost.should_store_shared(len(found.inline) + 1, len(users[n.id])):
                self.realized.add(n.id)

    # ---- 2. group ------------------------------------------------------------------------------------------
    def group_all(self) -> None:
        collective = None   # the group of the last collective
        for n in self.graph.nodes:
            if n.id not in self.realized:
                continue
            best, best_domain, best_profit = None, None, 0
            if n.op in POINTWISE or n.op in REDUCE or n.op in ix.VIEWS or n.op in LEAVES:
                for group in reversed(self.groups):
                    domain = may_join(self, group, n)
                    if domain is None:
                        continue
                    profit = cost.join_profit(self._shared_bytes(group, n, domain), *self._parallelism(domain, n))
                    if profit > best_profit:
                        best, best_domain, best_profit = group, domain, profit
            if n.op is Op.RESULT:
                # A result is a buffer of its scan's kernel (several stored values, one kernel).
                best = self.groups[self.group_of[n.inputs[0]]]
            if best is None:
                best = Group(len(self.groups), node_domain(self.graph, n), [])
                self.groups.append(best)
                self._edges[best.id] = set()
            elif best_domain is not None:
                best.domain = best_domain
            if n.op in GroupOp.Collective:
                # Every rank exchanges in the graph's order, as the NumPy interpreter runs them and as a rank
                # without rows replays them (dln.runtime.distributed.Communicator): each collective after the
                # one before, an edge the cycle check of every later join respects.
                if collective is not None:
                    self.add_edge(best.id, collective)
                collective = best.id
            self._add(best, n)

    def _add(self, group: Group, n: Node) -> None:
        domain = group.domain
        anchor = n.op in GroupOp.Contraction or n.op in GroupOp.MultiResult or n.op is Op.SCATTER_ADD  # starts a kernel
        at = domain.vars() if anchor else domain.canonical(n.shape)
        if at is None:
            at = domain.vars()
        found = self.reads_at(n.id, at)
        group.members.append(n.id)
        self.group_of[n.id] = group.id
        for m in found.memory:
            source = self.group_of.get(m)
            if source is not None and source != group.id and source not in self._edges[group.id]:
                self._edges[group.id].add(source)
                self._ancestors.clear()

    def _parallelism(self, domain: Domain, n: Node) -> tuple[int | None, int]:
        """(rows of a reduction domain, elements of full-domain work `n` adds), at representative sizes."""
        if domain.kind != "reduction" or domain.is_row(n.shape):
            return None, 0
        env = self.env
        rows = evaluate(numel(domain.row_shape(False)), env)
        return int(rows), int(evaluate(numel(n.shape), env))

    def _shared_bytes(self, group: Group, n: Node, domain: Domain) -> int:
        from dln.compiler.cost import nbytes

        env = self.env
        found = self.reads_at(n.id, domain.canonical(n.shape)).memory
        members = set(group.members)
        read_by_group: set[int] = set()
        for m in group.members:
            read_by_group.update(self.reads_at(m, domain.canonical(self.graph.node(m).shape) or domain.vars()).memory)
        shared = [m for m in found if m in members or m in read_by_group]
        return sum(nbytes(self.graph.node(m), env) for m in shared)

    def reads_at(self, node_id: int, at: ix.Index) -> Reads:
        """What node `node_id` reads from memory and computes inline at `at` (`domain.reads`); remembered,
        since grouping asks again for every candidate kernel, and planning after it for every member
        (what is realized no longer changes once grouping starts).  Callers must not change it."""
        key = (node_id, at)
        if key not in self.walks:
            self.walks[key] = reads(self.graph, self.graph.node(node_id), at, self.is_realized)
        return self.walks[key]

    def depends_on(self, groups: Iterable[int], b: int) -> bool:
        """Is group `b` one of `groups`, or read by one of them, directly or through other kernels?"""
        return any(g == b or b in self.ancestors(g) for g in groups)

    def ancestors(self, group: int) -> set[int]:
        """The groups `group` reads from, directly or through others.  Remembered until an edge is added:
        grouping asks about the same few kernels for every candidate a node might join."""
        if group not in self._ancestors:
            found: set[int] = set()
            stack = list(self._edges.get(group, ()))
            while stack:
                g = stack.pop()
                if g not in found:
                    found.add(g)
                    stack.extend(self._edges.get(g, ()))
            self._ancestors[group] = found
        return self._ancestors[group]

    def new_group(self, domain: Domain, nodes: list[Node]) -> Group:
        """A kernel of its own for `nodes` (realized, in program order), over `domain`."""
        group = Group(max((g.id for g in self.groups), default=-1) + 1, domain, [])
        self.groups.append(group)
        self._edges[group.id] = set()
        for n in nodes:
            self._add(group, n)
        return group

    def add_edge(self, reader: int, source: int) -> None:
        """Group `reader` reads what group `source` stores."""
        self._edges[reader].add(source)
        self._ancestors.clear()

    # ---- 4. the optimizer as one multi-tensor kernel ------------------------------------------------------
    def batch_updates(self, donate: Mapping[str, str]) -> None:
        """Merge the per-parameter update kernels that compute the same thing (when each
        writes its results over its inputs: a multi-tensor kernel works in place)."""
        donated = {i for name, i in self.graph.outputs if name in donate}
        by_signature: dict[tuple, list[Group]] = {}
        for group in self.groups:
            if not set(group.members) <= donated:
                continue
            signature = self._update_signature(group)
            if signature is not None:
                by_signature.setdefault(signature, []).append(group)
        for similar in by_signature.values():
            if len(similar) < 2:
                continue
            first = similar[0]
            first.multi = [list(g.members) for g in similar]
            first.members = [m for g in similar for m in g.members]
            for g in similar[1:]:
                for m in g.members:
                    self.group_of[m] = first.id
                self._edges[first.id] |= self._edges.pop(g.id)
            dropped = {g.id for g in similar[1:]}
            self.groups = [g for g in self.groups if g.id not in dropped]
            for edges in self._edges.values():
                if edges & dropped:
                    edges -= dropped
                    edges.add(first.id)
            self._edges[first.id].discard(first.id)
        self._ancestors.clear()   # merging rewired the edges

    def _update_signature(self, group: Group) -> tuple | None:
        """The structure of an optimizer update kernel with its tensors abstracted, or None."""
        g = self.graph
        if group.domain.kind != "pointwise":
            return None
        nodes = [g.node(m) for m in group.members]
        if not all(n.phase is Phase.OPTIMIZER for n in nodes):
            return None
        shape = group.domain.shape
        at = group.domain.vars()
        for n in nodes:  # tensors must be read where they are written: element i of each
            walk = self.reads_at(n.id, at)
            for m, indices in walk.memory.items():
                if g.node(m).shape != () and (g.node(m).shape != shape or indices != {at}):
                    return None
            # One kernel body serves every parameter only if nothing in it depends on where an element
            # lies but those reads (a flat offset into each parameter's part of the arenas).
            if any(g.node(i).op in POSITIONAL for i in walk.inline | {n.id}):
                return None
        numbering: dict[int, int] = {}
        parts = tuple(_structure(g, n, numbering, self.is_realized) for n in nodes)
        return (str(nodes[0].dtype), parts)

    # ---- 5. order -----------------------------------------------------------------------------------------------
    def order(self, after: dict[int, set[int]] | None = None) -> None:
        """Kernels in dependency order; `after[g]`: more groups that must run before g
        (the readers of a buffer g overwrites)."""
        done: set[int] = set()
        ordered: list[Group] = []
        pending = list(self.groups)
        while pending:
            for k, group in enumerate(pending):
                needs = self._edges.get(group.id, set()) | (after or {}).get(group.id, set())
                if needs <= done:
                    ordered.append(group)
                    done.add(group.id)
                    del pending[k]
                    break
            else:  # pragma: no cover - legality keeps the kernel graph acyclic
                raise AssertionError("kernel dependency cycle")
        self.groups = ordered


def _structure(g: Graph, n: Node, numbering: dict[int, int], stop) -> tuple:
    """A node's inline computation with the tensors it reads numbered in the order the walk meets
    them (so two parameters' updates compare equal), scalars kept as themselves."""

    def walk(node_id: int) -> tuple:
        m = g.node(node_id)
        if m.op is Op.INPUT or (stop(node_id) and node_id != n.id):
            if m.shape == ():
                return ("scalar", node_id)
            numbering.setdefault(node_id, len(numbering))
            return ("tensor", numbering[node_id])
        attrs = tuple(sorted((k, v) for k, v in m.attrs.items() if k != "shape"))
        shapes = tuple(g.node(i).shape == () for i in m.inputs)
        return (m.op.value, attrs, str(m.dtype), shapes, tuple(walk(i) for i in m.inputs))

    return walk(n.id)


# ---- the plan ---------------------------------------------------------------------------------------------------

@dataclass
class FusionPlan:
    graph: Graph
    groups: list[Group]
    realized: set[int]
    memory: MemoryPlan
    reads: list[dict[int, set[ix.Index]]]   # per kernel: values read from memory, at which indices
    computed: dict[int, list[Node]]         # group id -> the nodes its kernel computes (`computed_nodes`)
    walks: dict[tuple[int, ix.Index], Reads] = field(default_factory=dict, repr=False)   # `reads_at`'s

    @property
    def kernels(self) -> list[Group]:
        return self.groups

    def reads_at(self, node_id: int, at: ix.Index) -> Reads:
        """What node `node_id` reads from memory and computes inline at `at` (`domain.reads`), remembered:
        the walks planning made, and those code generation makes again.  Callers must not change it."""
        key = (node_id, at)
        if key not in self.walks:
            self.walks[key] = reads(self.graph, self.graph.node(node_id), at, self.realized.__contains__)
        return self.walks[key]

    def stored(self) -> set[int]:
        return {m for g in self.groups for m in g.stores}


def plan_graph(graph: Graph, donate: Mapping[str, str] | None = None, target: Target | None = None) -> FusionPlan:
    """Fuse `graph` into kernels and plan their memory (see the module docstring); with a `target`, shape
    the kernels to fill its GPU at its sizes."""
    donate = dict(donate or {})
    planner = Planner(graph, target.sizes if target is not None else None)
    planner.realize()
    planner.group_all()
    if target is not None:
        fill_gpu(planner, target)
    planner.batch_updates(donate)
    group_reads = {g.id: _group_reads(planner, g) for g in planner.groups}
    donations = _donations(planner, donate, group_reads)
    # A kernel overwriting an input runs after every other kernel that reads it.
    after: dict[int, set[int]] = {}
    for out, inp in donations.items():
        writer = planner.group_of[out]
        after.setdefault(writer, set()).update(g for g, r in group_reads.items() if inp in r and g != writer)
    planner.order(after)
    reads = [group_reads[g.id] for g in planner.groups]
    read_anywhere = {n for r in reads for n in r}
    outputs = {i for _, i in graph.outputs}
    for group in planner.groups:
        group.stores = [m for m in group.members if m in outputs or m in read_anywhere or group.multi]
    arenas = _arenas(planner)
    writes = [set(g.stores) for g in planner.groups]
    memory = plan_memory(graph, [set(r) for r in reads], writes, arenas, donations)
    for group in planner.groups:
        if group.multi and any(m not in memory.donated for m in group.members):
            raise AssertionError(f"multi-tensor kernel outputs must be donated: {group.members}")
    # Once for every kernel, from the walks grouping remembered: naming, code generation and the report ask.
    computed = {g.id: _computed_nodes(graph, g, planner.reads_at) for g in planner.groups}
    updated, params = _updated(graph, donate)
    for k, group in enumerate(planner.groups):
        members = set(group.members)
        targets = [name for i, name in updated if i in members]
        own_params = [name for name in targets if name in params]
        group.updates = own_params or targets
        group.name = kernel_name(graph, k, group.members, computed[group.id], own_params, targets)
    return FusionPlan(graph, planner.groups, planner.realized, memory, reads, computed, planner.walks)


def _updated(graph: Graph, donate: Mapping[str, str]) -> tuple[list[tuple[int, str]], set[str]]:
    """The optimizer's results that are new values of inputs (node, the input's name), in the step's
    order, and the names of those inputs that are parameters."""
    roles = {n.attrs["name"]: n.attrs["role"] for n in graph.nodes if n.op is Op.INPUT}
    updated = [(i, donate[name]) for name, i in graph.outputs
               if name in donate and graph.node(i).phase is Phase.OPTIMIZER]
    return updated, {name for _, name in updated if roles.get(name) == "param"}


def _group_reads(planner: Planner, group: Group) -> dict[int, set[ix.Index]]:
    """The values a kernel reads from memory, each at the indices it reads it."""
    found: dict[int, set[ix.Index]] = {}
    for m in group.members:
        node = planner.graph.node(m)
        at = member_index(group, node)
        for k, v in _reads_of(planner, node, at).items():
            found.setdefault(k, set()).update(v)
    for m in group.members:  # a kernel's own values are in registers
        found.pop(m, None)
    return found


def _donations(planner: Planner, donate: Mapping[str, str], group_reads) -> dict[int, int]:
    """Outputs that may be written over their inputs: the writing kernel reads the input
    only at the element it writes, and the extra ordering this needs stays acyclic."""
    g = planner.graph
    inputs = {n.attrs["name"]: n.id for n in g.nodes if n.op is Op.INPUT}
    outputs = dict(g.outputs)
    out: dict[int, int] = {}
    for out_name, in_name in donate.items():
        o, i = outputs.get(out_name), inputs.get(in_name)
        if o is None or i is None or o not in planner.group_of or g.node(o).type != g.node(i).type:
            continue
        writer = planner.group_of[o]
        group = next(gr for gr in planner.groups if gr.id == writer)
        own = member_index(group, g.node(o))
        if i in group_reads[writer] and group_reads[writer][i] != {own}:
            continue
        readers = [k for k, r in group_reads.items() if i in r and k != writer]
        if planner.depends_on(readers, writer):
            continue  # a reader needs the writer's results first: keep a separate buffer
        out[o] = i
    return out


def member_index(group: Group, node: Node) -> ix.Index:
    """Where a member lives in its kernel's domain (a multi-tensor member: in its own shape)."""
    if group.multi:
        return ix.domain_vars(node.shape, "i")
    return group.domain.canonical(node.shape) or group.domain.vars()


def _reads_of(planner: Planner, node: Node, at: ix.Index) -> dict[int, set[ix.Index]]:
    """What evaluating `node` at `at` reads from memory.  A matmul reads its operands at
    (row, k) and (k, column) for every k: indices no other member shares, so nothing read
    as an operand is ever written over in the same kernel."""
    return planner.reads_at(node.id, at).memory


def update_operands(graph: Graph, group: Group, realized) -> list[list[int]]:
    """Per parameter of a multi-tensor kernel: the tensors it reads, in operand-position order."""
    per_param = []
    for members in group.multi or []:
        numbering: dict[int, int] = {}
        for m in members:
            _structure(graph, graph.node(m), numbering, realized)
        per_param.append(sorted(numbering, key=numbering.get))
    return per_param


def _arenas(planner: Planner) -> list[Arena]:
    """The operands of each multi-tensor kernel, `k13.arena1_grads`: its position in launch order, then the
    name its kernel's pointer has."""
    g = planner.graph
    output_names = {i: name for name, i in g.outputs}
    arenas: list[Arena] = []
    for k, group in enumerate(planner.groups):
        if not group.multi:
            continue
        per_param = update_operands(g, group, planner.is_realized)
        sizes = [int(numel(g.node(p[0]).shape)) for p in per_param]
        offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        for position in range(len(per_param[0])):
            nodes = [p[position] for p in per_param]
            persistent = all(g.node(n).op is Op.INPUT for n in nodes)
            arenas.append(Arena(f"k{k}.{arena_name(g, position, nodes, output_names)}", g.node(nodes[0]).dtype,
                                nodes, offsets, sum(sizes), persistent))
    return arenas


def computed_nodes(graph: Graph, group: Group, realized: set[int]) -> list[Node]:
    """The nodes a kernel computes (members and what they inline), in program order."""
    return _computed_nodes(graph, group, lambda m, at: reads(graph, graph.node(m), at, realized.__contains__))


def _computed_nodes(graph: Graph, group: Group, walk: Callable[[int, ix.Index], Reads]) -> list[Node]:
    ids: set[int] = set(group.members)
    for m in group.members:
        ids |= walk(m, member_index(group, graph.node(m))).inline
    return [n for n in graph.nodes if n.id in ids]
