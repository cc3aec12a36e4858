"""attention and scaled_dot_product_attention on the NumPy backend against torch in float64.

`attention` against torch.nn.MultiheadAttention (batch first): self, causal and cross attention (a
context of the same and of another feature size), key-padding masks (bool: true ignores the key; float:
added), no biases, unbatched input, one step, dropout > 0 in evaluation mode (the identity) and in
training mode; torch's state dict loads by name.  `scaled_dot_product_attention` against
F.scaled_dot_product_attention: 3-D and 4-D inputs, broadcast batch axes, bool (true takes part) and float
masks of several broadcast shapes, causal with L != S, a custom scale, a query no key may answer (zeros, no
gradient), the gradient of a float mask, dropout's kept fraction, scaling and gradient.  Outputs and the
gradients of every input and parameter (inputs declared as parameters so that value_and_grad returns
theirs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dln
from dln.compiler import pipeline
from dln.compiler.ir import Op
from dln.runtime.interpreter import Executable

R = np.random.default_rng(23)
B, T, S, E, HEADS, KDIM = 2, 5, 7, 6, 3, 5
TOL = dict(rtol=1e-10, atol=1e-12)


def _shape(shape) -> str:
    return ", ".join(map(str, shape))


def _model(lines: list[str]):
    return dln.compile("model m() {\n" + "\n".join("    " + line for line in lines) + "\n}", backend="numpy")


def _torch_grads(loss, wrt: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: g.numpy() for k, g in zip(wrt, torch.autograd.grad(loss, list(wrt.values())))}


def _assert_matches(model, feeds, want: torch.Tensor, loss: torch.Tensor, tgrads: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(model.run(["y"], **feeds)["y"], want.detach().numpy(), **TOL, err_msg="y")
    value, grads = model.value_and_grad("loss", **feeds)
    np.testing.assert_allclose(value, loss.item(), **TOL, err_msg="loss")
    assert set(grads) == set(tgrads)
    for k, g in tgrads.items():
        np.testing.assert_allclose(grads[k], g, **TOL, err_msg=f"gradient of {k}")


# ---- attention: torch.nn.MultiheadAttention ---------------------------------------------------------------------

def _mha(bias: bool = True, kdim: int | None = None, dropout: float = 0.0) -> torch.nn.MultiheadAttention:
    torch.manual_seed(int(R.integers(1 << 30)))
    mod = torch.nn.MultiheadAttention(E, HEADS, dropout=dropout, bias=bias, kdim=kdim, vdim=kdim, batch_first=True)
    return mod.double()


# (name, causal, context: None | "same" | "other", mask: None | "bool" | "float", bias, unbatched, steps, dropout)
MHA = [
    ("self", False, None, None, True, False, T, 0.0),
    ("causal", True, None, None, True, False, T, 0.0),
    ("cross", False, "same", None, True, False, T, 0.0),
    ("cross-other-size", False, "other", None, True, False, T, 0.0),
    ("key-padding-bool", False, None, "bool", True, False, T, 0.0),
    ("key-padding-float", False, None, "float", True, False, T, 0.0),
    ("cross-other-size-bool-mask-causal", True, "other", "bool", True, False, T, 0.0),
    ("no-bias", False, "same", "bool", False, False, T, 0.0),
    ("no-bias-other-size", False, "other", None, False, False, T, 0.0),
    ("unbatched", False, None, None, True, True, T, 0.0),
    ("unbatched-cross-mask", True, "other", "bool", True, True, T, 0.0),
    ("one-step", False, None, None, True, False, 1, 0.0),
    ("one-step-causal-cross", True, "same", "float", True, False, 1, 0.0),
    ("dropout-in-evaluation", True, None, None, True, False, T, 0.4),
]


@pytest.mark.parametrize("name,causal,context,mask,bias,unbatched,steps,dropout", MHA, ids=[c[0] for c in MHA])
def test_attention_matches_torch_with_gradients(name, causal, context, mask, bias, unbatched, steps, dropout):
    """y and the gradient of sum(y * gy) for x, the context, a float mask and every projection (with
    dropout, evaluation mode's y: the gradient runs in training mode).  torch's causal form is
    attn_mask = triu(ones(T, S), 1) (true: not allowed)."""
    kdim = KDIM if context == "other" else E
    mod = _mha(bias, kdim if context == "other" else None, dropout).eval()
    keys = steps if context is None else S
    lead = () if unbatched else (B,)
    shapes = {"x": lead + (steps, E)}
    args = [f"heads = {HEADS}", f"causal = {str(causal).lower()}", f"bias = {str(bias).lower()}",
            f"dropout = {dropout}"]
    if context is not None:
        shapes["mem"] = lead + (S, kdim)
        args.append("context = mem")
    if mask == "float":
        shapes["kpm"] = lead + (keys,)
        args.append("mask = kpm")
    lines = [f"param {k}: f64[{_shape(s)}] = zeros" for k, s in shapes.items()]
    feeds = {"gy": R.standard_normal(lead + (steps, E))}
    if mask == "bool":
        padded = R.random(lead + (keys,)) < 0.4
        padded[..., 0] = False                      # every query keeps a key: torch's MHA gives nan otherwise
        feeds["kpm"] = padded
        lines.append(f"input kpm: bool[{_shape(padded.shape)}]")
        args.append("mask = kpm")
    lines += [f"input gy: f64[{_shape(feeds['gy'].shape)}]", f"y = attention(x, {', '.join(args)})",
              "loss = sum(y * gy)", "output y"]
    model = _model(lines)
    values = {k: R.standard_normal(s) for k, s in shapes.items()}
    model.load_state_dict({**values, **{f"y.{k}": v.numpy() for k, v in mod.state_dict().items()}})

    tv = {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}
    memory = tv.get("mem", tv["x"])
    key_padding = tv.get("kpm", torch.tensor(feeds["kpm"]) if "kpm" in feeds else None)
    causal_mask = torch.ones(steps, keys, dtype=torch.bool).triu(1) if causal else None
    if causal and mask == "float":   # torch wants both masks of one kind
        causal_mask = torch.zeros(steps, keys, dtype=torch.float64).masked_fill(causal_mask, float("-inf"))
    y, _ = mod(tv["x"], memory, memory, key_padding_mask=key_padding, attn_mask=causal_mask, need_weights=False)
    if dropout:   # value_and_grad runs in training mode: evaluation's output only
        np.testing.assert_allclose(model.run(["y"], **feeds)["y"], y.detach().numpy(), **TOL)
        return
    loss = (y * torch.tensor(feeds["gy"])).sum()
    wrt = {**tv, **{f"y.{k}": p for k, p in mod.named_parameters()}}
    _assert_matches(model, feeds, y, loss, _torch_grads(loss, wrt))


@pytest.mark.parametrize("kdim", [E, KDIM])
def test_torch_state_dict_loads_by_name(kdim):
    """torch's parameter names and order (packed in_proj_weight, or q/k/v_proj_weight for a context of
    another size), its default initialization's shapes and ranges, and its float32 outputs."""
    mod = _mha(kdim=kdim if kdim != E else None).float().eval()
    context = "" if kdim == E else ", context = mem"
    model = dln.compile(f"""
        model m() {{
            input x: f32[B, T, {E}]
            input mem: f32[B, S, {kdim}]
            h = attention(x, heads = {HEADS}{context})
            output h
        }}""")
    state = {f"h.{k}": v.numpy() for k, v in mod.state_dict().items()}
    params = model.parameters()
    assert list(params) == list(state)
    assert {k: v.shape for k, v in params.items()} == {k: v.shape for k, v in state.items()}
    for k in [k for k in params if k.endswith("proj_weight")]:        # xavier_uniform input projections
        bound = np.sqrt(6 / sum(params[k].shape))
        assert 0.75 * bound < np.abs(params[k]).max() <= bound, k
    assert not params["h.in_proj_bias"].any() and not params["h.out_proj.bias"].any()
    model.load_state_dict(state)
    x, mem = R.standard_normal((3, T, E)).astype(np.float32), R.standard_normal((3, S, kdim)).astype(np.float32)
    with torch.no_grad():
        memory = torch.from_numpy(mem if kdim != E else x)
        want = mod(torch.from_numpy(x), memory, memory, need_weights=False)[0].numpy()
    np.testing.assert_allclose(model(x=x, mem=mem)["h"], want, rtol=1e-5, atol=1e-6)


def test_attention_dropout_in_training_matches_torch_given_the_mask():
    """Training mode drops attention weights: the mask is the lowered graph's uniform draws (the first run is
    step 0) at or above p, the kept weights scaled by 1 / (1 - p); torch computes MHA by hand with it."""
    p = 0.3
    mod = _mha(dropout=p)
    model = _model([f"param x: f64[{B}, {T}, {E}] = zeros", f"input gy: f64[{B}, {T}, {E}]",
                    f"y = attention(x, heads = {HEADS}, dropout = {p})", "loss = sum(y * gy)", "output y"])
    x, gy = R.standard_normal((B, T, E)), R.standard_normal((B, T, E))
    model.load_state_dict({"x": x, **{f"y.{k}": v.numpy() for k, v in mod.state_dict().items()}})
    value, grads = model.value_and_grad("loss", gy=gy)

    graph = pipeline.lower(pipeline.forward_graph(model.train_spec, ["y"]))
    rand = [n for n in graph.nodes if n.op is Op.RAND]
    assert len(rand) == 1 and rand[0].type.shape == (B, HEADS, T, T)
    u = Executable(graph.with_outputs([("u", rand[0].id)])).run(
        {"rng.seed": np.array(0, np.int64), "rng.step": np.array(0, np.int64), **model.parameters()}, {})["u"]
    keep = torch.tensor(u >= p)

    tx = torch.tensor(x, requires_grad=True)
    params = dict(mod.named_parameters())
    q, k, v = (t.reshape(B, T, HEADS, E // HEADS).transpose(1, 2)
               for t in F.linear(tx, params["in_proj_weight"], params["in_proj_bias"]).chunk(3, -1))
    weights = torch.softmax(q @ k.transpose(-1, -2) / np.sqrt(E // HEADS), -1) * keep / (1 - p)
    y = F.linear((weights @ v).transpose(1, 2).reshape(B, T, E), params["out_proj.weight"], params["out_proj.bias"])
    loss = (y * torch.tensor(gy)).sum()
    np.testing.assert_allclose(value, loss.item(), **TOL)
    for name, g in _torch_grads(loss, {"x": tx, **{f"y.{k}": t for k, t in params.items()}}).items():
        np.testing.assert_allclose(grads[name], g, **TOL, err_msg=f"gradient of {name}")


# ---- scaled_dot_product_attention: F.scaled_dot_product_attention ---------------------------------------------------

def _sdpa_case(q_shape, k_shape, v_shape, mask=None, mask_param: bool = False, **kw):
    """The model `y = scaled_dot_product_attention(q, k, v, ...)` with q, k, v (and a float mask when
    `mask_param`) as parameters, torch's y and loss, and its gradients."""
    values = {"q": R.standard_normal(q_shape), "k": R.standard_normal(k_shape), "v": R.standard_normal(v_shape)}
    args = [f"{k} = {str(v).lower()}" for k, v in kw.items()]
    lines = [f"param {k}: f64[{_shape(v.shape)}] = zeros" for k, v in values.items()]
    feeds = {}
    if mask is not None:
        args.append("mask = mask")
        if mask_param:
            values["mask"] = mask
            lines.append(f"param mask: f64[{_shape(mask.shape)}] = zeros")
        else:
            feeds["mask"] = mask
            lines.append(f"input mask: {'bool' if mask.dtype == np.bool_ else 'f64'}[{_shape(mask.shape)}]")
    tv = {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}
    attn_mask = tv["mask"] if mask_param else None if mask is None else torch.tensor(mask)
    if attn_mask is not None and attn_mask.dim() == 1:   # torch wants two axes; [S] broadcasts as NumPy's would
        attn_mask = attn_mask[None]
    torch_kw = {"is_causal" if k == "causal" else k: v for k, v in kw.items()}
    y = F.scaled_dot_product_attention(tv["q"], tv["k"], tv["v"], attn_mask=attn_mask, **torch_kw)
    feeds["gy"] = R.standard_normal(tuple(y.shape))
    lines += [f"input gy: f64[{_shape(y.shape)}]",
              f"y = scaled_dot_product_attention(q, k, v{''.join(', ' + a for a in args)})",
              "loss = sum(y * gy)", "output y"]
    model = _model(lines)
    model.load_state_dict(values)
    loss = (y * torch.tensor(feeds["gy"])).sum()
    return model, feeds, y, loss, _torch_grads(loss, tv)


L, N, EV = 4, 3, 5   # queries, heads, value features (S keys, E query features)
SDPA = [
    ("3d", (B, L, E), (B, S, E), (B, S, EV), {}),
    ("4d", (B, N, L, E), (B, N, S, E), (B, N, S, EV), {}),
    ("2d", (L, E), (S, E), (S, EV), {}),
    ("broadcast-batch", (B, N, L, E), (1, N, S, E), (N, S, EV), {}),
    ("broadcast-queries", (1, L, E), (B, S, E), (B, S, EV), {}),
    ("causal-fewer-queries", (B, N, L, E), (B, N, S, E), (B, N, S, EV), {"causal": True}),
    ("causal-more-queries", (B, S, E), (B, L, E), (B, L, EV), {"causal": True}),
    ("scale", (B, N, L, E), (B, N, S, E), (B, N, S, EV), {"scale": 0.37}),
    ("causal-scale", (B, L, E), (B, L, E), (B, L, EV), {"causal": True, "scale": 1.9}),
]


@pytest.mark.parametrize("name,qs,ks,vs,kw", SDPA, ids=[c[0] for c in SDPA])
def test_sdpa_matches_torch(name, qs, ks, vs, kw):
    _assert_matches(*_sdpa_case(qs, ks, vs, **kw))


MASKS = [(L, S), (S,), (1, S), (L, 1), (B, 1, L, S), (B, N, L, S), (N, 1, S), (1, 1, 1, S)]


@pytest.mark.parametrize("dtype", ["bool", "float"])
@pytest.mark.parametrize("shape", MASKS, ids=["x".join(map(str, s)) for s in MASKS])
def test_sdpa_masks_broadcast_as_torchs(shape, dtype):
    """A bool mask (true: the pair takes part; at least one key per query) or a float mask (added) of any
    shape that broadcasts to [B, N, L, S]."""
    if dtype == "bool":
        mask = R.random(shape) < 0.6
        mask[..., 0] = True
    else:
        mask = R.standard_normal(shape)
    _assert_matches(*_sdpa_case((B, N, L, E), (B, N, S, E), (B, N, S, EV), mask))


@pytest.mark.parametrize("shape", [(B, N, L, S), (N, 1, S), (L, S)])
def test_sdpa_float_mask_gradient(shape):
    """A float mask that is a parameter gets torch's gradient, summed over the axes it broadcasts along."""
    model, feeds, y, loss, tgrads = _sdpa_case((B, N, L, E), (B, N, S, E), (B, N, S, EV), R.standard_normal(shape),
                                               mask_param=True)
    assert set(tgrads) == {"q", "k", "v", "mask"}
    _assert_matches(model, feeds, y, loss, tgrads)


def test_sdpa_fully_masked_query_gives_zeros_and_no_gradient():
    """A query with no key to attend to: a zero row (torch's), a zero gradient for its query, no
    contribution to the keys' and values' gradients; the other rows as torch's."""
    mask = R.random((B, L, S)) < 0.6
    mask[..., 0] = True
    mask[1, 2] = False
    model, feeds, y, loss, tgrads = _sdpa_case((B, L, E), (B, S, E), (B, S, EV), mask)
    _assert_matches(model, feeds, y, loss, tgrads)
    out = model.run(["y"], **feeds)["y"]
    assert not out[1, 2].any() and (np.abs(out).sum(-1) == 0).sum() == 1   # that row alone is zero
    _, grads = model.value_and_grad("loss", **feeds)
    assert not grads["q"][1, 2].any()
    # the masked row's cotangent reaches neither the keys nor the values
    gy = feeds["gy"].copy()
    gy[1, 2] = R.standard_normal(EV) * 10
    _, moved = model.value_and_grad("loss", **{**feeds, "gy": gy})
    for k in "kv":
        np.testing.assert_allclose(moved[k], grads[k], **TOL, err_msg=k)


def test_sdpa_dropout_in_evaluation_is_the_identity():
    """dropout = 0.5 outside training mode: torch's attention without dropout."""
    with_dropout = dln.compile(f"""model m() {{
        input q: f64[{B}, {L}, {E}]
        input k: f64[{B}, {S}, {E}]
        input v: f64[{B}, {S}, {EV}]
        output y = scaled_dot_product_attention(q, k, v, dropout = 0.5)
    }}""", backend="numpy")
    q, k, v = (R.standard_normal(s) for s in ((B, L, E), (B, S, E), (B, S, EV)))
    want = F.scaled_dot_product_attention(*(torch.tensor(t) for t in (q, k, v)))
    np.testing.assert_allclose(with_dropout(q=q, k=k, v=v)["y"], want.numpy(), **TOL)


def _dropout_model(p: float, batch: int, queries: int, keys: int, seed: int = 0):
    return dln.compile(f"""model m() {{
        param q: f64[{batch}, {queries}, {E}] = zeros
        param k: f64[{batch}, {keys}, {E}] = zeros
        param v: f64[{batch}, {keys}, {keys}] = zeros
        input gy: f64[{batch}, {queries}, {keys}]
        y = scaled_dot_product_attention(q, k, v, causal = true, dropout = {p})
        loss = sum(y * gy)
        output y
    }}""", backend="numpy", seed=seed)


def test_sdpa_dropout_keeps_one_minus_p_scaled():
    """With v the identity, y is the dropped-out weight matrix itself: each causal weight kept with
    probability 1 - p (a binomial test over ~5000 weights) and scaled by 1 / (1 - p), the rest zero; a new
    mask each step."""
    p, batch, queries, keys = 0.3, 40, 13, 19
    model = _dropout_model(p, batch, queries, keys)
    q, k = R.standard_normal((batch, queries, E)), R.standard_normal((batch, keys, E))
    model.load_state_dict({"q": q, "k": k, "v": np.broadcast_to(np.eye(keys), (batch, keys, keys))})
    dropped = model.run(["y"], training=True)["y"]
    weights = F.scaled_dot_product_attention(torch.tensor(q), torch.tensor(k), torch.eye(keys, dtype=torch.float64),
                                             is_causal=True).numpy()
    allowed = np.broadcast_to(np.tril(np.ones((queries, keys), bool)), weights.shape)
    kept = dropped != 0
    assert not kept[~allowed].any()
    n = int(allowed.sum())
    fraction = kept[allowed].mean()
    assert abs(fraction - (1 - p)) < 4 * np.sqrt(p * (1 - p) / n), fraction
    np.testing.assert_allclose(dropped[kept], weights[kept] / (1 - p), **TOL)
    assert not np.array_equal(model.run(["y"], training=True)["y"] != 0, kept)


def test_sdpa_dropout_gradient_matches_torch_given_the_mask():
    """Two models of one seed draw the same mask at step 0: one shows it (v the identity), the other's
    gradient of q, k and v equals torch's through softmax(...) * keep / (1 - p)."""
    p, batch, queries, keys = 0.4, 3, 5, 7
    q, k, v = (R.standard_normal(s) for s in ((batch, queries, E), (batch, keys, E), (batch, keys, keys)))
    shown = _dropout_model(p, batch, queries, keys, seed=5)
    shown.load_state_dict({"q": q, "k": k, "v": np.broadcast_to(np.eye(keys), (batch, keys, keys))})
    keep = torch.tensor(shown.run(["y"], training=True)["y"] != 0)
    model = _dropout_model(p, batch, queries, keys, seed=5)
    model.load_state_dict({"q": q, "k": k, "v": v})
    gy = R.standard_normal((batch, queries, keys))
    value, grads = model.value_and_grad("loss", gy=gy)

    tv = {name: torch.tensor(t, requires_grad=True) for name, t in (("q", q), ("k", k), ("v", v))}
    scores = (tv["q"] @ tv["k"].transpose(-1, -2) / np.sqrt(E)).masked_fill(
        torch.ones(queries, keys, dtype=torch.bool).triu(1), float("-inf"))
    y = torch.softmax(scores, -1) * keep / (1 - p) @ tv["v"]
    loss = (y * torch.tensor(gy)).sum()
    np.testing.assert_allclose(value, loss.item(), **TOL)
    for name, g in _torch_grads(loss, tv).items():
        np.testing.assert_allclose(grads[name], g, **TOL, err_msg=f"gradient of {name}")


def test_sdpa_in_half_precision_scales_before_the_product():
    """f16 queries and keys whose plain product overflows f16 (40 * 40 * 64 > 65504) while the scaled scores
    are moderate: torch's math path scales q and k by sqrt(scale) each before the product, so the scores stay
    finite; so does dln's (against torch in float32 on the same f16 values)."""
    model = dln.compile("""model m() {
        input q: f16[1, 4, 64]
        input k: f16[1, 4, 64]
        input v: f16[1, 4, 8]
        output y = scaled_dot_product_attention(q, k, v, scale = 0.0001)
    }""", backend="numpy")
    q = (40 + 4 * R.random((1, 4, 64))).astype(np.float16)
    v = R.random((1, 4, 8)).astype(np.float16)
    y = model(q=q, k=q, v=v)["y"]
    want = F.scaled_dot_product_attention(*(torch.tensor(t, dtype=torch.float32) for t in (q, q, v)), scale=1e-4)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, want.numpy(), rtol=1e-2, atol=1e-3)


def test_sdpa_float_mask_of_its_own_symbolic_sizes_has_a_gradient_path():
    """A float mask input [M, N] whose sizes are the scores' [L, S] only once inputs arrive: the composite's
    mask takes the scores' sizes (its axes are 1 or the scores'), so the backward, whose mask cotangent is
    the scores' shape, builds; value and gradient as torch's."""
    model = dln.compile("""model m() {
        param w: f64[6, 6] = zeros
        input q: f64[B, L, 6]
        input k: f64[B, S, 6]
        input mask: f64[M, N]
        y = scaled_dot_product_attention(q @ w, k, k, mask = mask)
        loss = sum(y * y)
        output y
    }""", backend="numpy")
    w = R.standard_normal((6, 6))
    model.load_state_dict({"w": w})
    feeds = {"q": R.standard_normal((B, L, 6)), "k": R.standard_normal((B, S, 6)), "mask": R.standard_normal((L, S))}
    value, grads = model.value_and_grad("loss", **feeds)
    tw = torch.tensor(w, requires_grad=True)
    t = {name: torch.tensor(v) for name, v in feeds.items()}
    y = F.scaled_dot_product_attention(t["q"] @ tw, t["k"], t["k"], attn_mask=t["mask"])
    loss = (y * y).sum()
    np.testing.assert_allclose(value, loss.item(), **TOL)
    np.testing.assert_allclose(grads["w"], _torch_grads(loss, {"w": tw})["w"], **TOL)


def test_sdpa_gradient_with_keys_and_values_of_differently_named_sizes():
    """k [C, S, 6] and v [D, S2, 3], their sizes equal only at run time: dk and dv take the operands' own
    types (the backward built dv of k's key axis S, not v's S2: an internal error); value and gradient as
    torch's."""
    model = dln.compile("""model m() {
        param w: f64[6, 6] = zeros
        input q: f64[B, L, 6]
        input k: f64[C, S, 6]
        input v: f64[D, S2, 3]
        y = scaled_dot_product_attention(q, k @ w, v @ w[0:3, 0:3])
        loss = sum(y * y)
        output y
    }""", backend="numpy")
    w = R.standard_normal((6, 6))
    model.load_state_dict({"w": w})
    feeds = {"q": R.standard_normal((B, L, 6)), "k": R.standard_normal((B, S, 6)), "v": R.standard_normal((B, S, 3))}
    value, grads = model.value_and_grad("loss", **feeds)
    tw = torch.tensor(w, requires_grad=True)
    t = {name: torch.tensor(v) for name, v in feeds.items()}
    y = F.scaled_dot_product_attention(t["q"], t["k"] @ tw, t["v"] @ tw[0:3, 0:3])
    loss = (y * y).sum()
    np.testing.assert_allclose(value, loss.item(), **TOL)
    np.testing.assert_allclose(grads["w"], _torch_grads(loss, {"w": tw})["w"], **TOL)


def test_sdpa_default_scale_of_a_feature_size_known_at_run_time():
    """q and k of a symbolic feature size E: the default scale 1 / sqrt(E) needs E as a number, so a model
    that leaves it open is a located E0202 naming `scale` (not a TypeError); a known size on either side
    serves."""
    with pytest.raises(dln.DlnError) as e:
        dln.compile("""model m() {
            input q: f64[B, L, E]
            output y = scaled_dot_product_attention(q, q, q)
        }""", backend="numpy")
    assert e.value.diagnostics[0].code == "E0202" and "scale" in e.value.diagnostics[0].message
    model = dln.compile("""model m() {
        input q: f64[B, L, E]
        input k: f64[B, S, 6]
        output y = scaled_dot_product_attention(q, k, k)
    }""", backend="numpy")
    q, k = R.standard_normal((B, L, 6)), R.standard_normal((B, S, 6))
    want = F.scaled_dot_product_attention(torch.tensor(q), torch.tensor(k), torch.tensor(k))
    np.testing.assert_allclose(model(q=q, k=k)["y"], want.numpy(), **TOL)
