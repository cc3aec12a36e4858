"""Horizontal fusion (dln.compiler.passes.horizontal): products sharing an operand become one, and nothing
else changes — every output and gradient equals the unmerged graph's in float64, slices keep the ids and
names of the products they replace, a layer applied to its own output is not merged with itself, and a
batch norm between merged products still takes its statistics over each batch alone."""

from __future__ import annotations

import numpy as np
import pytest

import dln
from dln.compiler import pipeline
from dln.compiler.ir import Graph, Op
from dln.compiler.passes.horizontal import horizontal
from dln.compiler.passes.verify import verify
from dln.runtime.interpreter import Executable

# mu and logvar of unequal widths (3 and 5) read one hidden layer: one product of width 8.
SHARED_INPUT = """
model enc(d: int = 7) {
    input x: f64[B, d]
    h      = x -> linear(11) -> relu
    mu     = linear(h, 3)
    logvar = linear(h, 5)
    loss   = mean(mu ** 2) + mean(exp(logvar)) + mean(h)
    output mu, logvar
}
"""

# One discriminator instance on two batches of different sizes, with a batch norm inside.
DISCRIMINATOR = """
model disc(d: int = 6) {
    input image: f64[B, d]
    output score = image -> linear(9) -> {between} -> leaky_relu(0.2) -> linear(1)
}

model gan(d: int = 6) {
    input real: f64[B, d]
    input fake: f64[N, d]
    D = disc(d = d)
    d_loss = mean(D(real) ** 2) + mean((D(detach(fake)) - 1.0) ** 2)
    g_loss = mean(D(fake) ** 2)
    output d_loss
}
"""

# One instance applied to its own output (the products depend on each other) and to a third input.
CHAIN = """
model layer(d: int = 5) {
    input x: f64[B, d]
    output y = x -> linear(d) -> tanh
}

model chain(d: int = 5) {
    input x: f64[B, d]
    input z: f64[B, d]
    L = layer(d = d)
    loss = mean(L(L(x))) + mean(L(z) ** 2)
    output loss
}
"""

# Two convolutions of one image (output channels 4 and 3), a strided one that cannot join them, and one
# convolution layer applied to two images.
CONVS = """
model down(c: int = 2, out: int = 9) {
    input image: f64[B, c, 7, 6]
    output y = conv2d(image, out, 3)
}

model convs(OUT: int = 9) {
    input x: f64[B, 2, 7, 6]
    input y: f64[B, 2, 7, 6]
    E = down(c = 2, out = OUT)
    a = conv2d(x, 4, 3, padding = 1)
    b = conv2d(x, 3, 3, padding = 1)
    s = conv2d(x, 3, 3, stride = 2)
    loss = mean(a ** 2) + mean(tanh(b)) + mean(s) + mean(E(x) * E(y))
    output loss
}
"""


def _products(graph: Graph) -> int:
    return sum(n.op in (Op.MATMUL, Op.CONV) for n in graph.nodes)


def _spec(source: str, name: str | None = None):
    return pipeline.build_model(pipeline.load(source), name, training=True)


def _roots(spec, *names: str) -> Graph:
    return spec.graph.with_outputs([(n, spec.values[n]) for n in names])


def _feeds(spec, rng, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    return {i.name: rng.standard_normal(tuple(sizes.get(str(d), d) for d in i.type.shape)) for i in spec.inputs}


def _run(model, graph: Graph, feeds, sizes) -> dict[str, np.ndarray]:
    return Executable(graph, {**model.parameters(), **model.state_dict()}).run(feeds, sizes)


def test_products_of_one_input_become_one_named_after_both():
    spec = _spec(SHARED_INPUT)
    before = _roots(spec, "loss", "mu", "logvar")
    after = horizontal(before)
    verify(after, "horizontal")
    assert (_products(before), _products(after)) == (3, 2)
    merged = next(n for n in after.nodes if n.op is Op.MATMUL and n.name not in ("h",))
    assert merged.name == "mu+logvar" and merged.shape[-1] == 8
    concat = after.node(merged.inputs[1])
    assert concat.op is Op.CONCAT and concat.shape == (11, 8)
    # The products' ids now hold their slices: the model's named values still find them.
    for name in ("mu", "logvar"):
        product = spec.graph.node(spec.graph.node(spec.values[name]).inputs[0])
        assert product.op is Op.MATMUL
        assert after.node(product.id).op is Op.SLICE and after.node(product.id).name == name


def test_merged_products_give_the_same_values_and_gradients(rng):
    model = dln.compile(SHARED_INPUT, seed=0)
    sizes = {"B": 13}
    feeds = _feeds(model.train_spec, rng, sizes)
    plain = pipeline.gradient_graph(model.train_spec, "loss", merge=False)
    merged = pipeline.gradient_graph(model.train_spec, "loss", merge=True)
    # forward 3 -> 2; weight gradients 3 -> 2; the gradient of h, a sum of two products, 2 -> 1
    assert (_products(plain), _products(merged)) == (8, 5)
    want, got = _run(model, plain, feeds, sizes), _run(model, merged, feeds, sizes)
    assert set(got) == set(want) and len(want) == 7   # the loss and six gradients
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-13, atol=1e-15, err_msg=k)


@pytest.mark.parametrize("between", ["tanh", "batchnorm"])
def test_one_instance_on_two_batches_shares_its_products(rng, between):
    source = DISCRIMINATOR.replace("{between}", between)
    model = dln.compile(source, seed=0)
    spec = model.train_spec
    sizes = {"B": 7, "N": 5}
    feeds = _feeds(spec, rng, sizes)
    before = _roots(spec, "d_loss")
    after = horizontal(before)
    # D(real) with D(detach(fake)): both layers' products merge, on 12 rows; g_loss's D(fake) is not needed.
    assert (_products(before), _products(after)) == (6, 4)
    live = {i for _, i in after.outputs}
    for n in reversed(after.nodes):
        if n.id in live:
            live.update(n.inputs)
    rows = {str(n.shape[0]) for n in after.nodes if n.op is Op.MATMUL and n.id in live}
    assert rows == {"B + N"}, rows
    if between == "batchnorm":
        # The statistics stay per batch: every reduction over the batch axis reads B or N rows, never B + N.
        reduced = [str(after.node(n.inputs[0]).shape[0]) for n in after.nodes
                   if n.op is Op.SUM and n.id in live and 0 in n.attrs["axes"]]
        assert reduced and set(reduced) <= {"B", "N"}, reduced
    plain = pipeline.gradient_graph(spec, "d_loss", merge=False)
    merged = pipeline.gradient_graph(spec, "d_loss", merge=True)
    want, got = _run(model, plain, feeds, sizes), _run(model, merged, feeds, sizes)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_dependent_products_are_not_merged(rng):
    spec = _spec(CHAIN, "chain")
    before = _roots(spec, "loss")
    after = horizontal(before)
    verify(after, "horizontal")
    # L(x) and L(L(x)) depend on each other: only one of them joins L(z).
    assert (_products(before), _products(after)) == (3, 2)
    merged = [n for n in after.nodes if n.op is Op.MATMUL and after.node(n.inputs[0]).op is Op.CONCAT]
    assert len(merged) == 1 and merged[0].shape[0] == spec.graph.input_named("x").shape[0] * 2
    model = dln.compile(CHAIN, model="chain", seed=0)
    sizes = {"B": 6}
    feeds = _feeds(spec, rng, sizes)
    want = _run(model, pipeline.gradient_graph(model.train_spec, "loss", merge=False), feeds, sizes)
    got = _run(model, pipeline.gradient_graph(model.train_spec, "loss", merge=True), feeds, sizes)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_convolutions_merge_on_channels_and_on_the_batch(rng):
    spec = _spec(CONVS, "convs")
    before = _roots(spec, "loss")
    after = horizontal(before)
    verify(after, "horizontal")
    # a and b (one image, 4 + 3 output channels) -> one; E(x) and E(y) (one weight) -> one on 2B images;
    # the strided s stays alone.
    assert (_products(before), _products(after)) == (5, 3)
    concats = sorted((n.attrs["axis"], str(n.shape)) for n in after.nodes if n.op is Op.CONCAT)
    assert concats == [(0, "(2*B, 2, 7, 6)"), (0, "(7, 2, 3, 3)")], concats
    model = dln.compile(CONVS, model="convs", seed=0)
    sizes = {"B": 3}
    feeds = _feeds(spec, rng, sizes)
    want = _run(model, pipeline.gradient_graph(model.train_spec, "loss", merge=False), feeds, sizes)
    got = _run(model, pipeline.gradient_graph(model.train_spec, "loss", merge=True), feeds, sizes)
    assert len(want) == 9   # the loss and eight gradients
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_images_larger_than_the_shared_weight_are_not_copied_to_share_it():
    """The profit rule: E's weight (4 x 2 x 3 x 3 = 72 numbers) is smaller than an image (84): copying both
    batches into one would cost more than reading the weight twice."""
    spec = pipeline.build_model(pipeline.load(CONVS), "convs", {"OUT": 4}, training=True)
    after = horizontal(_roots(spec, "loss"))
    concats = sorted((n.attrs["axis"], str(n.shape)) for n in after.nodes if n.op is Op.CONCAT)
    assert concats == [(0, "(7, 2, 3, 3)")], concats


def test_a_graph_without_candidates_is_returned_unchanged():
    spec = _spec(CHAIN, "layer")
    graph = _roots(spec, "y")
    assert horizontal(graph) is graph
