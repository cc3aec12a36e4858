"""Attention: `attention` (torch.nn.MultiheadAttention, batch first) and the bare
`scaled_dot_product_attention` (F.scaled_dot_product_attention).  Both are the
`sdpa` composite (dln.compiler.composites.attention) between projections: the
Triton backend runs it as flash attention, the NumPy backend as its
decomposition, batched over heads.

Masks follow torch, which uses two conventions: `attention`'s `mask` is a
key-padding mask `[B, S]` where true marks a padded key (ignored);
`scaled_dot_product_attention`'s `mask` is an attention mask broadcast to
`[..., L, S]` where true marks a pair that takes part.  A float mask is added to
the scores in both.  A query with no key to attend to gets zeros, as in torch.
Dropout on the attention weights acts in training mode only, like `dropout`.
"""

from __future__ import annotations

import math

from dln.compiler.builtins import BOOL, FLOAT, INT, TENSOR, builtin
from dln.compiler.composites.attention import attention as sdpa
from dln.compiler.emit import Tensor
from dln.compiler.ir import DType, Op
from dln.compiler.symbolic import format_shape
from dln.compiler.values import InitSpec


def _dropout(cx, p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise cx.fail_at("dropout", "E0208", f"attention dropout must be in [0, 1), got {p:g}")
    return p if cx.training else 0.0


def _bias(cx, mask: Tensor, scores: tuple, dtype: DType, take_part: bool) -> tuple[Tensor, bool]:
    """An additive mask of the scores' rank, axes 1 or the scores' (no broadcast node: the kernel strides),
    and whether it may carry a gradient.  Booleans become 0 / -inf: `take_part` says which truth keeps."""
    b = cx.b
    if mask.rank > len(scores):
        raise cx.fail_at("mask", "E0201", f"the mask {mask.type} has more axes than the scores {list(scores)}")
    if mask.dtype is DType.BOOL:
        keep = mask if take_part else b.unary(Op.NOT, mask)
        bias, grad = b.where(keep, 0.0, float("-inf")), False
        bias = b.cast(bias, dtype)
    elif mask.dtype.is_float:
        bias, grad = b.cast(mask, dtype), True
    else:
        raise cx.fail_at("mask", "E0206", f"a mask is bool or float, got {mask.type}")
    shape = (1,) * (len(scores) - mask.rank) + tuple(bias.shape)
    with b.at(loc=cx.arg_span("mask")):
        for d, s in zip(shape, scores):
            if d != 1:
                b.unify(d, s, "E0201", f"the mask {mask.type} does not broadcast to the scores "
                                       f"{format_shape(scores)}")
        # Each axis 1 or the scores' own size (a mask [M, N] of sizes equal to [L, S] only at run time
        # becomes [L, S]): the backward's mask cotangent, of the scores' sizes, then has the mask's type.
        return b.reshape(bias, tuple(1 if d == 1 else s for d, s in zip(shape, scores))), grad


def _heads(cx, t: Tensor, heads: int) -> Tensor:
    """[B, T, E] -> [B, heads, T, E / heads]."""
    b = cx.b
    batch, length, width = t.shape
    return b.permute(b.reshape(t, (batch, length, heads, width // heads)), (0, 2, 1, 3))


def _check_key_padding(cx, mask: Tensor, x: Tensor, memory: Tensor) -> None:
    """A key-padding mask is bool or float, [B, S] for x [B, T, E] (or [S] for unbatched x), S the keys."""
    want = memory.shape[:-1] if x.rank == 3 else memory.shape[:1]
    layout = "[B, S]" if x.rank == 3 else "[S] for unbatched x"
    if mask.dtype is not DType.BOOL and not mask.dtype.is_float:
        raise cx.fail_at("mask", "E0206", f"a key-padding mask is bool (true: ignore the key) or float (added), "
                                          f"got {mask.type}")
    if mask.rank != len(want):
        raise cx.fail_at("mask", "E0202", f"a key-padding mask is {layout} = {format_shape(want)}, got {mask.type}")
    with cx.b.at(loc=cx.arg_span("mask")):
        for have, need in zip(mask.shape, want):
            cx.b.unify(have, need, "E0201", f"a key-padding mask is {layout} = {format_shape(want)}, "
                                            f"got {mask.type}")


@builtin(category="layer", owns_params=True)
def attention(cx, x: TENSOR, heads: INT, causal: BOOL = False, context: TENSOR = None, mask: TENSOR = None,
              dropout: FLOAT = 0.0, bias: BOOL = True):
    """multi-head attention of x [B, T, E] to itself, or to `context` [B, S, E'] (cross-attention), with
    input and output projections in torch.nn.MultiheadAttention's layout; `mask` [B, S]: true marks a
    padded key"""
    b = cx.b
    x = b.to_float(x)
    if x.rank not in (2, 3):
        raise cx.fail_at("x", "E0202", f"attention needs x of shape [B, T, E] or unbatched [T, E], got {x.type}")
    unbatched = x.rank == 2
    memory = x if context is None else b.cast(context, x.dtype)
    if memory.rank != x.rank:
        raise cx.fail_at("context", "E0202", f"the context {memory.type} must have the rank of x {x.type}")
    for name, t in (("x", x), ("context", memory)):
        if not isinstance(t.shape[-1], int):
            raise cx.fail_at(name, "E0202", f"attention needs a known feature size for its projections, "
                                            f"got {name} {t.type}")
        if t.shape[-1] == 0:   # heads of no features: a score 0 / sqrt(0)
            raise cx.fail_at(name, "E0202", f"attention needs at least one feature, got {name} {t.type}")
    if mask is not None:
        _check_key_padding(cx, mask, x, memory)
    if unbatched:
        x, memory = b.unsqueeze(x, 0), b.unsqueeze(memory, 0)
        mask = b.unsqueeze(mask, 0) if mask is not None else None
    dim, kdim = x.shape[-1], memory.shape[-1]
    if heads <= 0:
        raise cx.fail_at("heads", "E0208", f"attention needs at least one head, got heads = {heads}")
    if dim % heads:
        raise cx.fail_at("heads", "E0208", f"attention's {dim} features do not split into {heads} heads")
    if context is not None:
        with b.at(loc=cx.arg_span("context")):
            b.unify(memory.shape[0], x.shape[0], "E0201",
                    f"the context {memory.type} and x {x.type} have different batch sizes")
    p = _dropout(cx, dropout)
    dtype = x.dtype
    # torch's _reset_parameters: xavier_uniform_ projections, zero biases; out_proj keeps Linear's weight init.
    if kdim == dim:
        w = cx.param("in_proj_weight", (3 * dim, dim), InitSpec("xavier_uniform", (("gain", 1.0),)), dtype)
        wq, wk, wv = (b.slice_axis(w, 0, k * dim, (k + 1) * dim) for k in range(3))
    else:   # torch's separate projections when the context has another size (kdim = vdim)
        wq = cx.param("q_proj_weight", (dim, dim), InitSpec("xavier_uniform", (("gain", 1.0),)), dtype)
        wk = cx.param("k_proj_weight", (dim, kdim), InitSpec("xavier_uniform", (("gain", 1.0),)), dtype)
        wv = cx.param("v_proj_weight", (dim, kdim), InitSpec("xavier_uniform", (("gain", 1.0),)), dtype)
    bi = cx.param("in_proj_bias", (3 * dim,), InitSpec("zeros"), dtype) if bias else None
    bq, bk, bv = (b.slice_axis(bi, 0, k * dim, (k + 1) * dim) for k in range(3)) if bias else (None,) * 3

    def project(t, weight, offset):
        y = b.matmul(t, b.transpose(weight))
        return y if offset is None else b.add(y, offset)

    if context is None:
        # Self-attention: one product for q, k and v together, as torch's in_projection_packed.
        qkv = project(x, w, bi)
        q, k, v = (b.slice_axis(qkv, -1, j * dim, (j + 1) * dim) for j in range(3))
    else:
        q, k, v = project(x, wq, bq), project(memory, wk, bk), project(memory, wv, bv)
    q, k, v = (_heads(cx, t, heads) for t in (q, k, v))
    mask_bias, grad = None, False
    if mask is not None:
        padded = b.reshape(mask, (mask.shape[0], 1, 1, mask.shape[1]))
        mask_bias, grad = _bias(cx, padded, q.shape[:-1] + (k.shape[-2],), dtype, take_part=False)
    out = sdpa(b, q, k, v, causal=causal, bias=mask_bias, bias_grad=grad, dropout=p,
               rng=cx.random_stream() if p else None)
    batch, length = x.shape[0], x.shape[1]
    out = b.reshape(b.permute(out, (0, 2, 1, 3)), (batch, length, dim))
    default = 1.0 / math.sqrt(dim)
    out_w = cx.param("out_proj.weight", (dim, dim), InitSpec("uniform", (("a", -default), ("b", default))), dtype)
    out = b.matmul(out, b.transpose(out_w))
    if bias:
        out = b.add(out, cx.param("out_proj.bias", (dim,), InitSpec("zeros"), dtype))
    return b.reshape(out, out.shape[1:]) if unbatched else out


@builtin()
def scaled_dot_product_attention(cx, q: TENSOR, k: TENSOR, v: TENSOR, causal: BOOL = False, mask: TENSOR = None,
                                 dropout: FLOAT = 0.0, scale: FLOAT = None):
    """softmax(q @ k^T * scale + mask) @ v over the last two axes (F.scaled_dot_product_attention);
    `mask` true marks a (query, key) pair that takes part; scale 1/sqrt(E) by default"""
    b = cx.b
    dtype = b.to_float(q).dtype
    q, k, v = (b.cast(b.to_float(t), dtype) for t in (q, k, v))
    for name, t, layout in (("q", q, "[..., L, E]"), ("k", k, "[..., S, E]"), ("v", v, "[..., S, Ev]")):
        if t.rank < 2:
            raise cx.fail_at(name, "E0202", f"scaled_dot_product_attention needs {name} of shape {layout}, "
                                            f"got {t.type}")
    with b.at(loc=cx.arg_span("k")):
        b.unify(q.shape[-1], k.shape[-1], "E0203", f"the keys k {k.type} must have the queries' size "
                                                   f"{q.shape[-1]} (q {q.type})")
    with b.at(loc=cx.arg_span("v")):
        b.unify(k.shape[-2], v.shape[-2], "E0203", f"v {v.type} must hold one value per key: {k.shape[-2]} keys "
                                                   f"in k {k.type}")
    batch = b.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2],
                               message=f"the batch axes of q {q.type}, k {k.type} and v {v.type} do not broadcast")
    q, k, v = (b.broadcast_to(t, batch + t.shape[-2:]) for t in (q, k, v))
    if scale is not None and not scale > 0:
        raise cx.fail_at("scale", "E0208", f"scaled_dot_product_attention's scale must be positive, "
                                           f"got {scale:g}")
    if scale is None:   # 1 / sqrt(E), E from whichever of q and k gives it as a number
        size = next((d for d in (q.shape[-1], k.shape[-1]) if isinstance(d, int)), None)
        if size is None:
            raise cx.fail_at("q", "E0202", f"the default scale 1/sqrt({q.shape[-1]}) needs the feature size of q "
                                           f"{q.type} as a number: give q or k a known last axis, or pass `scale`")
        if size == 0:
            raise cx.fail_at("q", "E0202", f"the default scale 1/sqrt(E) needs queries of at least one feature, "
                                           f"got q {q.type}: pass `scale`")
        scale = 1.0 / math.sqrt(size)
    mask_bias, grad = None, False
    if mask is not None:
        mask_bias, grad = _bias(cx, mask, q.shape[:-1] + (k.shape[-2],), dtype, take_part=True)
    p = _dropout(cx, dropout)
    return sdpa(b, q, k, v, causal=causal, scale=scale, bias=mask_bias, bias_grad=grad, dropout=p,
                rng=cx.random_stream() if p else None)
