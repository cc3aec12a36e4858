"""The Triton backend as users meet it: `dln train --backend triton`, `dln compile`, the kernel cache."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_dln(*args, cwd=ROOT, env=None):
    import os

    full_env = dict(os.environ, TRITON_INTERPRET="1", TRITON_DEFAULT_FP_FUSION="0", **(env or {}))
    return subprocess.run([sys.executable, "-m", "dln", *args], capture_output=True, text=True, cwd=cwd,
                          env=full_env, timeout=600)


def _epochs(text: str) -> list[tuple[float, ...]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("epoch"):
            rows.append(tuple(float(v) for v in re.findall(r"(?:loss|accuracy) (-?[\d.]+)", line)))
    return rows


@pytest.mark.parametrize("example,epochs", [("mlp_digits", 2), ("gan_digits", 1), ("vae_digits", 1)])
def test_training_on_the_interpreter_follows_the_numpy_loss_curve(example, epochs):
    """Dropout, two objectives over shared instances, sampled codes: the same curve on both backends."""
    path = ROOT / "examples" / f"{example}.dln"
    numpy_run = run_dln("train", str(path), "--epochs", str(epochs), "--backend", "numpy", "--no-progress",
                        "--logdir", "none")
    triton_run = run_dln("train", str(path), "--epochs", str(epochs), "--backend", "triton", "--no-progress",
                         "--logdir", "none")
    assert numpy_run.returncode == 0, numpy_run.stderr
    assert triton_run.returncode == 0, triton_run.stderr
    a, b = _epochs(numpy_run.stdout), _epochs(triton_run.stdout)
    assert len(a) == len(b) == epochs
    np.testing.assert_allclose(np.array(b), np.array(a), rtol=2e-3, atol=2e-4)


def test_compile_writes_readable_kernels_and_plan(tmp_path):
    out = tmp_path / "build"
    result = run_dln("compile", "examples/mlp_digits.dln", "-o", str(out), "--backend", "triton")
    assert result.returncode == 0, result.stderr
    for name in ("forward.ir", "backward.ir", "plan.txt", "kernels.py", "manifest.json"):
        assert (out / name).is_file(), name
    source = (out / "kernels.py").read_text()
    # Standalone: beside torch and triton, only Python's own modules (json for the tuning cache) — no dln,
    # no NumPy.
    imported = {name.split(".")[0] for a in ast.walk(ast.parse(source))
                for name in ([n.name for n in a.names] if isinstance(a, ast.Import) else
                             [a.module] if isinstance(a, ast.ImportFrom) else [])}
    assert {"torch", "triton"} <= imported
    assert imported - {"torch", "triton"} <= sys.stdlib_module_names, imported
    # Kernels are named after the source and say what they fuse and where it came from.
    assert re.search(r"def k\d+_h_matmul_bias_relu", source)
    assert "mlp_digits.dln:6" in source
    plan = (out / "plan.txt").read_text()
    assert "peak activation memory" in plan and "FLOPs/byte" in plan
    manifest = json.loads((out / "manifest.json").read_text())
    assert "kernels.py" in manifest["files"]


def test_kernel_cache_is_json_and_source_only(tmp_path):
    cache = tmp_path / "cache"
    result = run_dln("run", "examples/mlp_digits.dln", "--backend", "triton", "--input", f"x={_x(tmp_path)}",
                     env={"DLN_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    files = sorted(p.suffix for p in (cache / "kernels").iterdir())
    assert files and set(files) <= {".py", ".json"}


def _x(tmp_path) -> str:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).random((5, 64)).astype(np.float32))
    return str(path)


def test_concurrent_processes_share_the_cache(tmp_path):
    cache = tmp_path / "cache"
    x = _x(tmp_path)
    import os

    env = dict(os.environ, TRITON_INTERPRET="1", DLN_CACHE_DIR=str(cache))
    procs = [subprocess.Popen([sys.executable, "-m", "dln", "run", "examples/mlp_digits.dln", "--backend", "triton",
                               "--input", f"x={x}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outputs]
    assert len({o[0] for o in outputs}) == 1


@pytest.mark.parametrize("hostile", ['a"""; import os; os.system("echo pwned") #', "line\rbreak", "\u2028x"])
def test_user_text_cannot_reach_generated_code(tmp_path, hostile):
    # File names and source text end up in comments; they must not break out of them.
    from dln.compiler import pipeline
    from dln.kernels.module import generate_module
    from dln.runtime.api import Model

    source = (ROOT / "examples" / "mlp_digits.dln").read_text()
    program = pipeline.load(source, path=f"{hostile}.dln")
    model = Model(program)
    generated = generate_module(pipeline.forward_graph(model.spec), title=hostile)
    tree = ast.parse(generated.source)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "system"]
    assert not calls
    assert "pwned" not in "".join(line for line in generated.source.splitlines() if not line.strip().startswith("#")
                                  and '"""' not in line)

