"""benchmarks/gpu_step.py's parts that run without a GPU: the table it writes, the references it times,
and its refusal to measure (or write) anything on a machine without one.  The figures below are made up
to check the layout; they are no result and nothing here writes benchmarks/RESULTS-gpu.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
gpu_step = pytest.importorskip("gpu_step")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")


def test_the_table_states_method_device_and_ratios():
    rows = [{"model": "MLP, batch 128", "side": side, "median_ms": ms, "min_ms": ms * 0.9, "max_ms": ms * 1.2,
             "peak_bytes": mib * 2 ** 20}
            for side, ms, mib in zip(gpu_step.SIDES, (0.05, 0.125, 0.25, 0.2), (3.0, 3.0, 4.5, 4.25))]
    text = gpu_step.results_markdown(rows, {"date": "2026-11-24", "device": "NVIDIA H100 80GB HBM3",
                                            "versions": "torch 2.13.0 (CUDA 12.8), Triton 3.9.0"}, 15, 20)
    assert "**NVIDIA H100 80GB HBM3**" in text and "Triton 3.9.0" in text
    assert "Method: every side is built and warmed up" in text and "15 rounds of 20 steps" in text
    assert "| dln, CUDA graphs | 0.050 | 0.045 - 0.060 | 0.20x | 3.0 |" in text
    assert "| PyTorch eager | 0.250 | 0.225 - 0.300 | 1.00x | 4.5 |" in text
    assert "| torch.compile | 0.200 | 0.180 - 0.240 | 0.80x | 4.2 |" in text
    assert text.count("## MLP, batch 128") == 1


def test_every_reference_feeds_its_model_and_its_twin():
    """Input names as the .dln files declare them; a twin's logits for every target."""
    import dln

    for ref in gpu_step.references():
        model = dln.compile(str(BENCHMARKS / ref.dln), backend="numpy", seed=0)
        if ref.env["B"] <= 128:
            assert "logits" in model(**ref.feeds), ref.name
        x, y = ref.torch_data()
        with torch.no_grad():
            assert ref.torch_net()(x).shape[0] == y.shape[0], ref.name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_without_a_gpu_nothing_is_measured_or_written(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_step, "RESULTS", tmp_path / "RESULTS-gpu.md")
    with pytest.raises(SystemExit, match="needs an NVIDIA GPU"):
        gpu_step.main(["--record"])
    assert not (tmp_path / "RESULTS-gpu.md").exists()
