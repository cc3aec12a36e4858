"""The differential harness's whole matrix: every built-in and operator over many seeds, NumPy vs torch
(float64) and Triton's interpreter vs NumPy (float32).  CI runs two seeds a case; this runs `--seeds`.

    .venv/bin/python benchmarks/differential.py [--seeds 25] [--record]

With `--record`, the counts go into benchmarks/RESULTS.md (section "Differential harness").
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=25)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    env = dict(os.environ, DLN_DIFFERENTIAL="full", DLN_DIFFERENTIAL_SEEDS=str(args.seeds), TRITON_INTERPRET="1")
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rf", "--no-header",
                          "tests/differential"], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    failures = [line for line in run.stdout.splitlines() if line.startswith("FAILED")]
    print(f"{args.seeds} seeds a case: {counts} in {seconds:.0f} s")
    for line in failures:
        print(line)
    if args.record:
        record(args.seeds, counts, seconds, failures)
    return counts


def record(seeds: int, counts: dict, seconds: float, failures: list[str]) -> None:
    section = (f"## Differential harness\n\n"
               f"Every built-in and operator on random shapes, {seeds} seeds a case, forward and gradient: the "
               f"NumPy backend against torch (float64) and the Triton kernels under Triton's interpreter against "
               f"NumPy (float32) (`benchmarks/differential.py`, recorded {datetime.date.today().isoformat()}).\n\n"
               f"| passed | failed | time |\n| --- | --- | --- |\n"
               f"| {counts.get('passed', 0)} | {counts.get('failed', 0)} | {seconds:.0f} s |\n"
               f"\nThe random built-ins (dropout, rand_like, randn_like, bernoulli) have no torch twin: "
               f"the two backends, which share one Philox generator, check each other.\n")
    if failures:
        section += "\nFailures:\n\n" + "\n".join(f"- `{f}`" for f in failures[:20]) + "\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(r"## Differential harness\n.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(section.rstrip("\n"), text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
