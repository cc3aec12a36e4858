"""`model.as_torch()`: a compiled model as a `torch.nn.Module`.

Forward runs the model's compiled forward graph; backward runs a graph dln
derives for it: with one cotangent input per output, the scalar
sum(output * cotangent) is differentiated with respect to the parameters and
the float inputs — exactly the vector-Jacobian product autograd asks for.
Parameters are `nn.Parameter`s (names with `.` spelled `__`) over the model's
own memory: a torch optimizer stepping the module changes what `model(...)`
computes, and `model.load_state_dict`, `model.load` or training through dln
change what the module computes (every runtime path writes parameters in
place).  The model state (running statistics) is the module's buffers, over
the model's memory in the same way; a forward in training mode updates them,
as torch's BatchNorm does.  `module.to(...)`, `.double()` and the like make new
tensors, as they do in torch, and so end the sharing.  Training mode follows
`module.train()`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dln.compiler import pipeline
from dln.compiler.autodiff import grad
from dln.compiler.build import BuiltModel
from dln.compiler.emit import GraphBuilder
from dln.compiler.ir import Graph, Op
from dln.dsl.diagnostics import Diagnostic, DlnError, Note


def as_torch(model):
    try:
        import torch
    except ImportError:
        raise DlnError(Diagnostic("E0601", "as_torch() needs the package torch (pip install torch)")) from None

    class CompiledModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dln_model = model
            for name in model._params:
                self.register_parameter(name.replace(".", "__"), shared_parameter(model, name))
            for name in model._state:
                self.register_buffer(name.replace(".", "__"), shared_buffer(model, name))
            self._graphs: dict[bool, tuple] = {}
            self._executables: dict[int, tuple] = {}   # graph id -> (graph, backend executable)

        def forward(self, *args: Any, **kwargs: Any):
            spec = model.train_spec if self.training else model.spec
            inputs = _named_inputs(model, spec, args, kwargs)
            graphs = self._prepared(self.training)
            keys = sorted(inputs)
            params = [getattr(self, p.name.replace(".", "__")) for p in spec.params]
            outputs = _Apply.apply(self, graphs, keys, len(params), *[inputs[k] for k in keys], *params)
            return outputs[0] if len(outputs) == 1 else outputs

        def _prepared(self, training: bool):
            if training not in self._graphs:
                spec = model.train_spec if training else model.spec
                forward = pipeline.forward_graph(spec)
                self._graphs[training] = (spec, forward, _vjp_graph(spec, forward))
            return self._graphs[training]

    class _Apply(torch.autograd.Function):
        @staticmethod
        def forward(ctx, module, graphs, keys, n_params, *tensors):
            spec, forward, backward = graphs
            inputs = dict(zip(keys, tensors[:len(keys)]))
            params = {p.name: t for p, t in zip(spec.params, tensors[len(keys):])}
            rng = (model._rng_seed, model._rng_step)
            model._rng_step += 1
            # The state as this forward read it, for its backward (the run may update it).
            state = {k: torch.from_numpy(v) for k, v in model.buffers().items()}
            out = _run(model, module._executables, spec, forward, params, inputs, rng, state)
            for out_name, name in spec.state_donations().items():
                model.backend.copy_into(model._state[name], out.pop(out_name).cpu().numpy())
            ctx.saved = (module, graphs, keys, inputs, params, rng, state)
            ctx.n_inputs = len(keys)
            return tuple(out[name] for name in forward.output_names if name in out)

        @staticmethod
        def backward(ctx, *cotangents):
            module, graphs, keys, inputs, params, rng, state = ctx.saved
            spec, forward, backward = graphs
            declared = [name for name in forward.output_names if name not in spec.state_donations()]
            cot = {f"cot:{name}": c.detach().contiguous() for name, c in zip(declared, cotangents)}
            out = _run(model, module._executables, spec, backward, params, inputs, rng, {**cot, **state})
            input_grads = [out.get(f"grad:{k}") for k in keys]
            param_grads = [out[f"grad:{p.name}"] if f"grad:{p.name}" in out else torch.zeros_like(params[p.name])
                           for p in spec.params]
            return (None, None, None, None, *input_grads, *param_grads)

    return CompiledModule()


def _named_inputs(model, spec: BuiltModel, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The module's arguments by input name: positional ones in declaration order, then keywords."""
    names = [i.name for i in spec.inputs]
    where = spec.decl.name.span
    if len(args) > len(names):
        raise DlnError(Diagnostic("E0701", f"model {model.name} has {len(names)} input(s), got {len(args)} "
                                           "positional arguments", where, (Note(f"inputs: {', '.join(names)}"),)))
    inputs = dict(zip(names, args))
    for name, value in kwargs.items():   # unknown names: Model.feeds says so, as for model(...)
        if name in inputs:
            raise DlnError(Diagnostic("E0701", f"input '{name}' is given twice, by position and by name", where))
        inputs[name] = value
    return inputs


def shared_parameter(model, name: str):
    """An `nn.Parameter` over the memory of the model's parameter `name`.

    NumPy backend: `torch.from_numpy` views the model's array.  Triton backend: the model's
    tensor is itself replaced by the Parameter (same storage), so that when an executable lays
    parameters out in one arena (`relocate` re-points each tensor object with `set_`), the module,
    holding the very same object, moves with it.  A second module of the model reuses the object."""
    import torch

    value = model._params[name]
    if isinstance(value, torch.nn.Parameter):
        return value
    if isinstance(value, np.ndarray):
        return torch.nn.Parameter(torch.from_numpy(value))
    param = torch.nn.Parameter(value)
    model._params[name] = param
    return param


def shared_buffer(model, name: str):
    """A tensor over the memory of the model state `name`, as `shared_parameter` for parameters."""
    import torch

    value = model._state[name]
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


def _vjp_graph(spec: BuiltModel, forward: Graph) -> Graph:
    """Gradients of sum_k sum(output_k * cot:output_k) for every parameter and float input (the
    declared outputs: the new model state is no function autograd differentiates)."""
    b = GraphBuilder(f"{spec.name}.vjp", base=spec.graph)
    total = None
    updates = spec.state_donations()
    for name, node_id in forward.outputs:
        if name in updates:
            continue
        out = b.tensor(node_id)
        if not out.dtype.is_float:
            continue
        cot = b.input(f"cot:{name}", out.type, "cotangent")  # fed by autograd, not one of the model's inputs
        term = b.sum(b.mul(out, cot))
        total = term if total is None else b.add(total, term)
    graph = b.finish(spec.graph.outputs)
    wrt = [p.node for p in spec.params] + [i.node for i in spec.inputs if i.type.dtype.is_float]
    full, grads, _ = grad(graph, total.id, wrt)
    names = {p.node: p.name for p in spec.params} | {i.node: i.name for i in spec.inputs}
    outputs = [(f"grad:{names[w]}", g) for w, g in grads.items() if g is not None]
    return pipeline.optimize(full.with_outputs(outputs))


def _run(model, cache: dict, spec: BuiltModel, graph: Graph, params, inputs, rng, extra) -> dict[str, Any]:
    """One run of `graph` on the model's backend, parameters fed as inputs; the outputs as torch
    tensors of their own (on the backend's device), which autograd may keep."""
    import torch

    prepared = cache.get(id(graph))
    if prepared is None or prepared[0] is not graph:
        prepared = cache[id(graph)] = (graph, model.backend.prepare(graph, {}, {}))
    needed = {n.attrs["name"] for n in graph.nodes if n.op is Op.INPUT}
    feeds, env = model.feeds(spec, graph, inputs)   # the model's inputs, checked as model(...) checks them
    numpy = model.backend.name == "numpy"
    feeds.update({k: v.detach().numpy() if numpy else v.detach() for k, v in {**params, **extra}.items()
                  if k in needed})
    if "rng.seed" in needed:
        feeds["rng.seed"], feeds["rng.step"] = np.array(rng[0]), np.array(rng[1])
    out = prepared[1].run(feeds, env)
    if numpy:
        return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in out.items()}
    return {k: v.detach().clone() for k, v in out.items()}
