"""Fuzzing: generated and mutated programs never make `dln check` fail badly.

Each case (tests/fuzzing/: programs drawn from dsl/grammar.lark, mutants of
the examples, the language draft's programs and the bad programs) is checked as
`dln --debug check` does, its kernels planned and written, under a time limit.  A case may
check or give located diagnostics; it may not give a diagnostic without a
place, an internal error or a hang.

Two runs: a fixed seed, and a seed that changes every day (DLN_FUZZ_SEED
overrides it).  A failure prints the seed and the case, shrunk where that is
quick; `benchmarks/fuzz.py --seed S --show K` prints case K again.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzzing.cases import make_case  # noqa: E402
from fuzzing.minimize import minimize  # noqa: E402
from fuzzing.runner import Result, run_cases  # noqa: E402

FIXED_SEED = 20261123
CASES = 1500           # per seed; about 30 s on two busy cores
JOBS = min(2, os.cpu_count() or 1)
LIMIT = 15.0           # seconds per case: a 5000-deep pipe compiles in about 8 s (a graph of 15,000 nodes)
SHOWN = 3              # failures shown (shrunk) in a report


def _daily_seed() -> int:
    return int(os.environ.get("DLN_FUZZ_SEED") or datetime.date.today().strftime("%Y%m%d"))


def _report(seed: int, failures: list[Result]) -> str:
    lines = [f"{len(failures)} of {CASES} fuzz cases of seed {seed} failed (reproduce one with "
             f"`benchmarks/fuzz.py --seed {seed} --show K`; add its program to tests/programs/bad/ once fixed)"]
    seen: set[str] = set()
    for r in failures:
        if r.outcome.signature in seen or len(seen) >= SHOWN:
            continue
        seen.add(r.outcome.signature)
        lines += ["", f"--- case {r.case.index} ({r.case.how[:200]}): {r.outcome.kind}: {r.outcome.signature}",
                  "program (shrunk):", minimize(r, LIMIT), "outcome:", r.outcome.detail[-2000:]]
    return "\n".join(lines)


@pytest.mark.parametrize("seed", [FIXED_SEED, _daily_seed()], ids=["fixed", "daily"])
def test_fuzz_cases_never_fail_badly(seed: int):
    results = list(run_cases((make_case(seed, k) for k in range(CASES)), JOBS, LIMIT))
    assert len(results) == CASES
    failures = sorted((r for r in results if r.failed), key=lambda r: r.case.index)
    assert not failures, _report(seed, failures)
    kinds = {r.outcome.kind for r in results}
    assert {"ok", "diagnostic"} <= kinds, f"the generators no longer reach both outcomes: {kinds}"
    assert {r.case.generator for r in results} == {"grammar", "mutate"}


def test_case_k_of_seed_s_is_always_the_same_text():
    for k in (0, 1, 2, 3, 997):
        assert make_case(7, k) == make_case(7, k)
    assert len({make_case(7, k).text for k in range(30)}) > 25


def test_grammar_programs_are_mostly_well_formed():
    """Drawn from the grammar, a program parses unless a drawn literal is out of range or a
    keyword argument precedes a positional one (rules the grammar leaves to the parser's actions)."""
    from dln.dsl import DlnError, parse
    from fuzzing.grammar import generate

    parsed = 0
    for k in range(60):
        try:
            parse(generate(FIXED_SEED, k))
            parsed += 1
        except DlnError as e:
            assert e.code in ("E0101", "E0104"), e
    assert parsed >= 40, f"only {parsed} of 60 grammar programs parse"


def _failing_with(monkeypatch, tmp_path, error: BaseException | None = None, sleep: float = 0.0):
    """The oracle on a good program, with the CLI's check made to fail as given."""
    import time

    import dln.runtime.cli as cli

    def check_program(*args, **kwargs):
        time.sleep(sleep)
        raise error

    monkeypatch.setattr(cli, "check_program", check_program)
    path = tmp_path / "m.dln"
    path.write_text("model m() {\n    input x: f32[B]\n    output x\n}\n")
    return str(path)


def test_the_oracle_classifies_each_failure(monkeypatch, tmp_path):
    import signal

    from dln.dsl.diagnostics import Diagnostic, DlnError
    from fuzzing import oracle

    path = _failing_with(monkeypatch, tmp_path, KeyError("x"))
    assert oracle.check_file(path).kind == "internal"
    assert oracle.check_file(path).signature.startswith("KeyError at ")
    _failing_with(monkeypatch, tmp_path, DlnError(Diagnostic("E0202", "bad axis")))
    assert oracle.check_file(path).kind == "unlocated"
    _failing_with(monkeypatch, tmp_path, DlnError(Diagnostic("E0702", "cannot read it")))
    assert oracle.check_file(path).kind == "diagnostic"   # a file-level error has no place
    _failing_with(monkeypatch, tmp_path, DlnError([]))
    assert oracle.check_file(path).kind == "unlocated"
    _failing_with(monkeypatch, tmp_path, RecursionError(), sleep=3.0)
    old = signal.signal(signal.SIGALRM, oracle._alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        assert oracle.check_file(path).kind == "hang"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    monkeypatch.undo()
    assert oracle.check_file(path).kind == "ok"


def test_a_located_diagnostic_must_point_into_its_file():
    from dln.dsl import parse
    from dln.dsl.diagnostics import Diagnostic, Span
    from fuzzing.oracle import _located

    source = parse("model m() {}\n", "m.dln").source
    assert _located(Diagnostic("E0101", "x", Span(source, 1, 7, 1, 8)))
    assert not _located(Diagnostic("E0101", "x", None))
    assert not _located(Diagnostic("E0101", "x", Span(source, 9, 1, 9, 2)))
    assert not _located(Diagnostic("E0101", "x", Span(source, 1, 0, 1, 2)))

