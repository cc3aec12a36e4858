"""The lean launcher path (kernels/prebound.py): a binding's launches recorded once, replayed after.

Replaying must do exactly what the readable launcher does: the same training steps through both
give the same bits, across a change of batch size and back.  On a GPU the replay launches the
compiled kernel through its driver launcher; without a GPU, Triton's own dispatch (run on a
stand-in driver whose compiled kernel records its launches) is the oracle for the grid and the
arguments the direct launch passes.
"""

from __future__ import annotations

import os

import numpy as np
import torch

import dln
from dln.kernels.module import generate_module
from dln.kernels.prebound import DirectLaunch, Dispatch, Tape, prebind
from dln.runtime.triton_backend import load_module

from .conftest import graph_inputs

SOURCE = """
model m() {
    input x: f32[B, 7]
    input y: i64[B]
    loss = cross_entropy(x -> linear(11) -> relu -> dropout(0.3) -> linear(5), y)
    output loss
}
train m { optimizer = adam(lr = 0.01)  minimize loss }
"""


def _batch(rng: np.random.Generator, b: int) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((b, 7)).astype(np.float32), "y": rng.integers(0, 5, b).astype(np.int64)}


def _train(prebound: bool, batches: list[int]) -> tuple[list[float], dict[str, np.ndarray], int]:
    model = dln.compile(SOURCE, backend="triton", seed=3)
    opt = dln.optimizer(model, "adam", lr=0.01, schedule="cosine", total_steps=len(batches))
    program = opt.prepared.program
    program.prebound = prebound
    rng = np.random.default_rng(0)
    losses = [opt.step(**_batch(rng, b)) for b in batches]
    return losses, model.parameters(), len(program._tapes)


def test_replayed_steps_match_the_launcher_bit_for_bit():
    """Dropout (the random counter advanced in place), Adam (moments in place), a learning rate that
    changes every step, and a batch size that changes and comes back."""
    batches = [9, 9, 9, 5, 9, 5]
    want_losses, want_params, none = _train(False, batches)
    got_losses, got_params, tapes = _train(True, batches)
    assert none == 0 and tapes >= 1
    assert got_losses == want_losses
    for name, value in want_params.items():
        np.testing.assert_array_equal(got_params[name], value, err_msg=name)


def test_a_tape_is_dropped_when_the_workspace_grows():
    """A larger binding reallocates the memory plan's slots: tapes launching on the old ones go."""
    model = dln.compile(SOURCE, backend="triton", seed=3)
    opt = dln.optimizer(model, "adam", lr=0.01)
    program = opt.prepared.program
    rng = np.random.default_rng(1)
    opt.step(**_batch(rng, 4))
    first = program.generation
    assert len(program._tapes) == 1
    opt.step(**_batch(rng, 13))
    assert program.generation > first and len(program._tapes) == 1   # only the new binding's
    opt.step(**_batch(rng, 4))                                         # fits the grown slots: no new buffer
    assert len(program._tapes) == 2


def _step():
    from dln.compiler import pipeline
    from dln.runtime.train import default_objective

    model = dln.compile(SOURCE, backend="numpy")
    return pipeline.train_step(model.train_spec, default_objective(model))


def _step_bufs(step, rng: np.random.Generator, b: int) -> dict[str, torch.Tensor]:
    """Fresh tensors for every input of a training step at batch `b` (of the graph's types)."""
    bufs = {k: torch.from_numpy(v) for k, v in graph_inputs(step.graph, {"B": b}, rng).items()}
    bufs["lr"], bufs["step"] = torch.tensor(0.01, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    return bufs


def test_new_buffers_every_call_turn_recording_off():
    """A caller passing fresh tensors each call (a scan body's carries) gets the launcher itself."""
    step = _step()
    module = load_module(generate_module(step.graph, step.donate).source, {"test": "fresh"})
    program = module.Program("cpu", interpret=True)
    rng = np.random.default_rng(2)
    for _ in range(12):
        program(_step_bufs(step, rng, 3), {"B": 3})
    assert program.prebound is False


class _Compiled:
    """A compiled kernel whose driver launcher records what it is given."""

    function = 1234
    packed_metadata = ("meta",)

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def run(self, *args) -> None:
        self.calls.append(args)

    def launch_metadata(self, grid, stream, *args):
        return None


class _Driver:
    def __init__(self) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", 90, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 77

    def get_current_target(self):
        return self.target


def _launched(call: tuple) -> tuple:
    """A driver launch, with tensors as addresses and the hooks left out: (grid, stream, arguments)."""
    grid, stream, args = call[:3], call[3], call[9:]
    return grid, stream, tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args)


def test_direct_launches_pass_what_tritons_dispatch_passes(monkeypatch):
    """Every kernel of a training step, launched through `JITFunction.run` on the first call and
    directly after: the same grids, stream, constants and addresses, in the same order."""
    import triton
    from triton.runtime.jit import JITFunction

    step = _step()
    monkeypatch.setitem(os.environ, "TRITON_INTERPRET", "0")   # real `triton.jit` functions
    generated = generate_module(step.graph, step.donate)
    module = load_module(generated.source, {"test": "direct"})
    monkeypatch.setattr(triton.runtime.driver, "_active", _Driver())
    calls: list = []
    for fn in vars(module).values():
        if isinstance(fn, JITFunction):
            def compile_(key, signature, device, constexprs, options, attrs, warmup, fn=fn):
                kernel = fn.device_caches[device][0][key] = _Compiled(calls)
                return kernel
            monkeypatch.setattr(fn, "_do_compile", compile_)
    program = module.Program("cpu", interpret=False)
    bufs = _step_bufs(step, np.random.default_rng(4), 6)
    program(bufs, {"B": 6})
    dispatched = [_launched(c) for c in calls]
    tape = next(iter(program._tapes.values()))
    assert dispatched and all(isinstance(c, DirectLaunch) for c in tape.calls if isinstance(c, Dispatch))
    calls.clear()
    program(bufs, {"B": 6})
    assert [_launched(c) for c in calls] == dispatched
    assert all(c[6:9] == (None, None, None) for c in calls)          # no metadata, no hooks


def test_a_profilers_hooks_send_launches_back_through_dispatch(monkeypatch):
    """With a launch hook set (a profiler), a direct launch goes through `kernel[grid](...)` instead."""
    import triton

    monkeypatch.setattr(triton.runtime.driver, "_active", _Driver())
    seen: list = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append(("dispatch", grid, args, kwargs))

    compiled = _Compiled(seen)
    x = torch.zeros(3)
    tape = Tape()
    tape.calls.append(DirectLaunch(Kernel(), compiled, (2, 1, 1), [x, 5, 16], (x, 5), {"BLOCK": 16}))
    tape.direct = True
    tape.replay()
    assert seen == [(2, 1, 1, 77, 1234, ("meta",), None, None, None, x.data_ptr(), 5, 16)]
    seen.clear()
    hook = lambda metadata: None  # noqa: E731
    triton.knobs.runtime.launch_enter_hook.add(hook)
    try:
        tape.replay()
    finally:
        triton.knobs.runtime.launch_enter_hook.remove(hook)
    assert seen == [("dispatch", (2, 1, 1), (x, 5), {"BLOCK": 16})]


def test_only_plain_jit_kernels_launch_directly():
    """Under the interpreter, or through a tuner, a launch is replayed through the kernel itself, with
    the grid as given (a tuner's grid depends on the configuration it picks)."""
    seen: list = []

    class Tuned:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append((grid, args, kwargs))

    grid = lambda meta: (meta["BLOCK"],)  # noqa: E731
    x = torch.zeros(2)
    launch = prebind(Tuned(), None, grid, (x,), {"n": 2})
    assert type(launch) is Dispatch
    launch(None)
    assert seen == [(grid, (x,), {"n": 2})]
