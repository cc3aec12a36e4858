"""Composites as PyTorch runs them: its own operators, not dln's decompositions.

`dln bench` measures eager PyTorch and torch.compile on a training step's
graph op by op (runtime/torch_graph.py).  A composite there is what a PyTorch
user would call: `F.scaled_dot_product_attention` and its autograd backward,
`F.cross_entropy`, `torch.native_layer_norm` and its backward — so the
baselines are PyTorch's own kernels, not dln's primitives replayed in torch.
A composite with none here (attention with dropout, whose mask comes from
dln's generator) runs its decomposition.  tests/runtime/test_torch_composites.py
holds each against the decomposition.
"""

from __future__ import annotations

from typing import Any, Callable

from dln.compiler.ir import Node


def _scores_mask(torch, n: Node, q, k, bias):
    """The additive mask F.sdpa takes (None when there is none): the bias and the causal -inf above the
    diagonal together, since F.sdpa refuses `is_causal` beside a mask."""
    mask = bias
    if n.attrs["causal"]:
        tq, tk = q.shape[-2], k.shape[-2]
        causal = torch.zeros(tq, tk, dtype=q.dtype, device=q.device).masked_fill(
            torch.ones(tq, tk, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        mask = causal if mask is None else mask + causal
    return mask


def _sdpa(torch, F, n: Node, q, k, v, bias):
    """(F.sdpa's output, the mask it took)."""
    mask = _scores_mask(torch, n, q, k, bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=n.attrs["scale"]), mask


def sdpa(n: Node, a: list[Any]):
    import torch
    import torch.nn.functional as F

    q, k, v = a[:3]
    out, mask = _sdpa(torch, F, n, q, k, v, a[3] if n.attrs["masked"] else None)
    scores = q @ k.transpose(-2, -1) * n.attrs["scale"]
    lse = torch.logsumexp(scores if mask is None else scores + mask, -1)
    return out, lse


def sdpa_vjp(n: Node, a: list[Any]):
    import torch
    import torch.nn.functional as F

    q, k, v = a[:3]
    bias = a[3] if n.attrs["masked"] else None
    dout = a[-1]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        mask = bias.detach().requires_grad_() if n.attrs["bias_grad"] else bias
        out, _ = _sdpa(torch, F, n, *leaves, mask)
        wrt = leaves + ([mask] if n.attrs["bias_grad"] else [])
        grads = torch.autograd.grad(out, wrt, dout)   # a mask's: summed over the axes it broadcasts along
    return tuple(g.detach() for g in grads)


def cross_entropy(n: Node, a: list[Any]):
    import torch.nn.functional as F

    logits, target = a
    flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                           label_smoothing=n.attrs["label_smoothing"], reduction="none")
    return flat.reshape(target.shape)


def layernorm(n: Node, a: list[Any]):
    import torch

    x = a[0]
    weight, bias = (a[1], a[2]) if n.attrs["affine"] else (None, None)
    y, mean, rstd = torch.native_layer_norm(x, x.shape[-1:], weight, bias, n.attrs["eps"])
    return y, mean.reshape(x.shape[:-1]), rstd.reshape(x.shape[:-1])


def layernorm_vjp(n: Node, a: list[Any]):
    import torch

    x, dy = a[0], a[-1]
    affine = n.attrs["affine"]
    weight = a[1] if affine else None
    mean, rstd = (t.reshape(x.shape[:-1] + (1,)) for t in a[-3:-1])
    dx, dw, db = torch.ops.aten.native_layer_norm_backward(dy, x, x.shape[-1:], mean, rstd, weight,
                                                           None if not affine else torch.zeros_like(weight),
                                                           [True, affine, affine])
    return (dx, dw, db) if affine else dx


# name -> (when it applies, the function)
NATIVE: dict[str, tuple[Callable[[Node], bool], Callable[[Node, list[Any]], Any]]] = {
    "sdpa": (lambda n: not n.attrs["dropout"], sdpa),
    "sdpa_vjp": (lambda n: True, sdpa_vjp),
    "cross_entropy": (lambda n: True, cross_entropy),
    "layernorm": (lambda n: True, layernorm),
    "layernorm_vjp": (lambda n: True, layernorm_vjp),
}
