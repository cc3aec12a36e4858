"""The fallback for scans whose body is not row-parallel: the loop on the host, one body per step.

The body is planned and generated like any graph (its own kernels, named
`<scan kernel>_body_<kernel>`, and its own launcher class in the same
module).  A Python function runs the loop: per step it launches the body's
kernels on the carries, step t of each x and the consts, copies the ys into
row t of their results and keeps the new carries (copied: the body's
outputs live in its workspace, reused next step).  Kernels launched per
step: those of the body, so a loop costs T times their launches — correct
for any body the Triton backend can compile, slow next to the persistent
kernel (kernels/recurrent.py), which every RNN, LSTM and GRU body takes.
"""

from __future__ import annotations

import json
from dataclasses import replace

from dln.compiler.fusion.planner import FusionPlan, Group, plan_graph
from dln.compiler.ir import Graph
from dln.kernels.emitter import comment, dim_symbols, render_dim
from dln.kernels.templates import KernelSource, _pointers, _wrap


def stepwise(plan: FusionPlan, group: Group, k: int, precision: str, why: str) -> KernelSource:
    from dln.kernels.kinds import generate
    from dln.kernels.module import _launcher, kernel_configs

    g = plan.graph
    scan = g.node(group.members[0])
    body: Graph = scan.attrs["body"]
    n_carry, n_xs = scan.attrs["carries"], scan.attrs["xs"]
    names = [p.attrs["name"] for p in body.inputs]
    out_names = [name for name, _ in body.outputs]
    body_plan = plan_graph(body)
    for j, inner_group in enumerate(body_plan.groups):
        inner_group.name = f"{group.name}_body_{inner_group.name}"
    inner = [replace(generate(body_plan, inner_group, j, precision), graph=body_plan.graph)
             for j, inner_group in enumerate(body_plan.groups)]
    class_name = f"_{group.name}_Body"
    lines = _launcher(body_plan, inner)
    lines = lines[lines.index("class Program:"):lines.index("def _check_arena(tensors, offsets):")]
    lines[0] = f"class {class_name}:"
    assert lines[1].lstrip().startswith('"""')
    lines[1] = (f'    """One step of scan %{scan.id}: body {comment(body.name)}, buffers in, buffers out (outputs '
                'alias its workspace)."""')
    while lines and not lines[-1]:
        lines.pop()

    pointers = _pointers(plan, group, k)
    ordered = [pointers[i] for i in sorted(pointers)]
    outer = list(scan.inputs)
    stores = {j: [pointers[m].name for m in ms] for j, ms in group.stored_results(g).items()}
    length = scan.attrs["length"]
    rows_symbols = sorted(dim_symbols(length))
    params = ["program", "sizes", *(p.name for p in ordered), *(f"s_{s}" for s in rows_symbols)]
    doc = (f"Runs scan %{scan.id} step by step on the host, launching the kernels of body {body.name} once per "
           f"step (not row-parallel: {why}).")
    fn = [f"def {group.name}({', '.join(params)}):",
          '    """' + "\n    ".join(comment(line) for line in _wrap(doc, 100)) + '"""',
          f"    body = program._slots.get({json.dumps(group.name)})",
          "    if body is None:",
          f"        body = program._slots[{json.dumps(group.name)}] = {class_name}(program.device, program.interpret,"
          " program.configs)",
          "    carries = [" + ", ".join(f"{pointers[outer[j]].name}.clone()" for j in range(n_carry)) + "]",
          f"    steps = range({render_dim(length)})",
          "    for t in " + ("reversed(steps)" if scan.attrs["reverse"] else "steps") + ":",
          "        feeds = {"
          + ", ".join([f"{json.dumps(names[j])}: carries[{j}]" for j in range(n_carry)]
                      + [f"{json.dumps(names[n_carry + j])}: {pointers[outer[n_carry + j]].name}[t]"
                         for j in range(n_xs)]
                      + [f"{json.dumps(names[j])}: {pointers[outer[j]].name}"
                         for j in range(n_carry + n_xs, len(outer))]) + "}",
          "        out = body(feeds, sizes)"]
    for j in range(n_carry, len(out_names)):
        for p in stores.get(j, []):
            fn.append(f"        {p}[t].copy_(out[{json.dumps(out_names[j])}])  # y {comment(out_names[j])}")
    fn.append("        carries = [" + ", ".join(f"out[{json.dumps(out_names[j])}].clone()" for j in range(n_carry))
              + "]  # the body's outputs are its workspace, reused next step")
    for j in range(n_carry):
        for p in stores.get(j, []):
            fn.append(f"    {p}.copy_(carries[{j}])  # final {comment(out_names[j])}")
    source = "\n".join(lines + ["", ""] + fn) + "\n"
    return KernelSource(group.name, "scan_steps", source, ordered, rows_symbols, [], [], {"T": length},
                        host=True, inner=inner, inner_configs=kernel_configs(body_plan, inner))
