"""Running generated kernels under Triton's interpreter, against the NumPy interpreter."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dln.compiler.ir import Graph, Op
from dln.runtime.interpreter import evaluate

# The kernels run under Triton's interpreter on the CPU; benchmarks/gpu.sh sets DLN_TEST_DEVICE=cuda
# to run the same tests compiled for a real GPU.
DEVICE = os.environ.get("DLN_TEST_DEVICE", "cpu")


def run_both(graph: Graph, inputs: dict[str, np.ndarray], env: dict[str, int], gpu_configs: bool = True,
             donate: dict[str, str] | None = None):
    """(NumPy results, Triton results) for a graph.  With `gpu_configs` the kernels run with the
    GPU's block sizes, so tails, masks and multi-block loops are exercised."""
    import torch

    from dln.kernels.module import generate_module
    from dln.runtime.triton_backend import load_module

    expected = evaluate(graph, inputs, env)
    generated = generate_module(graph, donate)
    module = load_module(generated.source, {"test": graph.name})
    device = DEVICE
    program = module.Program(device, interpret=device == "cpu",
                             configs=dict(module.CONFIGS) if gpu_configs else None)
    bufs = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in inputs.items()}
    got = program(bufs, env)
    return expected, {k: v.cpu().numpy() for k, v in got.items()}, generated


def graph_inputs(graph: Graph, env: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for n in graph.nodes:
        if n.op is Op.INPUT:
            shape = tuple(int(d if isinstance(d, int) else d.evaluate(env)) for d in n.shape)
            if n.dtype.is_float:
                out[n.attrs["name"]] = rng.standard_normal(shape).astype(np.float32)
            else:
                out[n.attrs["name"]] = rng.integers(0, 5, shape).astype(np.int64)
    return out


@pytest.fixture
def close():
    def check(a, b, rtol=2e-5, atol=2e-6):
        np.testing.assert_allclose(np.asarray(b, dtype=np.float64), np.asarray(a, dtype=np.float64),
                                   rtol=rtol, atol=atol)
    return check
