"""`sync_batchnorm = true` on the Triton backend: batch norm's statistics summed across ranks by the host
between kernels (dln.kernels.collective), so that N ranks with per-rank batch b follow one process at N·b.

On the CPU the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1, which the
worker processes inherit) and the ranks exchange torch CPU tensors over gloo; on GPUs the same program hands
nccl its device tensors.

Tolerances (float32; measured on 3 ranks of 16, iris with batch norm, 2 epochs: every step's loss within
8.1e-8 relative of one process at 48 on the NumPy backend, the per-epoch history within 1.3e-7, the
parameters and running statistics within 6.0e-8 absolute; of one process at 48 on the Triton backend within
7.5e-8, 1.2e-7 and 1.2e-7): the asserts allow tests/runtime/test_distributed.py's SYNC_RTOL and SYNC_ATOL
(1e-5 and 2e-5), as the NumPy backend's sync_batchnorm tests do.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dln.runtime import distributed
from tests.conftest import EXAMPLES
from tests.runtime.test_distributed import SYNC_ATOL, SYNC_BN, SYNC_RTOL, assert_same_trajectory, run_ranks, single

pytest.importorskip("triton")

IRIS_TRAIN = 120   # iris's training rows after validate = 0.2
# examples/iris.dln with batch norm before the nonlinearity, its statistics across ranks.  The linear layer
# before it has no bias, as is usual there: the bias's gradient is zero up to rounding, which Adam would
# turn into steps of the learning rate in directions rounding picks.
IRIS_SYNC = (EXAMPLES / "iris.dln").read_text() \
    .replace("linear(hidden) -> tanh", "linear(hidden, bias = false) -> batchnorm -> tanh") \
    .replace("    minimize loss", "    sync_batchnorm = true\n    minimize loss")


def test_three_ranks_follow_one_process_with_their_statistics_summed_between_kernels(tmp_path: Path,
                                                                                     monkeypatch):
    """3 ranks of 16 on the Triton backend follow one process at 48 (the NumPy backend's, and the Triton
    backend's): losses, parameters, running statistics and the per-epoch history.  The last global batch
    of 24 rows gives the ranks 16, 8 and 0 rows: the rank without rows adds zeros to every all_reduce
    (forward and backward) in the program's order, and the others weight their cotangents by their rows."""
    path = tmp_path / "iris_sync.dln"
    path.write_text(IRIS_SYNC)
    assert "bias = false) -> batchnorm ->" in IRIS_SYNC and "sync_batchnorm = true" in IRIS_SYNC
    b, n = 16, 3
    assert IRIS_TRAIN % (n * b) == b + b // 2, "the last global batch should give 16, 8 and 0 rows"
    settings = {"backend": "triton", "epochs": 2, "batch": b}
    ranks = run_ranks(tmp_path, path, n, settings)
    one = single(path, {**settings, "backend": "numpy", "batch": n * b}, monkeypatch)
    assert any("running_var" in k for k in one) and len(one["losses"]) == 2 * 3
    assert_same_trajectory(ranks, one, loss_rtol=SYNC_RTOL, weight_atol=SYNC_ATOL, from_start=False)
    assert np.ptp(one["losses"]) > 1e-2   # it trained: a trajectory that stood still would agree trivially
    on_triton = single(path, {**settings, "batch": n * b}, monkeypatch)
    assert_same_trajectory(ranks, on_triton, loss_rtol=SYNC_RTOL, weight_atol=SYNC_ATOL, from_start=False)


class Doubling:
    """torch.distributed's all_reduce between two ranks holding the same rows: every sum doubles."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, group, buffers, what) -> None:
        for b in buffers:
            self.calls.append(type(b).__module__.split(".")[0])
            b *= 2


def _split_step(tmp_path: Path, sync: bool):
    import dln
    from dln.compiler import pipeline
    from dln.runtime.train import default_objective

    path = tmp_path / "mlp_sync.dln"
    path.write_text(SYNC_BN)
    model = dln.compile(str(path), backend="numpy")
    model.sync_batchnorm = sync
    return model, pipeline.split_step(model.train_spec, default_objective(model))


def test_the_program_sums_each_collective_through_the_communicator_in_graph_order(tmp_path: Path, monkeypatch):
    """The gradient graph of sync_batchnorm on the Triton backend: each all_reduce is a step of the host
    between kernels, which hands the communicator the graph's node and a tensor, in the graph's order, on
    the first (launched) and the second (recorded, replayed) run alike, and not on a third run without one.
    With two ranks of the same rows (the global batch is then the rows twice over), and without a
    communicator (one process), the loss and gradients are the per-rank graph's on the NumPy backend.  No
    CUDA graph captures such a step."""
    import torch

    from dln.compiler.passes.global_rows import ROW
    from dln.runtime.backends import NumpyBackend
    from dln.runtime.numpy_ops import COMMUNICATOR
    from dln.runtime.step_graphs import why_no_graphs
    from dln.runtime.triton_backend import TritonBackend

    rng = np.random.default_rng(0)
    feeds = {"x": rng.random((30, 64), np.float32), "y": rng.integers(0, 10, 30)}

    def prepare(backend, sync: bool):
        model, step = _split_step(tmp_path, sync)
        state = {**model.persistent, "rng.seed": np.array(0, np.int64), "rng.step": np.array(0, np.int64),
                 ROW: np.array(0, np.int64)}
        return step, backend.prepare(step.graph, {k: backend.asarray(np.array(v)) for k, v in state.items()},
                                     step.donate)

    def results(backend, outputs) -> dict[str, np.ndarray]:
        return {k: backend.to_numpy(v).copy() for k, v in outputs.items() if k == "loss" or k.startswith("grad:")}

    numpy = NumpyBackend()
    _, plain = prepare(numpy, False)
    reference = results(numpy, plain.run(feeds, {"B": 30}))
    triton = TritonBackend()
    step, exe = prepare(triton, True)
    ops = distributed.collectives(step.graph)
    assert len(ops) == 4 and exe.module.Program.collectives == 4
    assert [k.kind for k in exe.generated.kernels].count("collective") == 4

    doubling = Doubling()
    monkeypatch.setattr(distributed, "all_reduce", doubling)
    communicator = distributed.Communicator(distributed.Group(0, 2, 0, "gloo", 1.0), ops)
    communicator.weight = 0.5
    handed: list[tuple[int, str]] = []

    def watched(node, tensor) -> None:
        handed.append((node.id, type(tensor).__module__.split(".")[0]))
        communicator(node, tensor)

    for env in ({"B": 30, COMMUNICATOR: watched}, {"B": 30, COMMUNICATOR: watched}, {"B": 30}):
        triton.copy_into(exe.persistent["rng.step"], np.array(0, np.int64))   # the same dropout masks
        got = results(triton, exe.run(feeds, env))
        assert sorted(got) == sorted(reference)
        for k in reference:
            np.testing.assert_allclose(got[k], reference[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # Twice through the graph's all_reduce ops in order: the launched run, then the replayed one.
    assert handed == [(n.id, "torch") for n in ops] * 2 and doubling.calls == ["torch"] * 8
    assert exe.program._tapes, "the runs with a communicator were recorded and replayed"
    assert communicator.device == torch.device("cpu")

    cuda = SimpleNamespace(type="cuda")
    reason = why_no_graphs(cuda, exe.module.Program("cpu", interpret=False), True)
    assert reason is not None and "across ranks" in reason
    _, without = prepare(triton, False)
    assert not hasattr(without.module.Program, "collectives")
    assert why_no_graphs(cuda, without.module.Program("cpu", interpret=False), True) is None


def test_the_planner_keeps_each_all_reduce_alone_and_in_the_graphs_order():
    """Every rank, and a rank without rows replaying them, exchanges in the graph's order: the planner may
    not order two collectives otherwise.  Here the kernel of exp(x) would take the add that reads the second
    sum (they share exp(x)), and so run after the second exchange while the first waits for it."""
    from dln.compiler.emit import GraphBuilder
    from dln.compiler.fusion.planner import plan_graph
    from dln.compiler.ir import DType, Op, TensorType

    b = GraphBuilder("two_sums")
    x, y = b.input("x", TensorType(DType.F32, (5,))), b.input("y", TensorType(DType.F32, (7,)))
    first = b.exp(x)
    one = b.emit(Op.ALL_REDUCE, (first,), {"weighted": False})
    two = b.emit(Op.ALL_REDUCE, (b.exp(y),), {"weighted": False})
    graph = b.finish([("z", b.add(first, b.sum(two, (0,)))), ("one", one)])
    plan = plan_graph(graph)
    position = {m: k for k, group in enumerate(plan.groups) for m in group.members}
    collectives = [n for n in plan.graph.nodes if n.op is Op.ALL_REDUCE]
    assert [group.members for group in plan.groups if group.kind == "collective"] == [[n.id] for n in collectives]
    assert [position[n.id] for n in collectives] == sorted(position[n.id] for n in collectives)
    for n in collectives:   # the operand is stored by a kernel before the exchange
        assert n.inputs[0] in plan.groups[position[n.inputs[0]]].stores and position[n.inputs[0]] < position[n.id]


def test_a_rank_without_rows_replays_zeros_of_the_kind_it_sums(tmp_path: Path, monkeypatch):
    """`Communicator.replay`: a zero for each all_reduce, in the graph's order, of each op's shape and type —
    NumPy arrays before any tensor, then torch tensors on the device of the ones it summed."""
    import torch

    _, step = _split_step(tmp_path, True)
    ops = distributed.collectives(step.graph)
    seen: list[tuple] = []

    def record(group, buffers, what) -> None:
        for b in buffers:
            assert not b.any()
            seen.append((type(b).__module__.split(".")[0], tuple(b.shape)))

    monkeypatch.setattr(distributed, "all_reduce", record)
    communicator = distributed.Communicator(distributed.Group(2, 3, 2, "gloo", 1.0), ops)
    shapes = [tuple(int(d) for d in n.type.shape) for n in ops]
    communicator.replay()
    assert seen == [("numpy", s) for s in shapes]
    communicator(ops[0], torch.zeros(shapes[0]))
    seen.clear()
    communicator.replay()
    assert seen == [("torch", s) for s in shapes]
