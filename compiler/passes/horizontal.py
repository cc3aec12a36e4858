"""Horizontal fusion: independent products that share an operand become one product over a concatenation.

Two patterns, for `matmul` and `conv` alike:

- **shared input** — `x @ W1`, `x @ W2` (a VAE's `mu` and `logvar`; a bidirectional RNN's two input
  projections; Q/K/V written as three layers — `attention` packs its own into one in-projection already)
  become `x @ concat(W1, W2)` along the output columns (a convolution's output channels), then one slice
  per product;
- **shared weight** — `a @ W`, `b @ W` (one model instance applied to two batches: a GAN's `D(real)` and
  `D(detach(fake))`) become `concat(a, b) @ W` along the rows (a convolution's batch axis), then one slice
  per product.

Each merge is exact product by product: a row (column) of a product depends only on its row of the left
(column of the right) operand, so each slice is the product it replaces, up to the order in which a library
sums the new shape.  Only the contractions merge, never what follows them: a batch norm after `D(real)` and
`D(fake)` still takes its statistics over each batch's own slice — nothing merges across a layer that mixes
rows.

Legality: the products must be independent — none may depend on another, and merging several groups must
not close a cycle through them (`_independent_subset` keeps the members that depend on no member kept
before them, with the groups accepted earlier already merged).  Only products the graph's outputs need are
merged: a graph holding both of a GAN's objectives must not drag the `D(fake)` only `g_loss` reads into
the `d_loss` step's product.

Profit (`_pays`): merging saves, per extra product, a read of the shared operand and a kernel launch; it
costs a copy of the operands concatenated.  The rule: merge when those are weights (computed from
parameters alone: copied once a step whatever the batch), or when the shared operand is at least as large
as the largest of them per example (symbolic sizes set to 1).  So `mu`/`logvar` merge (weights), and so do
`D(real)` and `D(fake)` for the GAN's layers (each weight is larger than an example), while a convolution
whose images are larger than its weight is not applied to a copy of both batches.

Where it runs: on the model's graph before autodiff (`pipeline.train_step`, `gradient_graph`, and
`forward_graph` after its folding, each with `merge=True`).  Autodiff of `concat` and `slice` then gives
the backward its merged form: the weight gradient of a shared weight is one product `concat(a, b)^T @ g`
and the input gradient of a shared input one product `g @ concat(W1, W2)^T`, `g` the slices' cotangents
put back together (one `concat` where the sizes are static; two zero-padded pieces summed where they are
symbolic, the batch).  After autodiff neither could be found: their operands differ on both sides.  Which
backends merge is the runtime's choice (`dln.runtime.backends.MERGES_PRODUCTS`): the Triton backend's
kernels, where a launch saved outweighs a copy; not NumPy's, where fewer calls gain nothing.

Every slice keeps the id, name and span of the product it replaces, so whatever referred to the product (a
model's named values, the outputs) still does; the merged product is named after its members
(`mu+logvar`: kernel `k2_mu_logvar_matmul`, gradient `grad:mu+logvar`).
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Iterable, NamedTuple

from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import Graph, Node, Op, map_bodies
from dln.compiler.symbolic import evaluate, numel


class Group(NamedTuple):
    """Products to merge: `members` (node ids, in graph order) share operand `shared` (0: the left, or
    a convolution's input; 1: the right, or its weight) and differ in the other, concatenated on `axis`
    of it; the merged result is sliced back on `out_axis`."""

    members: tuple[int, ...]
    shared: int
    axis: int
    out_axis: int


def horizontal(graph: Graph) -> Graph:
    """`graph` with its independent products over a shared operand merged (the same graph when none)."""
    graph = map_bodies(graph, horizontal)   # loop bodies first: an LSTM's gates share the hidden state
    live = _live(graph)
    taken: set[int] = set()
    groups: list[Group] = []
    merged_into: dict[int, int] = {}        # member id -> index of its accepted group
    weights = _weights(graph)
    for group in _candidates(graph, live):
        members = tuple(m for m in group.members if m not in taken)
        group = group._replace(members=_independent_subset(graph, members, groups, merged_into))
        if len(group.members) < 2 or not _pays(graph, group, weights):
            continue
        for m in group.members:
            merged_into[m] = len(groups)
        taken.update(group.members)
        groups.append(group)
    return _apply(graph, groups, merged_into) if groups else graph


# ---- finding the groups ----------------------------------------------------------------------------------

def _live(graph: Graph) -> set[int]:
    live = {i for _, i in graph.outputs}
    for n in reversed(graph.nodes):
        if n.id in live:
            live.update(n.inputs)
    return live


def _candidates(graph: Graph, live: set[int]) -> Iterable[Group]:
    """Every set of live products sharing an operand whose other operands may be concatenated, shared
    inputs first (Q/K/V), in the order of their first member."""
    by_key: dict[tuple, list[int]] = {}
    for n in graph.nodes:
        if n.id not in live or n.op not in (Op.MATMUL, Op.CONV):
            continue
        for shared in (0, 1):
            key = _key(graph, n, shared)
            if key is not None:
                by_key.setdefault(key, []).append(n.id)
    for shared in (0, 1):
        for key, members in by_key.items():
            if key[1] == shared and len(members) > 1:
                n = graph.node(members[0])
                axis, out_axis = _axes(n, shared)
                yield Group(tuple(members), shared, axis, out_axis)


def _key(graph: Graph, n: Node, shared: int) -> tuple | None:
    """What products sharing operand `shared` with `n` must agree on to be merged with it: the shared
    operand, the other operand's shape but for the concatenated axis, element types, attributes."""
    other = graph.node(n.inputs[1 - shared])
    axis, _ = _axes(n, shared)
    if n.op is Op.CONV and shared == 0 and n.attrs["groups"] != 1:
        return None   # grouped channels: a concatenation of weights is not one grouped convolution
    rest = tuple(d for k, d in enumerate(other.shape) if k != axis)
    return (n.op, shared, _value(graph, n.inputs[shared]), other.type.rank, rest, other.dtype, n.dtype, n.attrs)


_VIEWS = (Op.PERMUTE, Op.RESHAPE, Op.BROADCAST, Op.CAST)


def _value(graph: Graph, node_id: int) -> object:
    """What identifies the value of a shared operand: its node, or for a view the view of that (before CSE
    each application of a layer transposes its weight anew: `D(real)` and `D(fake)` read two nodes)."""
    n = graph.node(node_id)
    if n.op in _VIEWS:
        return (n.op, n.attrs, n.type, _value(graph, n.inputs[0]))
    return node_id


def _axes(n: Node, shared: int) -> tuple[int, int]:
    """(the axis the other operands are concatenated on, the axis of the result sliced back)."""
    rank = n.type.rank
    if n.op is Op.MATMUL:   # shared x: the weights' columns; shared W: the rows of the left operands
        return (rank - 1, rank - 1) if shared == 0 else (rank - 2, rank - 2)
    return (0, 1) if shared == 0 else (0, 0)   # conv: output channels of w -> of y; batch of x -> of y


def _size(shape) -> int:
    """Elements per example: symbolic sizes (the batch) set to 1."""
    env = {}
    for d in shape:
        if not isinstance(d, int):
            env.update((s, 1) for s in d.symbols)
    return max(0, int(evaluate(numel(shape), env)))


def _pays(graph: Graph, group: Group, weights: set[int]) -> bool:
    """Does the merge save more than the concatenation costs?  (The module docstring has the rule.)"""
    others = [graph.node(m).inputs[1 - group.shared] for m in group.members]
    if all(o in weights for o in others):
        return True
    shared = graph.node(graph.node(group.members[0]).inputs[group.shared])
    return _size(shared.shape) >= max(_size(graph.node(o).shape) for o in others)


def _weights(graph: Graph) -> set[int]:
    """The nodes computed from parameters and constants alone (a weight, its transpose, a weight a batch
    norm was folded into): the same every example, copied once a step whatever the batch."""
    out: set[int] = set()
    for n in graph.nodes:
        if n.op is Op.INPUT:
            fixed = n.attrs["role"] in ("param", "state", "hyper")
        elif n.op in (Op.CONST, Op.IOTA):
            fixed = True
        else:
            fixed = bool(n.inputs) and n.op is not Op.RAND and all(i in out for i in n.inputs)
        if fixed:
            out.add(n.id)
    return out


def _independent_subset(graph: Graph, members: tuple[int, ...], accepted: list[Group],
                       merged_into: dict[int, int]) -> tuple[int, ...]:
    """The members, in order, that depend on no member kept before them and that none of those depends on,
    with the groups accepted so far already merged (one node: what any of its members reads, all do).  A
    layer applied to its own output (`L(L(x))`) keeps one of the two; `L(z)` beside them still joins."""
    kept: list[int] = []
    ancestors: dict[int, set[int]] = {}
    for m in members:
        ancestors[m] = _ancestors(graph, m, accepted, merged_into)
        if all(m not in ancestors[k] and k not in ancestors[m] for k in kept):
            kept.append(m)
    return tuple(kept)


def _ancestors(graph: Graph, start: int, accepted: list[Group], merged_into: dict[int, int]) -> set[int]:
    seen: set[int] = set()
    stack = list(graph.node(start).inputs)
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        k = merged_into.get(i)
        for j in (accepted[k].members if k is not None else (i,)):
            seen.add(j)
            stack.extend(graph.node(j).inputs)
    return seen


# ---- rewriting ---------------------------------------------------------------------------------------------

def _apply(graph: Graph, groups: list[Group], merged_into: dict[int, int]) -> Graph:
    """The graph with every group's products replaced by one product and slices of it, in an order that
    keeps it topological: a group is emitted when every member's inputs are, its members' readers after."""
    b = GraphBuilder(graph.name)
    b.shapes.constraints.extend(graph.constraints)
    b.next_id = max(n.id for n in graph.nodes) + 1
    position = {n.id: k for k, n in enumerate(graph.nodes)}
    # Units to emit: a node, or a group (by its first member).  Kahn's algorithm, earliest position first.
    unit = {n.id: (groups[merged_into[n.id]].members[0] if n.id in merged_into else n.id) for n in graph.nodes}
    waiting: dict[int, int] = {}
    readers: dict[int, list[int]] = {}
    for n in graph.nodes:
        u = unit[n.id]
        for i in n.inputs:
            if unit[i] != u:
                waiting[u] = waiting.get(u, 0) + 1
                readers.setdefault(unit[i], []).append(u)
    # A group is placed at its last member's position, so the graph moves as little as possible.
    rank = {u: max(position[m] for m in groups[merged_into[u]].members) if u in merged_into else position[u]
            for u in set(unit.values())}
    ready = [(rank[u], u) for u in rank if waiting.get(u, 0) == 0]
    heapq.heapify(ready)
    emitted = 0
    while ready:
        _, u = heapq.heappop(ready)
        emitted += 1
        if u in merged_into:
            _emit_group(b, graph, groups[merged_into[u]])
        else:
            n = graph.node(u)
            b.nodes.append(n)
            b.index[n.id] = n
        for r in readers.get(u, ()):
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, (rank[r], r))
    assert emitted == len(rank), "horizontal: a cycle through merged products (`_independent_subset` let one by)"
    return b.finish(graph.outputs)


def _emit_group(b: GraphBuilder, graph: Graph, group: Group) -> None:
    members = [graph.node(m) for m in group.members]
    first = members[0]
    names = list(dict.fromkeys(m.name for m in members if m.name))
    with b.at(loc=first.loc, label="+".join(names), phase=first.phase):
        shared = b.tensor(first.inputs[group.shared])
        joined = b.concat([b.tensor(m.inputs[1 - group.shared]) for m in members], group.axis)
        operands = [shared, joined] if group.shared == 0 else [joined, shared]
        merged = b.emit(first.op, operands, first.attrs)
    start = 0
    for m in members:
        stop = start + m.shape[group.out_axis]
        with b.at(loc=m.loc, label=m.name, phase=m.phase):
            _emit_as(b, m, b.slice_axis(merged, group.out_axis, start, stop))
        start = stop


def _emit_as(b: GraphBuilder, member: Node, t: Tensor) -> None:
    """Give the node just emitted for `t` the id of `member`, the product it stands for."""
    node = b.nodes.pop()
    assert node.id == t.id and node.type == member.type, (node, member)
    del b.index[node.id]
    node = dataclasses.replace(node, id=member.id)
    b.nodes.append(node)
    b.index[node.id] = node
