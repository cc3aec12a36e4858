"""ONNX's `Attention` (opsets 23 to 25): Q, K, V as [B, S, hidden] with `q_num_heads` and
`kv_num_heads` or as [B, H, S, D]; grouped-query attention (each of the kv heads serves
q_num_heads / kv_num_heads query heads in turn); an additive or boolean `attn_mask`
broadcast to the scores, its keys padded to the cache's with -inf; `is_causal`, aligned
to the bottom right of the keys (after `past_key`'s, or `nonpad_kv_seqlen[b]`'s); the
sliding window of opset 25 (`left_window_size`, `right_window_size`); `nonpad_kv_seqlen`;
`softcap`; `softmax_precision`; the `present_key` / `present_value` outputs and
`qk_matmul_output` in its four modes.

Every mask becomes one additive bias of 0 and -inf.  A query whose bias row is -inf
throughout attends to nothing and gets zeros (decided on the bias, not on the scores,
which may be nan).  Where nothing but the softmax stands between the scores and the
values (no softcap, no qk_matmul_output, no softmax_precision other than float), the
node is dln's `sdpa` composite, which the Triton backend runs as flash attention;
otherwise the definition in primitives, step for step as the spec's reference writes it.

f16 (and bf16) inputs are attended in float32 and the result rounded once, as a fused
kernel accumulates.  The reference rounds every step in f16, the scores' sums
included; the exact result rounded once is within the suite's tolerance of its
expected values, while dln's f16 steps (whose sums accumulate in float32) miss one
element of `test_attention_4d_gqa_with_past_and_present_fp16` by two ulps.  Its
`_expanded` twin, the function body in f16 primitives (MatMul, Softmax), misses the
same element, short of summing in f16 as NumPy does.
"""

from __future__ import annotations

import math

from dln.compiler.composites.attention import attention as sdpa
from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import DType, Op
from dln.runtime.onnx.convert import Context, OnnxNode, UnsupportedOnnx, converter, onnx_dtype

NEG_INF = float("-inf")
HALF = (DType.F16, DType.BF16)

# What `qk_matmul_output_mode` exposes beyond modes 0 and 1 (the scaled product, softcapped where there is a
# softcap: the reference's reading of mode 1, which the suite's data follow): the scores after the bias, and
# the probabilities.
QK_BIASED, QK_SOFTMAX = 2, 3


def _heads(b: GraphBuilder, t: Tensor, heads: int) -> Tensor:
    """[B, S, heads * D] -> [B, heads, S, D]."""
    batch, length, width = t.shape
    return b.permute(b.reshape(t, (batch, length, heads, width // heads)), (0, 2, 1, 3))


def _repeat_heads(b: GraphBuilder, t: Tensor, times: int) -> Tensor:
    """[B, H, S, D] -> [B, H * times, S, D], each head `times` times in a row (h0, h0, h1, h1, ...)."""
    if times == 1:
        return t
    batch, heads, length, width = t.shape
    t = b.broadcast_to(b.unsqueeze(t, 2), (batch, heads, times, length, width))
    return b.reshape(t, (batch, heads * times, length, width))


@converter("Attention")
def attention(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    q, k, v = ctx.tensor(node, 0), ctx.tensor(node, 1), ctx.tensor(node, 2)
    if not q.dtype.is_float or q.rank not in (3, 4) or k.rank != q.rank or v.rank != q.rank:
        raise UnsupportedOnnx(node, f"Q, K, V of types {q.type}, {k.type}, {v.type}")
    k, v = b.cast(k, q.dtype), b.cast(v, q.dtype)
    rank3 = q.rank == 3
    if rank3:
        q_heads, kv_heads = node.attr("q_num_heads"), node.attr("kv_num_heads")
        if q_heads is None or kv_heads is None:
            raise UnsupportedOnnx(node, "3-D Q, K, V need q_num_heads and kv_num_heads")
        for name, t, heads in (("Q", q, q_heads), ("K", k, kv_heads), ("V", v, kv_heads)):
            if not isinstance(t.shape[2], int) or heads <= 0 or t.shape[2] % heads:
                raise UnsupportedOnnx(node, f"{name} {t.type} does not split into {heads} heads")
        q, k, v = _heads(b, q, q_heads), _heads(b, k, kv_heads), _heads(b, v, kv_heads)
    past = ctx.has(node, 4) and ctx.has(node, 5)
    if ctx.has(node, 4) != ctx.has(node, 5):
        raise UnsupportedOnnx(node, "past_key without past_value (or the reverse)")
    offset = 0                                            # the keys before the first query
    if past:
        past_k = b.cast(ctx.tensor(node, 4), q.dtype)
        offset = past_k.shape[2]
        k = b.concat([past_k, k], 2)
        v = b.concat([b.cast(ctx.tensor(node, 5), q.dtype), v], 2)
    present_k, present_v = k, v
    dtype = q.dtype
    if dtype in HALF:   # attended in float32, rounded once at the end
        q, k, v = (b.cast(t, DType.F32) for t in (q, k, v))
    q_heads, kv_heads = q.shape[1], k.shape[1]
    if q_heads != kv_heads:
        if not isinstance(q_heads, int) or not isinstance(kv_heads, int) or q_heads % kv_heads:
            raise UnsupportedOnnx(node, f"{q_heads} query heads over {kv_heads} key/value heads")
        k, v = _repeat_heads(b, k, q_heads // kv_heads), _repeat_heads(b, v, q_heads // kv_heads)

    scale = node.attr("scale")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    softcap = float(node.attr("softcap", 0.0))
    mode = node.attr("qk_matmul_output_mode", 0)
    want_qk = len(node.outputs) > 3 and node.outputs[3] != ""
    precision = node.attr("softmax_precision")
    softmax_dtype = q.dtype if precision is None else onnx_dtype(precision, node)
    nonpad = b.cast(ctx.tensor(node, 6), DType.I64) if ctx.has(node, 6) else None
    if nonpad is not None and past:
        raise UnsupportedOnnx(node, "nonpad_kv_seqlen with past_key and past_value")
    if nonpad is not None:                                # per batch entry: [B, 1, 1]
        offset = b.reshape(b.sub(nonpad, q.shape[2]), (nonpad.shape[0], 1, 1))
    window = (node.attr("left_window_size", -1), node.attr("right_window_size", -1))
    mask = _mask(ctx, node, q.dtype, k.shape[2])
    is_causal = bool(node.attr("is_causal", 0))
    composite = softcap <= 0.0 and not want_qk and softmax_dtype is q.dtype
    # Top-left causal and nothing else: the composite's own causal mask, which leaves no row without keys.
    kernel_causal = (composite and is_causal and isinstance(offset, int) and offset == 0 and mask is None
                     and window == (-1, -1))
    bias = _bias(b, q, k, mask, is_causal and not kernel_causal, offset, window, nonpad)

    if composite:
        y = sdpa(b, q, k, v, causal=kernel_causal, scale=scale,
                 bias=None if bias is None else _full_rank(b, bias, q, k))
        if bias is not None:
            y = b.where(_no_key(b, bias), 0.0, y)
        qk = None
    else:
        y, qk = _decomposed(b, q, k, v, bias, scale, softcap, mode, softmax_dtype)
    if rank3:
        batch, heads, length, width = y.shape
        y = b.reshape(b.permute(y, (0, 2, 1, 3)), (batch, length, heads * width))
    return [b.cast(y, dtype), present_k, present_v, qk if qk is None else b.cast(qk, dtype)]


def _mask(ctx: Context, node: OnnxNode, dtype: DType, keys) -> Tensor | None:
    """attn_mask as an additive bias of Q's type, its last axis padded to the `keys` (-inf: not attended)."""
    if not ctx.has(node, 3):
        return None
    b = ctx.builder
    m = ctx.tensor(node, 3)
    if m.rank == 0 or not isinstance(m.shape[-1], int) or not isinstance(keys, int) or m.shape[-1] > keys:
        raise UnsupportedOnnx(node, f"attn_mask {m.type} for {keys} keys")
    m = b.where(m, 0.0, NEG_INF) if m.dtype is DType.BOOL else m
    m = b.cast(m, dtype)
    if m.shape[-1] != keys:
        m = b.pad(m, [(0, 0)] * (m.rank - 1) + [(0, keys - m.shape[-1])], NEG_INF)
    return m


def _bias(b: GraphBuilder, q: Tensor, k: Tensor, mask: Tensor | None, causal: bool, offset, window: tuple,
          nonpad: Tensor | None) -> Tensor | None:
    """The additive bias of every mask, broadcastable to the scores [B, H, Sq, Skv]; None when none.
    `offset` is the position of the first query among the keys: 0, the past keys', or per batch entry
    (a [B, 1, 1] tensor) nonpad_kv_seqlen - Sq."""
    parts = [mask] if mask is not None else []
    length, keys = q.shape[2], k.shape[2]
    if causal or window != (-1, -1):
        rows = b.unsqueeze(b.iota(length), 1)             # [Sq, 1]
        cols = b.unsqueeze(b.iota(keys), 0)               # [1, Skv]
        ahead = b.sub(b.add(rows, offset), cols)          # how far key j lies before query i: [(B,) Sq, Skv]
        allowed = []
        if causal:
            allowed.append(b.compare(Op.GE, ahead, 0))
        if window[0] >= 0:
            allowed.append(b.compare(Op.LE, ahead, window[0]))
        if window[1] >= 0:
            allowed.append(b.compare(Op.LE, b.neg(ahead), window[1]))
        ok = allowed[0]
        for a in allowed[1:]:
            ok = b.logical(Op.AND, ok, a)
        if ok.rank == 3:                                  # per batch entry: [B, 1, Sq, Skv]
            ok = b.unsqueeze(ok, 1)
        parts.append(b.where(ok, b.const(0.0, q.dtype), NEG_INF))
    if nonpad is not None:
        inside = b.compare(Op.LT, b.unsqueeze(b.iota(keys), 0), b.unsqueeze(nonpad, 1))     # [B, Skv]
        parts.append(b.reshape(b.where(inside, b.const(0.0, q.dtype), NEG_INF), (nonpad.shape[0], 1, 1, keys)))
    if not parts:
        return None
    bias = parts[0]
    for p in parts[1:]:
        bias = b.add(bias, p)
    return bias


def _full_rank(b: GraphBuilder, bias: Tensor, q: Tensor, k: Tensor) -> Tensor:
    """The bias as the composite takes it: the scores' rank, each axis 1 or the scores' own."""
    scores = q.shape[:-1] + (k.shape[-2],)
    shape = (1,) * (len(scores) - bias.rank) + tuple(bias.shape)
    bias = b.reshape(bias, shape)
    need = tuple(1 if d == 1 else s for d, s in zip(shape, scores))
    return b.broadcast_to(bias, need)


def _no_key(b: GraphBuilder, bias: Tensor) -> Tensor:
    """Where a query's bias row is -inf throughout: [..., Sq, 1]."""
    return b.compare(Op.EQ, b.max(bias, -1, keepdim=True), NEG_INF)


def _decomposed(b: GraphBuilder, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float,
                softcap: float, mode: int, softmax_dtype: DType) -> tuple[Tensor, Tensor]:
    """(Y, qk_matmul_output) in primitives, as the reference computes them."""
    root = math.sqrt(scale)
    s = b.matmul(b.mul(q, root), b.transpose(b.mul(k, root)))
    if softcap > 0.0:   # before the bias: a masked score stays -inf
        s = b.mul(b.tanh(b.div(s, softcap)), softcap)
    qk = s
    if bias is not None:
        s = b.add(s, bias)
        if mode == QK_BIASED:
            qk = s
    s = b.cast(s, softmax_dtype)
    top = b.max(s, -1, keepdim=True)
    top = b.where(b.compare(Op.EQ, top, NEG_INF), b.const(0.0, top.dtype), top)
    e = b.exp(b.sub(s, top))
    total = b.sum(e, -1, keepdim=True)
    p = b.div(e, b.where(b.compare(Op.EQ, total, 0.0), b.const(1.0, total.dtype), total))
    if bias is not None:
        p = b.where(_no_key(b, bias), b.const(0.0, p.dtype), p)
    p = b.cast(p, q.dtype)
    if mode == QK_SOFTMAX:
        qk = p
    return b.matmul(p, v), qk

