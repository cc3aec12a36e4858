"""Every bad program in tests/programs gets the diagnostic its first lines promise.

tests/programs/bad/NNN_name.dln holds one mistake each; the first line says
which error code and where (`# expect: E0203 7:14`), an optional second line
a text the diagnostic contains (`# message: ...`).  Files under
tests/programs/bad/imports/ are helpers imported by the entry files.
tests/programs/multi/*.dln hold several independent mistakes, one
`# expect:` line each, in the order they are reported.

Each file is checked with `dln check FILE` as a user runs it (see dlncheck.py
for how a hundred runs stay fast): exit status 1, no traceback, no internal
error, the code, the `--> file:line:col` of the primary span and a caret line.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dlncheck import (BAD, ROOT, Result, bad_programs, check_many, corpus_results, diagnostics, expectations,
                      has_caret, multi_programs, rel, run_cli)
from dln.dsl.diagnostics import CODES


def _result(path: Path) -> Result:
    return corpus_results()[rel(path)]


def _assert_clean_failure(path: Path, r: Result) -> None:
    shown = f"dln check {rel(path)} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, shown
    assert "internal error" not in r.stderr, shown
    assert r.returncode == 1, shown
    assert r.stdout == "", shown


def _assert_expected(path: Path, r: Result, expected, shown_diag, messages=()) -> None:
    shown = f"dln check {rel(path)}:\n{r.stderr}"
    assert f"error[{expected.code}]" in r.stderr, f"expected error[{expected.code}]\n{shown}"
    assert f"--> {expected.where}\n" in r.stderr, f"expected --> {expected.where}\n{shown}"
    assert shown_diag.code == expected.code and shown_diag.where == expected.where, \
        f"expected {expected.code} at {expected.where}, got {shown_diag.code} at {shown_diag.where}\n{shown}"
    assert has_caret(shown_diag.text), f"no caret line under the source\n{shown}"
    for m in messages:
        assert m in shown_diag.text, f"expected the diagnostic to say {m!r}\n{shown}"


# ---- the corpus itself ------------------------------------------------------------------------------------------

def test_corpus_is_well_formed():
    files = bad_programs()
    assert len(files) >= 40
    numbers = []
    for f in files:
        assert re.fullmatch(r"\d{3}_[a-z0-9_]+\.dln", f.name), f.name
        numbers.append(f.name[:3])
        first = f.read_text().splitlines()[0]
        assert re.fullmatch(r"# expect: E\d{4} (\S+\.dln:)?\d+:\d+", first), f"{f.name}: {first!r}"
        expects, _ = expectations(f)
        assert len(expects) == 1, f"{f.name}: one mistake per file"
        assert expects[0].code in CODES, f"{f.name}: {expects[0].code} is not in the catalogue"
    assert len(set(numbers)) == len(numbers), "corpus numbers must be unique"
    for helper in (BAD / "imports").glob("*.dln"):
        assert "# expect:" not in helper.read_text(), f"{rel(helper)} is a helper: only entry files expect"
    for f in multi_programs():
        expects, _ = expectations(f)
        assert len(expects) >= 1 and all(e.code in CODES for e in expects), f.name


def test_corpus_covers_the_compile_time_codes():
    covered = {expectations(f)[0][0].code for f in bad_programs()}
    # Checked only when data arrives (or by the CLI tests): symbolic sizes bound at run time,
    # data sets, input data, unreadable files, weights, numerical failures, class indices, memory,
    # checkpoints, output paths, whole-example data, Python API arguments, optional packages.
    run_time = {"E0205", "E0603", "E0701", "E0702", "E0703", "E0704", "E0705", "E0706", "E0707", "E0708",
                "E0709", "E0710", "E0714",
                "E0720"}   # data-parallel training: the launcher's environment, a rank that failed
    # Said by the Triton backend for what it has no kernel for (test_cli_errors), never by `dln check`.
    backend = {"E0303"}
    # Said by `dln export` (tests/onnx/test_export.py) and by `dln import` of an ONNX model
    # (tests/onnx/test_import.py), never by `dln check` of a .dln file.
    onnx = {"E0715", "E0716"}
    missing = set(CODES) - run_time - backend - onnx - covered
    assert not missing, f"no bad program for {sorted(missing)}"


# ---- one mistake per file -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", bad_programs(), ids=lambda p: p.stem)
def test_bad_program(path: Path):
    (expected,), messages = expectations(path)
    r = _result(path)
    _assert_clean_failure(path, r)
    shown = diagnostics(r.stderr)
    assert shown, f"no diagnostic printed:\n{r.stderr}"
    _assert_expected(path, r, expected, shown[0], messages)
    assert len(shown) == 1, f"one mistake, {len(shown)} errors reported:\n{r.stderr}"


# ---- several mistakes in one file -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", multi_programs(), ids=lambda p: p.stem)
def test_several_errors_are_all_reported(path: Path):
    expects, messages = expectations(path)
    r = _result(path)
    _assert_clean_failure(path, r)
    shown = diagnostics(r.stderr)
    assert [(d.code, d.where) for d in shown] == [(e.code, e.where) for e in expects], r.stderr
    for e, d in zip(expects, shown):
        _assert_expected(path, r, e, d)
    if len(expects) > 1:
        assert f"{len(expects)} errors" in r.stderr, r.stderr


def test_two_broken_models_give_two_syntax_errors():
    r = _result(ROOT / "tests/programs/multi/two_broken_models.dln")
    assert [d.code for d in diagnostics(r.stderr)] == ["E0101", "E0101"], r.stderr


def test_two_bad_statements_give_two_diagnostics():
    r = _result(ROOT / "tests/programs/multi/two_bad_statements.dln")
    assert len(diagnostics(r.stderr)) == 2, r.stderr


# ---- the way the corpus is run -----------------------------------------------------------------------------------

def test_batched_checks_match_the_real_command():
    """check_many forks instead of starting `python -m dln`; on a sample both must print the same."""
    files = bad_programs()
    sample = files[:: max(1, len(files) // 4)] + [BAD / "imports" / "broken.dln"]
    paths = [rel(f) for f in sample]
    batched = check_many(paths)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        real = dict(zip(paths, pool.map(lambda p: run_cli("check", p), paths)))
    for p in paths:
        assert batched[p] == real[p], f"{p}:\nbatched {batched[p]}\nreal {real[p]}"


# ---- wording and places that the per-file expectations do not pin down ----------------------------------------

def test_syntax_messages_read_well():
    """`unexpected an integer` is how the parser's word for a token leaks into a sentence."""
    for path in bad_programs() + multi_programs():
        for d in diagnostics(_result(path).stderr):
            assert not re.match(r"unexpected (a|an) ", d.message), f"{rel(path)}: {d.message!r}"


@pytest.mark.parametrize("spelling", ["relative", "dot-slash", "absolute"])
def test_import_cycle_found_whatever_the_path_spelling(spelling):
    """The entry file is one file however the command line spells its path."""
    entry = next(BAD.glob("*_import_cycle_back_to_entry.dln"))
    (expected,), _ = expectations(entry)
    arg = {"relative": rel(entry), "dot-slash": "./" + rel(entry), "absolute": str(entry)}[spelling]
    r = check_many([arg])[arg]
    _assert_clean_failure(entry, r)
    shown = diagnostics(r.stderr)
    assert len(shown) == 1, r.stderr
    assert shown[0].code == "E0502", r.stderr
    assert shown[0].where is not None and shown[0].where.endswith(f"imports/back.dln:{expected.line}:{expected.col}"), \
        f"the cycle is closed by the import in imports/back.dln:\n{r.stderr}"


def test_check_of_a_huge_layer_does_not_crash(tmp_path):
    """A size typed with too many zeros: `dln check` reports it or counts it, never an internal error."""
    f = tmp_path / "huge.dln"
    f.write_text("model m() {\n    input x: f32[B, 4]\n    output y = x -> linear(100000000000)\n}\n")
    r = check_many([str(f)], cwd=tmp_path)[str(f)]
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.returncode in (0, 1), r
    if r.returncode == 1:
        assert diagnostics(r.stderr) and all(d.where for d in diagnostics(r.stderr)), r.stderr
