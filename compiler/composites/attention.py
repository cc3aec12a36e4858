"""Scaled dot-product attention, forward (`sdpa`) and backward (`sdpa_vjp`).

    sdpa(q [*N, Tq, E], k [*N, Tk, E], v [*N, Tk, Ev] [, bias] [, seed, step])
        -> (out [*N, Tq, Ev], lse [*N, Tq])

    S = (q * sqrt(scale)) @ (k * sqrt(scale))^T + bias, causal entries (j > i) at -inf
    P = softmax(S) (a row entirely at -inf gives zeros, as torch's), dropped out when `dropout` > 0
    out = P @ v;  lse = log(sum(exp(S))) per row, the softmax's normalizer

`bias` (attrs `masked`) is an additive mask of q's rank whose axes are 1 or
S's (0 where a key takes part, -inf where it does not; a float mask as
given); `bias_grad` says whether it may carry a gradient (a float mask does,
one made from booleans does not).  With `dropout`, `seed` and `step` feed the
counter-based generator of stream `stream`, as `dropout` does.

The backward keeps only `lse` from the forward and recomputes P from it, as
FlashAttention does: `sdpa_vjp(q, k, v [, bias], out, lse, dout) -> (dq, dk,
dv [, dbias])`.  Without dropout `sdpa` has this VJP of its own; with dropout
autodiff differentiates the decomposition (whose mask it can reuse).
"""

from __future__ import annotations

import math

from dln.compiler.composites import composite, emit
from dln.compiler.ir import Op, TensorType
from dln.compiler.shapes import ShapeError


def _check(cx, q: TensorType, k: TensorType, v: TensorType, bias: TensorType | None) -> None:
    if q.rank < 2 or k.rank != q.rank or v.rank != q.rank:
        raise ShapeError("E0201", f"attention takes q, k, v of one rank >= 2, got {q}, {k}, {v}")
    if not q.dtype.is_float or k.dtype is not q.dtype or v.dtype is not q.dtype:
        raise ShapeError("E0201", f"attention takes q, k, v of one float type, got {q}, {k}, {v}")
    for a, b, c in zip(q.shape[:-2], k.shape[:-2], v.shape[:-2]):
        cx.unify(a, b, "E0201", f"attention: batch axes of q {q} and k {k} differ")
        cx.unify(a, c, "E0201", f"attention: batch axes of q {q} and v {v} differ")
    cx.unify(q.shape[-1], k.shape[-1], "E0201", f"attention: queries {q} and keys {k} differ in size")
    cx.unify(k.shape[-2], v.shape[-2], "E0201", f"attention: {k.shape[-2]} keys but {v.shape[-2]} values")
    if bias is not None:
        scores = q.shape[:-1] + (k.shape[-2],)
        if bias.rank != q.rank or bias.dtype is not q.dtype:
            raise ShapeError("E0201", f"attention: a mask {bias} for scores of {q.rank} axes of {q.dtype}")
        for d, s in zip(bias.shape, scores):
            if d != 1:
                cx.unify(d, s, "E0201", f"attention: the mask {bias} does not fit scores {list(scores)}")


def _split(types, attrs):
    """(q, k, v, bias or None, the rest) from a composite's operands."""
    q, k, v = types[:3]
    bias = types[3] if attrs["masked"] else None
    return q, k, v, bias, types[3 + attrs["masked"]:]


def _infer(cx, types, attrs):
    q, k, v, bias, rest = _split(types, attrs)
    _check(cx, q, k, v, bias)
    if len(rest) != (2 if attrs["dropout"] else 0):
        raise ShapeError("E0201", "attention: dropout takes the random seed and step")
    return TensorType(q.dtype, q.shape[:-1] + v.shape[-1:]), TensorType(q.dtype, q.shape[:-1])


def _infer_vjp(cx, types, attrs):
    q, k, v, bias, rest = _split(types, attrs)
    _check(cx, q, k, v, bias)
    if len(rest) != 3:
        raise ShapeError("E0201", "sdpa_vjp takes out, lse and dout after q, k, v and the mask")
    return (q, k, v) + ((bias,) if attrs["bias_grad"] else ())


# ---- the decompositions ------------------------------------------------------------------------------------

def _scores(b, q, k, bias, attrs):
    """S: scaled, masked scores [*N, Tq, Tk].  q and k are scaled by sqrt(scale) each before their product,
    as torch's math path does: in f16 the plain product of moderate q and k overflows."""
    root = math.sqrt(attrs["scale"])
    s = b.matmul(b.mul(q, root), b.transpose(b.mul(k, root)))
    if bias is not None:
        s = b.add(s, b.broadcast_to(bias, s.shape))
    if attrs["causal"]:
        tq, tk = s.shape[-2], s.shape[-1]
        rows = b.broadcast_to(b.unsqueeze(b.iota(tq), 1), (tq, tk))
        cols = b.broadcast_to(b.unsqueeze(b.iota(tk), 0), (tq, tk))
        s = b.where(b.broadcast_to(b.compare(Op.LE, cols, rows), s.shape), s, float("-inf"))
    return s


def _finite(b, x):
    """x with -inf (the maximum or log-sum-exp of a row with no key) at 0: such a row's exp is 0, not nan."""
    return b.where(b.compare(Op.EQ, x, float("-inf")), 0.0, x)


def _probabilities(b, s, lse):
    return b.exp(b.sub(s, b.broadcast_to(b.unsqueeze(_finite(b, lse), -1), s.shape)))


def _vjp(b, n, g, xs, out):
    q, k, v, bias, _ = _split(xs, n.attrs)
    d_out, d_lse = g
    if d_lse is not None:   # lse is read by the backward alone: no built-in exposes it to a loss
        raise AssertionError("sdpa's VJP has no rule for a cotangent of its log-sum-exp")
    if d_out is None:
        return [None] * len(xs)
    o, lse = b.results(out)
    attrs = {key: n.attrs[key] for key in ("causal", "scale", "masked")}
    grads = emit(b, "sdpa_vjp", (q, k, v) + ((bias,) if bias is not None else ()) + (o, lse, d_out),
                 bias_grad=n.attrs["bias_grad"], **attrs)
    return grads + [None] * (len(xs) - len(grads))


@composite("sdpa", "scaled dot-product attention: softmax(q k^T * scale + mask) v, and each row's log-sum-exp",
           _infer, _vjp, vjp_when=lambda attrs: not attrs["dropout"], strided=True)
def sdpa(b, xs, attrs):
    q, k, v, bias, rest = _split(xs, attrs)
    s = _scores(b, q, k, bias, attrs)
    m = _finite(b, b.max(s, -1, keepdim=True))
    e = b.exp(b.sub(s, b.broadcast_to(m, s.shape)))
    total = b.sum(e, -1, keepdim=True)
    p = b.div(e, b.broadcast_to(b.where(b.compare(Op.EQ, total, 0.0), 1.0, total), s.shape))
    lse = b.reshape(b.add(m, b.log(total)), s.shape[:-1])
    if attrs["dropout"]:
        seed, step = rest
        keep = b.compare(Op.GE, b.rand(s.shape, seed, step, attrs["stream"], s.dtype, "dropout"), attrs["dropout"])
        p = b.where(keep, b.mul(p, 1.0 / (1.0 - attrs["dropout"])), 0.0)
    return [b.matmul(p, v), lse]


@composite("sdpa_vjp", "attention's backward: dq, dk, dv (and the mask's) from lse, recomputing P", _infer_vjp,
           strided=True)
def sdpa_vjp(b, xs, attrs):
    q, k, v, bias, (o, lse, d_out) = _split(xs, attrs)
    s = _scores(b, q, k, bias, attrs)
    p = _probabilities(b, s, lse)
    dv = b.matmul(b.transpose(p), d_out)
    dp = b.matmul(d_out, b.transpose(v))
    delta = b.sum(b.mul(d_out, o), -1, keepdim=True)
    ds = b.mul(p, b.sub(dp, b.broadcast_to(delta, dp.shape)))
    dq = b.mul(b.matmul(ds, k), attrs["scale"])
    dk = b.mul(b.matmul(b.transpose(ds), q), attrs["scale"])
    out = [dq, dk, dv]
    if attrs["bias_grad"]:
        axes = [a for a, d in enumerate(bias.shape) if d == 1 and ds.shape[a] != 1]
        out.append(b.sum(ds, axes, keepdim=True) if axes else ds)
    return [_like(b, d, x) for d, x in zip(out, (q, k, v, bias))]


def _like(b, t, x):
    """`t` with the shape of `x` where the two name sizes differently that the shape rule unified (v's keys
    S2 where dv, made from the scores, has k's S): each gradient has its operand's type."""
    return t if t.shape == x.shape else b.reshape(t, x.shape)


def attention(b, q, k, v, *, causal: bool = False, scale: float | None = None, bias=None, bias_grad: bool = False,
              dropout: float = 0.0, rng=None):
    """The attended values [*N, Tq, Ev] of an `sdpa` node (for the built-ins).  `rng`: (seed, step, stream),
    needed when `dropout` > 0."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    inputs = (q, k, v) + ((bias,) if bias is not None else ())
    extra = {}
    if dropout:
        seed, step, stream = rng
        inputs += (seed, step)
        extra["stream"] = stream
    out, _ = emit(b, "sdpa", inputs, causal=bool(causal), scale=scale, masked=bias is not None,
                  bias_grad=bool(bias_grad and bias is not None), dropout=float(dropout), **extra)
    return out
