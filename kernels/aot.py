"""Ahead-of-time compilation for NVIDIA GPUs, without a GPU.

`triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))` builds
PTX and a cubin on any machine.  Register use and spills come from the
`ptxas-blackwell -v` bundled with Triton (the system ptxas is too old for
Triton's PTX); shared memory from the kernel's metadata, checked here against
the target's per-block limit, which Triton does not do.  Kernels compile in
parallel, in fresh processes (Triton's interpreter must be off there).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from dln.compiler.ir import DType
from dln.kernels.module import jit_kernels

TARGETS = {"sm_80": 80, "sm_90": 90}
SHARED_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}   # bytes per block, opt-in maximum
POINTER_TYPES = {DType.F16: "*fp16", DType.BF16: "*bf16", DType.F32: "*fp32", DType.F64: "*fp64",
                 DType.I32: "*i32", DType.I64: "*i64", DType.BOOL: "*i1"}


@dataclass
class CompiledKernel:
    name: str
    target: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    shared_limit: int
    num_warps: int
    seconds: float
    cubin: str = ""           # file name of the cubin, when written

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads

    @property
    def fits(self) -> bool:
        return self.spills == 0 and self.shared_bytes <= self.shared_limit

    def describe(self) -> str:
        return (f"{self.registers} registers, {self.spills} B spilled, shared {self.shared_bytes / 1024:.1f} KiB "
                f"of {self.shared_limit // 1024} KiB, {self.num_warps} warps")


@dataclass(frozen=True)
class Job:
    module_path: str
    kernel: str
    signature: dict
    constexprs: dict
    num_warps: int
    target: str
    out_dir: str | None
    num_stages: int | None = None   # software pipelining depth (None: Triton's default)


def ptxas_path() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas-blackwell")


def disassemble(cubin: str | Path) -> str:
    """The SASS of a cubin (the bundled `cuobjdump -sass`): `HMMA`/`HGMMA` lines are tensor-core products."""
    cuobjdump = Path(ptxas_path()).with_name("cuobjdump")
    run = subprocess.run([str(cuobjdump), "-sass", str(cubin)], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise RuntimeError(f"cuobjdump failed on {cubin}: {run.stderr}")
    return run.stdout


def _compile(job: Job) -> CompiledKernel:
    """Runs in a worker process."""
    import importlib.util
    import time

    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # a GPU build contracts a*b+c into FMA
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = importlib.util.spec_from_file_location(f"dln_aot_{abs(hash(job.module_path))}", job.module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, job.kernel)
    began = time.perf_counter()
    source = ASTSource(fn=fn, signature=job.signature, constexprs=job.constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", TARGETS[job.target], 32),
                              options={"num_warps": job.num_warps,
                                       **({"num_stages": job.num_stages} if job.num_stages else {})})
    seconds = time.perf_counter() - began
    capability = TARGETS[job.target]
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"  # Triton targets sm_90a on Hopper
    registers, stores, loads = _ptxas_report(compiled.asm["ptx"], arch)
    cubin_name = ""
    if job.out_dir:
        cubin_name = f"{job.kernel}.{job.target}.cubin"
        Path(job.out_dir, cubin_name).write_bytes(compiled.asm["cubin"])
    return CompiledKernel(job.kernel, job.target, registers, stores, loads, int(compiled.metadata.shared),
                          SHARED_LIMIT[job.target], job.num_warps, seconds, cubin_name)


def _ptxas_report(ptx: str, arch: str) -> tuple[int, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "k.ptx")
        src.write_text(ptx)
        run = subprocess.run([ptxas_path(), "-v", f"--gpu-name={arch}", str(src), "-o", str(Path(tmp, "k.cubin"))],
                             capture_output=True, text=True, timeout=300)
    text = run.stdout + run.stderr
    if run.returncode != 0:
        raise RuntimeError(f"ptxas failed: {text}")
    registers = int(re.search(r"Used (\d+) registers", text).group(1))
    stores = int(re.search(r"(\d+) bytes spill stores", text).group(1))
    loads = int(re.search(r"(\d+) bytes spill loads", text).group(1))
    return registers, stores, loads


def jobs_for(generated, module_path: str, targets: list[str], out_dir: str | None) -> list[Job]:
    """A job per Triton kernel and target: a host function's (a scan step by step, attention's backward,
    layer norm's backward) are its inner kernels."""
    jobs = []
    for kernel in jit_kernels(generated.kernels):
        g = kernel.graph or generated.plan.graph
        config = generated.configs[kernel.name]
        signature = {p.name: POINTER_TYPES[g.node(p.node).dtype] for p in kernel.pointers}
        if kernel.workspace is not None:
            signature["scratch"] = POINTER_TYPES[kernel.workspace[1]]
        signature.update({f"s_{s}": "i32" for s in kernel.symbols})
        signature.update({b: "constexpr" for b in kernel.blocks})
        constexprs = {b: config[b] for b in kernel.blocks if b != "WIDE"}
        if kernel.wide:
            constexprs["WIDE"] = False  # the variant every size below 2**31 elements runs
        for target in targets:
            jobs.append(Job(module_path, kernel.name, signature, constexprs, config.get("num_warps", 4), target,
                            out_dir, config.get("num_stages")))
    return jobs


def compile_all(generated, module_path: str, targets: list[str], out_dir: str | None = None,
                workers: int | None = None, log: Callable[[str], None] | None = None) -> list[CompiledKernel]:
    """Compile every kernel of a generated module for every target, in parallel."""
    jobs = jobs_for(generated, module_path, targets, out_dir)
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    results: list[CompiledKernel] = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for result in pool.map(_compile, jobs):
            results.append(result)
            if log:
                log(f"  {result.name} [{result.target}]: {result.describe()} ({result.seconds:.2f}s)")
    return results


def as_records(results: list[CompiledKernel]) -> list[dict]:
    return [asdict(r) for r in results]
