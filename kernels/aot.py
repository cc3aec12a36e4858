"""Ahead-of-time compilation for NVIDIA GPUs, without a GPU.

`triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))` builds
PTX and a cubin on any machine.  Register use and spills come from the
`ptxas-blackwell -v` bundled with Triton (the system ptxas is too old for
Triton's PTX); shared memory from the kernel's metadata, checked here against
the target's per-block limit, which Triton does not do.  Kernels compile in
parallel, in fresh processes (Triton's interpreter must be off there).

A kernel compiles as the JIT would compile it for the model's launches:
the generated launcher runs once on the CPU at the given sizes with every
kernel replaced by a recorder, and each launch's arguments go through
`specialization` — Triton's own rule, so a pointer or size divisible by 16
carries `tt.divisibility = 16` and a size equal to 1 becomes a constant,
exactly as on the GPU.  Without it the registers and SASS reported would be
those of a kernel no GPU runs.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from dln.compiler.fusion.cost import REPRESENTATIVE
from dln.compiler.symbolic import evaluate
from dln.kernels.module import TORCH_DTYPES, jit_kernels

TARGETS = {"sm_80": 80, "sm_90": 90}
SHARED_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}   # bytes per block, opt-in maximum


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
    specialization: str = ""  # the JIT's hints it was compiled with (`Specialization.describe`)

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
class Specialization:
    """What Triton's JIT compiles a kernel as for one launch: `ASTSource(fn, signature, constexprs, attrs)`'s
    arguments, keyed as the JIT keys them (`constexprs` and `attrs` by argument path, `(i,)`)."""

    signature: dict[str, str]                  # argument -> Triton type, "constexpr" for constants
    constexprs: dict[tuple[int, ...], Any]     # the constexpr parameters and the integers equal to 1
    attrs: dict[tuple[int, ...], list]         # [["tt.divisibility", 16]] where divisible by 16
    ones: tuple[str, ...] = ()                 # integer arguments equal to 1, made constants

    def describe(self) -> str:
        names = list(self.signature)
        divisible = [names[i] for (i,), a in sorted(self.attrs.items()) if ["tt.divisibility", 16] in a]
        return f"divisible by 16: {', '.join(divisible) or '-'}; equal to 1: {', '.join(self.ones) or '-'}"


def specialization(fn, args: Sequence, kwargs: Mapping[str, Any]) -> Specialization:
    """The specialization Triton's JIT applies to `fn` (a `triton.jit` function) launched with `args` and
    the keyword arguments `kwargs` (its constexprs; launch options such as num_warps are ignored).  Each
    argument goes through Triton's own `native_specialize_impl`, the rule `JITFunction.run` applies: tensors
    whose address and integers whose value is a multiple of 16 get `tt.divisibility = 16`, integers equal
    to 1 become constants.  Real tensors or any object with `data_ptr()` and `dtype` will do."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    values = dict(zip(fn.arg_names, args)) | {k: v for k, v in kwargs.items() if k in fn.arg_names}
    signature, constexprs, attrs, ones = {}, {}, {}, []
    for i, param in enumerate(fn.params):
        value = values[param.name]
        if param.is_constexpr:
            kind, attr = "constexpr", ""
        else:
            kind, attr = native_specialize_impl(CUDABackend, value, param.is_const, not param.do_not_specialize,
                                                not param.do_not_specialize_on_alignment)
        signature[param.name] = kind
        if kind == "constexpr":
            constexprs[(i,)] = value
            ones += [] if param.is_constexpr else [param.name]
            attr = ""
        if isinstance(attr, str):
            attrs[(i,)] = CUDABackend.parse_attr(attr)
    return Specialization(signature, constexprs, attrs, tuple(ones))


@dataclass(frozen=True)
class Job:
    module_path: str
    kernel: str
    specialization: Specialization
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


def build(job: Job):
    """Triton's compiled kernel for a job (its `asm` holds the TTIR, TTGIR, PTX and cubin); in a process
    whose Triton interpreter is off."""
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # a GPU build contracts a*b+c into FMA
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(_load(job.module_path), job.kernel)
    spec = job.specialization
    source = ASTSource(fn=fn, signature=spec.signature, constexprs=spec.constexprs, attrs=spec.attrs)
    return triton.compile(source, target=GPUTarget("cuda", TARGETS[job.target], 32),
                          options={"num_warps": job.num_warps,
                                   **({"num_stages": job.num_stages} if job.num_stages else {})})


def _load(module_path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"dln_aot_{abs(hash(module_path))}", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(job: Job) -> CompiledKernel:
    """Runs in a worker process."""
    import time

    began = time.perf_counter()
    compiled = build(job)
    seconds = time.perf_counter() - began
    capability = TARGETS[job.target]
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"  # Triton targets sm_90a on Hopper
    registers, stores, loads = _ptxas_report(compiled.asm["ptx"], arch)
    cubin_name = ""
    if job.out_dir:   # the cubin, and the TTGIR that shows the specialization it was built with
        cubin_name = f"{job.kernel}.{job.target}.cubin"
        Path(job.out_dir, cubin_name).write_bytes(compiled.asm["cubin"])
        Path(job.out_dir, cubin_name).with_suffix(".ttgir").write_text(compiled.asm["ttgir"])
    return CompiledKernel(job.kernel, job.target, registers, stores, loads, int(compiled.metadata.shared),
                          SHARED_LIMIT[job.target], job.num_warps, seconds, cubin_name,
                          job.specialization.describe())


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


Launch = tuple[Specialization, int, "int | None"]   # specialization, num_warps, num_stages


def record_launches(generated, module_path: str, sizes: Mapping[str, int]) -> dict[str, list[Launch]]:
    """Every distinct launch of every Triton kernel when the generated module runs one step at `sizes`
    (the launcher's own buffers and views, the inputs allocated as the runtime lays them out), recorded
    in a fresh process, without running a kernel."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_record, module_path, *_launch_inputs(generated, sizes), dict(sizes)).result()


def _launch_inputs(generated, sizes: Mapping[str, int]) -> tuple[dict, list]:
    """The graph inputs' shapes and types at `sizes`, and the persistent arenas they lie in."""
    g = generated.plan.graph
    shapes = {n.attrs["name"]: ([int(evaluate(d, sizes)) for d in n.shape], TORCH_DTYPES[n.dtype])
              for n in g.inputs}
    arenas = [([g.node(n).attrs["name"] for n in a.nodes], a.offsets, a.numel, TORCH_DTYPES[a.dtype])
              for a in generated.plan.memory.arenas if a.persistent]
    return shapes, arenas


class _Recorder:
    """Stands in for a Triton kernel in the generated module: `kernel[grid](*args, **cfg)` records the
    launch's specialization instead of running it."""

    def __init__(self, fn, launches: list[Launch]) -> None:
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid) -> Callable[..., None]:
        def launch(*args, **kwargs) -> None:
            entry = (specialization(self.fn, args, kwargs), kwargs.get("num_warps", 4), kwargs.get("num_stages"))
            if entry not in self.launches:
                self.launches.append(entry)
        return launch


def _record(module_path: str, shapes: dict, arenas: list, sizes: dict[str, int]) -> dict[str, list[Launch]]:
    """Runs in a worker process: the launcher on the CPU with its kernels replaced by recorders."""
    os.environ["TRITON_INTERPRET"] = "0"   # `triton.jit` functions, whose parameters the JIT specializes
    import torch

    module = _load(module_path)
    launches: dict[str, list[Launch]] = {}
    for name in module.AUTOTUNE:           # the Triton kernels (a host loop's inner ones too)
        setattr(module, name, _Recorder(getattr(module, name), launches.setdefault(name, [])))
    dtype = lambda name: getattr(torch, name.removeprefix("torch."))
    bufs = {}
    for names, offsets, numel, arena_dtype in arenas:   # parameters back to back, as the runtime relocates them
        base = torch.empty(numel, dtype=dtype(arena_dtype))
        for name, offset in zip(names, offsets):
            shape = shapes[name][0]
            bufs[name] = base[offset:offset + math.prod(shape)].view(shape)
    for name, (shape, tensor_dtype) in shapes.items():
        if name not in bufs:
            bufs[name] = torch.empty(shape, dtype=dtype(tensor_dtype))
    # Not interpreted: each kernel gets the GPU's configuration for these sizes (`_sized_config`).
    module.Program("cpu", interpret=False)(bufs, sizes)
    return launches


def jobs_for(generated, module_path: str, targets: list[str], out_dir: str | None,
             sizes: Mapping[str, int]) -> list[Job]:
    """A job per Triton kernel, distinct launch specialization and target: a host function's kernels (a scan
    step by step, attention's backward, layer norm's backward) are its inner kernels."""
    launches = record_launches(generated, module_path, sizes)
    jobs = []
    for kernel in jit_kernels(generated.kernels):
        if not launches.get(kernel.name):
            raise RuntimeError(f"{kernel.name} is not launched at sizes {dict(sizes)}")
        for spec, num_warps, num_stages in launches[kernel.name]:
            jobs += [Job(module_path, kernel.name, spec, num_warps, target, out_dir, num_stages) for target in targets]
    return jobs


def compile_all(generated, module_path: str, targets: list[str], out_dir: str | None = None,
                workers: int | None = None, log: Callable[[str], None] | None = None,
                sizes: Mapping[str, int] | None = None) -> list[CompiledKernel]:
    """Compile every kernel of a generated module for every target, in parallel, specialized as the JIT
    specializes its launches at `sizes` (default: every symbolic dimension REPRESENTATIVE, 128)."""
    sizes = sizes if sizes is not None else {s: REPRESENTATIVE for s in generated.plan.graph.symbols()}
    jobs = jobs_for(generated, module_path, targets, out_dir, sizes)
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
