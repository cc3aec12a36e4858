"""What the ahead-of-time tests (test_aot*.py) share: a generated module's kernels compiled for both
targets, and the check that products run where the precision says."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from dln.kernels import aot
from dln.kernels.aot import compile_all, disassemble

TARGETS = ["sm_80", "sm_90"]


def compile_kernels(generated, kernels: list, out: Path) -> list:
    """`kernels` (some of `generated`'s) compiled for sm_80 and sm_90, the module's source and the
    cubins written under `out`."""
    module = out / "kernels.py"
    module.write_text(generated.source)
    return compile_all(dataclasses.replace(generated, kernels=kernels), str(module), TARGETS, str(out))


def check_products(results: list, out: Path, precision: str, tensor_cores: tuple[str, ...] = ("HMMA", "HGMMA")) -> None:
    """Exact fp32 products ("ieee") on the FMA units, no tensor-core instruction; otherwise (tf32) one
    of `tensor_cores` in every kernel."""
    for r in results:
        sass = disassemble(out / r.cubin)
        mma = re.findall(r"\b(HMMA|HGMMA)\b", sass)
        if precision == "ieee":
            assert not mma and "FFMA" in sass, r.name
        else:
            assert set(mma) & set(tensor_cores), (r.name, r.target)


# ---- many modules at once: each distinct kernel built once ----------------------------------------------------

def canonical_source(kernel) -> str:
    """A kernel's source as the compiler sees it: its name, docstring, comments and pointer names (which
    name the model's buffers) replaced, so that the same product in two models or two objectives (a GAN's
    discriminator in both of its steps) is one build."""
    text = kernel.source.replace(f"def {kernel.name}(", "def kernel(", 1)
    text = re.sub(r'"""(.|\n)*?"""', '""', text, count=1)
    text = re.sub(r"\s*#[^\n]*", "", text)
    for i, p in enumerate(kernel.pointers):
        text = re.sub(rf"\b{re.escape(p.name)}\b", f"ptr{i}", text)
    return text


def build_key(kernel, job) -> tuple:
    """What a build depends on: the canonical source, the JIT's specialization (by position), the launch
    options and the target."""
    spec = job.specialization
    return (canonical_source(kernel), tuple(spec.signature.values()), tuple(sorted(spec.constexprs.items())),
            tuple(sorted((k, repr(v)) for k, v in spec.attrs.items())), job.num_warps, job.num_stages, job.target)


def build_one(job) -> tuple:
    """`aot`'s build and report of one job, with one ptxas run instead of two: registers and spills from
    the log of the ptxas Triton runs (`aot._ptxas_report` again only when Triton's cache held the
    kernel); and the tensor-core instructions of its SASS.  Runs in a worker process."""
    import contextlib
    import io
    import os
    import time

    os.environ["TRITON_INTERPRET"] = "0"   # before Triton is imported in this process
    from triton import knobs

    knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    began = time.perf_counter()
    with contextlib.redirect_stdout(log):
        compiled = aot.build(job)
    seconds = time.perf_counter() - began
    report = re.search(r"Used (\d+) registers", log.getvalue())
    if report:
        registers = int(report.group(1))
        stores = int(re.search(r"(\d+) bytes spill stores", log.getvalue()).group(1))
        loads = int(re.search(r"(\d+) bytes spill loads", log.getvalue()).group(1))
    else:
        arch = "sm_90a" if job.target == "sm_90" else job.target
        registers, stores, loads = aot._ptxas_report(compiled.asm["ptx"], arch)
    cubin = Path(job.out_dir, f"{job.kernel}.{job.target}.cubin")
    cubin.write_bytes(compiled.asm["cubin"])
    mma = frozenset(re.findall(r"\b(HMMA|HGMMA)\b", disassemble(cubin)))
    result = aot.CompiledKernel(job.kernel, job.target, registers, stores, loads, int(compiled.metadata.shared),
                                aot.SHARED_LIMIT[job.target], job.num_warps, seconds, cubin.name,
                                job.specialization.describe())
    return result, mma
