"""Flash attention (kernels/attention.py) under Triton's interpreter against the NumPy backend, which runs
sdpa's decomposition: out and lse forward, dq, dk, dv backward, with 16 x 16 tiles so that every loop
runs several blocks and ends on a ragged one (T = 37 is no multiple of 16), T = 1, cross attention
(Tq != Tk both ways), causal or not, a key-padding mask and a row that sees no key at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dln
from dln.compiler import pipeline
from dln.compiler.autodiff import grad
from dln.compiler.composites import emit
from dln.compiler.emit import GraphBuilder
from dln.compiler.ir import DType, Graph, Op, TensorType
from dln.compiler.pipeline import optimize
from dln.compiler.symbolic import evaluate
from dln.runtime.train import default_objective

from .conftest import DEVICE, graph_inputs, run_both

F = DType.F32
BATCH, HEADS = 2, 3
TILES = {"BLOCK_M": 16, "BLOCK_N": 16}
GPT_BLOCK = Path(__file__).resolve().parents[1] / "programs" / "gpt_block.dln"


def attention_graph(tq: int, tk: int, E: int, Ev: int, causal: bool, mask: str | None, train: bool) -> Graph:
    """q [2, 3, tq, E], k [2, 3, tk, E], v [2, 3, tk, Ev] -> out, lse; with `train`, the loss
    sum(out * cot) and its gradients g_q, g_k, g_v.  `mask`: "keys" (a [2, 1, 1, tk] key-padding
    bias), "rows" (a [1, 1, tq, tk] bias whose row 2 masks every key) or "full" (a float bias of the
    scores' shape)."""
    b = GraphBuilder("sdpa")
    q = b.input("q", TensorType(F, (BATCH, HEADS, tq, E)))
    k = b.input("k", TensorType(F, (BATCH, HEADS, tk, E)))
    v = b.input("v", TensorType(F, (BATCH, HEADS, tk, Ev)))
    operands = [q, k, v]
    if mask:
        shape = {"keys": (BATCH, 1, 1, tk), "rows": (1, 1, tq, tk), "full": (BATCH, HEADS, tq, tk)}[mask]
        operands.append(b.input("bias", TensorType(F, shape)))
    out, lse = emit(b, "sdpa", operands, causal=causal, scale=0.3, masked=mask is not None, bias_grad=False,
                    dropout=0.0)
    if not train:
        return b.finish([("out", out), ("lse", lse)])
    cot = b.input("cot", TensorType(F, (BATCH, HEADS, tq, Ev)))
    loss = b.sum(b.mul(out, cot))
    graph = b.finish([("loss", loss), ("out", out)])
    wrt = [n.id for n in graph.inputs if n.attrs["name"] in ("q", "k", "v")]
    full, grads, _ = grad(graph, loss.id, wrt)
    names = {n.id: n.attrs["name"] for n in graph.inputs}
    return optimize(full.with_outputs(list(full.outputs) + [(f"g_{names[i]}", g) for i, g in grads.items()]))


def _inputs(graph: Graph, rng, mask: str | None) -> dict[str, np.ndarray]:
    inputs = graph_inputs(graph, {}, rng)
    if mask == "keys":   # batch 0 sees its first 30 keys, batch 1 its first 5
        bias = inputs["bias"]
        bias[:] = 0.0
        bias[0, ..., 30:] = -np.inf
        bias[1, ..., 5:] = -np.inf
    elif mask == "rows":   # a float mask, and row 2 with no key at all
        inputs["bias"][0, 0, 2, :] = -np.inf
    return inputs


def _run(graph: Graph, inputs):
    import torch

    from dln.kernels.module import generate_module
    from dln.runtime.interpreter import evaluate as numpy_run
    from dln.runtime.triton_backend import load_module

    expected = numpy_run(graph, inputs, {})
    generated = generate_module(graph)
    module = load_module(generated.source, {"test": graph.name})
    names = [k.name for kernel in generated.kernels for k in (kernel.inner or [kernel])]
    configs = {name: TILES for name in names if module.KINDS[name].startswith("attention")}
    program = module.Program(DEVICE, interpret=DEVICE == "cpu", configs=configs)
    got = program({k: torch.from_numpy(np.ascontiguousarray(v)).to(DEVICE) for k, v in inputs.items()}, {})
    return expected, {k: v.cpu().numpy() for k, v in got.items()}, generated


CASES = [   # tq, tk, E, Ev, causal, mask
    (37, 37, 24, 24, True, None),
    (37, 37, 24, 20, False, "keys"),
    (1, 1, 8, 8, True, None),
    (21, 45, 24, 24, True, "keys"),     # cross: more keys than queries
    (45, 21, 16, 24, True, None),       # more queries than keys: the last rows see every key
    (37, 19, 24, 24, False, "rows"),
    (21, 45, 24, 24, True, "full"),
]


@pytest.mark.parametrize("tq,tk,E,Ev,causal,mask", CASES)
def test_forward_and_backward_match_the_decomposition(rng, close, tq, tk, E, Ev, causal, mask):
    graph = attention_graph(tq, tk, E, Ev, causal, mask, train=True)
    expected, got, generated = _run(graph, _inputs(graph, rng, mask))
    kinds = sorted(k.kind for k in generated.kernels if k.kind.startswith("attention"))
    assert kinds == ["attention", "attention_vjp"]
    for name in ("out", "g_q", "g_k", "g_v"):
        assert np.isfinite(got[name]).all(), name
        close(got[name], expected[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tq,tk,E,Ev,causal,mask", [CASES[1], CASES[5]])
def test_lse_and_a_row_without_keys(rng, close, tq, tk, E, Ev, causal, mask):
    graph = attention_graph(tq, tk, E, Ev, causal, mask, train=False)
    expected, got, _ = _run(graph, _inputs(graph, rng, mask))
    close(got["out"], expected["out"], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.isneginf(got["lse"]), np.isneginf(expected["lse"]))
    finite = np.isfinite(expected["lse"])
    close(got["lse"][finite], expected["lse"][finite], rtol=1e-4, atol=1e-5)
    if mask == "rows":
        assert np.isneginf(got["lse"][:, :, 2]).all() and (got["out"][:, :, 2] == 0).all()




@pytest.fixture(scope="module")
def gpt_step():
    model = dln.compile(str(GPT_BLOCK), backend="numpy")
    return pipeline.train_step(model.train_spec, default_objective(model))


def test_the_plan_keeps_attention_whole_and_stores_no_scores(gpt_step):
    from dln.compiler.fusion.planner import plan_graph
    from dln.kernels.kinds import kept_in

    graph = pipeline.lower(gpt_step.graph, kept_in(gpt_step.graph))
    plan = plan_graph(graph, gpt_step.donate)
    composites = [graph.node(g.members[0]).attrs["composite"] for g in plan.groups if g.kind == "composite"]
    assert sorted(c for c in composites if c.startswith("sdpa")) == ["sdpa", "sdpa_vjp"]   # beside layer norms
    env = {"B": 3, "T": 13}
    for node_id in plan.stored():   # nothing T x T: no scores, no probabilities
        shape = [evaluate(d, env) if not isinstance(d, int) else d for d in graph.node(node_id).shape]
        assert shape[-2:] != [13, 13], graph.node(node_id)
    # q, k and v are read through their views of the projection, not copied out of it
    sdpa = next(g for g in plan.groups if g.kind == "composite"
                and graph.node(g.members[0]).attrs["composite"] == "sdpa")
    assert {graph.node(i).op for i in graph.node(sdpa.members[0]).inputs} == {Op.PERMUTE}
    assert all(i not in plan.realized for i in graph.node(sdpa.members[0]).inputs)


def test_training_step_matches_numpy(gpt_step, rng, close):
    env = {"B": 3, "T": 13}
    inputs = graph_inputs(gpt_step.graph, env, rng)
    for name in ("tokens", "targets"):
        inputs[name] = rng.integers(0, 11, inputs[name].shape).astype(np.int64)
    expected, got, _ = run_both(gpt_step.graph, inputs, env)
    for name in expected:
        close(got[name], expected[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(DType.F16, 2e-3), (DType.BF16, 2e-2)])
def test_half_operands_accumulate_in_fp32(dtype, tol):
    """f16/bf16 q, k, v go to `tl.dot` as they are, with fp32 running sums: torch's attention in fp32 on
    the same (rounded) operands, within the type's precision."""
    import torch

    from dln.kernels.module import generate_module
    from dln.runtime.triton_backend import load_module

    b = GraphBuilder("half")
    shapes = {"q": (2, 19, 24), "k": (2, 23, 24), "v": (2, 23, 20)}
    q, k, v = (b.input(name, TensorType(dtype, shape)) for name, shape in shapes.items())
    out, _ = emit(b, "sdpa", [q, k, v], causal=True, scale=0.3, masked=False, bias_grad=False, dropout=0.0)
    generated = generate_module(b.finish([("out", out)]))
    assert [k.kind for k in generated.kernels] == ["attention"]
    module = load_module(generated.source, {"test": "half"})
    torch_type = {DType.F16: torch.float16, DType.BF16: torch.bfloat16}[dtype]
    gen = torch.Generator().manual_seed(0)
    xs = {name: torch.randn(shape, generator=gen).to(torch_type) for name, shape in shapes.items()}
    program = module.Program(DEVICE, interpret=DEVICE == "cpu", configs={generated.kernels[0].name: TILES})
    got = program({name: x.to(DEVICE) for name, x in xs.items()}, {})["out"].cpu()
    assert got.dtype == torch_type
    want = torch.nn.functional.scaled_dot_product_attention(*(xs[n].float() for n in "qkv"), is_causal=True,
                                                            scale=0.3)
    np.testing.assert_allclose(got.float().numpy(), want.numpy(), rtol=tol, atol=tol)


def test_every_kept_composite_has_a_template():
    from dln.compiler.composites import COMPOSITES
    from dln.kernels.kinds import COMPOSITE_KERNELS, COMPOSITE_TEMPLATES

    assert set(COMPOSITE_KERNELS) == set(COMPOSITE_TEMPLATES) <= set(COMPOSITES)
