"""The parse tables are cached as JSON (never pickle), and a cached parser behaves like a fresh one."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BAD = "model m() {\n    input x: f32[B, 4]\n    model = relu(x)\n    output model\n}\n"


def _check(path: Path, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    return subprocess.run([sys.executable, "-m", "dln", "check", str(path)], capture_output=True, text=True, env=env,
                          cwd=ROOT)


def test_tables_are_json_and_give_the_same_diagnostics(tmp_path):
    program = tmp_path / "bad.dln"
    program.write_text(BAD)
    cache = tmp_path / "cache"
    first = _check(program, cache)
    files = list((cache / "dln").glob("grammar-*.json"))
    assert len(files) == 1
    json.loads(files[0].read_text())  # plain JSON
    second = _check(program, cache)
    assert first.returncode == second.returncode == 1
    assert first.stderr == second.stderr and "error[E0101]" in second.stderr


def test_a_damaged_cache_is_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    _check(ROOT / "examples" / "mlp_digits.dln", cache)
    for f in (cache / "dln").glob("grammar-*.json"):
        f.write_text("{ not json")
    result = _check(ROOT / "examples" / "mlp_digits.dln", cache)
    assert result.returncode == 0 and result.stdout.startswith("ok")
