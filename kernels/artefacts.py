"""The Triton part of `dln compile`: kernels.py, plan.txt, and cubins with --target."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from dln.compiler.ir import Graph
from dln.compiler.fusion.target import BY_ARCH
from dln.kernels.gpu_model import eager_model, format_model, model_module
from dln.kernels.module import generate_module
from dln.kernels.report import format_plan


def write_kernel_artefacts(graph: Graph, out: Path, donate: dict[str, str] | None = None, target: str | None = None,
                           precision: str = "ieee",
                           batch: int = 128, log: Callable[[str], None] = print) -> list[str]:
    env = {s: batch for s in graph.symbols()}
    machine = BY_ARCH.get(target) if target is not None else None
    # With a target, the kernels are planned to fill its GPU at this batch, and plan.txt models them.
    generated = generate_module(graph, donate, precision, machine=machine, sizes=env)
    module_path = out / "kernels.py"
    module_path.write_text(generated.source)
    files = ["kernels.py"]
    compiled = {}
    if target is not None:
        from dln.kernels.aot import compile_all   # with its process pool: only for --target

        cubins = out / "cubin"
        cubins.mkdir(exist_ok=True)
        log(f"compiling {len(generated.kernels)} kernels for {target}, specialized as for batch {batch}")
        for result in compile_all(generated, str(module_path.resolve()), [target], str(cubins), log=log, sizes=env):
            compiled.setdefault(result.name, []).append(result)
        files += [f"cubin/{r.cubin}" for rs in compiled.values() for r in rs]
    text = format_plan(generated.plan, env, compiled)
    if machine is not None:
        model = format_model(model_module(generated, machine, env, precision), eager_model(graph, machine, env, precision),
                             machine, env)
        text += "\n" + "\n".join(model) + "\n"
    (out / "plan.txt").write_text(text)
    files.insert(1, "plan.txt")
    return files
