"""The numbers of examples/README.md's gallery: every example beside its PyTorch twin.

Each side of each example runs in its own process (`torch_twins.py NAME [--dln] --quiet`), one thread
each (OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1: two thread pools in one process, or two processes
with two threads on a 2-CPU machine, slow each other down), the sides alternating, the rounds
alternating which side goes first.  Results are deterministic per side (the same seed, the same
numbers each round); the times are the medians over the rounds, with their spread, and the load
average is recorded before and after.

    .venv/bin/python examples/gallery.py [NAME ...] [--rounds 3] [-o gallery.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The examples the gallery times (the char-LMs take minutes a run: `torch_twins.py lstm|gru|gpt`).
QUICK = ("mlp", "cnn", "rnn", "iris", "vit", "gan", "dcgan", "vae", "dae", "autoencoder", "gcn", "transfer")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(name: str, side: str) -> dict:
    command = [sys.executable, str(HERE / "torch_twins.py"), name, "--quiet"] + (["--dln"] if side == "dln" else [])
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **ONE_THREAD}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(names: list[str], rounds: int) -> dict:
    load_before = os.getloadavg()
    runs: dict[str, dict[str, list[dict]]] = {n: {"dln": [], "torch": []} for n in names}
    for r in range(rounds):
        for name in names:
            for side in (("dln", "torch") if r % 2 == 0 else ("torch", "dln")):
                runs[name][side].append(run(name, side))
                print(json.dumps(runs[name][side][-1]), flush=True)
    summary = {}
    for name, sides in runs.items():
        summary[name] = {}
        for side, records in sides.items():
            last = dict(records[-1])
            for key in ("time", "epochs_time", "cpu"):
                values = [rec[key] for rec in records if key in rec]
                if values:
                    last[key] = statistics.median(values)
                    last[f"{key}_spread"] = [min(values), max(values)]
            summary[name][side] = last
    return {"rounds": rounds, "load_before": load_before, "load_after": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "examples": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=list(QUICK))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-o", "--output", default=None, help="write the summary as JSON")
    args = ap.parse_args()
    result = measure(args.names, args.rounds)
    text = json.dumps(result, indent=1)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
