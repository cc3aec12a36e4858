"""Step times of dln and PyTorch, **each in its own process**, taking turns.

Two thread pools in one process (OpenBLAS's and PyTorch's OpenMP) spin
against each other on a small machine and distort both sides.  So each side
runs in a child process of the benchmark script (`script --child dln|torch`),
the two take turns (one round of steps each, the other waiting on a pipe),
and the result is the median of the per-round means, with the spread and the
load average before and after.
"""

from __future__ import annotations

import argparse
import json
import re
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def child(run: Callable[[], float]) -> None:
    """Wait for a line, run that many steps, answer with the seconds per step; until stdin closes."""
    first = run()
    for _ in range(3):
        run()
    print(json.dumps({"first_loss": first}), flush=True)
    for line in sys.stdin:
        steps = int(line)
        began = time.perf_counter()
        for _ in range(steps):
            run()
        print(json.dumps({"seconds": (time.perf_counter() - began) / steps}), flush=True)


# A pause before each side's turn: thread pools keep spinning for a while after their last call
# (OpenBLAS's workers, OpenMP's wait policy), and at 2 threads on 2 cores the side that just finished
# would otherwise still hold the cores the other side starts on.
SETTLE_S = 0.3


def thread_env(threads: int | None) -> dict[str, str]:
    """The environment of a child limited to `threads` threads in every pool it may start (OpenBLAS,
    OpenMP for PyTorch, MKL); the inherited environment when `threads` is None."""
    env = dict(os.environ)
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    return env


def step_times(script: str, rounds: int, steps: int, threads: int | None = None,
               child_args: tuple[str, ...] = ()) -> dict:
    """Each side's seconds per step: `script --child dln|torch [child_args]` in two processes with
    `threads` threads each, taking turns for `rounds` rounds of `steps` steps."""
    procs = {side: subprocess.Popen([sys.executable, script, "--child", side, *child_args], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, env=thread_env(threads))
             for side in ("dln", "torch")}
    first = {side: json.loads(p.stdout.readline())["first_loss"] for side, p in procs.items()}
    times: dict[str, list[float]] = {side: [] for side in procs}
    load_before = os.getloadavg()[0]
    for _ in range(rounds):
        for side, p in procs.items():         # one side at a time: the other waits on its pipe
            time.sleep(SETTLE_S)
            p.stdin.write(f"{steps}\n")
            p.stdin.flush()
            times[side].append(json.loads(p.stdout.readline())["seconds"])
    load_after = os.getloadavg()[0]
    for p in procs.values():
        p.stdin.close()
        p.wait()
    d, t = statistics.median(times["dln"]), statistics.median(times["torch"])
    return {"dln_numpy_ms": round(d * 1e3, 3), "torch_eager_ms": round(t * 1e3, 3), "ratio": round(d / t, 3),
            "dln_spread_ms": [round(min(times["dln"]) * 1e3, 3), round(max(times["dln"]) * 1e3, 3)],
            "torch_spread_ms": [round(min(times["torch"]) * 1e3, 3), round(max(times["torch"]) * 1e3, 3)],
            "first_losses": [round(first["dln"], 5), round(first["torch"], 5)], "rounds": rounds,
            "steps_per_round": steps, "load_avg_1min_before_after": [round(load_before, 2), round(load_after, 2)],
            "cpus": os.cpu_count(), "threads": threads}


def arguments(doc: str, argv: list[str] | None, steps: int = 5) -> argparse.Namespace:
    """The command line of a paired benchmark (`doc` its module docstring); `--child` is how
    `step_times` starts each side."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="threads a side (every pool of each process), one measurement per count")
    parser.add_argument("--no-kernels", action="store_true")
    parser.add_argument("--record", action="store_true", help="write the figures to benchmarks/RESULTS.md")
    parser.add_argument("--child", choices=("dln", "torch"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure(script: str, args: argparse.Namespace, dln_step: Callable[[], Callable[[], float]],
            torch_step: Callable[[], Callable[[], float]]) -> dict | None:
    """Both sides' step times (`step_times` of `script`); or, in a child (`--child dln|torch`), that
    side's steps for the parent until it is done (`child`), and None."""
    if args.child:
        child(dln_step() if args.child == "dln" else torch_step())
        return None
    by_threads = {t: step_times(script, args.rounds, args.steps, t) for t in args.threads}
    return {**by_threads[args.threads[0]], "by_threads": by_threads}


def print_steps(s: dict, torch_label: str, goal: float, width: int) -> None:
    """`step_times`' result on stdout: each side's median and spread, and their ratio beside the goal
    (for each thread count `measure` ran)."""
    for threads, one in s.get("by_threads", {None: s}).items():
        if threads is not None:
            print(f"  {threads} thread(s) a side; load average 1 min {one['load_avg_1min_before_after']}")
        _print_one(one, torch_label, goal, width)


def _print_one(s: dict, torch_label: str, goal: float, width: int) -> None:
    print(f"  {'dln (NumPy backend)':<{width}}{s['dln_numpy_ms']:8.3f} ms/step  (spread {s['dln_spread_ms']})")
    print(f"  {torch_label:<{width}}{s['torch_eager_ms']:8.3f} ms/step  (spread {s['torch_spread_ms']})")
    print(f"  {'ratio dln / eager':<{width}}{s['ratio']:8.3f}   (goal <= {goal})")


def dln_adam_step(model, feeds: dict, env: dict) -> Callable[[], float]:
    """One training step of `model` (compiled on the NumPy backend, its default objective and optimizer)
    on fixed `feeds`, as a function returning the loss."""
    import numpy as np

    from dln.compiler import pipeline
    from dln.runtime.train import default_objective

    step = pipeline.train_step(model.train_spec, default_objective(model))
    states = {s.name: np.zeros(tuple(int(d) for d in s.type.shape), np.float32) for s in step.states}
    exe = model.backend.prepare(step.graph, {**model._params, **states, "rng.step": np.array(0, np.int64)},
                                step.donate)
    count = [0]

    def run() -> float:
        count[0] += 1
        out = exe.run({**feeds, "lr": np.array(1e-3), "step": np.array(float(count[0]))}, env)
        return float(out["loss"])
    return run


def torch_adam_step(net, x, y) -> Callable[[], float]:
    """One cross-entropy training step of the torch module `net` with Adam (lr 1e-3) on fixed (x, y)."""
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def run() -> float:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return run


def step_table(s: dict, torch_label: str) -> str:
    """The markdown table of `measure`'s result: for each thread count, each side's median and spread,
    their ratio and the load average before and after."""
    rows = [f"| threads a side | dln, NumPy backend, ms (spread) | {torch_label}, ms (spread) | ratio "
            f"| load avg. (1 min) before, after |", "| --- | --- | --- | --- | --- |"]
    for threads, one in s.get("by_threads", {s.get("threads"): s}).items():
        rows.append(f"| {threads or 'unset'} | {one['dln_numpy_ms']} ({one['dln_spread_ms'][0]} - "
                    f"{one['dln_spread_ms'][1]}) | {one['torch_eager_ms']} ({one['torch_spread_ms'][0]} - "
                    f"{one['torch_spread_ms'][1]}) | **{one['ratio']}** | {one['load_avg_1min_before_after']} |")
    return "\n".join(rows) + "\n\n"


def find_section(results: str, heading: str) -> str:
    """The section of a RESULTS.md text whose heading starts with `## <heading>` ("" when it has none)."""
    m = re.search(rf"^## {re.escape(heading)}.*?(?=^## |\Z)", results, re.S | re.M)
    return m.group() if m else ""


def replace_section(text: str, old: str, section: str) -> str:
    """RESULTS.md with `old` (a section, or "") replaced by `section`, or `section` appended."""
    return text.replace(old, section + "\n") if old else text.rstrip("\n") + "\n\n" + section


def record(heading: str, section: str) -> None:
    """Write `section` in place of benchmarks/RESULTS.md's section `## <heading>...`, or append it."""
    text = RESULTS.read_text()
    RESULTS.write_text(replace_section(text, find_section(text, heading), section))
    print(f"wrote the {heading} section of {RESULTS}", file=sys.stderr)
