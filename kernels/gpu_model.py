"""The time model of a generated module's kernels on a GPU, and PyTorch eager's for the same step — no GPU needed.

Per Triton kernel (a host function's two stages apart): its grid, evaluated
from the kernel's grid expression with the launch configuration the cost
model picks (CONFIGS) at the given sizes; programs resident per SM from its
warps and shared memory; FLOPs and bytes moved (dln.compiler.cost); the
modeled time of dln.compiler.fusion.target (max of compute and memory time,
wave-quantized, plus a launch).

PyTorch eager, modeled from the IR of the same step: one kernel per torch
operator — every matrix product a library GEMM that fills the GPU (the plain
roofline), every other op a pass reading its operands and writing its result,
the optimizer as torch.optim's foreach implementation (one multi-tensor
kernel per elementwise op of one parameter's update, over all parameters).
A model, not a measurement: it is labelled so wherever it is printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Mapping

from dln.compiler.cost import flops, nbytes
from dln.compiler.fusion import index as ix
from dln.compiler.fusion.cost import REPRESENTATIVE
from dln.compiler.fusion.domain import LEAVES
from dln.compiler.fusion.target import (
    PRECISION_UNITS,
    KernelTime,
    Machine,
    Target,
    full_machine_time,
    kernel_time,
)
from dln.compiler.ir import DType, Graph, GroupOp, Op, Phase
from dln.kernels.configs import epilogue_weight, gpu_config
from dln.kernels.splitk import sum_config

NO_KERNEL = LEAVES | ix.VIEWS | {Op.INPUT, Op.CHECK_INDEX, Op.RESULT}
DEFAULT_STAGES = 3   # Triton's software pipelining depth when a config names none


def tiles(kind: str, sizes: Mapping, ops: int, draws: int, stores: int) -> Mapping[str, int]:
    """The planner's view of the backend's tile choice (target.TileChooser); a split product's second stage
    has its own."""
    if kind == "splitk_sum":
        return sum_config(sizes)
    return gpu_config(kind, sizes, epilogue_weight(ops, draws, stores))


def target_for(machine: Machine, graph: Graph, sizes: Mapping[str, int] | None, precision: str = "ieee") -> Target:
    return Target(machine, {s: (sizes or {}).get(s, REPRESENTATIVE) for s in graph.symbols()}, tiles, precision)


@dataclass
class ModeledKernel:
    name: str
    kind: str
    grid: int | None          # None: set by a host function at launch (modeled as filling the GPU)
    time: KernelTime

    @property
    def ok(self) -> bool:
        """The done-when of issue 11: fills a wave of SMs, or is memory-bound under 2 us."""
        return self.time.fills or (self.time.bound == "memory" and self.time.run_s < 2e-6)


def _cdiv(a, b) -> int:
    return -(-int(a) // int(b))


def _grid(expressions: list[str], cfg: Mapping[str, int], env: Mapping[str, int], extra: Mapping[str, int]) -> int:
    """The number of programs of a grid the generator wrote (`triton.cdiv(s_B, meta['BLOCK_M'])`): its own
    expressions, evaluated with the launch's constexprs and sizes."""
    names = {"triton": SimpleNamespace(cdiv=_cdiv), "meta": cfg, **{f"s_{k}": v for k, v in env.items()}, **extra}
    total = 1
    for e in expressions:
        total *= int(eval(e, {"__builtins__": {}}, names))   # noqa: S307 - the generator's own grid text
    return total


def _smem(kind: str, cfg: Mapping[str, int], dtype: DType) -> int:
    """Shared memory of a product's pipelined operand tiles; none for the other kernels."""
    if not {"BLOCK_M", "BLOCK_N", "BLOCK_K"} <= set(cfg):
        return 0
    return (cfg["BLOCK_M"] + cfg["BLOCK_N"]) * cfg["BLOCK_K"] * dtype.itemsize * cfg.get("num_stages", DEFAULT_STAGES)


def model_module(generated, machine: Machine, env: Mapping[str, int], precision: str = "ieee") -> list[ModeledKernel]:
    """Every Triton kernel of a generated module, in launch order, at sizes `env`."""
    plan = generated.plan
    g = plan.graph
    out: list[ModeledKernel] = []
    for k, (kernel, group) in enumerate(zip(generated.kernels, plan.groups)):
        reads = {r: nbytes(g.node(r), env) for r in plan.reads[k]}
        written = sum(nbytes(g.node(s), env) for s in group.stores)
        work = sum(flops(g, n, env) for n in plan.computed[group.id])
        dtype = g.node(group.members[0]).dtype
        unit = PRECISION_UNITS.get(precision, "fp32") if group.domain.kind in ("matmul", "convolution") else "fp32"
        if dtype in (DType.F16, DType.BF16) and group.domain.kind in ("matmul", "convolution"):
            unit = {DType.F16: "fp16", DType.BF16: "bf16"}[dtype]
        if kernel.kind in ("splitk", "splitk_convolution", "split_reduction"):
            out += _split_stages(generated, kernel, group, plan, machine, env, work, unit)
            continue
        if kernel.host:   # a host loop (a scan, a layer norm's two stages): its grids are set at launch
            for inner in kernel.inner:
                cfg = generated.configs.get(inner.name, {})
                t = kernel_time(machine, machine.sms, work // len(kernel.inner), (sum(reads.values()) + written)
                                // len(kernel.inner), unit, cfg.get("num_warps", 4))
                out.append(ModeledKernel(inner.name, inner.kind, None, t))
            continue
        cfg = generated.configs[kernel.name]
        programs = _grid(kernel.grid, cfg, env, {})
        t = kernel_time(machine, programs, work, sum(reads.values()) + written, unit, cfg.get("num_warps", 4),
                        _smem(kernel.kind, cfg, dtype))
        out.append(ModeledKernel(kernel.name, kernel.kind, programs, t))
    return out


def _split_stages(generated, kernel, group, plan, machine, env, work, unit) -> list[ModeledKernel]:
    """A split kernel's two stages, with the splits its host function takes at these sizes: each moves the
    buffers it takes (a stage's pointers are those it reads or writes) and the scratch of partial results."""
    g = plan.graph
    partial, total = kernel.inner
    cfg1, cfg2 = generated.configs[partial.name], generated.configs[total.name]
    d = group.domain
    if kernel.kind in ("splitk", "splitk_convolution"):
        length, block = int(_eval_dim(kernel.sizes["K"], env)), cfg1["BLOCK_K"]
        partial_values = int(_eval_dim(kernel.sizes["M"], env) * _eval_dim(kernel.sizes["N"], env)) \
            * int(partial.sizes.get("groups", 1))
        first_work = flops(g, g.node(group.members[0]), env)
    else:
        length, block = int(_eval_dim(kernel.sizes["cols"], env)), cfg1["BLOCK_N"]
        reduced = [m for m in group.members if g.node(m).op in GroupOp.Reduce]
        partial_values = int(_eval_dim(kernel.sizes["rows"], env)) * len(reduced)
        # the second stage computes the row values; everything over the full domain is the first's
        first_work = work - sum(flops(g, n, env) for n in plan.computed[group.id]
                                if d.is_row(n.shape) and n.op not in GroupOp.Reduce)
    chunk = _cdiv(_cdiv(length, kernel.sizes["splits"]), block) * block
    splits = max(1, _cdiv(length, chunk))
    scratch = splits * partial_values * 4
    moved = [sum(nbytes(g.node(p.node), env) for p in stage.pointers) + scratch for stage in (partial, total)]
    p1 = _grid(partial.grid, cfg1, env, {"splits": splits})
    p2 = _grid(total.grid, cfg2, env, {"splits": splits})
    dtype = g.node(group.members[0]).dtype
    t1 = kernel_time(machine, p1, first_work, moved[0], unit, cfg1.get("num_warps", 4),
                     _smem(partial.kind, cfg1, dtype))
    t2 = kernel_time(machine, p2, work - first_work + splits * partial_values, moved[1], "fp32",
                     cfg2.get("num_warps", 4))
    return [ModeledKernel(f"{partial.name} (S={splits})", kernel.kind, p1, t1),
            ModeledKernel(total.name, kernel.kind, p2, t2)]


def _eval_dim(d, env) -> int:
    from dln.compiler.symbolic import evaluate

    return int(evaluate(d, env))


# ---- PyTorch eager, modeled ---------------------------------------------------------------------------------------

def eager_model(graph: Graph, machine: Machine, env: Mapping[str, int], precision: str = "ieee") -> list[ModeledKernel]:
    """PyTorch eager's kernels for one step of `graph` (the step graph before lowering: a composite such
    as cross-entropy is one torch operator), as the module docstring says."""
    out: list[ModeledKernel] = []
    update: list = []
    addmm = _bias_adds(graph)
    for n in graph.nodes:
        if n.op in NO_KERNEL or n.id in addmm or (n.op is Op.CAST and graph.node(n.inputs[0]).dtype is n.dtype):
            continue
        if n.phase is Phase.OPTIMIZER:
            if n.shape != ():      # scalars (bias corrections) are host arithmetic in torch.optim
                update.append(n)
            continue
        moved = nbytes(n, env) + sum(nbytes(graph.node(i), env) for i in n.inputs
                                     if graph.node(i).op not in LEAVES)
        work = flops(graph, n, env)
        if n.op in GroupOp.Contraction:
            unit = PRECISION_UNITS.get(precision, "fp32") if n.dtype is DType.F32 else \
                {DType.F16: "fp16", DType.BF16: "bf16"}.get(n.dtype, "fp32")
            out.append(ModeledKernel(f"%{n.id} {n.op.value} (cuBLAS-like GEMM)", "gemm", machine.sms,
                                     full_machine_time(machine, work, moved, unit)))
        else:
            out.append(ModeledKernel(f"%{n.id} {n.op.value}", "eager op", machine.sms,
                                     full_machine_time(machine, work, moved)))
    if update:
        params = sum(1 for n in graph.nodes if n.op is Op.INPUT and n.attrs.get("role") == "param")
        per_param = max(1, len(update) // max(1, params))
        moved = sum(nbytes(n, env) + sum(nbytes(graph.node(i), env) for i in n.inputs
                                         if graph.node(i).shape != ()) for n in update)
        work = sum(flops(graph, n, env) for n in update)
        for j in range(per_param):
            out.append(ModeledKernel(f"optimizer foreach op {j + 1}/{per_param} (all {params} parameters)",
                                     "foreach", machine.sms,
                                     full_machine_time(machine, work // per_param, moved // per_param)))
    return out


def _bias_adds(graph: Graph) -> set[int]:
    """The additions of a parameter (a bias, broadcast) to a matrix product: torch's `linear` is one `addmm`,
    the bias added in the GEMM's epilogue."""
    def is_param(i: int) -> bool:
        n = graph.node(i)
        while n.op in ix.VIEWS:
            n = graph.node(n.inputs[0])
        return n.op is Op.INPUT and n.attrs.get("role") == "param"

    return {n.id for n in graph.nodes if n.op is Op.ADD and len(n.inputs) == 2
            and any(graph.node(i).op is Op.MATMUL for i in n.inputs) and any(is_param(i) for i in n.inputs)}


def total_s(kernels: list[ModeledKernel]) -> tuple[float, float]:
    """(time the kernels run, time with their launches)."""
    return sum(k.time.run_s for k in kernels), sum(k.time.time_s for k in kernels)


def format_model(ours: list[ModeledKernel], eager: list[ModeledKernel], machine: Machine,
                 env: Mapping[str, int]) -> list[str]:
    """The per-kernel table of plan.txt (and RESULTS-model.md's), then eager's, then the totals."""
    binding = ", ".join(f"{k} = {v}" for k, v in sorted(env.items())) or "no symbolic sizes"
    lines = [f"GPU time model on {machine.name} ({machine.arch}, {machine.sms} SMs), {binding} — a model, "
             "not a measurement",
             f"  per kernel: max(compute, memory) time, wave-quantized over {machine.sms} SMs, plus "
             f"{machine.launch_latency * 1e6:.0f} us launch; 'fills': at least one program per SM", ""]
    lines.append(f"  {'kernel':<58} {'grid':>7} {'waves/SM':>8} {'FLOPs':>14} {'bytes':>12} {'run us':>8} "
                 f"{'+launch':>8}  bound    fills")
    for k in ours:
        t = k.time
        grid = "host" if k.grid is None else str(k.grid)
        fills = "yes" if t.fills else ("no, memory-bound < 2 us" if k.ok else "NO")
        lines.append(f"  {k.name[:58]:<58} {grid:>7} {t.waves:>8.2f} {t.flops:>14,} {t.bytes:>12,} "
                     f"{t.run_s * 1e6:>8.2f} {t.time_s * 1e6:>8.2f}  {t.bound:<8} {fills}")
    run, with_launch = total_s(ours)
    e_run, e_launch = total_s(eager)
    lines += ["", f"  PyTorch eager, modeled from the same step's IR: {len(eager)} kernels (GEMMs fill the GPU, a "
                  "linear's bias in its addmm; one pass per other op; foreach optimizer).  Where torch has a fused",
              "  kernel the IR spells out (cross-entropy's backward), this counts more kernels than eager launches."]
    for k in eager:
        t = k.time
        lines.append(f"  {k.name[:58]:<58} {'full':>7} {'':>8} {t.flops:>14,} {t.bytes:>12,} "
                     f"{t.run_s * 1e6:>8.2f} {t.time_s * 1e6:>8.2f}  {t.bound}")
    lines += ["", f"  modeled step: dln {len(ours)} kernels {run * 1e6:,.1f} us running, {with_launch * 1e6:,.1f} us "
                  f"with launches; PyTorch eager {len(eager)} kernels {e_run * 1e6:,.1f} us running, "
                  f"{e_launch * 1e6:,.1f} us with launches (model)"]
    return lines
