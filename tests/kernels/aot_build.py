"""What the ahead-of-time tests (test_aot*.py) share: a generated module's kernels compiled for both
targets, and the check that products run where the precision says."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

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
