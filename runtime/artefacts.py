"""What `dln compile` writes, and `dln graph`'s picture.

    forward.ir      the forward graph of the declared outputs
    backward.ir     the training step: forward, generated backward, optimizer update
    plan.txt        the fusion plan: kernels, the IR nodes and .dln lines each fuses, FLOPs, bytes
    kernels.py      the generated Triton kernels and their launcher (imports only triton and torch)
    manifest.json   inputs, outputs, parameters, shapes, versions, source hash
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Callable

from dln.compiler import pipeline
from dln.compiler.ir import Graph, Op
from dln.compiler.printer import format_graph, op_name
from dln.dsl.diagnostics import DlnError
from dln.runtime.backends import MERGES_PRODUCTS
from dln.kernels.precision import dot_precision
from dln.runtime.checkpoint import save_json


def _type(t) -> dict:
    return {"dtype": str(t.dtype), "shape": [d if isinstance(d, int) else str(d) for d in t.shape]}


def manifest(model, forward: Graph, step_graph: Graph | None, files: list[str]) -> dict:
    import dln

    spec = model.spec
    text = model.program.root.source.text
    return {
        "dln_version": dln.__version__,
        "python": platform.python_version(),
        "model": spec.name,
        "source": model.program.path,
        "source_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "hparams": spec.hparams,
        "inputs": [{"name": i.name, **_type(i.type)} for i in spec.inputs],
        "outputs": [{"name": name, **_type(forward.node(i).type)} for name, i in forward.outputs],
        "parameters": [{"name": p.name, **_type(p.type), "init": str(p.init)} for p in spec.params],
        "state": [{"name": s.name, **_type(s.type), "init": str(s.init)} for s in spec.state],
        "symbols": sorted(spec.symbols),
        "training_step": None if step_graph is None else {
            "graph": step_graph.name,
            "inputs": [n.attrs["name"] for n in step_graph.nodes if n.op is Op.INPUT],
            "outputs": step_graph.output_names,
        },
        "files": files,
    }


def write_artefacts(model, out: Path, backend: str = "numpy", target: str | None = None,
                    log: Callable[[str], None] = print, precision: str = "ieee", batch: int = 128) -> list[str]:
    from dln.runtime.train import default_objective

    out.mkdir(parents=True, exist_ok=True)
    merge = MERGES_PRODUCTS[backend]   # the graphs that backend runs
    forward = pipeline.forward_graph(model.spec, mixed=model.mixed, merge=merge)
    (out / "forward.ir").write_text(format_graph(forward))
    files = ["forward.ir"]
    step_graph = None
    try:
        objective = default_objective(model)
    except DlnError:
        objective = None
    if objective is not None:
        step = pipeline.train_step(model.train_spec, objective, mixed=model.mixed, merge=merge)
        step_graph = step.graph
        (out / "backward.ir").write_text(format_graph(step_graph))
        files.append("backward.ir")
    if backend != "numpy" or target is not None:
        from dln.kernels.artefacts import write_kernel_artefacts

        graph, donate = (step.graph, step.donate) if step_graph is not None else (forward, {})
        files += write_kernel_artefacts(graph, out, donate, target=target, log=log,
                                        precision=dot_precision(precision), batch=batch)
    files.append("manifest.json")
    save_json(out / "manifest.json", manifest(model, forward, step_graph, files))
    return files


def graph_dot(model, kernels: bool = False) -> str:
    """The forward graph as Graphviz DOT; with `kernels`, the training step with fusion groups as boxes."""
    graph = pipeline.forward_graph(model.spec)
    groups: list[tuple[str, list[int]]] = []
    if kernels:
        from dln.compiler.fusion.planner import plan_graph
        from dln.kernels.kinds import kept_in
        from dln.kernels.report import computed_nodes
        from dln.runtime.train import default_objective

        step = pipeline.train_step(model.train_spec, default_objective(model), merge=MERGES_PRODUCTS["triton"])
        # The graph the Triton backend plans: composites it has no kernel for decomposed (generate_module).
        graph = pipeline.lower(step.graph, kept_in(step.graph))
        plan = plan_graph(graph, step.donate)
        groups = [(k.name, [n.id for n in computed_nodes(plan, k)]) for k in plan.kernels]
    lines = [f"digraph {json.dumps(graph.name)} {{", "  rankdir=TB;", "  node [shape=box, fontsize=10];"]
    grouped = {i for _, ids in groups for i in ids}
    for name, ids in groups:
        lines.append(f"  subgraph {json.dumps('cluster_' + name)} {{ label={json.dumps(name)}; style=rounded;")
        lines += [f"    n{i};" for i in ids]
        lines.append("  }")
    for n in graph.nodes:
        label = f"%{n.id} {op_name(n)}\\n{n.type}"
        if n.op is Op.INPUT:
            label = f"{n.attrs['name']}\\n{n.type}"
        style = ", style=filled, fillcolor=lightgrey" if n.op is Op.INPUT else ""
        lines.append(f"  n{n.id} [label={json.dumps(label).replace(chr(92) * 2, chr(92))}{style}];")
        for i in n.inputs:
            lines.append(f"  n{i} -> n{n.id};")
    del grouped
    lines.append("}")
    return "\n".join(lines) + "\n"
