"""The Python API (INTERFACE.md): `dln.compile`, `Model`, `dln.train`.

    model = dln.compile("mlp.dln", backend="numpy", hidden=256)
    out = model(x=x)                                   # evaluation mode
    loss, grads = model.value_and_grad("loss", x=x, y=y)
    model.load_state_dict(torch_module.state_dict())

Arrays may be NumPy arrays or torch tensors; results come back as the kind
given.  Parameters live in the backend's memory; executables are prepared
once per request and reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dln.compiler import pipeline
from dln.compiler.autodiff import grad as grad_graph
from dln.compiler.build import BuiltModel, InputInfo
from dln.compiler.ir import Graph, Op
from dln.compiler.limits import DEFAULT_LIMITS, Limits
from dln.compiler.printer import format_graph
from dln.compiler.program import Program
from dln.dsl.diagnostics import Diagnostic, DlnError, Note
from dln.runtime import binding, init
from dln.runtime.backends import Backend, get_backend


class Model:
    """A compiled `.dln` model: parameters plus prepared graphs."""

    def __init__(self, program: Program, name: str | None = None, hparams: Mapping[str, Any] | None = None,
                 backend: str | None = None, seed: int = 0, from_text: bool = False, debug: bool = False,
                 precision: str | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
        self.program = program
        self.debug = debug
        self.hparams_given = dict(hparams or {})
        self.from_text = from_text
        self.limits = limits
        self.spec: BuiltModel = pipeline.build_model(program, name, self.hparams_given, training=False,
                                                     from_text=from_text, limits=limits)
        self.name = self.spec.name
        self.backend: Backend = get_backend(backend, precision)
        rng = np.random.default_rng(seed)
        self._params: dict[str, Any] = init.draw_all(self.spec.params, rng, self.backend.asarray)
        self._train_spec: BuiltModel | None = None
        self._prepared: dict[tuple, tuple[Graph, Any]] = {}
        self._rng_seed = seed
        self._rng_step = 0

    # ---- what the compiler made ------------------------------------------------------------------------
    @property
    def hparams(self) -> dict[str, Any]:
        return dict(self.spec.hparams)

    @property
    def train_spec(self) -> BuiltModel:
        if self._train_spec is None:
            self._train_spec = pipeline.build_model(self.program, self.name, self.hparams_given, training=True,
                                                    from_text=self.from_text, limits=self.limits)
        return self._train_spec

    @property
    def inputs(self) -> dict[str, InputInfo]:
        return {i.name: i for i in self.spec.inputs}

    @property
    def outputs(self) -> list[str]:
        return self.spec.outputs

    @property
    def ir(self) -> str:
        """The forward graph of the declared outputs, as text."""
        return format_graph(pipeline.forward_graph(self.spec))

    @property
    def backward_ir(self) -> str:
        """The training step (forward, backward, optimizer update) of the file's train section, as text."""
        from dln.runtime.train import default_objective

        step = pipeline.train_step(self.train_spec, default_objective(self))
        return format_graph(step.graph)

    @property
    def kernels(self) -> str:
        """The generated Triton kernels of the training step, as Python source."""
        from dln.kernels.module import generate_module
        from dln.runtime.train import default_objective

        step = pipeline.train_step(self.train_spec, default_objective(self))
        return generate_module(step.graph).source

    # ---- parameters -------------------------------------------------------------------------------------
    def parameters(self) -> dict[str, np.ndarray]:
        return {k: self.backend.to_numpy(v).copy() for k, v in self._params.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.parameters()

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Copy values in by name; a PyTorch state_dict of the same architecture loads."""
        arrays = {k: binding.to_numpy(v) for k, v in state.items()}
        missing = [k for k in self._params if k not in arrays]
        unexpected = [k for k in arrays if k not in self._params]
        problems = []
        if strict and missing:
            problems.append(f"missing: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected: {', '.join(unexpected)}")
        for k, v in arrays.items():
            if k in self._params:
                want = tuple(self.backend.to_numpy(self._params[k]).shape)
                if tuple(v.shape) != want:
                    problems.append(f"{k} has shape {tuple(v.shape)}, the model's is {want}")
        if problems:
            raise DlnError(Diagnostic("E0703", f"the weights do not match model {self.name}: " + "; ".join(problems),
                                      self.spec.decl.name.span))
        for k, v in arrays.items():
            if k in self._params:
                self.backend.copy_into(self._params[k], v)

    def save(self, path: str | Path) -> None:
        from dln.runtime.checkpoint import save_arrays

        save_arrays(path, self.parameters(), {"model": self.name})

    def load(self, path: str | Path) -> None:
        from dln.runtime.checkpoint import load_arrays

        self.load_state_dict(load_arrays(path))

    # ---- running ----------------------------------------------------------------------------------------------
    def __call__(self, **inputs: Any) -> dict[str, Any]:
        """The declared outputs, in evaluation mode."""
        return self.run(None, **inputs)

    def run(self, outputs: list[str] | None = None, training: bool = False, **inputs: Any) -> dict[str, Any]:
        """Any named values of the model (declared outputs by default)."""
        spec = self.train_spec if training else self.spec
        names = tuple(outputs) if outputs is not None else tuple(spec.outputs)
        for n in names:
            if n not in spec.values and n not in spec.graph.output_names and n not in spec.metrics:
                raise DlnError(Diagnostic("E0602", f"model {self.name} has no value '{n}'", spec.decl.name.span))
        key = ("run", training, names)
        if key not in self._prepared:
            graph = pipeline.forward_graph(spec, names, self.debug)
            self._prepared[key] = (graph, self.backend.prepare(graph, self._params, {}))
        graph, prepared = self._prepared[key]
        results = self._execute(spec, graph, prepared, inputs)
        return _as_kind(results, inputs)

    def value_and_grad(self, loss: str = "loss", **inputs: Any) -> tuple[Any, dict[str, Any]]:
        """The value of scalar `loss` and its gradient for every parameter, in training mode."""
        spec = self.train_spec
        if loss not in spec.values:
            raise DlnError(Diagnostic("E0602", f"model {self.name} has no value '{loss}'", spec.decl.name.span))
        key = ("grad", loss)
        if key not in self._prepared:
            params = [p.node for p in spec.params]
            full, grads, _ = grad_graph(spec.graph, spec.values[loss], params)
            outs = [("loss", spec.values[loss])] + [(f"grad:{p.name}", grads[p.node]) for p in spec.params
                                                    if grads[p.node] is not None]
            graph = pipeline.optimize(full.with_outputs(outs), self.debug)
            self._prepared[key] = (graph, self.backend.prepare(graph, self._params, {}))
        graph, prepared = self._prepared[key]
        results = self._execute(spec, graph, prepared, inputs)
        grads = {}
        for p in spec.params:
            g = results.get(f"grad:{p.name}")
            grads[p.name] = g if g is not None else np.zeros(tuple(int(d) for d in p.type.shape),
                                                             dtype=np.asarray(self.parameters()[p.name]).dtype)
        value = results["loss"]
        converted = _as_kind({"loss": value, **grads}, inputs)
        return converted.pop("loss"), converted

    def _execute(self, spec: BuiltModel, graph: Graph, prepared: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
        feeds, env = self.feeds(spec, graph, inputs)
        if "rng.seed" in feeds:
            self._rng_step += 1
        out = prepared.run(feeds, env)
        return {k: self.backend.to_numpy(v).copy() for k, v in out.items()}

    def feeds(self, spec: BuiltModel, graph: Graph, inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict]:
        """Check `inputs` against the graph's needs; the arrays to feed and the symbol values."""
        infos = {i.name: i for i in spec.inputs}
        for name in inputs:
            if name not in infos:
                close = ", ".join(infos) or "none"
                raise DlnError(Diagnostic("E0701", f"model {self.name} has no input '{name}'", spec.decl.name.span,
                                          (Note(f"inputs: {close}"),)))
        needed = [n.attrs["name"] for n in graph.nodes if n.op is Op.INPUT and n.attrs["role"] == "input"]
        symbols = graph.symbols()
        for info in spec.inputs:  # inputs that only give a dimension the graph uses are needed too
            if info.name not in needed and any(str(d) in symbols for d in info.type.shape):
                if info.name in inputs:
                    needed.append(info.name)
        for name in needed:
            if name not in inputs:
                raise DlnError(Diagnostic("E0701", f"missing input '{name}'", infos[name].span))
        arrays = {name: binding.convert(infos[name], inputs[name]) for name in needed}
        env = binding.bind([infos[n] for n in needed], arrays, graph.constraints)
        unknown = symbols - env.keys()
        if unknown:
            givers = [i.name for i in spec.inputs if any(str(d) in unknown for d in i.type.shape)]
            raise DlnError(Diagnostic("E0701", f"dimension {', '.join(sorted(unknown))} is unknown: pass input "
                                               f"{' or '.join(repr(g) for g in givers) or '?'}",
                                      spec.decl.name.span))
        feeds: dict[str, Any] = dict(arrays)
        if graph.input_named("rng.seed") is not None:
            feeds["rng.seed"] = np.array(self._rng_seed, np.int64)
            feeds["rng.step"] = np.array(self._rng_step, np.int64)
        return feeds, env

    def as_torch(self):
        """A torch.nn.Module whose forward and backward run the compiled graphs."""
        from dln.runtime.torch_module import as_torch

        return as_torch(self)


def _as_kind(results: dict[str, np.ndarray], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Results as torch tensors when any input was one, else as NumPy arrays."""
    if any(type(v).__module__.startswith("torch") for v in inputs.values()):
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in results.items()}
    return results


def compile(source: str | Path, backend: str | None = None, model: str | None = None, seed: int = 0,
            debug: bool = False, precision: str | None = None, max_nodes: int = DEFAULT_LIMITS.max_nodes,
            max_unroll: int = DEFAULT_LIMITS.max_unroll, **hparams: Any) -> Model:
    """Compile a `.dln` file (a path) or source text; keyword arguments override hyperparameters.

    `backend`: "numpy" or "triton" (default: triton with a CUDA GPU, else numpy).  `precision` (Triton):
    "ieee" exact fp32 matrix products (default), or "tf32", "tf32x3", "bf16x3" tensor-core modes.
    `max_nodes`, `max_unroll`: bounds on the model's forward graph and its `repeat` iterations
    (dln.compiler.limits); a program past them is an error E0312 rather than a compile without end."""
    program = pipeline.load(source)
    return Model(program, model, hparams, backend, seed=seed, debug=debug, precision=precision,
                 limits=Limits(max_nodes, max_unroll))


def train(source: str | Path, backend: str | None = None, max_nodes: int = DEFAULT_LIMITS.max_nodes,
          max_unroll: int = DEFAULT_LIMITS.max_unroll, **overrides: Any):
    """Train as the file's train section says; keyword arguments override settings
    (epochs, batch, seed, checkpoint, ...) and hyperparameters (anything else).  `max_nodes`,
    `max_unroll`: as for `compile`."""
    from dln.runtime.train import train_file

    return train_file(source, backend=backend, limits=Limits(max_nodes, max_unroll), **overrides)
