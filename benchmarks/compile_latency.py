"""How long `dln compile` of the 4-layer GPT to Triton source takes, cold, as a user runs it.

    .venv/bin/python benchmarks/compile_latency.py [--rounds 15] [--no-record]

Each round runs `python -m dln compile benchmarks/gpt4.dln --backend triton -o DIR` in a fresh process
with empty caches: XDG_CACHE_HOME and DLN_CACHE_DIR name new, empty directories, so no parse tables
come from the user's cache (those the package ships do: dsl/tables.py) and nothing from the kernel
cache (writing source does not use it, nor Triton's).

Each round also runs the same command once more in a child that times the compiler's stages from
outside (`--child`): it wraps the functions that begin each stage and charges every moment to the
innermost stage running, so the stages add up to the time in the process; the compiler carries no
timing code.  The result goes into the "Compile latency" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GPT = HERE / "gpt4.dln"

# The functions that begin a stage, by module and name.  A stage's function called inside another
# stage is charged to its own (the optimization passes `train_step` runs count as passes).
STAGES: list[tuple[str, str, str]] = [
    ("parser tables", "dln.dsl.parser", "_lark"),
    ("parse", "dln.compiler.program", "load"),
    ("build", "dln.compiler.build", "build_model"),
    ("initial weights", "dln.runtime.init", "draw_all"),
    ("autodiff", "dln.compiler.training", "build_step"),
    ("passes", "dln.compiler.pipeline", "optimize"),
    ("passes", "dln.compiler.passes.fold_affine", "fold_affine"),
    ("passes", "dln.compiler.passes.decompose", "decompose"),
    ("planning", "dln.compiler.fusion.planner", "plan_graph"),
    ("codegen", "dln.kernels.module", "generate_module"),
    ("writing", "dln.compiler.printer", "format_graph"),
    ("writing", "dln.kernels.report", "format_plan"),
    ("writing", "dln.runtime.artefacts", "manifest"),
    ("writing", "dln.runtime.checkpoint", "save_json"),
]
ORDER = ["python start and exit", "imports", "parser tables", "parse", "build", "initial weights", "autodiff",
         "passes", "planning", "codegen", "writing", "other"]


class Clock:
    """Exclusive time per stage: each moment goes to the innermost stage running ("other" outside all)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.stack: list[str] = []
        self.mark = time.perf_counter()

    def switch(self) -> None:
        now = time.perf_counter()
        stage = self.stack[-1] if self.stack else "other"
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.mark
        self.mark = now

    def timed(self, stage: str, fn: Callable) -> Callable:
        def run(*args: Any, **kwargs: Any) -> Any:
            self.switch()
            self.stack.append(stage)
            try:
                return fn(*args, **kwargs)
            finally:
                self.switch()
                self.stack.pop()
        return run


def child(out: str) -> None:
    """Compile the GPT once in this (fresh) process, printing the seconds of each stage as JSON."""
    import importlib
    import pathlib

    clock = Clock()
    clock.stack.append("imports")
    from dln.runtime import cli
    for module in {m for _, m, _ in STAGES} | {"dln.runtime.artefacts", "dln.kernels.artefacts", "dln.runtime.api"}:
        importlib.import_module(module)
    clock.switch()
    clock.stack.pop()
    # Replace each stage's function wherever a module holds it (`from x import f` copies the name).
    wrapped = {}
    for stage, module, name in STAGES:
        fn = getattr(sys.modules[module], name)
        wrapped[id(fn)] = (fn, clock.timed(stage, fn))
    for module in [m for n, m in sys.modules.items() if n.startswith("dln.")]:
        for name, value in list(vars(module).items()):
            if id(value) in wrapped and value is wrapped[id(value)][0]:
                setattr(module, name, wrapped[id(value)][1])
    pathlib.Path.write_text = clock.timed("writing", pathlib.Path.write_text)
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        code = cli.main(["compile", str(GPT), "--backend", "triton", "-o", out])
        sys.stdout = stdout
    clock.switch()
    if code != 0:
        raise SystemExit(code)
    print(json.dumps(clock.seconds))


def _run(command: list[str], cache: str) -> tuple[float, str]:
    env = dict(os.environ, XDG_CACHE_HOME=f"{cache}/xdg", DLN_CACHE_DIR=f"{cache}/kernels")
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        print(result.stdout + result.stderr)
        raise SystemExit(1)
    return seconds, result.stdout


def measure(rounds: int) -> dict:
    walls: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in ORDER}
    load_before = os.getloadavg()[0]
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            wall, _ = _run([sys.executable, "-m", "dln", "compile", str(GPT), "--backend", "triton",
                            "-o", f"{tmp}/out"], f"{tmp}/cache")
            walls.append(wall)
            kernels = re.search(r"^(\d+) kernels;", (Path(tmp) / "out" / "kernels.py").read_text(), re.M)
        with tempfile.TemporaryDirectory() as tmp:
            wall, stdout = _run([sys.executable, __file__, "--child", f"{tmp}/out"], f"{tmp}/cache")
            seconds = json.loads(stdout)
            seconds["python start and exit"] = wall - sum(seconds.values())
            for stage in ORDER:
                stages[stage].append(seconds.get(stage, 0.0))
    load_after = os.getloadavg()[0]
    median = statistics.median(walls)
    return {"median_ms": round(median * 1e3, 1), "spread_ms": [round(min(walls) * 1e3, 1), round(max(walls) * 1e3, 1)],
            "rounds": rounds, "kernels": int(kernels.group(1)),
            "stages_ms": {s: round(statistics.median(v) * 1e3, 1) for s, v in stages.items()},
            "load_avg_1min_before_after": [round(load_before, 2), round(load_after, 2)], "cpus": os.cpu_count()}


def section(r: dict) -> str:
    rows = "".join(f"| {stage} | {ms} |\n" for stage, ms in r["stages_ms"].items())
    return f"""## Compile latency (issue: `dln compile` of the 4-layer GPT to Triton source, cold, < 1 s)

`dln compile benchmarks/gpt4.dln --backend triton -o DIR`: LANGUAGE.md §9's GPT with 4 layers and its train
section, to forward.ir, backward.ir, plan.txt, kernels.py ({r['kernels']} kernels) and manifest.json.  A fresh
process each round with empty caches (the parser's tables are built again) (`benchmarks/compile_latency.py`):
median **{r['median_ms']:.0f} ms** over {r['rounds']} rounds (spread {r['spread_ms'][0]:.0f} - {r['spread_ms'][1]:.0f} ms),
load average (1 min) before and after {r['load_avg_1min_before_after']} on {r['cpus']} CPUs.
For comparison, the issue measured torch.compile at 24-27 s cold for one layer.

Where the time goes (median ms per stage, timed from outside in a second process each round):

| stage | ms |
| --- | --- |
{rows}"""


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-record", action="store_true", help="print, without writing RESULTS.md")
    parser.add_argument("--child", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return {}
    result = measure(args.rounds)
    text = section(result)
    print(text)
    if not args.no_record:
        sys.path.insert(0, str(HERE))
        from paired import find_section, replace_section

        results = HERE / "RESULTS.md"
        old = results.read_text()
        results.write_text(replace_section(old, find_section(old, "Compile latency"), text))
    return result


if __name__ == "__main__":
    main()
