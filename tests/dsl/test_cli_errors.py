"""Exit statuses of the `dln` command (INTERFACE.md): 2 for wrong usage, 1 for a
mistake in the user's program or files, never a traceback."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from dlncheck import diagnostics, run_cli

GOOD = """model m(d: int = 3) {
    input x: f32[B, 4]
    output y = x -> linear(d)
}
"""

# Checks, but the Triton backend has no kernel for it (E0303); the NumPy backend runs it.
INTEGER_PRODUCT = """model m() {
    input a: i64[B, 3]
    input w: i64[3, 5]
    output y = a @ w
}
"""

USAGE = {
    "no command": [],
    "check without a file": ["check"],
    "unknown command": ["bogus"],
    "unknown option": ["check", "{good}", "--bogus"],
    "--set without =": ["check", "{good}", "--set", "d"],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    good, product = d / "good.dln", d / "integer_product.dln"
    good.write_text(GOOD)
    product.write_text(INTEGER_PRODUCT)
    runs = {name: [a.replace("{good}", str(good)) for a in args] for name, args in USAGE.items()}
    runs["missing file"] = ["check", "no/such/file.dln"]
    runs["set wrong type"] = ["check", str(good), "--set", "d=abc"]
    runs["set unknown"] = ["check", str(good), "--set", "dd=4"]
    runs["good"] = ["check", str(good)]
    runs["integer product checks"] = ["check", str(product)]
    runs["integer product on triton"] = ["compile", str(product), "-o", str(d / "build"), "--backend", "triton"]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(zip(runs, pool.map(lambda a: run_cli(*a), runs.values())))


@pytest.mark.parametrize("case", list(USAGE))
def test_usage_errors_exit_2(results, case):
    r = results[case]
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr
    assert "usage:" in r.stderr


def test_missing_file_is_e0702(results):
    r = results["missing file"]
    assert r.returncode == 1, r
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert [d.code for d in diagnostics(r.stderr)] == ["E0702"], r.stderr
    assert "no/such/file.dln" in r.stderr


def test_set_of_the_wrong_type_is_e0401(results):
    r = results["set wrong type"]
    assert r.returncode == 1, r
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert [d.code for d in diagnostics(r.stderr)] == ["E0401"], r.stderr
    assert 'expected an int, got "abc"' in r.stderr, r.stderr  # the language's words, not int()'s


def test_set_of_an_unknown_hyperparameter_is_e0402(results):
    r = results["set unknown"]
    assert r.returncode == 1, r
    assert [d.code for d in diagnostics(r.stderr)] == ["E0402"], r.stderr
    assert "did you mean 'd'" in r.stderr


def test_good_file_checks(results):
    r = results["good"]
    assert r.returncode == 0, r
    assert r.stdout.startswith("ok"), r
    assert r.stderr == ""


def test_what_the_triton_backend_lacks_is_e0303_at_the_call(results):
    """E0303 comes from a backend, never from `dln check` (every built-in exists): an integer matrix product
    checks, and `dln compile --backend triton` (which needs no GPU) points at it."""
    assert results["integer product checks"].returncode == 0, results["integer product checks"]
    r = results["integer product on triton"]
    assert r.returncode == 1, r
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    shown = diagnostics(r.stderr)
    assert [d.code for d in shown] == ["E0303"], r.stderr
    assert shown[0].where.endswith("integer_product.dln:4:16"), r.stderr
    assert "integer matrix products" in shown[0].message and "Triton backend" in shown[0].message
