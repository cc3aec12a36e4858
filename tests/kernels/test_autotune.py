"""Autotuning leaves the model's state as one untuned step leaves it, and remembers its choices.

Tuning times each candidate by running the kernel on the live buffers; without the arguments the
generator lists restored (`TUNING`), Adam's update would be applied once per timed run and the random
counter advanced as often.  No GPU: triton.autotune's own Autotuner runs under the interpreter, with a
benchmark that launches each candidate three times as `do_bench` does."""

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import triton

import dln
from dln.compiler import pipeline
from dln.kernels.module import generate_module
from dln.runtime.train import recipe_for
from dln.runtime.triton_backend import load_module, relocate

MODEL = Path(__file__).resolve().parents[1] / "programs" / "tune_in_place.dln"
ENV = {"B": 4}


@pytest.fixture(scope="module")
def step():
    """The training step's module, and inputs for one step (positive floats: Adam's second moment)."""
    model = dln.compile(str(MODEL))
    train = pipeline.train_step(model.train_spec, recipe_for(model).objectives[0])
    generated = generate_module(train.graph, train.donate)
    rng = np.random.default_rng(0)
    inputs = {}
    for n in generated.plan.graph.inputs:
        shape = tuple(int(d if isinstance(d, int) else d.evaluate(ENV)) for d in n.shape)
        inputs[n.attrs["name"]] = (rng.uniform(0.5, 1.5, shape).astype(np.float32) if n.dtype.is_float
                                   else rng.integers(0, 5, shape).astype(np.int64))
    return generated, load_module(generated.source, {"test": "autotune"}), inputs


class Bench:
    """`do_bench` for the interpreter: launches the candidate three times (warm-up and repetitions), reports
    made-up times in which the last candidate timed wins."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, kernel_call, quantiles):
        for _ in range(3):
            kernel_call()
        self.runs += 1
        return [-float(self.runs)] * len(quantiles)


def one_step(generated, module, inputs, **program):
    """The step's outputs and, after it, every input buffer (the state written in place)."""
    bufs = {k: torch.from_numpy(v.copy()) for k, v in inputs.items()}
    for names in generated.persistent_arenas:
        relocate([bufs[n] for n in names], torch)
    out = module.Program("cpu", interpret=True, **program)(bufs, dict(ENV))
    return {**{k: v.clone().numpy() for k, v in out.items()}, **{f"in:{k}": v.numpy() for k, v in bufs.items()}}


def assert_same(expected, got):
    assert expected.keys() == got.keys()
    for k in expected:   # candidates differ in block sizes, so in the order of a few sums
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_tuning_restores_what_kernels_write_in_place(step):
    generated, module, _ = step
    tuning = module.TUNING
    donated = generated.plan.memory.donated
    in_place = {m for group in generated.plan.groups for m in group.stores if m in donated}
    for kernel in generated.kernels:
        names = {p.name: p.node for p in kernel.pointers}
        assert set(tuning[kernel.name]["restore_value"]) == {p for p, m in names.items() if m in in_place}
        assert set(tuning[kernel.name]["reset_to_zero"]) == {p for p, m in names.items() if m in kernel.zero_outputs}
    restored = [n for hooks in tuning.values() for n in hooks["restore_value"]]
    # Adam's parameters and both moments, for the embedding and both layers' weights and biases; the counter.
    assert sum("exp_avg_sq" in n for n in restored) == 5 and any("rng_step" in n for n in restored)
    assert [n for hooks in tuning.values() for n in hooks["reset_to_zero"]] == ["p93_grad_embed_weight"]   # scatter-add


def test_a_tuned_step_equals_an_untuned_one(step, tmp_path):
    generated, module, inputs = step
    expected = one_step(generated, module, inputs)
    bench = Bench()
    tuner = functools.partial(triton.autotune, do_bench=bench)
    assert_same(expected, one_step(generated, module, inputs, autotune=tuner, tune_cache=str(tmp_path)))
    assert bench.runs > len(module.AUTOTUNE)
    # The choices were kept: a second program tunes nothing and runs them.
    timed = bench.runs
    assert_same(expected, one_step(generated, module, inputs, autotune=tuner, tune_cache=str(tmp_path)))
    assert bench.runs == timed


def test_tuning_without_the_restores_corrupts_the_state(step, monkeypatch):
    """The regression: what `Program(autotune=True)` did before the restores, on this step."""
    generated, module, inputs = step
    expected = one_step(generated, module, inputs)
    monkeypatch.setattr(module, "TUNING", {k: dict(v, restore_value=[], reset_to_zero=[])
                                           for k, v in module.TUNING.items()})
    got = one_step(generated, module, inputs, autotune=functools.partial(triton.autotune, do_bench=Bench()),
                   tune_cache=None)
    assert got["in:rng.step"] > expected["in:rng.step"]   # advanced once per timed run
    with pytest.raises(AssertionError):
        assert_same(expected, got)


def test_the_cache_is_json_per_device_and_shape_range(step, tmp_path):
    generated, module, inputs = step
    tuner = functools.partial(triton.autotune, do_bench=Bench())
    one_step(generated, module, inputs, autotune=tuner, tune_cache=str(tmp_path))
    name = next(k for k in module.AUTOTUNE if module.KEYS[k] == ["s_B"])
    data = json.loads((tmp_path / module.TUNING[name]["cache"]).read_text())
    choice = data["cpu"]["s_B<=4"]
    assert set(choice) == {"kwargs", "num_warps", "num_stages"}
    assert choice["kwargs"] in [{k: v for k, v in c.items() if k not in ("num_warps", "num_stages")}
                                for c in module.AUTOTUNE[name]]


def test_a_damaged_cache_is_ignored_with_a_warning(step, tmp_path):
    generated, module, inputs = step
    expected = one_step(generated, module, inputs)
    name = next(iter(module.AUTOTUNE))
    (tmp_path / module.TUNING[name]["cache"]).write_text('{"cpu": {"s_B<=4": {"kwargs": ')
    bench = Bench()
    with pytest.warns(UserWarning, match="ignoring the autotuning cache"):
        got = one_step(generated, module, inputs, autotune=functools.partial(triton.autotune, do_bench=bench),
                       tune_cache=str(tmp_path))
    assert_same(expected, got)
    assert json.loads((tmp_path / module.TUNING[name]["cache"]).read_text())["cpu"]
