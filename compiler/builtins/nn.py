"""Layers: built-ins that own parameters, with PyTorch's layouts, leaf names and
default initialization, written as decompositions into primitives."""

from __future__ import annotations

import math

from dln.compiler.builtins import BOOL, FLOAT, INIT, INT, TENSOR, builtin
from dln.compiler.composites.layernorm import layer_norm
from dln.compiler.emit import Tensor
from dln.compiler.ir import DType, Op
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
    if not affine:
        return layer_norm(b, x, eps=eps)
    return layer_norm(b, x, cx.param("weight", (n,), InitSpec("ones"), x.dtype),
                      cx.param("bias", (n,), InitSpec("zeros"), x.dtype), eps=eps)


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


@builtin(category="layer", owns_params=True)
def batchnorm(cx, x: TENSOR, momentum: FLOAT = 0.1, eps: FLOAT = 1e-5, affine: BOOL = True,
              track_running_stats: BOOL = True):
    """normalization per channel (axis 1) over the batch and any length or image axes, with running
    statistics updated in training mode and used in evaluation mode (torch.nn.BatchNorm1d/2d by rank)"""
    if x.rank not in (2, 3, 4):
        raise cx.fail("E0202", f"batchnorm needs [B, C], [B, C, L] or [B, C, H, W], got {x.type}")
    n = _features(cx, x, "batchnorm", axis=1)
    if not 0.0 <= momentum <= 1.0:
        raise cx.fail_at("momentum", "E0208", f"batchnorm's momentum must lie in [0, 1], got {momentum:g}")
    if not eps >= 0.0:
        raise cx.fail_at("eps", "E0208", f"batchnorm's eps cannot be negative, got {eps:g}")
    b = cx.b
    x = b.to_float(x)
    dtype = x.dtype
    axes = (0,) + tuple(range(2, x.rank))
    channels = (1, n) + (1,) * (x.rank - 2)   # a per-channel vector, shaped to broadcast over x
    if track_running_stats:
        running_mean = cx.state("running_mean", (n,), InitSpec("zeros"), dtype)
        running_var = cx.state("running_var", (n,), InitSpec("ones"), dtype)
        batches = cx.state("num_batches_tracked", (), InitSpec("zeros"), DType.I64)
    if cx.training or not track_running_stats:
        synced = cx.training and cx.sync_batchnorm
        if synced:
            mean, var, count = _synced_statistics(cx, x, axes, n)
        else:
            mean, var = _batch_statistics(cx, x, axes)
            count = b.reduced_count(x, axes)
        if cx.training and track_running_stats:
            unbiased = b.mul(var, _bessel(b, count, dtype))
            cx.assign(running_mean, _momentum(b, running_mean, b.reshape(mean, (n,)), momentum))
            cx.assign(running_var, _momentum(b, running_var, b.reshape(unbiased, (n,)), momentum))
            cx.assign(batches, b.add(batches, 1))
    else:
        mean, var = b.reshape(running_mean, channels), b.reshape(running_var, channels)
    y = b.mul(b.sub(x, mean), b.unary(Op.RSQRT, b.add(var, eps)))
    if affine:
        weight = cx.param("weight", (n,), InitSpec("ones"), dtype)
        bias = cx.param("bias", (n,), InitSpec("zeros"), dtype)
        y = b.add(b.mul(y, b.reshape(weight, channels)), b.reshape(bias, channels))
    return y


def _batch_statistics(cx, x: Tensor, axes: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """The mean and biased variance over `axes`, kept as [1, C, 1, ...]; torch refuses a single value
    per channel (its variance is undefined), and so does dln: here when the count is known, else when
    the inputs arrive."""
    b = cx.b
    b.at_most(2, b.reduced_count(x, axes), "E0202",
              f"batchnorm needs more than one value per channel to take batch statistics, for {x.type}")
    mean = b.mean(x, axes, keepdim=True)
    centered = b.sub(x, mean)
    return mean, b.mean(b.mul(centered, centered), axes, keepdim=True)


def _synced_statistics(cx, x: Tensor, axes: tuple[int, ...], n: int) -> tuple[Tensor, Tensor, Tensor]:
    """The mean and biased variance over `axes` of every rank's rows (`sync_batchnorm`, as
    torch.nn.SyncBatchNorm), and the global count: each rank's sums are summed across ranks (`all_reduce`,
    whose gradient is the all_reduce of the cotangents: the backward's per-channel sums travel too).  Two
    passes, as one process takes them: the sums and counts, then the squares about the global mean.  The
    count travels with the sums, so that no collective reads a value known before the data (which a
    backend may compute once, ahead of the run).  A rank's single row is no error here: the count that
    matters is the global one."""
    b = cx.b
    dtype = x.dtype
    keep = (1, n) + (1,) * (x.rank - 2)
    count = b.reshape(b.dim_value(b.reduced_count(x, axes), dtype), (1,))
    sums = b.emit(Op.ALL_REDUCE, (b.concat([b.reshape(b.sum(x, axes), (n,)), count], 0),), {"weighted": False})
    total = b.reshape(b.slice_axis(sums, 0, n, n + 1), ())
    mean = b.reshape(b.div(b.slice_axis(sums, 0, 0, n), total), keep)
    centered = b.sub(x, mean)
    squares = b.emit(Op.ALL_REDUCE, (b.sum(b.mul(centered, centered), axes, keepdim=True),), {"weighted": False})
    return mean, b.div(squares, total), total


def _bessel(b, count, dtype) -> Tensor | float:
    """n / (n - 1): the biased variance of n values to the unbiased, which the running variance keeps."""
    if isinstance(count, int):
        return count / (count - 1)
    n = count if isinstance(count, Tensor) else b.dim_value(count, dtype)
    return b.div(n, b.sub(n, 1))


def _momentum(b, running: Tensor, batch: Tensor, momentum: float) -> Tensor:
    """(1 - momentum) * running + momentum * batch: torch's update of a running statistic."""
    return b.add(b.mul(running, 1.0 - momentum), b.mul(batch, momentum))
