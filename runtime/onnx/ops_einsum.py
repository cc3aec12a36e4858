"""ONNX's Einsum as the IR's movement ops, sums and batched matrix products.

The equation is read into one list of labels per operand, the ellipsis spelled out as labels of
its own (right-aligned across operands, so that they broadcast as NumPy's do), and the output's
labels (given after `->`, or implicitly: the ellipsis, then every letter used once, in
alphabetical order).  Then, per operand, a label repeated within it takes the diagonal (the two
axes flattened and read with a step of n + 1), and a label no other operand or the output uses is
summed out.  Operands are combined left to right: two operands' labels are batch labels (in
both, still wanted after), contracted labels (in both, wanted by no one after) or their own, so
the pair is one batched MATMUL [batch, own_a, contracted] @ [batch, contracted, own_b].  What is
left is summed down to the output's labels and permuted to their order.
"""

from __future__ import annotations

import string

from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.symbolic import numel
from dln.runtime.onnx.convert import Context, OnnxNode, UnsupportedOnnx, converter

Labeled = tuple[Tensor, list[str]]


def parse(node: OnnxNode, equation: str, ranks: list[int]) -> tuple[list[list[str]], list[str]]:
    """Each operand's labels and the output's; the ellipsis's axes as the labels '0', '1', ..."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise UnsupportedOnnx(node, f"equation {equation!r} names {len(terms)} operands, {len(ranks)} given")
    width = 0
    for term, rank in zip(terms, ranks):
        letters = len(term.replace("...", ""))
        if "..." in term:
            width = max(width, rank - letters)
        elif letters != rank:
            raise UnsupportedOnnx(node, f"term {term!r} of {equation!r} for an operand of rank {rank}")
    spread = [str(k) for k in range(width)]

    def labels(term: str, rank: int | None) -> list[str]:
        head, dots, tail = term.partition("...")
        for letter in head + tail:
            if letter not in string.ascii_letters:
                raise UnsupportedOnnx(node, f"{letter!r} in the equation {equation!r}")
        if not dots:
            return list(head)
        span = width if rank is None else rank - len(head) - len(tail)
        return list(head) + spread[width - span:] + list(tail)

    inputs = [labels(term, rank) for term, rank in zip(terms, ranks)]
    if arrow:
        return inputs, labels(rhs, None)
    counts = [label for term in inputs for label in term if label.isalpha()]
    return inputs, spread + sorted(label for label in set(counts) if counts.count(label) == 1)


def diagonal(b: GraphBuilder, x: Tensor, labels: list[str]) -> Labeled:
    """x with each repeated label read on its diagonal, once."""
    while len(set(labels)) != len(labels):
        label = next(a for a in labels if labels.count(a) > 1)
        i = labels.index(label)
        j = labels.index(label, i + 1)
        n = min(x.shape[i], x.shape[j])
        rest = [k for k in range(x.rank) if k not in (i, j)]
        x = b.permute(x, rest + [i, j])
        x = b.reshape(x, x.shape[:-2] + (n * n,))
        x = b.slice_axis(x, x.rank - 1, 0, n * n, n + 1)
        labels = [labels[k] for k in rest] + [label]
    return x, labels


def sum_out(b: GraphBuilder, x: Tensor, labels: list[str], keep: set[str]) -> Labeled:
    gone = [k for k, label in enumerate(labels) if label not in keep]
    if not gone:
        return x, labels
    return b.cast(b.sum(x, gone), x.dtype), [label for label in labels if label in keep]


def arrange(b: GraphBuilder, x: Tensor, labels: list[str], order: list[str], sizes: dict[str, int]) -> Tensor:
    """x permuted to `order` (labels x has), each axis broadcast to its size among all operands."""
    x = b.permute(x, [labels.index(label) for label in order])
    return b.broadcast_to(x, tuple(sizes[label] for label in order))


def contract(b: GraphBuilder, one: Labeled, other: Labeled, wanted: set[str], sizes: dict[str, int]) -> Labeled:
    """The product of two labeled operands, summed over the labels they share that `wanted` lacks."""
    (x, xl), (y, yl) = one, other
    shared = [label for label in xl if label in yl]
    batch = [label for label in shared if label in wanted]
    summed = [label for label in shared if label not in wanted]
    own_x = [label for label in xl if label not in shared]
    own_y = [label for label in yl if label not in shared]
    x = arrange(b, x, xl, batch + own_x + summed, sizes)
    y = arrange(b, y, yl, batch + summed + own_y, sizes)
    dims = {label: sizes[label] for label in batch + own_x + own_y + summed}
    count = [numel(tuple(dims[label] for label in group)) for group in (batch, own_x, summed, own_y)]
    x = b.reshape(x, (count[0], count[1], count[2]))
    y = b.reshape(y, (count[0], count[2], count[3]))
    out = b.matmul(x, y)
    labels = batch + own_x + own_y
    return b.reshape(out, tuple(dims[label] for label in labels)), labels


@converter("Einsum")
def einsum(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    xs = [ctx.tensor(node, i) for i in range(len(node.inputs)) if ctx.has(node, i)]
    inputs, output = parse(node, node.attr("equation"), [x.rank for x in xs])
    if len(set(output)) != len(output):
        raise UnsupportedOnnx(node, f"the output of {node.attr('equation')!r} names a label twice")
    sizes: dict[str, int] = {}
    for x, labels in zip(xs, inputs):
        for label, d in zip(labels, x.shape):
            sizes[label] = d if sizes.get(label, 1) == 1 else sizes[label]
    operands = [diagonal(b, x, labels) for x, labels in zip(xs, inputs)]
    missing = set(output) - set(sizes)
    if missing:
        raise UnsupportedOnnx(node, f"output labels {sorted(missing)} name no axis of an operand")
    result = None
    for k, (x, labels) in enumerate(operands):
        later = set(output).union(*(set(ls) for _, ls in operands[k + 1:]))
        x, labels = sum_out(b, x, labels, later | (set(result[1]) if result else set()))
        result = (x, labels) if result is None else contract(b, result, (x, labels), later, sizes)
    x, labels = sum_out(b, *result, set(output))
    return [arrange(b, x, labels, output, sizes)]
