"""Shared test set-up.

Triton's interpreter must be chosen before triton is imported: the kernel
tests run generated kernels on the CPU through it.  Fused multiply-add is
set explicitly so numerics do not depend on Triton's changing default.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PROGRAMS = Path(__file__).resolve().parent / "programs"


def run_dln(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The `dln` command, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "dln", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def twins():
    """examples/torch_twins.py as a module: the PyTorch twins of the example models."""
    spec = importlib.util.spec_from_file_location("torch_twins", EXAMPLES / "torch_twins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
