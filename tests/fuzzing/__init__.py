"""Fuzzing dln: generated programs, an oracle, and a pool of workers to run them.

    grammar.py   programs drawn from dsl/grammar.lark (hypothesis.extra.lark)
    mutate.py    mutants of examples/*.dln and the language draft's programs
    cases.py     case k of seed s, from one or the other: always the same text
    oracle.py    what `dln --debug check` does to a case, classified; the worker
    runner.py    workers, each case under a time limit

Used by tests/dsl/test_fuzz.py (a few thousand cases) and benchmarks/fuzz.py
(a campaign; `--show K` prints a case).  Neither is part of the `dln` package.
"""
