"""rnn, lstm and gru on the NumPy backend against torch.nn.RNN/LSTM/GRU (batch_first) in float64:
outputs, final states and the gradients of the input, the initial states and every weight and bias;
torch state dicts loaded by name; dropout between layers; one compiled model for every sequence
length; stream builds carrying the state from one run to the next; the lowering (one input
projection, one scan with one product per step); located errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dln
from dln.compiler import pipeline
from dln.compiler.ir import Op
from dln.dsl.diagnostics import DlnError
from dln.runtime.interpreter import Executable

R = np.random.default_rng(11)
D, H, B, T = 3, 5, 2, 7
TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
TOL = dict(rtol=1e-10, atol=1e-11)


def _torch_layer(layer: str, layers: int, bidirectional: bool, bias: bool, nonlinearity: str = "tanh",
                 features: int = D, hidden: int = H) -> torch.nn.Module:
    torch.manual_seed(R.integers(1 << 30))
    kw = {"nonlinearity": nonlinearity} if layer == "rnn" else {}
    return TORCH[layer](features, hidden, num_layers=layers, bidirectional=bidirectional, bias=bias,
                        batch_first=True, **kw).double()


def _shape(shape) -> str:
    return ", ".join(map(str, shape))


def _torch_forward(mod, layer: str, x, h0, c0):
    if layer == "lstm":
        state = None if h0 is None else (h0, c0)
        y, (hn, cn) = mod(x, state)
        return y, hn, cn
    y, hn = mod(x, h0)
    return y, hn, None


# (layer, nonlinearity, layers, bidirectional, bias, initial state given, unbatched)
CONFIGS = [(layer, act, layers, bi, bias, given, False)
           for layer, act in (("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh"))
           for layers, bi, bias, given in ((1, False, True, False), (2, False, True, True),
                                           (1, True, False, True), (2, True, True, False), (2, True, False, True))]
CONFIGS += [(layer, act, 2, True, True, True, True) for layer, act in (("rnn", "relu"), ("lstm", "tanh"),
                                                                     ("gru", "tanh"))]


@pytest.mark.parametrize("layer,act,layers,bi,bias,given,unbatched", CONFIGS,
                         ids=[f"{c[0]}-{c[1]}-L{c[2]}-{'bi' if c[3] else 'uni'}-{'bias' if c[4] else 'nobias'}"
                              f"-{'h0' if c[5] else 'zeros'}{'-unbatched' if c[6] else ''}" for c in CONFIGS])
def test_matches_torch_with_gradients(layer, act, layers, bi, bias, given, unbatched):
    """y, h_n (c_n) and the gradient of sum(y * gy) + sum(h_n * gh) (+ sum(c_n * gc)) with respect to the
    input, h0 (c0) and every parameter.  The input and initial states are declared as parameters so that
    value_and_grad returns their gradients too."""
    mod = _torch_layer(layer, layers, bi, bias, act)
    dirs = 2 if bi else 1
    x_shape = (T, D) if unbatched else (B, T, D)
    s_shape = (layers * dirs, H) if unbatched else (layers * dirs, B, H)
    y_shape = x_shape[:-1] + (H * dirs,)
    lstm = layer == "lstm"
    states = ["hn", "cn"] if lstm else ["hn"]
    args = [f"layers = {layers}", f"bidirectional = {str(bi).lower()}", f"bias = {str(bias).lower()}"]
    if layer == "rnn":
        args.append(f'nonlinearity = "{act}"')
    lines = [f"param x: f64[{_shape(x_shape)}] = zeros"]
    if given:
        lines += [f"param h0: f64[{_shape(s_shape)}] = zeros"] + ([f"param c0: f64[{_shape(s_shape)}] = zeros"]
                                                                  if lstm else [])
        args += ["h0 = h0"] + (["c0 = c0"] if lstm else [])
    lines += [f"input gy: f64[{_shape(y_shape)}]"] + [f"input g{s}: f64[{_shape(s_shape)}]" for s in states]
    lines += [f"y, {', '.join(states)} = {layer}(x, {H}, {', '.join(args)}, return_state = true)",
              "loss = sum(y * gy) + " + " + ".join(f"sum({s} * g{s})" for s in states),
              "output y"] + [f"output {s}" for s in states]
    model = dln.compile("model m() {\n" + "\n".join("    " + line for line in lines) + "\n}", backend="numpy")

    values = {"x": R.standard_normal(x_shape)}
    if given:
        values["h0"] = R.standard_normal(s_shape)
        if lstm:
            values["c0"] = R.standard_normal(s_shape)
    model.load_state_dict({**values, **{f"y.{k}": v.numpy() for k, v in mod.state_dict().items()}})
    cots = {"gy": R.standard_normal(y_shape), **{f"g{s}": R.standard_normal(s_shape) for s in states}}

    tv = {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}
    y, hn, cn = _torch_forward(mod, layer, tv["x"], tv.get("h0"), tv.get("c0"))
    want = {"y": y, "hn": hn, "cn": cn}
    loss = sum((want[k] * torch.tensor(cots[f"g{k}"])).sum() for k in ["y"] + states)
    params = dict(mod.named_parameters())
    wrt = {**tv, **{f"y.{k}": p for k, p in params.items()}}
    tgrads = dict(zip(wrt, torch.autograd.grad(loss, list(wrt.values()))))

    got = model.run(["y"] + states, **cots)
    for k in ["y"] + states:
        np.testing.assert_allclose(got[k], want[k].detach().numpy(), **TOL, err_msg=k)
    value, grads = model.value_and_grad("loss", **cots)
    np.testing.assert_allclose(value, loss.item(), **TOL)
    assert set(grads) == set(wrt)
    for k, g in tgrads.items():
        np.testing.assert_allclose(grads[k], g.numpy(), **TOL, err_msg=f"gradient of {k}")


@pytest.mark.parametrize("layer", ["rnn", "lstm", "gru"])
def test_torch_state_dict_loads_by_name(layer):
    """A state dict of the torch module loads by name under the layer's scope (`h.weight_ih_l0`), in torch's
    order, and gives torch's outputs in float32 (LANGUAGE.md's `(x -> lstm(64))[:, -1]` form)."""
    mod = _torch_layer(layer, 2, True, True, features=6, hidden=9).float()
    model = dln.compile(f"""
        model m() {{
            input x: f32[B, T, 6]
            h = x -> {layer}(9, layers = 2, bidirectional = true)
            output last = h[:, -1]
        }}""")
    state = {f"h.{k}": v.numpy() for k, v in mod.state_dict().items()}
    assert list(model.parameters()) == list(state)
    model.load_state_dict(state)
    x = R.standard_normal((3, 5, 6)).astype(np.float32)
    with torch.no_grad():
        want = mod(torch.from_numpy(x))[0][:, -1].numpy()
    np.testing.assert_allclose(model(x=x)["last"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer,gates", [("rnn", 1), ("lstm", 4), ("gru", 3)])
def test_default_initialization_is_torchs(layer, gates):
    """Every weight and bias U(-1/sqrt(H), 1/sqrt(H)), with torch's shapes."""
    hidden = 16
    model = dln.compile(f"model m() {{\n input x: f32[B, T, 7]\n output y = x -> {layer}({hidden}, layers = 2)\n}}")
    bound = 1 / np.sqrt(hidden)
    params = model.parameters()
    assert params["y.weight_ih_l0"].shape == (gates * hidden, 7)
    assert params["y.weight_ih_l1"].shape == (gates * hidden, hidden)
    assert params["y.weight_hh_l1"].shape == (gates * hidden, hidden)
    assert params["y.bias_hh_l1"].shape == (gates * hidden,)
    for k, v in params.items():
        assert np.abs(v).max() <= bound, k
        assert np.abs(v).max() > 0.8 * bound and abs(v.mean()) < 0.3 * bound, k   # spread over the range


def test_dropout_between_layers_only_in_training():
    mod = _torch_layer("lstm", 3, False, True)
    src = """model m() {
        input x: f64[B, T, 3]
        output y = x -> lstm(5, layers = LAYERS, dropout = 0.4)
    }"""
    x = R.standard_normal((B, T, D))
    deep = dln.compile(src.replace("LAYERS", "3"), backend="numpy")
    deep.load_state_dict({f"y.{k}": v.numpy() for k, v in mod.state_dict().items()})
    mod.eval()
    with torch.no_grad():
        want = mod(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(deep(x=x)["y"], want, **TOL)               # evaluation: no dropout
    trained = deep.run(["y"], training=True, x=x)["y"]
    assert not np.allclose(trained, want)                                   # training: dropped between layers
    assert not np.allclose(trained, deep.run(["y"], training=True, x=x)["y"])   # a new mask each step

    shallow_mod = _torch_layer("lstm", 1, False, True)
    shallow = dln.compile(src.replace("LAYERS", "1"), backend="numpy")
    shallow.load_state_dict({f"y.{k}": v.numpy() for k, v in shallow_mod.state_dict().items()})
    with torch.no_grad():
        want = shallow_mod(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(shallow.run(["y"], training=True, x=x)["y"], want, **TOL)   # not after the last


def test_training_mode_dropout_matches_a_mask_applied_by_hand():
    """Two stacked layers with dropout p equal one layer, the mask the first layer's output meets
    (scaled by 1 / (1 - p)), and the second layer: the mask read back as where the outputs differ."""
    p = 0.5
    src = """model m() {
        input x: f64[B, T, 3]
        output y = x -> gru(5, layers = 2, dropout = 0.5)
    }"""
    model = dln.compile(src, backend="numpy")
    mod = _torch_layer("gru", 2, False, True)
    model.load_state_dict({f"y.{k}": v.numpy() for k, v in mod.state_dict().items()})
    first = _torch_layer("gru", 1, False, True)
    second = _torch_layer("gru", 1, False, True, features=H)
    with torch.no_grad():
        for k, v in mod.state_dict().items():
            target, leaf = (first, k) if k.endswith("l0") else (second, k.replace("l1", "l0"))
            getattr(target, leaf).copy_(v)
    x = R.standard_normal((B, T, D))
    spec = model.train_spec
    graph = pipeline.forward_graph(spec, ["y"])
    rand = [n for n in graph.nodes if n.op is Op.RAND]
    assert len(rand) == 1 and rand[0].type.shape[-1] == H     # one mask, between the two layers
    y = model.run(["y"], training=True, x=x)["y"]
    # The mask: the same seed and step (the first run is step 0) draw the same numbers, read from the graph.
    exe = Executable(pipeline.forward_graph(spec, ["y"]).with_outputs([("u", rand[0].id)]), model.persistent)
    u = exe.run({"x": x, "rng.seed": np.array(0, np.int64), "rng.step": np.array(0, np.int64)},
                {"B": B, "T": T})["u"]
    keep = u >= p                                  # drawn batch-major: [B, T, H]
    with torch.no_grad():
        h1 = first(torch.from_numpy(x))[0].numpy()
        want = second(torch.from_numpy(np.where(keep, h1 / (1 - p), 0.0)))[0].numpy()
    np.testing.assert_allclose(y, want, **TOL)


def test_one_compile_serves_every_length(monkeypatch):
    """T symbolic: sequences of 7, 3 and 12 steps (and another batch) run from the graph built and prepared
    once, forward and backward."""
    calls = {"forward": 0, "prepare": 0}
    forward_graph = pipeline.forward_graph

    def counting(*a, **k):
        calls["forward"] += 1
        return forward_graph(*a, **k)
    monkeypatch.setattr(pipeline, "forward_graph", counting)
    mod = _torch_layer("lstm", 2, True, True)
    model = dln.compile("""model m() {
        input x: f64[B, T, 3]
        input target: f64[B, T, 10]
        h = x -> lstm(5, layers = 2, bidirectional = true)
        loss = mse(h, target)
        output h
    }""", backend="numpy")
    prepare = model.backend.prepare

    def counting_prepare(*a, **k):
        calls["prepare"] += 1
        return prepare(*a, **k)
    monkeypatch.setattr(model.backend, "prepare", counting_prepare)
    model.load_state_dict({f"h.{k}": v.numpy() for k, v in mod.state_dict().items()})
    for batch, steps in ((B, 7), (B, 3), (4, 12)):
        x, target = R.standard_normal((batch, steps, D)), R.standard_normal((batch, steps, 2 * H))
        want = mod(torch.from_numpy(x))[0]
        np.testing.assert_allclose(model(x=x)["h"], want.detach().numpy(), **TOL)
        _, grads = model.value_and_grad("loss", x=x, target=target)
        tgrad = torch.autograd.grad(torch.nn.functional.mse_loss(want, torch.from_numpy(target)),
                                    mod.weight_hh_l1_reverse)[0]
        np.testing.assert_allclose(grads["h.weight_hh_l1_reverse"], tgrad.numpy(), **TOL)
    assert calls == {"forward": 1, "prepare": 2}


def _stream_model():
    src = """model m() {
        input x: f64[B, T, 3]
        h = x -> lstm(5, layers = 2)
        g = h -> gru(4)
        r = g -> rnn(6, nonlinearity = "relu")
        output r
    }"""
    return dln.compile(src, backend="numpy")


def test_stream_build_carries_the_state_between_runs():
    """A stream build reads each layer's initial state from the inputs `<layer>.h_n` (`.c_n`) and returns the
    final one as `carry:<layer>.h_n`: a sequence run in two pieces, the second fed the first's carries,
    equals the whole sequence run at once, and torch."""
    model = _stream_model()
    spec = pipeline.build_model(model.program, stream=True)
    assert [(c.name, str(c.type)) for c in spec.carries] == [
        ("h.h_n", "f64[2, B, 5]"), ("h.c_n", "f64[2, B, 5]"), ("g.h_n", "f64[1, B, 4]"), ("r.h_n", "f64[1, B, 6]")]
    graph = pipeline.forward_graph(spec)
    assert set(graph.output_names) == {"r", "carry:h.h_n", "carry:h.c_n", "carry:g.h_n", "carry:r.h_n"}
    exe = Executable(graph, model.persistent)

    def run(x, carries):
        out = exe.run({"x": x, **carries}, {"B": x.shape[0], "T": x.shape[1]})
        return out["r"], {c.name: out[f"carry:{c.name}"] for c in spec.carries}

    x = R.standard_normal((B, 9, D))
    zeros = {c.name: np.zeros((c.type.shape[0], B, c.type.shape[2])) for c in spec.carries}
    whole, final = run(x, zeros)
    first, middle = run(x[:, :4], zeros)
    second, end = run(x[:, 4:], middle)
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, **TOL)
    for k in final:
        np.testing.assert_allclose(end[k], final[k], **TOL, err_msg=k)
    np.testing.assert_allclose(whole, model(x=x)["r"], **TOL)     # the plain build starts from zeros too

    # A carried state that is not zero is where the run starts: against torch given that state.
    params = model.parameters()
    mods = {"h": _torch_layer("lstm", 2, False, True), "g": _torch_layer("gru", 1, False, True, features=5,
                                                                        hidden=4),
            "r": _torch_layer("rnn", 1, False, True, "relu", features=4, hidden=6)}
    with torch.no_grad():
        for scope, mod in mods.items():
            for k, p in mod.named_parameters():
                p.copy_(torch.from_numpy(params[f"{scope}.{k}"]))
        t = lambda a: torch.from_numpy(a)   # noqa: E731
        h, _ = mods["h"](t(x[:, 4:]), (t(middle["h.h_n"]), t(middle["h.c_n"])))
        g, _ = mods["g"](h, t(middle["g.h_n"]))
        r, _ = mods["r"](g, t(middle["r.h_n"]))
    np.testing.assert_allclose(second, r.numpy(), **TOL)


def test_stream_build_leaves_given_states_alone():
    """A layer given h0 (and c0) starts from them: nothing to carry."""
    model = dln.compile("""model m() {
        input x: f32[B, T, 3]
        input h: f32[1, B, 4]
        y = gru(x, 4, h0 = h)
        z = y -> lstm(2)
        output z
    }""")
    spec = pipeline.build_model(model.program, stream=True)
    assert [c.name for c in spec.carries] == ["z.h_n", "z.c_n"]


@pytest.mark.parametrize("layer,bi", [("lstm", True), ("gru", False), ("rnn", True)])
def test_lowering_is_one_projection_and_one_scan_per_direction(layer, bi):
    """Per layer and direction: the input projection of all steps as one matrix product outside the loop,
    and a scan (reverse for the second direction) whose body holds exactly one matrix product."""
    dirs = 2 if bi else 1
    model = dln.compile(f"""model m() {{
        input x: f32[B, T, 3]
        output y = x -> {layer}(5, layers = 2, bidirectional = {str(bi).lower()})
    }}""")
    graph = pipeline.forward_graph(model.spec)
    scans = [n for n in graph.nodes if n.op is Op.SCAN]
    assert len(scans) == 2 * dirs
    assert [n.attrs["reverse"] for n in scans] == ([False, True] * 2 if bi else [False, False])
    assert sum(n.op is Op.MATMUL for n in graph.nodes) == 2 * dirs
    for n in scans:
        body = n.attrs["body"]
        assert sum(m.op is Op.MATMUL for m in body.nodes) == 1
        assert not any(m.op in (Op.SCAN, Op.PERMUTE, Op.CONCAT) for m in body.nodes)
        assert str(n.attrs["length"]) == "T"


@pytest.mark.parametrize("call,code,message", [
    ("lstm(x, 0)", "E0208", "lstm's hidden must be positive, got 0"),
    ("gru(x, 4, layers = -1)", "E0208", "gru's layers must be positive, got -1"),
    ('rnn(x, 4, nonlinearity = "gelu")', "E0208", 'must be "tanh" or "relu"'),
    ("lstm(x, 4, dropout = -0.1)", "E0208", "lstm's dropout must lie in [0, 1)"),
    ("gru(sum(x), 4)", "E0202", "gru needs [B, T, D]"),
    ("rnn(x, 4, h0 = h)", "E0201", "rnn's h0 needs [layers * directions, B, H] = [1, B, 4], got f32[2, B, 4]"),
    ("lstm(x, 4, layers = 2, h0 = h, c0 = sum(h, 0))", "E0202", "lstm's c0 needs"),
    ("lstm(x, 4, layers = 2, h0 = h)", "E0208", "lstm needs both initial states, h0 and c0, or neither"),
])
def test_errors_are_located(call, code, message):
    src = f"""model m() {{
        input x: f32[B, T, 3]
        input h: f32[2, B, 4]
        output y = {call}
    }}"""
    with pytest.raises(DlnError) as e:
        dln.compile(src)
    d = e.value.diagnostics[0]
    assert d.code == code and message in d.message, d
    assert d.span is not None and d.span.line == 4


@pytest.mark.parametrize("layer,act", [("lstm", "tanh"), ("gru", "tanh"), ("rnn", "relu")])
def test_recomputing_the_step_in_the_backward_matches_torch(layer, act, monkeypatch):
    """With saving disabled (REMAT_RATIO 0) each loop saves only its carries and the backward recomputes
    the step: the same gradients."""
    from dln.compiler import autodiff_scan

    monkeypatch.setattr(autodiff_scan, "REMAT_RATIO", 0)
    test_matches_torch_with_gradients(layer, act, 2, True, True, True, False)


def test_a_bidirectional_layer_cannot_run_in_pieces():
    """A stream build (generation) carries each piece's final state into the next; the reverse direction
    reads the sequence from its end, so a bidirectional layer there is a located error."""
    src = """model m() {
        input x: f32[B, T, 3]
        output y = gru(x, 4, bidirectional = true)
    }"""
    with pytest.raises(DlnError) as e:
        pipeline.build_model(pipeline.load(src), stream=True)
    d = e.value.diagnostics[0]
    assert d.code == "E0208" and "bidirectional gru cannot run a sequence in pieces" in d.message
    assert d.span is not None and d.span.line == 3
    pipeline.build_model(pipeline.load(src))          # an ordinary build is fine
