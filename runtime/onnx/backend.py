"""dln as an ONNX backend (`onnx.backend.base.Backend`): what `onnx.backend.test.BackendTest` runs,
and what `dln.runtime.onnx.run` uses.

`prepare` keeps the model; each `run` converts it for the shapes and types of the arrays given
(dln.runtime.onnx.convert; one conversion per distinct signature, cached) and runs the graph on the
NumPy backend (`device="CPU"`) or on the Triton backend (`device="CUDA"` on a GPU; under Triton's
interpreter on a CPU)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from dln.compiler import pipeline
from dln.runtime.onnx import ops  # noqa: F401  (registers the converters)
from dln.runtime.onnx.convert import Converted, NeedsValue, as_computed, convert

# The largest integer input taken as known when a shape, axes or pads depend on it.
MAX_KNOWN = 4096


class DlnRep(BackendRep):
    def __init__(self, model: onnx.ModelProto, device: str = "CPU") -> None:
        self.model = model
        self.device = device
        self.names = [v.name for v in model.graph.input
                      if v.name not in {i.name for i in model.graph.initializer}]
        self._compiled: dict[tuple, tuple[Converted, Any]] = {}
        self._by_value: set[tuple] = set()   # signatures converted per value of their integer inputs

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, dict):
            feeds = {k: np.asarray(v) for k, v in inputs.items()}
        else:
            if not isinstance(inputs, (list, tuple)):
                inputs = [inputs]
            feeds = {name: np.asarray(v) for name, v in zip(self.names, inputs)}
        converted, run = self._prepared(feeds)
        computed = {k: as_computed(feeds[k]) for k in converted.inputs}
        got = run(computed) if converted.graph.outputs else {}
        outs = []
        for name, dtype in converted.outputs:
            value = converted.static_outputs[name] if name in converted.static_outputs else got[name]
            value = np.array(value)
            outs.append(value.astype(dtype) if dtype is not None and value.dtype != dtype else value)
        return tuple(outs)

    def _prepared(self, feeds: dict[str, np.ndarray]):
        """The conversion for these shapes and types; where a shape, axes or pads come from an input,
        for those integer inputs' values too (as JAX's static arguments)."""
        key = tuple((k, v.shape, v.dtype.str) for k, v in sorted(feeds.items()))
        if key in self._compiled:
            return self._compiled[key]
        shapes = {k: (v.shape, v.dtype) for k, v in feeds.items()}
        try:
            if key in self._by_value:
                raise NeedsValue
            converted = convert(self.model, shapes)
        except NeedsValue:
            self._by_value.add(key)
            known = {k: v for k, v in feeds.items() if v.dtype.kind in "iub" and v.size <= MAX_KNOWN}
            value_key = key + tuple((k, v.tobytes()) for k, v in sorted(known.items()))
            if value_key not in self._compiled:
                converted = convert(self.model, shapes, known)
                self._compiled[value_key] = (converted, self._executable(converted))
            return self._compiled[value_key]
        self._compiled[key] = (converted, self._executable(converted))
        return self._compiled[key]

    def _executable(self, converted: Converted):
        graph = pipeline.optimize(converted.graph)
        if self.device.upper() == "CPU":
            from dln.runtime.interpreter import Executable   # noqa: PLC0415
            exe = Executable(graph, persistent=converted.constants)
            return lambda feeds: exe.run(feeds, {})
        from dln.runtime.onnx.on_triton import triton_runner  # noqa: PLC0415
        return triton_runner(graph, converted.constants)


class DlnBackend(Backend):
    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return True

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> DlnRep:
        super().prepare(model, device, **kwargs)
        return DlnRep(model, device)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() in ("CPU", "CUDA")


def run(model: onnx.ModelProto | str, inputs: Sequence[np.ndarray] | dict, device: str = "CPU") -> tuple:
    """Run an ONNX model (or the path of one) on dln."""
    if isinstance(model, str):
        model = onnx.load(model)
    return DlnBackend.run_model(model, inputs, device)
