"""Whole training steps as CUDA graphs, replayed while the shapes stay the same.

Even prebound (kernels/prebound.py), a step launches each kernel from Python.
A CUDA graph records the launches of one step once and replays them with one
call.  A graph replays the addresses it captured, so everything a step reads
must already be on the device in buffers that stay put: the persistent
buffers (parameters, optimizer moments, the random counter `rng.step`, which
the step advances on the device), the memory plan's workspace, and the feeds
— the batch, the learning rate and the optimizer's step count — which
`TritonExecutable` copies into fixed buffers of the size binding before every
step (runtime/triton_backend.py).

A binding's first step runs without a graph (it compiles the kernels and
records the tape), its second is captured and replayed.  No graph is made on
the CPU or under Triton's interpreter; for more than `MAX_BINDINGS` size
bindings (shapes that keep changing); when the program's workspace was
reallocated since a capture (the graph would write to freed memory: all
graphs are dropped); for a step that exchanges values with other ranks
between its kernels (a collective: the host's, and weighted anew every
step); or when a capture fails (a host-side decision inside the
step, a launch that cannot be captured).  Then the lean launcher runs, and
the `dln.triton` logger says why at debug level.

The capture follows torch's documented use (`torch.cuda.CUDAGraph`,
`with torch.cuda.graph(g):`, `g.replay()`); the graph factory and the capture
context are parameters, so the bookkeeping is tested on the CPU with a fake.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, ContextManager, Hashable, Mapping

log = logging.getLogger("dln.triton")

WARMUP = 1          # steps of a binding before it is captured: the first compiles and records its launches
MAX_BINDINGS = 4    # graphs kept at once; a binding beyond them runs on the lean launcher


def why_no_graphs(device: Any, program: Any, enabled: bool) -> str | None:
    """Why no step of `program` on `device` can be a CUDA graph, or None when it can."""
    if not enabled:
        return "turned off"
    if device.type != "cuda":
        return f"the device is {device.type!r}, not a CUDA GPU"
    if program.interpret:
        return "the kernels run under Triton's interpreter"
    if getattr(program, "collectives", 0):
        return ("the step sums values across ranks on the host between kernels (sync_batchnorm's all_reduce, "
                "kernels/collective.py)")
    return None


class StepGraphs:
    """The CUDA graphs of one program's step, one per size binding and set of buffers."""

    def __init__(self, program: Any, reason: str | None, new_graph: Callable[[], Any] | None = None,
                 capturing: Callable[[Any], ContextManager] | None = None) -> None:
        self.program = program
        self.reason = reason            # None: graphs are made; else why not
        self.new_graph, self.capturing = new_graph, capturing
        if reason is None and new_graph is None:
            import torch

            self.new_graph, self.capturing = torch.cuda.CUDAGraph, torch.cuda.graph
        self.seen: dict[Hashable, int] = {}
        self.graphs: dict[Hashable, tuple[Any, dict[str, Any], Mapping[str, Any]]] = {}
        self.refused: set[Hashable] = set()
        self.generation = program.generation
        if reason is not None:
            log.debug("no CUDA graphs: %s; every step runs on the lean launcher", reason)

    def run(self, key: Hashable, bufs: Mapping[str, Any], sizes: Mapping[str, int]) -> dict[str, Any] | None:
        """The step's outputs, replayed from the graph of `key` (captured now if the binding is warm), or
        None: run the step without a graph.  `key` names the sizes and every buffer's address."""
        if self.reason is not None:
            return None
        if self.program.generation != self.generation:   # (a binding's first step allocates: no graph yet)
            if self.graphs:
                log.debug("the workspace was reallocated: %d CUDA graphs dropped", len(self.graphs))
            self.graphs.clear()
            self.generation = self.program.generation
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(key, bufs, sizes)
            if entry is None:
                return None
        graph, outputs, _ = entry
        graph.replay()
        return dict(outputs)

    def _capture(self, key: Hashable, bufs: Mapping[str, Any], sizes: Mapping[str, int]):
        if key in self.refused:
            return None
        seen = self.seen[key] = self.seen.get(key, 0) + 1
        if seen <= WARMUP:
            return None
        if len(self.graphs) >= MAX_BINDINGS:
            self.refused.add(key)
            log.debug("no CUDA graph for sizes %s: the shapes keep changing (%d bindings captured already); "
                      "the lean launcher runs it", dict(sizes), len(self.graphs))
            return None
        graph = self.new_graph()
        try:
            with self.capturing(graph):
                outputs = self.program(bufs, sizes)
        except Exception as e:   # noqa: BLE001 — any failure to capture means: run without a graph
            self.refused.add(key)
            log.debug("no CUDA graph for sizes %s: the capture failed (%s: %s); the lean launcher runs it",
                      dict(sizes), type(e).__name__, e)
            return None
        if self.program.generation != self.generation:   # it allocated while capturing: not replayable
            self.refused.add(key)
            log.debug("no CUDA graph for sizes %s: the step allocated its workspace while captured", dict(sizes))
            return None
        log.debug("CUDA graph captured for sizes %s", dict(sizes))
        # The buffers stay referenced with the graph: it reads and writes them by address.
        entry = self.graphs[key] = (graph, outputs, dict(bufs))
        return entry
