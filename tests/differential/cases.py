"""Random well-formed cases for every built-in and every operator, drawn from a seed.

`GENERATORS` maps a built-in's name (or an operator's spelling, `op:+`) to a
function of a NumPy generator returning a `Case`: a model body binding `y`,
its parameters (differentiated) and inputs, and the torch function computing
the same `y` (None for the random built-ins, which only the two backends can
check against each other: they share one Philox generator).  Shapes are drawn
from sizes that are not multiples of any block size, with size-1 axes;
axes are often negative; operands broadcast.

A built-in joins the differential harness by being given a generator here: the
harness fails for every available built-in and every primitive op that no case
reaches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

# Sizes that are no block size's multiple, and 1 (a broadcast or squeezed axis).
SIZES = (1, 2, 3, 5, 6, 7, 11, 13, 19, 37)
Tensors = dict[str, torch.Tensor]


@dataclass
class Case:
    body: str                                   # statements binding y; `{F}` is the float type
    torch_fn: Callable[[Tensors], torch.Tensor] | None
    params: dict[str, np.ndarray] = field(default_factory=dict)   # float64, differentiated
    inputs: dict[str, np.ndarray] = field(default_factory=dict)   # fed as they are
    positive: frozenset[str] = frozenset()      # params that must stay > 0 when the harness rescales them
    shapes: dict[str, str] = field(default_factory=dict)   # declared shapes of inputs with symbolic axes
    tol32: float = 1e-4                         # relative tolerance between the backends in f32
    training: bool = False                      # y is compared in training mode (batchnorm's batch statistics)


def dims(rng: np.random.Generator, rank: int, sizes=SIZES) -> tuple[int, ...]:
    return tuple(int(rng.choice(sizes)) for _ in range(rank))


def normal(rng, shape, scale=1.0) -> np.ndarray:
    return rng.standard_normal(shape) * scale


def away_from_zero(rng, shape, gap=0.05) -> np.ndarray:
    """Normal values at least `gap` from 0 (no ties at a kink)."""
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + gap, x - gap)


def positive(rng, shape, lo=0.3, hi=2.5) -> np.ndarray:
    return rng.uniform(lo, hi, shape)


def distinct(rng, shape) -> np.ndarray:
    """Values without ties (max, min and argmax have one answer), well apart."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2) * 0.1 + rng.uniform(-0.02, 0.02, shape)


def axis_of(rng, rank: int) -> int:
    """An axis, negative half of the time."""
    a = int(rng.integers(0, rank))
    return a - rank if rng.random() < 0.5 else a


def axes_arg(rng, rank: int) -> tuple[str, tuple[int, ...] | None]:
    """(the `axis = ...` text, the torch dims): none, one axis, or a tuple of axes."""
    kind = rng.integers(0, 3)
    if kind == 0 or rank == 0:
        return "", None
    if kind == 1:
        a = axis_of(rng, rank)
        return f", axis = {a}", (a,)
    k = int(rng.integers(1, rank + 1))
    chosen = sorted(int(a) for a in rng.choice(rank, k, replace=False))
    chosen = [a - rank if rng.random() < 0.5 else a for a in chosen]
    return f", axis = ({', '.join(map(str, chosen))},)", tuple(chosen)


def keepdim_arg(rng) -> tuple[str, bool]:
    k = bool(rng.random() < 0.5)
    return (", keepdim = true" if k else ""), k


def float_number(rng, lo=-2.0, hi=2.0) -> float:
    return round(float(rng.uniform(lo, hi)), 3)


# ---- elementwise -------------------------------------------------------------------------------------------------
def _unary(name: str, fn, draw=away_from_zero, args: str = "", positive_domain=False):
    def gen(rng):
        x = draw(rng, dims(rng, int(rng.integers(1, 5))))
        return Case(f"y = {name}(x{args})", lambda t: fn(t["x"]), {"x": x},
                    positive=frozenset({"x"}) if positive_domain else frozenset())
    return gen


def _gen_gelu(rng):
    approx = str(rng.choice(["none", "tanh"]))
    x = normal(rng, dims(rng, 3), 2.0)
    return Case(f'y = gelu(x, approximate = "{approx}")', lambda t: F.gelu(t["x"], approximate=approx), {"x": x})


def _gen_elu(rng):
    alpha = float_number(rng, 0.2, 2.0)
    return Case(f"y = elu(x, alpha = {alpha})", lambda t: F.elu(t["x"], alpha), {"x": away_from_zero(rng, dims(rng, 2))})


def _gen_leaky_relu(rng):
    slope = float_number(rng, 0.01, 0.5)
    return Case(f"y = x -> leaky_relu({slope})", lambda t: F.leaky_relu(t["x"], slope),
                {"x": away_from_zero(rng, dims(rng, 3))})


def _gen_softplus(rng):
    beta, threshold = float_number(rng, 0.5, 3.0), float_number(rng, 2.0, 20.0)
    x = normal(rng, dims(rng, 2), 4.0)
    return Case(f"y = softplus(x, beta = {beta}, threshold = {threshold})",
                lambda t: F.softplus(t["x"], beta, threshold), {"x": x})


def _gen_hardtanh(rng):
    lo = float_number(rng, -2.0, -0.1)
    hi = float_number(rng, 0.1, 2.0)
    x = normal(rng, dims(rng, 3), 2.0)
    x = np.where(np.isclose(x, lo, atol=1e-3) | np.isclose(x, hi, atol=1e-3), 0.0, x)
    return Case(f"y = hardtanh(x, min_val = {lo}, max_val = {hi})", lambda t: F.hardtanh(t["x"], lo, hi), {"x": x})


def _gen_clamp(rng):
    shape = dims(rng, 3)
    x = normal(rng, shape, 2.0)
    kind = rng.integers(0, 3)
    if kind == 0:   # tensor bounds that broadcast
        lo, hi = -positive(rng, shape[-1:]), positive(rng, shape[-1:])
        return Case("y = clamp(x, lo, hi)", lambda t: torch.clamp(t["x"], t["lo"], t["hi"]),
                    {"x": x, "lo": lo, "hi": hi}, positive=frozenset({"hi"}))
    lo = float_number(rng, -1.5, -0.1)
    if kind == 1:
        return Case(f"y = clamp(x, lo = {lo})", lambda t: torch.clamp(t["x"], min=lo), {"x": x})
    return Case(f"y = clamp(x, {lo}, {-lo})", lambda t: torch.clamp(t["x"], lo, -lo), {"x": x})


def _gen_detach(rng):
    x = normal(rng, dims(rng, 2))
    return Case("y = x * detach(x)", lambda t: t["x"] * t["x"].detach(), {"x": x})


def _broadcast_pair(rng) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Two shapes that broadcast: one drops leading axes and sets some to 1."""
    a = dims(rng, int(rng.integers(1, 5)))
    b = list(a[int(rng.integers(0, len(a))):])
    for k in range(len(b)):
        if rng.random() < 0.3:
            b[k] = 1
    return (a, tuple(b)) if rng.random() < 0.5 else (tuple(b), a)


def _binary(spelling: str, fn, draw_b=away_from_zero, positive_b=False):
    def gen(rng):
        sa, sb = _broadcast_pair(rng)
        a, b = away_from_zero(rng, sa), draw_b(rng, sb)
        return Case(f"y = {spelling.format(a='a', b='b')}", lambda t: fn(t["a"], t["b"]), {"a": a, "b": b},
                    positive=frozenset({"b"}) if positive_b else frozenset())
    return gen


def _gen_pow(rng):
    kind = rng.integers(0, 3)
    sa, sb = _broadcast_pair(rng)
    if kind == 0:   # a positive base, any exponent
        a, b = positive(rng, sa), normal(rng, sb)
        return Case("y = a ** b", lambda t: t["a"] ** t["b"], {"a": a, "b": b}, positive=frozenset({"a"}))
    if kind == 1:   # a literal power of any base
        k = int(rng.choice([2, 3]))
        return Case(f"y = a ** {k}", lambda t: t["a"] ** k, {"a": normal(rng, sa)})
    return Case("y = 2.0 ** -a", lambda t: 2.0 ** -t["a"], {"a": normal(rng, sa)})


def _gen_mod(rng):
    sa, sb = _broadcast_pair(rng)
    shape = np.broadcast_shapes(sa, sb)
    b = positive(rng, sb, 0.7, 1.9) * np.where(rng.random(sb) < 0.5, -1.0, 1.0)
    a = normal(rng, shape, 3.0)
    r = np.remainder(a, b)
    a = np.where((np.abs(r) < 0.05) | (np.abs(r - b) < 0.05), a + 0.1, a)   # away from the jumps
    return Case("y = a % b", lambda t: torch.remainder(t["a"], t["b"]), {"a": a}, {"b": b})


def _gen_compare(rng):
    op = str(rng.choice(["<", "<=", ">", ">=", "==", "!="]))
    sa, sb = _broadcast_pair(rng)
    a = np.round(normal(rng, sa), 1)
    b = np.round(normal(rng, sb), 1)
    fns = {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge, "==": torch.eq, "!=": torch.ne}
    return Case(f"y = where(a {op} b, a, b * 2.0)", lambda t: torch.where(fns[op](t["a"], t["b"]), t["a"],
                                                                              t["b"] * 2.0),
                {"a": a, "b": b})


def _gen_logical(rng):
    shape = dims(rng, 2)
    a, b = normal(rng, shape), normal(rng, shape)
    return Case("y = where((a > 0.0 and not (b > 0.5)) or a < -1.0, a, b)",
                lambda t: torch.where(((t["a"] > 0) & ~(t["b"] > 0.5)) | (t["a"] < -1), t["a"], t["b"]),
                {"a": a, "b": b})


def _gen_where(rng):
    sa, sb = _broadcast_pair(rng)
    c = rng.random(sa if rng.random() < 0.5 else sb) < 0.4
    if rng.random() < 0.3:
        return Case("y = where(c, a, 0.5)", lambda t: torch.where(t["c"], t["a"], 0.5),
                    {"a": normal(rng, sa)}, {"c": c})
    return Case("y = where(c, a, b)", lambda t: torch.where(t["c"], t["a"], t["b"]),
                {"a": normal(rng, sa), "b": normal(rng, sb)}, {"c": c})


def _gen_neg(rng):
    return Case("y = -x * 2.0 - x / 3.0", lambda t: -t["x"] * 2.0 - t["x"] / 3.0, {"x": normal(rng, dims(rng, 3))})


def _gen_cast(rng):
    shape = dims(rng, 2)
    x = normal(rng, shape, 3.0)
    x = np.where(np.abs(x - np.round(x)) < 0.05, x + 0.1, x)
    return Case("y = x * cast(cast(x, i64), {F}) + cast(x > 0.0, {F})",
                lambda t: t["x"] * t["x"].to(torch.int64).to(t["x"].dtype) + (t["x"] > 0).to(t["x"].dtype),
                {"x": x})


# ---- reductions ------------------------------------------------------------------------------------------------
def _reduction(name: str, fn, draw=normal):
    def gen(rng):
        shape = dims(rng, int(rng.integers(1, 4)))
        axis, dim = axes_arg(rng, len(shape))
        keep, k = keepdim_arg(rng)
        x = draw(rng, shape)
        return Case(f"y = {name}(x{axis}{keep})", lambda t: fn(t["x"], dim, k), {"x": x})
    return gen


def _torch_max(x, dim, keep):
    return torch.amax(x, dim=dim, keepdim=keep) if dim is not None else (
        torch.amax(x, dim=tuple(range(x.ndim)), keepdim=keep))


def _torch_min(x, dim, keep):
    return torch.amin(x, dim=dim, keepdim=keep) if dim is not None else (
        torch.amin(x, dim=tuple(range(x.ndim)), keepdim=keep))


def _gen_var(name):
    def gen(rng):
        shape = dims(rng, int(rng.integers(1, 4)), sizes=(2, 3, 5, 6, 7, 11, 13))
        axis, dim = axes_arg(rng, len(shape))
        keep, k = keepdim_arg(rng)
        correction = int(rng.integers(0, 2))
        fn = torch.var if name == "var" else torch.std
        return Case(f"y = {name}(x{axis}{keep}, correction = {correction})",
                    lambda t: fn(t["x"], dim=dim, keepdim=k, correction=correction), {"x": normal(rng, shape)})
    return gen


def _gen_argmax(rng):
    shape = dims(rng, int(rng.integers(1, 4)))
    a = axis_of(rng, len(shape))
    keep, k = keepdim_arg(rng)
    x = distinct(rng, shape)
    return Case(f"i = argmax(x, axis = {a}{keep})\n y = x * 0.0 + cast(i, {{F}})" if k else
                f"y = cast(argmax(x, axis = {a}), {{F}})",
                (lambda t: t["x"] * 0.0 + torch.argmax(t["x"], a, keepdim=True).to(t["x"].dtype)) if k else
                (lambda t: torch.argmax(t["x"], a).to(t["x"].dtype)), {"x": x})


def _gen_softmax(name: str, fn):
    def gen(rng):
        shape = dims(rng, int(rng.integers(1, 4)))
        a = axis_of(rng, len(shape))
        return Case(f"y = {name}(x, axis = {a})", lambda t: fn(t["x"], a), {"x": normal(rng, shape, 3.0)})
    return gen


def _gen_logsumexp(rng):
    shape = dims(rng, int(rng.integers(1, 4)))
    axis, dim = axes_arg(rng, len(shape))
    keep, k = keepdim_arg(rng)
    dim = dim if dim is not None else tuple(range(len(shape)))
    return Case(f"y = logsumexp(x{axis}{keep})", lambda t: torch.logsumexp(t["x"], dim, keepdim=k),
                {"x": normal(rng, shape, 3.0)})


# ---- shapes and movement ---------------------------------------------------------------------------------------
def _gen_reshape(rng):
    shape = dims(rng, 3)
    target = (shape[0] * shape[1], -1) if rng.random() < 0.5 else (-1, shape[2], shape[1])
    text = ", ".join(map(str, target))
    return Case(f"y = reshape(x * 2.0, ({text})) + 1.0", lambda t: (t["x"] * 2.0).reshape(target) + 1.0,
                {"x": normal(rng, shape)})


def _gen_transpose(rng):
    shape = dims(rng, int(rng.integers(2, 5)))
    a, b = axis_of(rng, len(shape)), axis_of(rng, len(shape))
    return Case(f"y = transpose(x, {a}, {b}) * 2.0", lambda t: t["x"].transpose(a, b) * 2.0,
                {"x": normal(rng, shape)})


def _gen_permute(rng):
    shape = dims(rng, int(rng.integers(2, 5)))
    perm = tuple(int(p) for p in rng.permutation(len(shape)))
    return Case(f"y = permute(x, {', '.join(map(str, perm))}) + 1.0", lambda t: t["x"].permute(perm) + 1.0,
                {"x": normal(rng, shape)})


def _gen_flatten(rng):
    shape = dims(rng, 4)
    start, end = sorted(int(v) for v in rng.integers(0, 4, 2))
    return Case(f"y = flatten(x, start = {start}, end = {end - 4})", lambda t: torch.flatten(t["x"], start, end),
                {"x": normal(rng, shape)})


def _gen_squeeze(rng):
    shape = list(dims(rng, 3, sizes=(2, 3, 5, 7)))
    at = int(rng.integers(0, 4))
    shape.insert(at, 1)
    if rng.random() < 0.5:
        return Case(f"y = squeeze(x, axis = {at - 4})", lambda t: t["x"].squeeze(at), {"x": normal(rng, shape)})
    return Case("y = squeeze(x)", lambda t: t["x"].squeeze(), {"x": normal(rng, shape)})


def _gen_unsqueeze(rng):
    shape = dims(rng, 2)
    a = int(rng.integers(-3, 3))
    return Case(f"y = unsqueeze(x, {a}) * unsqueeze(x, {a})", lambda t: t["x"].unsqueeze(a) ** 2,
                {"x": normal(rng, shape)})


def _gen_expand(rng):
    shape = dims(rng, 3)
    small = tuple(1 if rng.random() < 0.5 else d for d in shape)
    lead = int(rng.choice(SIZES))
    target = (lead,) + shape
    return Case(f"y = expand(x, ({', '.join(map(str, target))}))", lambda t: t["x"].expand(target),
                {"x": normal(rng, small)})


def _gen_concat(rng):
    rank = int(rng.integers(1, 4))
    a = axis_of(rng, rank)
    base = list(dims(rng, rank))
    parts = {}
    for k in range(int(rng.integers(2, 4))):
        s = list(base)
        s[a] = int(rng.choice(SIZES))
        parts[f"x{k}"] = normal(rng, s)
    names = list(parts)
    # a shared operand read in every part (the bias of a layer, say) and a part computed from another
    text = ", ".join(f"{n} * s" for n in names) + f", relu({names[0]})"
    return Case(f"y = concat([{text}], axis = {a})",
                lambda t: torch.cat([t[n] * t["s"] for n in names] + [torch.relu(t[names[0]])], a),
                {**parts, "s": normal(rng, base[-1:] if a not in (-1, rank - 1) else (1,))})


def _gen_split(rng):
    rank = int(rng.integers(1, 4))
    a = axis_of(rng, rank)
    shape = list(dims(rng, rank))
    sizes = [int(rng.choice((1, 2, 3, 5))) for _ in range(3)]
    shape[a] = sum(sizes)
    text = ", ".join(map(str, sizes))
    return Case(f"p, q, r = split(x, ({text}), axis = {a})\n y = concat([r * 2.0, sigmoid(p), q], axis = {a})",
                lambda t: (lambda p, q, r: torch.cat([r * 2.0, torch.sigmoid(p), q], a))(
                    *torch.split(t["x"], sizes, a)), {"x": normal(rng, shape)})


def _gen_chunk(rng):
    rank = int(rng.integers(1, 4))
    a = axis_of(rng, rank)
    shape = list(dims(rng, rank))
    shape[a] = 2 * int(rng.choice((1, 3, 5)))
    return Case(f"u, v = chunk(x * b, 2, axis = {a})\n y = u * sigmoid(v)",
                lambda t: (lambda u, v: u * torch.sigmoid(v))(*torch.chunk(t["x"] * t["b"], 2, a)),
                {"x": normal(rng, shape), "b": normal(rng, shape[-1:])})


def _gen_pad(rng):
    rank = int(rng.integers(1, 4))
    shape = dims(rng, rank)
    pads = [int(v) for v in rng.integers(0, 4, 2 * int(rng.integers(1, rank + 1)))]
    value = float_number(rng)
    return Case(f"y = pad(x * b, ({', '.join(map(str, pads))}), value = {value}) * 3.0",
                lambda t: F.pad(t["x"] * t["b"], pads, value=value) * 3.0,
                {"x": normal(rng, shape), "b": normal(rng, shape[-1:])})


def _gen_index(rng):
    shape = dims(rng, 3, sizes=(2, 3, 5, 7, 11, 13))
    i = int(rng.integers(-shape[0], shape[0]))
    lo = int(rng.integers(0, shape[1]))
    step = int(rng.integers(1, 3))
    return Case(f"y = x[{i}, {lo}::{step}, :-1] * 2.0", lambda t: t["x"][i, lo::step, :-1] * 2.0,
                {"x": normal(rng, shape)})


def _gen_gather(rng):
    shape = dims(rng, int(rng.integers(1, 4)), sizes=(2, 3, 5, 7, 11))
    a = axis_of(rng, len(shape))
    ishape = tuple(int(rng.integers(1, d + 1)) for d in shape)
    ishape = tuple(int(rng.integers(1, 9)) if k == a % len(shape) else d for k, d in enumerate(ishape))
    index = rng.integers(0, shape[a], ishape)
    return Case(f"y = gather(x, {a}, i)", lambda t: torch.gather(t["x"], a, t["i"]), {"x": normal(rng, shape)},
                {"i": index})


def _gen_one_hot(rng):
    n = int(rng.choice((2, 5, 7, 11)))
    shape = dims(rng, int(rng.integers(1, 3)))
    i = rng.integers(0, n, shape)
    return Case(f"y = cast(one_hot(i, {n}), {{F}}) * s", lambda t: F.one_hot(t["i"], n).to(t["s"].dtype) * t["s"],
                {"s": normal(rng, (n,))}, {"i": i})


def _gen_arange(rng):
    n = int(rng.choice((2, 5, 7, 11)))
    start, step = int(rng.integers(-3, 3)), int(rng.integers(1, 3))
    stop = start + n * step
    return Case(f"y = x * cast(arange({start}, {stop}, step = {step}), {{F}})",
                lambda t: t["x"] * torch.arange(start, stop, step).to(t["x"].dtype), {"x": normal(rng, (3, n))})


def _gen_symbolic(rng):
    """A symbolic batch axis: sizes as values (`B` in an expression) and reductions over it."""
    n, d = int(rng.choice((1, 3, 7, 37))), int(rng.choice((2, 5, 13)))
    return Case("y = (x * s) / B + mean(x * s, axis = 0, keepdim = true) * unsqueeze(cast(arange(B), {F}), 1)",
                lambda t: (t["x"] * t["s"]) / n
                + (t["x"] * t["s"]).mean(0, keepdim=True) * torch.arange(n).to(t["s"].dtype)[:, None],
                {"s": normal(rng, (d,))}, {"x": normal(rng, (n, d))}, shapes={"x": f"B, {d}"})


def _gen_like(name: str, value: float):
    def gen(rng):
        return Case(f"y = x * 2.0 + {name}(x)", lambda t: t["x"] * 2.0 + value, {"x": normal(rng, dims(rng, 3))})
    return gen


def _gen_matmul(spelling: str):
    def gen(rng):
        m, k, n = dims(rng, 3, sizes=(1, 3, 5, 7, 13, 37, 70))
        kind = rng.integers(0, 5)
        batch = dims(rng, int(rng.integers(1, 3)))
        shapes = [((m, k), (k, n)), ((k,), (k, n)), ((m, k), (k,)), (batch + (m, k), (k, n)),
                  (batch + (m, k), tuple(1 if rng.random() < 0.5 else d for d in batch) + (k, n))][kind]
        text = "y = a @ b" if spelling == "@" else "y = matmul(a, b)"
        return Case(text, lambda t: t["a"] @ t["b"], {"a": normal(rng, shapes[0]), "b": normal(rng, shapes[1])})
    return gen


# ---- layers (their parameters come from the model; torch reads them by name) -------------------------------------
def _gen_linear(rng):
    shape = dims(rng, int(rng.integers(1, 4)))
    out, bias = int(rng.choice(SIZES)), bool(rng.random() < 0.7)
    return Case(f"y = x -> linear({out}, bias = {str(bias).lower()})",
                lambda t: F.linear(t["x"], t["y.weight"], t["y.bias"] if bias else None), {"x": normal(rng, shape)})


def _gen_layernorm(rng):
    shape = dims(rng, int(rng.integers(1, 4)), sizes=(2, 3, 5, 7, 13, 37))
    eps, affine = float(rng.choice([1e-5, 1e-3])), bool(rng.random() < 0.7)
    return Case(f"y = layernorm(x, eps = {eps}, affine = {str(affine).lower()})",
                lambda t: F.layer_norm(t["x"], shape[-1:], t.get("y.weight"), t.get("y.bias"), eps),
                {"x": normal(rng, shape, 2.0) + 0.5})


def _gen_batchnorm(rng):
    """Training mode (batch statistics; the running statistics it updates are compared between the
    backends); at least two values per channel, as torch requires."""
    shape = dims(rng, 1, sizes=(2, 3, 5, 7)) + dims(rng, int(rng.integers(1, 4)))
    momentum, eps = float(rng.choice([0.1, 0.5])), float(rng.choice([1e-5, 1e-3]))
    affine, track = bool(rng.random() < 0.7), bool(rng.random() < 0.8)
    return Case(f"y = batchnorm(x, momentum = {momentum}, eps = {eps}, affine = {str(affine).lower()}, "
                f"track_running_stats = {str(track).lower()})",
                lambda t: F.batch_norm(t["x"], None, None, t.get("y.weight"), t.get("y.bias"), True, momentum, eps),
                {"x": normal(rng, shape, 2.0) + 0.5}, training=True)


def _gen_recurrent(layer: str):
    """rnn, lstm, gru: 1 or 2 layers, either direction, with or without bias and initial states, and the
    output or the final hidden state as y; torch's module called with the drawn parameters."""
    modules = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}

    def gen(rng):
        batch, steps, features, hidden = (int(v) for v in dims(rng, 4, sizes=(1, 2, 3, 5, 6, 7)))
        layers, bi, bias = int(rng.integers(1, 3)), bool(rng.random() < 0.5), bool(rng.random() < 0.7)
        act = str(rng.choice(["tanh", "relu"])) if layer == "rnn" else "tanh"
        given, final = bool(rng.random() < 0.5), bool(rng.random() < 0.3)
        states = ["h0", "c0"] if layer == "lstm" else ["h0"]
        state_shape = (layers * (2 if bi else 1), batch, hidden)
        args = f"{hidden}, layers = {layers}, bidirectional = {str(bi).lower()}, bias = {str(bias).lower()}"
        args += f', nonlinearity = "{act}"' if layer == "rnn" else ""
        args += "".join(f", {s} = {s}" for s in states) if given else ""
        outs = "o, y, c" if final and layer == "lstm" else "o, y" if final else "y"
        body = f'{outs} = {layer}(x, {args}, name = "r"{", return_state = true" if final else ""})'
        kw = {"nonlinearity": act} if layer == "rnn" else {}
        module = modules[layer](features, hidden, layers, bias=bias, batch_first=True, bidirectional=bi,
                                **kw).double()

        def run(t):
            weights = {k: t[f"r.{k}"] for k, _ in module.named_parameters()}
            init = None if not given else (t["h0"], t["c0"]) if layer == "lstm" else t["h0"]
            y, h = torch.func.functional_call(module, weights, (t["x"], init))
            return (h[0] if layer == "lstm" else h) if final else y

        params = {"x": normal(rng, (batch, steps, features))}
        if given:
            params.update({s: normal(rng, state_shape) for s in states})
        return Case(body, run, params)
    return gen


def _gen_attention(rng):
    """Multi-head self- or cross-attention (a context of the same or another feature size), causal or not, a
    bool key-padding mask (key 0 always kept: torch gives nan for a query with no key), with or without
    biases, batched or not; torch's MultiheadAttention called with the drawn parameters."""
    batch, steps, keys = (int(v) for v in dims(rng, 3, sizes=(1, 2, 3, 5)))
    heads, width = int(rng.choice((1, 2, 3))), int(rng.choice((1, 2, 3)))
    dim = heads * width
    causal, bias, unbatched = bool(rng.random() < 0.4), bool(rng.random() < 0.7), bool(rng.random() < 0.2)
    context = str(rng.choice(["none", "same", "other"]))
    kdim = int(rng.choice((2, 5))) if context == "other" else dim
    keys = steps if context == "none" else keys
    lead = () if unbatched else (batch,)
    params = {"x": normal(rng, lead + (steps, dim))}
    args = f"heads = {heads}, causal = {str(causal).lower()}, bias = {str(bias).lower()}"
    if context != "none":
        params["mem"] = normal(rng, lead + (keys, kdim))
        args += ", context = mem"
    inputs = {}
    if rng.random() < 0.5:
        pad = rng.random(lead + (keys,)) < 0.4
        pad[..., 0] = False
        inputs["pad"] = pad
        args += ", mask = pad"
    module = torch.nn.MultiheadAttention(dim, heads, bias=bias, kdim=kdim, vdim=kdim, batch_first=True).double()

    def run(t):
        weights = {k: t[f"a.{k}"] for k, _ in module.named_parameters()}
        memory = t.get("mem", t["x"])
        causal_mask = torch.ones(steps, keys, dtype=torch.bool).triu(1) if causal else None
        return torch.func.functional_call(module, weights, (t["x"], memory, memory),
                                          {"key_padding_mask": t.get("pad"), "attn_mask": causal_mask,
                                           "need_weights": False})[0]
    return Case(f'y = attention(x, {args}, name = "a")', run, params, inputs)


def _gen_sdpa(rng):
    """scaled_dot_product_attention on q, k, v of rank 2 to 4 whose batch axes broadcast; causal (L != S
    too), or a bool mask (true takes part; key 0 always) or a float mask (a parameter) of a shape that
    broadcasts to the scores; the default or a drawn scale."""
    queries, keys, width, values = (int(v) for v in dims(rng, 4, sizes=(1, 2, 3, 5, 7)))
    batch = dims(rng, int(rng.integers(0, 3)), sizes=(1, 2, 3))
    loose = lambda: tuple(1 if rng.random() < 0.4 else d for d in batch)  # noqa: E731
    params = {"q": normal(rng, batch + (queries, width)), "k": normal(rng, loose() + (keys, width)),
              "v": normal(rng, loose() + (keys, values))}
    inputs, args = {}, ""
    causal = bool(rng.random() < 0.3)
    scores = batch + (queries, keys)
    mask_shape = tuple(1 if rng.random() < 0.4 else d for d in scores)[int(rng.integers(0, len(scores) - 1)):]
    kind = "none" if causal else str(rng.choice(["none", "bool", "float"]))
    if causal:
        args += ", causal = true"
    elif kind == "bool":
        m = rng.random(mask_shape) < 0.6
        m[..., 0] = True
        inputs["m"] = m
        args += ", mask = m"
    elif kind == "float":
        params["m"] = normal(rng, mask_shape)
        args += ", mask = m"
    scale = float(rng.choice([0.3, 1.7])) if rng.random() < 0.4 else None
    args += f", scale = {scale}" if scale is not None else ""
    return Case(f"y = scaled_dot_product_attention(q, k, v{args})",
                lambda t: F.scaled_dot_product_attention(t["q"], t["k"], t["v"], attn_mask=t.get("m"),
                                                         is_causal=causal, scale=scale),
                params, inputs)


def _gen_embedding(rng):
    vocab, dim = int(rng.choice((3, 7, 11))), int(rng.choice((2, 5, 6)))
    tokens = rng.integers(0, vocab, dims(rng, 2))
    return Case(f"y = cast(embedding(i, {vocab}, {dim}), {{F}}) * s",
                lambda t: F.embedding(t["i"], t["y.weight"]).to(t["s"].dtype) * t["s"],
                {"s": normal(rng, (dim,))}, {"i": tokens})


def _gen_gcn_conv(rng):
    n, features, out = (int(v) for v in dims(rng, 3, sizes=(2, 3, 5, 7, 11)))
    a = (rng.random((n, n)) < 0.4).astype(np.float64)
    a = np.maximum(a, a.T) + np.eye(n)
    d = 1 / np.sqrt(a.sum(1))
    return Case(f"y = x -> gcn_conv(adj, {out})", lambda t: t["adj"] @ (t["x"] @ t["y.weight"].T) + t["y.bias"],
                {"x": normal(rng, (n, features))}, {"adj": a * d[:, None] * d[None, :]})


def _conv_geometry(rng, rank: int, transposed: bool = False) -> dict:
    """Kernel, stride, padding, dilation and groups for a random convolution, as torch spells them."""
    pick = lambda options: tuple(int(rng.choice(options)) for _ in range(rank))  # noqa: E731
    kernel, stride, dilation = pick((1, 2, 3, 5)), pick((1, 1, 2, 3)), pick((1, 1, 2))
    padding = tuple(int(rng.integers(0, d * (k - 1) // 2 + 1)) if transposed else int(rng.integers(0, 3))
                    for k, d in zip(kernel, dilation))
    return {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation,
            "groups": int(rng.choice((1, 1, 2, 3)))}


def _tuple(v: tuple[int, ...]) -> str:
    return str(v[0]) if len(v) == 1 else f"({', '.join(map(str, v))})"


def _gen_conv(rank: int):
    def gen(rng):
        geo = _conv_geometry(rng, rank)
        g = geo["groups"]
        c_in, out = g * int(rng.choice((1, 2, 3))), g * int(rng.choice((1, 2, 3)))
        reach = [d * (k - 1) + 1 - 2 * p for k, d, p in zip(geo["kernel"], geo["dilation"], geo["padding"])]
        sizes = tuple(max(1, r) + int(rng.integers(0, 7)) for r in reach)
        bias = bool(rng.random() < 0.7)
        same = rank == 2 and all(s == 1 for s in geo["stride"]) and rng.random() < 0.3
        padding = '"same"' if same else _tuple(geo["padding"])
        layer = "conv1d" if rank == 1 else "conv2d"
        f = F.conv1d if rank == 1 else F.conv2d
        body = (f"y = x -> {layer}({out}, kernel = {_tuple(geo['kernel'])}, stride = {_tuple(geo['stride'])}, "
                f"padding = {padding}, dilation = {_tuple(geo['dilation'])}, groups = {g}, "
                f"bias = {str(bias).lower()})")
        torch_padding = "same" if same else geo["padding"]
        return Case(body, lambda t: f(t["x"], t["y.weight"], t["y.bias"] if bias else None, geo["stride"],
                                      torch_padding, geo["dilation"], g),
                    {"x": normal(rng, (int(rng.choice((1, 2, 3))), c_in) + sizes)})
    return gen


def _gen_conv_transpose2d(rng):
    geo = _conv_geometry(rng, 2, transposed=True)
    g = geo["groups"]
    c_in, out = g * int(rng.choice((1, 2, 3))), g * int(rng.choice((1, 2)))
    extra = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(geo["stride"], geo["dilation"]))
    sizes = tuple(int(rng.choice((1, 2, 3, 5))) for _ in range(2))
    bias = bool(rng.random() < 0.7)
    body = (f"y = x -> conv_transpose2d({out}, kernel = {_tuple(geo['kernel'])}, stride = {_tuple(geo['stride'])}, "
            f"padding = {_tuple(geo['padding'])}, output_padding = {_tuple(extra)}, groups = {g}, "
            f"dilation = {_tuple(geo['dilation'])}, bias = {str(bias).lower()})")
    return Case(body, lambda t: F.conv_transpose2d(t["x"], t["y.weight"], t["y.bias"] if bias else None,
                                                   geo["stride"], geo["padding"], extra, g, geo["dilation"]),
                {"x": normal(rng, (int(rng.choice((1, 2))), c_in) + sizes)})


def _gen_global_avgpool(rng):
    shape = dims(rng, 4)
    return Case("y = global_avgpool(x)", lambda t: t["x"].mean((2, 3)), {"x": normal(rng, shape)})


def _pool_case(rng, name: str, dilated: bool) -> tuple[tuple[int, ...], str, dict]:
    """A random 2-d pooling that torch accepts: an input shape, the call's arguments, torch's keywords.
    Half the cases tile the input (stride = kernel, no dilation), the others overlap, skip or dilate."""
    while True:
        shape = dims(rng, int(rng.integers(1, 3)), sizes=(1, 2, 3)) + dims(rng, 2, sizes=(2, 3, 5, 6, 7, 11))
        k = dims(rng, 2, sizes=(1, 2, 3))
        tiled = rng.random() < 0.5
        s = k if tiled else dims(rng, 2, sizes=(1, 2, 3, 4))
        p = (0, 0) if tiled and rng.random() < 0.5 else tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        d = (1, 1) if tiled or not dilated else dims(rng, 2, sizes=(1, 2, 3))
        ceil = bool(rng.random() < 0.5)
        kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, **({"dilation": d} if dilated else {}))
        try:
            # A window larger than the padded input is an error; a dilated one that holds padding
            # only is -inf in torch, whose gradient then lands in another channel: draw again.
            if not getattr(F, name)(torch.zeros(shape), **kw).isfinite().all():
                continue
        except RuntimeError:
            continue
        args = f"{k}, stride = {s}, padding = {p}, ceil_mode = {str(ceil).lower()}"
        return shape, args + (f", dilation = {d}" if dilated else ""), kw


def _gen_maxpool2d(rng):
    shape, args, kw = _pool_case(rng, "max_pool2d", dilated=True)
    # distinct values: one maximum per window, whichever way float32 rounds the fused scale
    return Case(f"y = maxpool2d(x, {args})", lambda t: F.max_pool2d(t["x"], **kw), {"x": distinct(rng, shape)})


def _gen_avgpool2d(rng):
    shape, args, kw = _pool_case(rng, "avg_pool2d", dilated=False)
    include = bool(rng.random() < 0.5)
    divisor = int(rng.choice([0, 0, 0, 2, 5]))
    args += f", count_include_pad = {str(include).lower()}" + (f", divisor_override = {divisor}" if divisor else "")
    return Case(f"y = avgpool2d(x, {args})",
                lambda t: F.avg_pool2d(t["x"], **kw, count_include_pad=include, divisor_override=divisor or None),
                {"x": normal(rng, shape)})


# ---- losses ----------------------------------------------------------------------------------------------------------
def _reduction_arg(rng) -> tuple[str, str]:
    red = str(rng.choice(["mean", "sum", "none"]))
    return f', reduction = "{red}"', red


def _gen_cross_entropy(rng):
    classes = int(rng.choice((2, 3, 5, 7, 11)))
    lead = dims(rng, int(rng.integers(1, 3)))
    r, red = _reduction_arg(rng)
    smoothing = float(rng.choice([0.0, 0.1]))
    x = normal(rng, lead + (classes,), 2.0)

    def ce(t, target):
        logits = t["x"] if t["x"].ndim == 2 else t["x"].movedim(-1, 1)
        if target.dtype.is_floating_point and target.ndim > 2:
            target = target.movedim(-1, 1)
        return F.cross_entropy(logits, target, label_smoothing=smoothing, reduction=red)
    if rng.random() < 0.3:   # class probabilities
        p = torch.softmax(torch.tensor(normal(rng, lead + (classes,))), -1).numpy()
        return Case(f"y = cross_entropy(x, p, label_smoothing = {smoothing}{r})", lambda t: ce(t, t["p"]),
                    {"x": x, "p": p}, positive=frozenset({"p"}))
    target = rng.integers(0, classes, lead)
    return Case(f"y = cross_entropy(x, i, label_smoothing = {smoothing}{r})", lambda t: ce(t, t["i"]), {"x": x},
                {"i": target})


def _gen_nll(rng):
    classes = int(rng.choice((2, 3, 5, 7)))
    lead = dims(rng, 1, sizes=(1, 3, 5, 7, 13))
    r, red = _reduction_arg(rng)
    return Case(f"y = nll(log_softmax(x), i{r})",
                lambda t: F.nll_loss(torch.log_softmax(t["x"], -1), t["i"], reduction=red),
                {"x": normal(rng, lead + (classes,))}, {"i": rng.integers(0, classes, lead)})


def _gen_hinge(rng):
    classes = int(rng.choice((2, 3, 5, 7)))
    n = int(rng.choice((1, 3, 5, 13)))
    r, red = _reduction_arg(rng)
    margin = float(rng.choice([1.0, 0.6]))
    return Case(f"y = hinge(x, i, margin = {margin}{r})",
                lambda t: F.multi_margin_loss(t["x"], t["i"], margin=margin, reduction=red),
                {"x": normal(rng, (n, classes), 0.3)}, {"i": rng.integers(0, classes, n)})


def _gen_pointwise_loss(name: str, fn, draw_input=normal, draw_target=normal, positive_input=False):
    def gen(rng):
        sa, sb = _broadcast_pair(rng)
        shape = np.broadcast_shapes(sa, sb)
        r, red = _reduction_arg(rng)
        if rng.random() < 0.2:  # a number target broadcasts to the input
            v = 0.25
            return Case(f"y = {name}(x, {v}{r})", lambda t: fn(t["x"], torch.full_like(t["x"], v), red),
                        {"x": draw_input(rng, shape)}, positive=frozenset({"x"}) if positive_input else frozenset())
        return Case(f"y = {name}(x, z{r})", lambda t: fn(t["x"], t["z"], red),
                    {"x": draw_input(rng, shape)}, {"z": draw_target(rng, shape)},
                    positive=frozenset({"x"}) if positive_input else frozenset())
    return gen


def _unit(rng, shape):
    return rng.uniform(0.05, 0.95, shape)


def _gen_kl_div(rng):
    shape = dims(rng, 2, sizes=(1, 3, 5, 7))
    log_target = bool(rng.random() < 0.5)
    red = str(rng.choice(["mean", "sum", "none", "batchmean"]))
    p = torch.softmax(torch.tensor(normal(rng, shape)), -1)
    target = torch.log(p) if log_target else p
    return Case(f'y = kl_div(log_softmax(x), z, reduction = "{red}", log_target = {str(log_target).lower()})',
                lambda t: F.kl_div(torch.log_softmax(t["x"], -1), t["z"], reduction=red, log_target=log_target),
                {"x": normal(rng, shape)}, {"z": target.numpy()})


# ---- random: the backends share Philox, so only each other checks them ------------------------------------------------
def _gen_random(text: str, draw=normal):
    def gen(rng):
        shape = dims(rng, int(rng.integers(1, 4)), sizes=(3, 5, 7, 13, 37))
        return Case(text, None, {"x": draw(rng, shape)}, positive=frozenset({"x"}))
    return gen


GENERATORS: dict[str, Callable[[np.random.Generator], Case]] = {
    # elementwise built-ins
    "abs": _unary("abs", torch.abs), "sign": _unary("sign", torch.sign), "relu": _unary("relu", torch.relu),
    "exp": _unary("exp", torch.exp), "sin": _unary("sin", torch.sin), "cos": _unary("cos", torch.cos),
    "tanh": _unary("tanh", torch.tanh), "sigmoid": _unary("sigmoid", torch.sigmoid),
    "atan": _unary("atan", torch.atan), "floor": _unary("floor", torch.floor),
    "log": _unary("log", torch.log, positive, positive_domain=True),
    "sqrt": _unary("sqrt", torch.sqrt, positive, positive_domain=True),
    "rsqrt": _unary("rsqrt", torch.rsqrt, positive, positive_domain=True),
    "log1p": _unary("log1p", torch.log1p, lambda rng, s: positive(rng, s, 0.01, 3.0), positive_domain=True),
    "silu": _unary("silu", F.silu), "selu": _unary("selu", F.selu), "softsign": _unary("softsign", F.softsign),
    "gelu": _gen_gelu, "elu": _gen_elu, "leaky_relu": _gen_leaky_relu, "softplus": _gen_softplus,
    "hardtanh": _gen_hardtanh, "clamp": _gen_clamp, "detach": _gen_detach, "where": _gen_where, "cast": _gen_cast,
    "maximum": _binary("maximum(a, b)", torch.maximum), "minimum": _binary("minimum(a, b)", torch.minimum),
    # operators
    "op:+": _binary("a + b", torch.add), "op:-": _binary("a - b", torch.sub), "op:*": _binary("a * b", torch.mul),
    "op:/": _binary("a / b", torch.div), "op:neg": _gen_neg, "op:**": _gen_pow, "op:%": _gen_mod,
    "op:compare": _gen_compare, "op:logical": _gen_logical, "op:index": _gen_index, "op:@": _gen_matmul("@"),
    "op:symbolic": _gen_symbolic,
    # reductions
    "sum": _reduction("sum", lambda x, d, k: torch.sum(x, d if d else tuple(range(x.ndim)), keepdim=k)),
    "mean": _reduction("mean", lambda x, d, k: torch.mean(x, d if d else tuple(range(x.ndim)), keepdim=k)),
    "max": _reduction("max", _torch_max, distinct), "min": _reduction("min", _torch_min, distinct),
    "var": _gen_var("var"), "std": _gen_var("std"), "argmax": _gen_argmax, "logsumexp": _gen_logsumexp,
    "softmax": _gen_softmax("softmax", torch.softmax), "log_softmax": _gen_softmax("log_softmax", torch.log_softmax),
    # shapes and indexing
    "reshape": _gen_reshape, "transpose": _gen_transpose, "permute": _gen_permute, "flatten": _gen_flatten,
    "squeeze": _gen_squeeze, "unsqueeze": _gen_unsqueeze, "expand": _gen_expand, "concat": _gen_concat,
    "split": _gen_split, "chunk": _gen_chunk, "pad": _gen_pad, "gather": _gen_gather, "one_hot": _gen_one_hot,
    "arange": _gen_arange, "ones_like": _gen_like("ones_like", 1.0), "zeros_like": _gen_like("zeros_like", 0.0),
    "matmul": _gen_matmul("matmul"),
    # layers
    "linear": _gen_linear, "layernorm": _gen_layernorm, "batchnorm": _gen_batchnorm, "embedding": _gen_embedding,
    "gcn_conv": _gen_gcn_conv, "global_avgpool": _gen_global_avgpool, "maxpool2d": _gen_maxpool2d,
    "avgpool2d": _gen_avgpool2d, "conv1d": _gen_conv(1), "conv2d": _gen_conv(2),
    "conv_transpose2d": _gen_conv_transpose2d, "rnn": _gen_recurrent("rnn"), "lstm": _gen_recurrent("lstm"),
    "gru": _gen_recurrent("gru"), "attention": _gen_attention, "scaled_dot_product_attention": _gen_sdpa,
    # losses
    "cross_entropy": _gen_cross_entropy, "nll": _gen_nll, "hinge": _gen_hinge, "kl_div": _gen_kl_div,
    "mse": _gen_pointwise_loss("mse", lambda x, z, r: F.mse_loss(x, z, reduction=r)),
    "mae": _gen_pointwise_loss("mae", lambda x, z, r: F.l1_loss(x, z, reduction=r), away_from_zero),
    "huber": _gen_pointwise_loss("huber", lambda x, z, r: F.huber_loss(x, z, reduction=r)),
    "bce": _gen_pointwise_loss("bce", lambda x, z, r: F.binary_cross_entropy(x, z, reduction=r), _unit, _unit,
                               positive_input=True),
    "bce_with_logits": _gen_pointwise_loss(
        "bce_with_logits", lambda x, z, r: F.binary_cross_entropy_with_logits(x, z, reduction=r), normal, _unit),
    # random
    "dropout": _gen_random("y = dropout(x, 0.3) * 2.0"), "rand_like": _gen_random("y = x * rand_like(x)"),
    "randn_like": _gen_random("y = x + randn_like(x)"),
    "bernoulli": _gen_random("y = x * bernoulli(sigmoid(x))"),
}
