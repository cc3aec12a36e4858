"""How long `dln check` takes on the example, as a user runs it (a fresh process each time).

    .venv/bin/python benchmarks/check_time.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--file", default=str(ROOT / "examples" / "mlp_digits.dln"))
    args = parser.parse_args(argv)
    times = []
    for _ in range(args.runs):
        began = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "dln", "check", args.file], capture_output=True, text=True)
        times.append(time.perf_counter() - began)
        if result.returncode != 0:
            print(result.stderr)
            raise SystemExit(1)
    median = statistics.median(times)
    print(f"dln check {Path(args.file).name}: median {median * 1e3:.0f} ms over {args.runs} runs "
          f"(min {min(times) * 1e3:.0f} ms; target < 500 ms)")
    return {"median_ms": round(median * 1e3, 1), "min_ms": round(min(times) * 1e3, 1), "runs": args.runs}


if __name__ == "__main__":
    main()
