"""The differential harness: every built-in and operator on random well-formed shapes, forward and
gradient, NumPy against torch (float64) and Triton against NumPy (float32).

CI runs a sample: a fixed seed and a seed that changes every day (both in the
test id, so a failure reproduces with `DLN_DIFFERENTIAL_SEED=<seed>`).
`DLN_DIFFERENTIAL=full` (what `benchmarks/differential.py` sets) runs many
seeds per case.
"""

from __future__ import annotations

import datetime
import os

import numpy as np
import pytest

import dln
from dln.compiler.builtins import BUILTINS
from dln.compiler.ir import GroupOp, Op

from .cases import GENERATORS
from .harness import check_against_torch, check_backends, out_shape, source, used_ops


def _seeds() -> list[int]:
    if "DLN_DIFFERENTIAL_SEED" in os.environ:
        return [int(os.environ["DLN_DIFFERENTIAL_SEED"])]
    if os.environ.get("DLN_DIFFERENTIAL") == "full":
        return list(range(int(os.environ.get("DLN_DIFFERENTIAL_SEEDS", "25"))))
    return [0, 1000 + datetime.date.today().toordinal() % 100_000]


def _case(name: str, seed: int):
    # one stream per (case, seed): the same test id always draws the same case
    return GENERATORS[name](np.random.default_rng([seed, *name.encode()]))


SEEDS = _seeds()
CASES = [(name, seed) for name in sorted(GENERATORS) for seed in SEEDS]
IDS = [f"{name}-s{seed}" for name, seed in CASES]
# The random built-ins have no torch twin (torch draws other numbers): the backends check each other.
RANDOM = {name for name in GENERATORS if _case(name, 0).torch_fn is None}
TORCH_CASES = [(name, seed) for name, seed in CASES if name not in RANDOM]


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")   # torch's kl_div notice
@pytest.mark.parametrize("name,seed", TORCH_CASES, ids=[f"{name}-s{seed}" for name, seed in TORCH_CASES])
def test_numpy_matches_torch_in_float64(name, seed):
    check_against_torch(_case(name, seed), seed)


@pytest.mark.parametrize("name,seed", CASES, ids=IDS)
def test_triton_matches_numpy_in_float32(name, seed):
    check_backends(_case(name, seed), seed)


# ---- completeness: a built-in or primitive that no case reaches fails here --------------------------------------

def test_every_available_builtin_has_a_generator():
    missing = [name for name, b in BUILTINS.items() if b.category != "init" and name not in GENERATORS]
    assert missing == [], f"built-ins without a differential case: {missing}"


def test_generators_only_name_builtins_and_operators():
    unknown = [name for name in GENERATORS if not name.startswith("op:") and name not in BUILTINS]
    assert unknown == []


def test_every_primitive_is_reached():
    """Every op of the IR appears in the graphs of the cases (a few seeds, so that each generator's
    variants show), as built or as prepared to run forward or backward."""
    seen: set[Op] = set()
    for name in GENERATORS:
        for seed in range(3):
            case = _case(name, seed)
            shape = out_shape(case)
            model = dln.compile(source(case, "f64", shape, fused=False), backend="numpy")
            model.load_state_dict(case.params, strict=False)
            with np.errstate(all="ignore"):
                model.run(["y"], training=case.torch_fn is None, **case.inputs)
                model.value_and_grad("loss", **case.inputs, cot=np.zeros(shape))
            seen |= used_ops(model)
    # The collectives run only among ranks: tests/runtime/test_distributed.py and test_distributed_triton.py
    # (sync_batchnorm, on both backends, against one process) reach them.
    assert sorted(set(Op) - seen - GroupOp.Collective, key=str) == []
