"""An ONNX model's converted graph on the Triton backend (dln.runtime.onnx.backend, device "CUDA"):
on a GPU when there is one, under Triton's interpreter otherwise."""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from dln.compiler.ir import Graph
from dln.runtime.triton_backend import TritonBackend


def triton_runner(graph: Graph, constants: Mapping[str, np.ndarray]) -> Callable[[dict], dict]:
    backend = TritonBackend()
    persistent = {name: backend.asarray(array) for name, array in constants.items()}
    exe = backend.prepare(graph, persistent, {})

    def run(feeds: dict) -> dict:
        return {k: backend.to_numpy(v) for k, v in exe.run(feeds, {}).items()}
    return run
