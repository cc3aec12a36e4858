"""Fuzz the front end and the compiler: N cases from the two generators of tests/fuzzing/
(programs drawn from the grammar, mutants of the examples), each checked as
`dln --debug check` does, with its kernels planned and written, under a time limit.

    .venv/bin/python benchmarks/fuzz.py [--cases 100000] [--seed S] [--jobs 2] [--limit 15] [--record]
    .venv/bin/python benchmarks/fuzz.py --seed S --show K     # print case K of seed S

Prints the count of each outcome (ok, located diagnostic, and the failures:
unlocated diagnostic, internal error, hang) and the first examples of each failure.
With --record, writes them to the "Fuzzing" section of benchmarks/RESULTS.md
(the rest of the file is kept).  Exit status 1 when a failure is not covered.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

EXAMPLES_PER_CLASS = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case index (to run a long campaign in chunks)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--limit", type=float, default=15.0,
                        help="seconds per case (a 5000-deep pipe, 15,000 nodes, compiles in about 8 s)")
    parser.add_argument("--record", action="store_true", help="write the results to benchmarks/RESULTS.md")
    parser.add_argument("--show", type=int, metavar="K", help="print case K of --seed and exit")
    args = parser.parse_args(argv)

    from fuzzing.cases import make_case
    from fuzzing.runner import run_cases

    if args.show is not None:
        case = make_case(args.seed, args.show)
        print(f"# {case.name}: {case.how}", file=sys.stderr)
        sys.stdout.write(case.text)
        return 0

    began = time.perf_counter()
    counts: collections.Counter[str] = collections.Counter()
    examples: dict[str, list] = collections.defaultdict(list)   # failure signature -> results
    cases = (make_case(args.seed, k) for k in range(args.start, args.start + args.cases))
    for done, r in enumerate(run_cases(cases, args.jobs, args.limit), 1):
        counts[r.outcome.kind] += 1
        if r.failed:
            examples[f"{r.outcome.kind}: {r.outcome.signature}"].append(r)
        if done % 1000 == 0:
            print(f"  {done:,} cases, {dict(counts)}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - began
    report = _report(args, counts, examples, seconds)
    print(report)
    if args.record:
        _record(report)
    return 1 if examples else 0


def _report(args, counts, examples, seconds: float) -> str:
    total = sum(counts.values())
    failures = sum(len(v) for v in examples.values())
    lines = [
        f"`benchmarks/fuzz.py --cases {args.cases} --seed {args.seed} --jobs {args.jobs}`"
        + (f" (from case {args.start})" if args.start else "")
        + f": {total:,} cases in {seconds:.0f} s, {1e3 * seconds * args.jobs / max(total, 1):.1f} ms per case "
        f"per worker ({args.jobs} workers, limit {args.limit:g} s a case).",
        "",
        "| outcome | cases |",
        "| --- | --- |",
    ]
    for kind in ("ok", "diagnostic", "unlocated", "internal", "hang"):
        lines.append(f"| {kind} | {counts.get(kind, 0):,} |")
    lines += ["", f"Failures: **{failures}**."]
    for signature, results in sorted(examples.items(), key=lambda kv: -len(kv[1])):
        lines += ["", f"### {signature} ({len(results)} cases)"]
        for r in results[:EXAMPLES_PER_CLASS]:
            lines += ["", f"{r.case.name} ({r.case.how[:200]}); reproduce with "
                      f"`benchmarks/fuzz.py --seed {r.case.seed} --show {r.case.index}`:", "",
                      "```", r.case.text[:1500].rstrip(), "```", "", "```",
                      r.outcome.detail.strip()[-1200:], "```"]
    return "\n".join(lines)


def fuzzing_section(results: str) -> str:
    """The "## Fuzzing" section of a RESULTS.md text ("" when it has none)."""
    m = re.search(r"^## Fuzzing\n.*?(?=^## |\Z)", results, re.S | re.M)
    return m.group() if m else ""


def _record(report: str) -> None:
    path = HERE / "RESULTS.md"
    text = path.read_text()
    section = (f"## Fuzzing\n\nRecorded {datetime.date.today().isoformat()}; `benchmarks/fuzz.py` "
               f"(tests/fuzzing/: programs from the grammar and mutants of the examples, each checked as "
               f"`dln --debug check` does, kernels planned and written).\n\n{report}\n")
    old = fuzzing_section(text)
    text = text.replace(old, section) if old else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    print(f"wrote the Fuzzing section of {path}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
