"""The lean launcher path: a step's launches bound once per size binding, then replayed.

The generated launcher (`Program.launch`, kernels/module.py) reads like the
Triton tutorials: views of the memory plan's slots, a configuration and a
grid per kernel, `kernel[grid](...)`.  Run every step, that Python and
Triton's per-call dispatch (binding arguments, the specialization key, the
cache lookup, the grid) cost a few hundred microseconds, which at small
batches is the whole step on a GPU.  None of it changes while the sizes and
the input buffers stay the same.  So the first step of a binding runs the
launcher with every kernel wrapped in a `Recorder`, which launches it and
keeps a `Tape` of what it did; later steps with the same sizes and the same
input buffers replay the tape.

On a GPU a recorded launch of a plain `triton.jit` kernel keeps the kernel
Triton compiled for it and calls its driver launcher directly, with the
grid, the constants and the buffers' addresses resolved once (what
`CompiledKernel[grid](...)` does, without the per-call driver lookups).
Anything else — Triton's interpreter, an autotuned kernel, a kernel with
pre-run hooks, a profiler's launch hooks — is replayed through the kernel's
own `kernel[grid](...)`.  A host loop (a scan stepped on the host, a
two-stage reduction) is replayed as one call of its function, and so is a
collective's exchange across ranks (kernels/collective.py).

This file is copied into every generated module (which imports only torch
and triton) like kernels/tuning.py's `TunedKernel`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable


class Tape:
    """What one run of the launcher did, in order: calls to repeat, the outputs they leave in the workspace."""

    def __init__(self) -> None:
        self.calls: list[Callable[[Any], None]] = []   # each takes the stream (None: launch through Triton)
        self.direct = False                             # some call launches through the driver itself
        self.depth = 0                                  # > 0: inside a host loop, whose launches it repeats
        self.outputs: dict[str, Any] = {}

    def replay(self) -> dict[str, Any]:
        import triton

        stream = None
        if self.direct:
            knobs = triton.knobs.runtime
            hooks = (knobs.launch_enter_hook, knobs.launch_exit_hook)   # Triton 3.9: chains, empty when unused
            if not any(h is not None and getattr(h, "calls", True) for h in hooks):   # else a profiler listens
                driver = triton.runtime.driver.active
                stream = driver.get_current_stream(driver.get_current_device())
        for call in self.calls:
            call(stream)
        return dict(self.outputs)


class Recorder:
    """Stands in for one kernel (or host loop) of `Program.kernels` while the launcher runs for a new
    binding: does what the kernel would do and adds it to the tape."""

    def __init__(self, kernel: Any, tape: Tape) -> None:
        self.kernel, self.tape = kernel, tape

    def __getitem__(self, grid) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            compiled = self.kernel[grid](*args, **kwargs)
            if self.tape.depth == 0:
                self.tape.calls.append(prebind(self.kernel, compiled, grid, args, kwargs))
                self.tape.direct |= isinstance(self.tape.calls[-1], DirectLaunch)
        return launch

    def __call__(self, *args: Any) -> None:   # a host loop: its inner launches are its own business
        self.tape.depth += 1
        try:
            self.kernel(*args)
        finally:
            self.tape.depth -= 1
        if self.tape.depth == 0:
            kernel = self.kernel
            self.tape.calls.append(lambda stream: kernel(*args))


class Dispatch:
    """A launch replayed through the kernel's own `kernel[grid](*args, **kwargs)`."""

    def __init__(self, kernel: Any, grid: Any, args: tuple, kwargs: dict) -> None:
        self.kernel, self.grid, self.args, self.kwargs = kernel, grid, args, kwargs

    def __call__(self, stream: Any) -> None:
        self.kernel[self.grid](*self.args, **self.kwargs)


class DirectLaunch(Dispatch):
    """A launch of the kernel Triton compiled for these arguments, through its driver launcher."""

    def __init__(self, kernel: Any, compiled: Any, grid: tuple[int, int, int], bound: list, args: tuple,
                 kwargs: dict) -> None:
        super().__init__(kernel, grid, args, kwargs)   # the way back, while a profiler's hooks are set
        self.run, self.dims, self.function = compiled.run, grid, compiled.function
        self.metadata = compiled.packed_metadata
        # Tensors by address: the launcher would ask the driver about each one every launch.  The tensors
        # themselves stay referenced (self.args), so the addresses stay theirs.
        self.bound = [a.data_ptr() if hasattr(a, "data_ptr") else a for a in bound]

    def __call__(self, stream: Any) -> None:
        if stream is None:   # a profiler's hooks are set: they see the launch only through Triton's dispatch
            super().__call__(stream)
            return
        self.run(*self.dims, stream, self.function, self.metadata, None, None, None, *self.bound)


def prebind(kernel: Any, compiled: Any, grid: Any, args: tuple, kwargs: dict) -> Dispatch:
    """The launch `kernel[grid](*args, **kwargs)` (which returned `compiled`) as a call to repeat."""
    import triton

    params = getattr(kernel, "params", None)
    if (type(kernel) is not triton.runtime.jit.JITFunction or kernel.pre_run_hooks or params is None
            or not hasattr(compiled, "packed_metadata")):
        return Dispatch(kernel, grid, args, kwargs)
    # The arguments as Triton binds them: positional, then by keyword, then the parameter's default.
    values = dict(zip([p.name for p in params], args))
    for p in params[len(args):]:
        value = kwargs.get(p.name, p.default)
        if value is inspect.Parameter.empty:
            return Dispatch(kernel, grid, args, kwargs)
        values[p.name] = value
    dims = tuple(grid(values) if callable(grid) else grid)
    dims = (dims + (1, 1))[:3]
    return DirectLaunch(kernel, compiled, dims, list(values.values()), args, kwargs)


def prebound_source() -> str:
    """This file's classes, for the generated module."""
    return "\n\n".join(inspect.getsource(c) for c in (Tape, Recorder, Dispatch, DirectLaunch, prebind))
