"""The Triton part of `dln compile`: kernels.py, plan.txt, and cubins with --target."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from dln.compiler.ir import Graph
from dln.kernels.module import generate_module
from dln.kernels.report import format_plan


def write_kernel_artefacts(graph: Graph, out: Path, donate: dict[str, str] | None = None, target: str | None = None,
                           precision: str = "ieee",
                           batch: int = 128, log: Callable[[str], None] = print) -> list[str]:
    generated = generate_module(graph, donate, precision)
    module_path = out / "kernels.py"
    module_path.write_text(generated.source)
    files = ["kernels.py"]
    compiled = {}
    env = {s: batch for s in graph.symbols()}
    if target is not None:
        from dln.kernels.aot import compile_all   # with its process pool: only for --target

        cubins = out / "cubin"
        cubins.mkdir(exist_ok=True)
        log(f"compiling {len(generated.kernels)} kernels for {target}, specialized as for batch {batch}")
        for result in compile_all(generated, str(module_path.resolve()), [target], str(cubins), log=log, sizes=env):
            compiled.setdefault(result.name, []).append(result)
        files += [f"cubin/{r.cubin}" for rs in compiled.values() for r in rs]
    (out / "plan.txt").write_text(format_plan(generated.plan, env, compiled))
    files.insert(1, "plan.txt")
    return files
