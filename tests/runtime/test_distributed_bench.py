"""benchmarks/distributed.py's pieces: the ring's bytes against a ring all_reduce simulated rank by rank, the
gradient bytes against PyTorch's parameter count, the modeled step's parts against the whole model, and the
scaling measurement's configurations running the same step (1 process at 2b and 2 ranks at b start from the
same loss)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

pytest.importorskip("torch.distributed")

_spec = importlib.util.spec_from_file_location("bench_distributed", ROOT / "benchmarks" / "distributed.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_distributed"] = bench
_spec.loader.exec_module(bench)


def simulated_ring(buffers: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """A ring all_reduce of equal-length float32 buffers, step by step: reduce-scatter then all-gather, each
    rank sending one chunk to the next per step.  The summed buffers, and the bytes each rank sent."""
    n = len(buffers)
    chunks = [np.array_split(b.copy(), n) for b in buffers]
    sent = [0] * n
    for phase in ("reduce-scatter", "all-gather"):
        for s in range(n - 1):
            # Rank r sends chunk (r - s) in the reduce-scatter, (r + 1 - s) in the all-gather.
            moves = [(r, (r - s + (phase == "all-gather")) % n) for r in range(n)]
            payload = [chunks[r][c].copy() for r, c in moves]
            for (r, c), data in zip(moves, payload):
                dst = (r + 1) % n
                sent[r] += data.nbytes
                if phase == "reduce-scatter":
                    chunks[dst][c] += data
                else:
                    chunks[dst][c] = data
    return [np.concatenate(c) for c in chunks], sent


@pytest.mark.parametrize("ranks", [2, 3, 5])
def test_ring_bytes_are_what_a_ring_sends(ranks):
    rng = np.random.default_rng(ranks)
    buffers = [rng.standard_normal(15 * 7, dtype=np.float32) for _ in range(ranks)]
    summed, sent = simulated_ring(buffers)
    for out in summed:
        np.testing.assert_allclose(out, np.sum(buffers, axis=0), rtol=1e-5, atol=1e-6)
    assert sent == [bench.ring_bytes(buffers[0].nbytes, ranks)] * ranks
    bandwidth, latency = bench.ring_time(buffers[0].nbytes, ranks, 1e9, 1e-6)
    assert bandwidth == pytest.approx(sent[0] / 1e9) and latency == pytest.approx(2 * (ranks - 1) * 1e-6)


def test_gradient_bytes_are_four_a_parameter():
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                              torch.nn.ReLU(), torch.nn.Linear(128, 10))
    v = bench.volume("mlp")
    count = sum(p.numel() for p in net.parameters())
    assert v["parameters"] == count
    assert v["gradient_bytes"] == sum(v["buckets"]) == 4 * count
    assert len(v["buckets"]) == 1     # under DDP's first bucket, 1 MB


def test_modeled_step_parts_add_up():
    from dln.compiler.fusion.target import MACHINES
    from dln.kernels.gpu_model import model_module
    from dln.kernels.module import generate_module

    v = bench.volume("lenet")
    t = bench.gpu_step(v, {"B": 96})
    total, kernels = 0.0, 0
    for graph, donate in ((v["step"].graph, v["step"].donate), (v["step"].update, v["step"].update_donate)):
        env = {s: 96 for s in graph.symbols()}
        modeled = model_module(generate_module(graph, donate or {}, machine=MACHINES["h100"], sizes=env),
                               MACHINES["h100"], env)
        total += sum(k.time.time_s for k in modeled)
        kernels += len(modeled)
    assert t["forward"] > 0 and t["backward"] > t["forward"] / 4 and t["update"] > 0
    assert t["forward"] + t["backward"] + t["update"] == pytest.approx(total)
    assert t["kernels"] == kernels


def test_configurations_run_the_same_step():
    s = bench.scaling("mlp", rounds=1, steps=1)
    configs = list(s["configs"].values())
    one_b, two_b, ranks, small = configs
    assert [c["processes"] for c in configs] == [1, 1, 2, 2]
    # The same global batch: one process at 2b and the two ranks report the same first loss, in one bucket
    # or in several.
    for r in (ranks, small):
        assert r["first_losses"][0] == r["first_losses"][1]
        assert r["first_losses"][0] == pytest.approx(two_b["first_losses"][0], rel=1e-5)
        assert all(x["median"] > 0 for x in r["all_reduce_ms"])
    assert one_b["first_losses"][0] != pytest.approx(two_b["first_losses"][0], rel=1e-5)
    assert ranks["buckets"] == 1 and small["buckets"] == 4
