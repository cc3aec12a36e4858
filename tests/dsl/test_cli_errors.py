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

USAGE = {
    "no command": [],
    "check without a file": ["check"],
    "unknown command": ["bogus"],
    "unknown option": ["check", "{good}", "--bogus"],
    "--set without =": ["check", "{good}", "--set", "d"],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    good = tmp_path_factory.mktemp("cli") / "good.dln"
    good.write_text(GOOD)
    runs = {name: [a.replace("{good}", str(good)) for a in args] for name, args in USAGE.items()}
    runs["missing file"] = ["check", "no/such/file.dln"]
    runs["set wrong type"] = ["check", str(good), "--set", "d=abc"]
    runs["set unknown"] = ["check", str(good), "--set", "dd=4"]
    runs["good"] = ["check", str(good)]
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
