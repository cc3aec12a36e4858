"""Checking one case three ways: the NumPy backend against torch in float64, and the Triton backend
(under Triton's interpreter on a CPU) against the NumPy backend in float32.

Each case's model binds `y`; the harness adds `input cot` of y's shape and
`loss = sum(y * cot)` with a random cotangent, and compares y, the loss and
the gradient of every parameter — those the case declares and those its
layers create (drawn at random, then read by torch by name).

Between the backends the case runs *fused*: each declared parameter `x`
becomes `p_x * s_x` with a per-column scale `s_x` (values chosen so that
x keeps its value and sign), so every op reads a value computed in the same
kernel and a broadcast operand shared across the kernel, as the layers'
biases are — the setting in which a value read under one mask was once
reused under another.
"""

from __future__ import annotations

import numpy as np
import torch

import dln
from dln.compiler.ir import Op

from .cases import Case

F64_RTOL, F64_ATOL = 1e-9, 1e-11


def _shape_text(shape) -> str:
    return ", ".join(str(d) for d in shape)


def _dtype(v: np.ndarray, float_type: str) -> str:
    if v.dtype == np.bool_:
        return "bool"
    if np.issubdtype(v.dtype, np.integer):
        return "i64"
    return float_type


def source(case: Case, float_type: str, out_shape: tuple[int, ...] | None, fused: bool) -> str:
    """The case as a model; with `out_shape`, with the cotangent input and the loss."""
    lines = ["model m() {"]
    for k, v in case.params.items():
        if fused:
            lines.append(f"    param p_{k}: {float_type}[{_shape_text(v.shape)}] = zeros")
            lines.append(f"    param s_{k}: {float_type}[{_shape_text(v.shape[-1:])}] = zeros")
        else:
            lines.append(f"    param {k}: {float_type}[{_shape_text(v.shape)}] = zeros")
    for k, v in case.inputs.items():
        shape = case.shapes.get(k, _shape_text(v.shape))
        lines.append(f"    input {k}: {_dtype(v, float_type)}[{shape}]")
    if out_shape is not None:
        lines.append(f"    input cot: {float_type}[{_shape_text(out_shape)}]")
    if fused:
        lines += [f"    {k} = p_{k} * s_{k}" for k in case.params]
    lines += ["    " + line.strip() for line in case.body.replace("{F}", float_type).splitlines()]
    if out_shape is not None:
        lines.append("    loss = sum(y * cot)")
    lines += ["    output y", "}"]
    return "\n".join(lines)


def _layer_params(model, case: Case, rng: np.random.Generator, fused: bool) -> dict[str, np.ndarray]:
    declared = {f"{p}_{k}" for k in case.params for p in "ps"} if fused else set(case.params)
    return {k: rng.standard_normal(v.shape).astype(v.dtype) * 0.5
            for k, v in model.parameters().items() if k not in declared}


def _torch_reference(case: Case, layer: dict[str, np.ndarray], cot: np.ndarray | None):
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in {**case.params, **layer}.items()}
    tensors.update({k: torch.tensor(v) for k, v in case.inputs.items()})
    ref = case.torch_fn(tensors)
    if cot is None:
        return ref, None, None
    loss = (ref * torch.tensor(cot)).sum()
    wrt = [k for k in {**case.params, **layer}]
    if not ref.requires_grad:
        return ref, loss, {k: np.zeros_like(tensors[k].detach().numpy()) for k in wrt}
    grads = torch.autograd.grad(loss, [tensors[k] for k in wrt], allow_unused=True)
    return ref, loss, {k: np.zeros_like(tensors[k].detach().numpy()) if g is None else g.numpy()
                       for k, g in zip(wrt, grads)}


def out_shape(case: Case) -> tuple[int, ...]:
    """y's shape, from a forward run of the case on the NumPy backend."""
    model = dln.compile(source(case, "f64", None, fused=False), backend="numpy")
    with np.errstate(all="ignore"):
        return model.run(["y"], **case.inputs)["y"].shape


def check_against_torch(case: Case, seed: int) -> None:
    """NumPy backend vs torch, float64: y, loss, gradients."""
    rng = np.random.default_rng(seed)
    shape = out_shape(case)
    cot = rng.standard_normal(shape)
    model = dln.compile(source(case, "f64", shape, fused=False), backend="numpy")
    layer = _layer_params(model, case, rng, fused=False)
    model.load_state_dict({**model.buffers(), **case.params, **layer})
    ref, ref_loss, ref_grads = _torch_reference(case, layer, cot)
    with np.errstate(all="ignore"):
        y = model.run(["y"], training=case.training, **case.inputs)["y"]
        loss, grads = model.value_and_grad("loss", **case.inputs, cot=cot)
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=F64_RTOL, atol=F64_ATOL, err_msg="y")
    np.testing.assert_allclose(loss, ref_loss.item(), rtol=F64_RTOL, atol=F64_ATOL, err_msg="loss")
    for k, g in ref_grads.items():
        np.testing.assert_allclose(grads[k], g, rtol=F64_RTOL, atol=F64_ATOL, err_msg=f"gradient of {k}")


def _fused_values(case: Case, rng: np.random.Generator) -> dict[str, np.ndarray]:
    values = {}
    for k, v in case.params.items():
        s = rng.uniform(0.9, 1.05, v.shape[-1:])
        values[f"s_{k}"] = s.astype(np.float32)
        values[f"p_{k}"] = (v / s).astype(np.float32)
    return values


def check_backends(case: Case, seed: int) -> None:
    """Triton (interpreted) vs NumPy, float32, fused: y, loss, gradients."""
    rng = np.random.default_rng(seed)
    shape = out_shape(case)
    cot = rng.standard_normal(shape).astype(np.float32)
    text = source(case, "f32", shape, fused=True)
    reference = dln.compile(text, backend="numpy", seed=seed)
    triton = dln.compile(text, backend="triton", seed=seed)
    values = {**_fused_values(case, rng), **_layer_params(reference, case, rng, fused=True)}
    for model in (reference, triton):
        model.load_state_dict({**model.buffers(), **values})
    feeds = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in case.inputs.items()}
    random = case.torch_fn is None
    results = []
    for model in (reference, triton):
        with np.errstate(all="ignore"):
            y = model.run(["y"], training=random or case.training, **feeds)["y"]
            loss, grads = model.value_and_grad("loss", **feeds, cot=cot)
        results.append((y, loss, grads))
    (y1, l1, g1), (y2, l2, g2) = results
    close(y2, y1, case.tol32, "y")
    close(l2, l1, case.tol32, "loss")
    for k in g1:
        close(g2[k], g1[k], case.tol32, f"gradient of {k}")
    for k, v in reference.buffers().items():   # model state the training-mode runs updated
        close(triton.buffers()[k], v, case.tol32, k)


def close(got, want, tol: float, what: str) -> None:
    want = np.asarray(want, np.float64)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol * scale, err_msg=what)


def used_ops(model) -> set[Op]:
    """The primitives in the model's graphs: as built, and as prepared for its forward runs and gradients."""
    graphs = [model.spec.graph, model.train_spec.graph] + [g for g, _ in model._prepared.values()]
    return {n.op for graph in graphs for n in graph.nodes}
