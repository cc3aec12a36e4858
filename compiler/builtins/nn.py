"""Layers: built-ins that own parameters, with PyTorch's layouts, leaf names and
default initialization, written as decompositions into primitives."""

from __future__ import annotations

import math

from dln.compiler.builtins import BOOL, FLOAT, INIT, INT, TENSOR, builtin
from dln.compiler.emit import Tensor
from dln.compiler.ir import Op
from dln.compiler.symbolic import numel
from dln.compiler.values import InitSpec


def _features(cx, x: Tensor, layer: str, axis: int = -1) -> int:
    n = x.shape[axis] if x.rank else None
    if not isinstance(n, int):
        raise cx.fail("E0202", f"{layer} needs a known input size on axis {axis}, got {x.type}")
    return n


def _positive(cx, layer: str, **sizes: int) -> None:
    for name, n in sizes.items():
        if n <= 0:
            raise cx.fail_at(name, "E0208", f"{layer}'s {name} must be positive, got {n}")


def _uniform(bound: float) -> InitSpec:
    return InitSpec("uniform", (("a", -bound), ("b", bound)))


@builtin(category="layer", owns_params=True)
def linear(cx, x: TENSOR, out: INT, bias: BOOL = True, init: INIT = None):
    """x @ weight.T + bias; weight [out, in], bias [out] (torch.nn.Linear)"""
    n_in = _features(cx, x, "linear")
    _positive(cx, "linear", out=out)
    b = cx.b
    x = b.to_float(x)
    dtype = x.dtype
    default = _uniform(1.0 / math.sqrt(n_in)) if n_in else InitSpec("zeros")
    weight = cx.param("weight", (out, n_in), init or default, dtype)
    y = b.matmul(x, b.transpose(weight))
    if bias:
        y = b.add(y, cx.param("bias", (out,), default, dtype))
    return y


@builtin(category="layer", owns_params=True)
def embedding(cx, x: TENSOR, vocab: INT, dim: INT, init: INIT = None):
    """rows of weight [vocab, dim] picked by integer indices (torch.nn.Embedding)"""
    if not x.dtype.is_int:
        raise cx.fail("E0206", f"embedding needs integer indices, got {x.type}")
    _positive(cx, "embedding", vocab=vocab, dim=dim)
    b = cx.b
    weight = cx.param("weight", (vocab, dim), init or InitSpec("normal", (("mean", 0.0), ("std", 1.0))))
    flat = b.reshape(x, (numel(x.shape),))
    index = b.broadcast_to(b.unsqueeze(flat, 1), (flat.shape[0], dim))
    rows = b.gather(weight, 0, index)
    return b.reshape(rows, x.shape + (dim,))


@builtin(category="layer", owns_params=True)
def layernorm(cx, x: TENSOR, eps: FLOAT = 1e-5, affine: BOOL = True):
    """normalization over the last axis, with weight and bias (torch.nn.LayerNorm)"""
    b = cx.b
    n = _features(cx, x, "layernorm")
    x = b.to_float(x)
    dtype = x.dtype
    mean = b.mean(x, -1, keepdim=True)
    centered = b.sub(x, mean)
    variance = b.mean(b.mul(centered, centered), -1, keepdim=True)
    y = b.mul(centered, b.unary(Op.RSQRT, b.add(variance, eps)))
    if affine:
        y = b.add(b.mul(y, cx.param("weight", (n,), InitSpec("ones"), dtype)),
                  cx.param("bias", (n,), InitSpec("zeros"), dtype))
    return y


@builtin(category="layer", owns_params=True)
def gcn_conv(cx, x: TENSOR, adj: TENSOR, out: INT, bias: BOOL = True):
    """adj @ (x @ weight.T) + bias, adj already normalized (Kipf & Welling; PyG's initialization)"""
    _positive(cx, "gcn_conv", out=out)
    b = cx.b
    n_in = _features(cx, x, "gcn_conv")
    x = b.to_float(x)
    dtype = x.dtype
    weight = cx.param("weight", (out, n_in), InitSpec("xavier_uniform", (("gain", 1.0),)), dtype)
    y = b.matmul(b.cast(adj, dtype), b.matmul(x, b.transpose(weight)))
    if bias:
        y = b.add(y, cx.param("bias", (out,), InitSpec("zeros"), dtype))
    return y

