"""Transfer learning: weights loaded into a model whose names or head differ (`strict=False`, `map`,
`--non-strict --map`), training over parameter-name patterns (`minimize loss over "head.*"`), and
digit subsets (`dataset("digits", classes = (...))`).

PyTorch is the oracle: a torch module with another head gives the state dict, and fine-tuning
with frozen layers is compared with torch's `requires_grad=False` under Adam, step for step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.numpy import save_file as save_np
from safetensors.torch import save_file

import dln
from conftest import EXAMPLES, run_dln
from dln.compiler import pipeline
from dln.compiler.values import TrainValue
from dln.dsl.diagnostics import DlnError
from dln.runtime import data
from dln.runtime.train import recipe_for

SOURCE = """\
model net() {
    input x: f32[B, 5]
    input y: i64[B]
    fc1  = x -> linear(7)
    bn   = batchnorm(fc1)
    fc2  = bn -> relu -> linear(6)
    head = fc2 -> tanh -> linear(3)
    loss = cross_entropy(head, y)
    output head
}

train net {
    data   = npz("data.npz")
    batch  = 7
    epochs = 3
    minimize loss over ("head.*", "fc2.b*") with adam(lr = 0.01)
}
"""


class TorchNet(torch.nn.Module):
    """SOURCE's model in torch, under dln's names."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(5, 7)
        self.bn = torch.nn.BatchNorm1d(7)
        self.fc2 = torch.nn.Linear(7, 6)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.relu(self.bn(self.fc1(x))))))


class Pretrained(torch.nn.Module):
    """Another network: its first layer is SOURCE's fc1 under another name, its head has 4 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Linear(5, 7)
        self.fc = torch.nn.Linear(6, 4)


@pytest.fixture
def net_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((23, 5)).astype(np.float32),
             y=rng.integers(0, 3, 23))
    path = tmp_path / "net.dln"
    path.write_text(SOURCE)
    return path


def torch_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


# ---- loading into another head ----------------------------------------------------------------------------------

def test_non_strict_load_with_a_map_copies_exactly_the_mapped_arrays(net_file):
    model = dln.compile(net_file)
    before = model.state_dict()
    torch.manual_seed(0)
    other = Pretrained()
    loaded = model.load_state_dict(other.state_dict(), strict=False, map={"backbone.": "fc1."})
    after = model.state_dict()
    assert loaded.loaded == ["fc1.weight", "fc1.bias"]
    assert set(loaded.unexpected) == {"fc.weight", "fc.bias"}
    assert set(loaded.missing) == set(before) - {"fc1.weight", "fc1.bias"}
    for k in after:
        expected = torch_state(other)[k.replace("fc1.", "backbone.")] if k.startswith("fc1.") else before[k]
        np.testing.assert_array_equal(after[k], expected)
    summary = loaded.summary("pre.safetensors")
    assert summary.startswith("loaded 2 arrays from pre.safetensors; missing (kept as they were): ")
    assert "unexpected (ignored): " in summary and "fc.weight" in summary


def test_strict_loading_reports_missing_and_unexpected_and_suggests_non_strict(net_file):
    model = dln.compile(net_file)
    with pytest.raises(DlnError) as e:
        model.load_state_dict(Pretrained().state_dict())
    d = e.value.diagnostics[0]
    assert d.code == "E0703" and "missing: fc1.weight" in d.message and "unexpected: backbone.weight" in d.message
    assert "--non-strict" in d.notes[0].message and d.span.line == 1


def test_a_map_that_renames_every_name_loads_strictly(net_file):
    """`module.` (a DataParallel checkpoint) stripped with an empty new prefix."""
    torch.manual_seed(1)
    twin = TorchNet()
    model = dln.compile(net_file)
    loaded = model.load_state_dict({f"module.{k}": v for k, v in twin.state_dict().items()}, map={"module.": ""})
    assert loaded.missing == [] and loaded.unexpected == []
    for k, v in torch_state(twin).items():
        np.testing.assert_array_equal(model.state_dict()[k], v)


def test_a_shape_that_differs_under_the_same_name_is_an_error_even_non_strict(net_file):
    """As torch: strict=False forgives names, not sizes."""
    model = dln.compile(net_file)
    before = model.state_dict()
    with pytest.raises(DlnError) as e:
        model.load_state_dict(Pretrained().state_dict(), strict=False, map={"fc.": "head.", "backbone.": "fc1."})
    d = e.value.diagnostics[0]
    assert d.code == "E0703" and "head.weight has shape (4, 6), the model's is (3, 6)" in d.message
    for k, v in model.state_dict().items():   # nothing written
        np.testing.assert_array_equal(v, before[k])


def test_a_map_typo_is_an_error_naming_the_weights(net_file):
    model = dln.compile(net_file)
    with pytest.raises(DlnError) as e:
        model.load_state_dict(Pretrained().state_dict(), strict=False, map={"backbon.": "fc1."})
    d = e.value.diagnostics[0]
    assert d.code == "E0703" and "the map's prefix 'backbon.' matches no name" in d.message
    assert "backbone.weight" in d.notes[0].message


def test_a_map_that_merges_two_names_is_an_error(net_file):
    model = dln.compile(net_file)
    with pytest.raises(DlnError, match="both 'fc1.weight'"):
        model.load_state_dict({"a.weight": np.zeros((7, 5)), "b.weight": np.zeros((7, 5))}, strict=False,
                              map={"a.": "fc1.", "b.": "fc1."})


def test_the_longest_prefix_wins(net_file):
    model = dln.compile(net_file)
    state = {"enc.fc.weight": np.ones((7, 5), np.float32), "enc.fc.bias": np.ones(7, np.float32)}
    loaded = model.load_state_dict(state, strict=False, map={"enc.": "x.", "enc.fc.": "fc1."})
    assert loaded.loaded == ["fc1.weight", "fc1.bias"] and loaded.unexpected == []


@pytest.mark.parametrize("bad", [["backbone.", "fc1."], {"backbone.": 1}, "backbone.=fc1."])
def test_a_map_that_is_not_a_dict_of_strings_is_e0710(net_file, bad):
    with pytest.raises(DlnError) as e:
        dln.compile(net_file).load_state_dict({}, strict=False, map=bad)
    assert e.value.diagnostics[0].code == "E0710"


def test_load_from_a_torch_safetensors_file_and_a_pickle_refused(net_file, tmp_path):
    torch.manual_seed(2)
    other = Pretrained()
    save_file(other.state_dict(), str(tmp_path / "pre.safetensors"))
    model = dln.compile(net_file)
    loaded = model.load(tmp_path / "pre.safetensors", strict=False, map={"backbone.": "fc1."})
    assert loaded.loaded == ["fc1.weight", "fc1.bias"]
    np.testing.assert_array_equal(model.parameters()["fc1.bias"], other.backbone.bias.detach().numpy())
    torch.save(other.state_dict(), tmp_path / "pre.pt")
    with pytest.raises(DlnError) as e:
        model.load(tmp_path / "pre.pt")
    d = e.value.diagnostics[0]
    assert d.code == "E0702" and "never pickles" in d.notes[0].message


# ---- training over name patterns ------------------------------------------------------------------------------

def test_frozen_parameters_get_no_gradient_and_no_optimizer_state(net_file):
    model = dln.compile(net_file)
    objective = recipe_for(model).objectives[0]
    assert objective.over == ("head.*", "fc2.b*")
    step = pipeline.train_step(model.train_spec, objective)
    assert step.params == ["fc2.bias", "head.weight", "head.bias"]
    assert {s.param for s in step.states} == {"fc2.bias", "head.weight", "head.bias"}
    everything = pipeline.train_step(model.train_spec, objective.__class__("loss", None, objective.optimizer,
                                                                           objective.span))
    # The backward pass stops where no updated parameter needs it: fewer nodes than training everything.
    assert len(step.graph.nodes) < len(everything.graph.nodes) - 10
    # Batch norm's running statistics still update (PyTorch's train mode).
    assert {"new:bn.running_mean", "new:bn.running_var"} <= set(step.graph.output_names)


def test_training_over_patterns_matches_torch_with_frozen_layers(net_file, tmp_path):
    torch.manual_seed(3)
    twin = TorchNet()
    save_file(twin.state_dict(), str(tmp_path / "init.safetensors"))
    start = torch_state(twin)
    history = dln.train(net_file, weights=str(tmp_path / "init.safetensors"), progress=False, log=lambda s: None)
    after = history.model.state_dict()

    trained = {"fc2.bias", "head.weight", "head.bias"}
    for name, p in twin.named_parameters():
        p.requires_grad_(name in trained)
    opt = torch.optim.Adam([p for p in twin.parameters() if p.requires_grad], lr=0.01)
    arrays = np.load(tmp_path / "data.npz")
    x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    twin.train()
    losses = []
    for epoch in range(3):   # the trainer's order: a permutation seeded by (seed, epoch), batches of 7
        order = np.random.default_rng(epoch).permutation(23)
        for k in range(0, 23, 7):
            idx = torch.from_numpy(order[k:k + 7])
            loss = torch.nn.functional.cross_entropy(twin(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item() * len(idx))
    assert len(opt.state) == 3   # Adam keeps state for the trained parameters alone
    per_epoch = np.add.reduceat(losses, [0, 4, 8]) / 23     # 4 batches an epoch, the mean over its examples
    np.testing.assert_allclose([e["loss"] for e in history.epochs], per_epoch, rtol=1e-6)   # measured: 5e-8
    expected = torch_state(twin)
    for k, v in after.items():
        if k in trained or "running" in k or "num_batches" in k:
            np.testing.assert_allclose(v, expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(v, start[k], err_msg=f"{k} is frozen")
    assert not np.array_equal(after["head.weight"], start["head.weight"])


def test_over_mixes_instances_and_patterns():
    source = """
    model enc() { input x: f32[B, 4]  output h = x -> linear(3) }
    model top() {
        input x: f32[B, 4]
        E = enc()
        out  = E(x) -> linear(2)
        loss = mean(out * out)
        output out
    }
    train top { minimize loss over (E, "out.b?as") }
    """
    model = dln.compile(source)
    objective = recipe_for(model).objectives[0]
    assert objective.over == ("E.*", "out.b?as")
    step = pipeline.train_step(model.train_spec, objective)
    assert step.params == ["E.h.weight", "E.h.bias", "out.bias"]


def test_a_pattern_matching_nothing_is_e0602_at_the_pattern_with_names(net_file):
    text = SOURCE.replace('("head.*", "fc2.b*")', '("head.*", "fc3.*")')
    with pytest.raises(DlnError) as e:
        recipe_for(dln.compile(text))
    d = e.value.diagnostics[0]
    assert d.code == "E0602" and d.message == 'no parameter matches "fc3.*"'
    assert (d.span.line, d.span.col) == (16, 35)
    assert any("fc1.weight, fc1.bias, bn.weight" in n.message for n in d.notes)


# ---- digit subsets ------------------------------------------------------------------------------------------

def test_classes_keep_those_examples_renumbered_in_the_order_given():
    whole = data.DATASETS["digits"]()
    subset = data.load(TrainValue("dataset", (("name", "digits"), ("classes", (7, 3)))), Path("."))
    rows = np.isin(whole["y"], (7, 3))
    np.testing.assert_array_equal(subset["x"], whole["x"][rows])
    np.testing.assert_array_equal(subset["images"], whole["images"][rows])
    np.testing.assert_array_equal(subset["y"], np.where(whole["y"][rows] == 7, 0, 1))
    assert subset["y"].dtype == np.int64


def test_classes_renumber_the_float_target_too():
    subset = data.load(TrainValue("dataset", (("name", "iris"), ("classes", (2, 0)))), Path("."))
    assert sorted(set(subset["y"].tolist())) == [0, 1] and len(subset["y"]) == 100
    np.testing.assert_array_equal(subset["target"][:, 0], subset["y"].astype(np.float32))


def test_a_class_the_data_lacks_is_e0603_at_the_data_set():
    with pytest.raises(DlnError) as e:
        data.load(TrainValue("dataset", (("name", "digits"), ("classes", (3, 12)))), Path("."))
    d = e.value.diagnostics[0]
    assert d.code == "E0603" and "no class 12" in d.message and "0, 1, 2" in d.notes[0].message


# ---- the command line, end to end -----------------------------------------------------------------------------

def test_cli_pretrain_then_fine_tune_with_a_map(tmp_path):
    """The example, an epoch each: the fine-tuning loads the backbone (renamed by --map from a
    PyTorch-style name), says what it left, and leaves the frozen layers as loaded."""
    example = str(EXAMPLES / "transfer_digits.dln")
    r = run_dln("train", example, "--model", "pretrain", "--epochs", "1", "--no-progress", "--save",
                str(tmp_path / "pre.safetensors"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pre = load_file(str(tmp_path / "pre.safetensors"))
    save_np({k.replace("features.", "backbone."): v for k, v in pre.items()}, str(tmp_path / "torch.safetensors"))
    r = run_dln("train", example, "--model", "finetune", "--epochs", "1", "--no-progress", "--weights",
                "torch.safetensors", "--non-strict", "--map", "backbone.=features.", "--save", "ft.safetensors",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "loaded 14 arrays from torch.safetensors; missing (kept as they were): head.weight, head.bias; " \
           "unexpected (ignored): head04.bias, head04.weight" in r.stdout
    ft = load_file(str(tmp_path / "ft.safetensors"))
    for k in ("features.conv1.weight", "features.bn1.weight", "features.conv2.weight", "features.bn2.bias"):
        np.testing.assert_array_equal(ft[k], pre[k])
    assert not np.array_equal(ft["features.fc1.weight"], pre["features.fc1.weight"])
    assert not np.array_equal(ft["features.bn1.running_mean"], pre["features.bn1.running_mean"])

    r = run_dln("train", example, "--model", "finetune", "--epochs", "1", "--no-progress", "--weights",
                "torch.safetensors", "--non-strict", "--map", "backbon.=features.", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "error[E0703]: the map's prefix 'backbon.' matches no name in the weights" in r.stderr
    r = run_dln("train", example, "--model", "finetune", "--weights", "torch.safetensors", "--map", "backbone.",
                cwd=tmp_path)
    assert r.returncode == 2 and "--map expects OLD=NEW" in r.stderr
    r = run_dln("train", example, "--model", "finetune", "--non-strict", cwd=tmp_path)
    assert r.returncode == 2 and "which is not given" in r.stderr


def test_strict_or_map_without_weights_is_e0710_from_python_as_from_the_cli(net_file):
    for given in ({"strict": False}, {"map": {"backbone.": "fc1."}}):
        with pytest.raises(DlnError) as e:
            dln.train(net_file, epochs=1, progress=False, log=lambda s: None, **given)
        assert e.value.diagnostics[0].code == "E0710" and "which are not given" in str(e.value)


def test_over_given_outside_the_file_replaces_the_sections(net_file, tmp_path):
    """dln.train(..., over=...) and dln train --over: "*" trains everything, a pattern its parameters."""
    start = dln.compile(net_file).state_dict()
    after = dln.train(net_file, over="fc1.*", epochs=1, progress=False, log=lambda s: None).model.state_dict()
    changed = {k for k in start if not np.array_equal(start[k], after[k])}
    assert changed == {"fc1.weight", "fc1.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    after = dln.train(net_file, over=["*"], epochs=1, progress=False, log=lambda s: None).model.state_dict()
    assert all(not np.array_equal(start[k], after[k]) for k in start)
    with pytest.raises(DlnError) as e:
        dln.train(net_file, over="fc9.*", epochs=1, progress=False, log=lambda s: None)
    assert e.value.diagnostics[0].code == "E0602" and 'no parameter matches "fc9.*"' in str(e.value)
    with pytest.raises(DlnError) as e:
        dln.train(net_file, over=3, progress=False)
    assert e.value.diagnostics[0].code == "E0710"
    r = run_dln("train", str(net_file), "--over", "head.*", "--over", "fc1.bias", "--epochs", "1", "--no-progress",
                "--save", str(tmp_path / "w.safetensors"), cwd=tmp_path)   # runs/net there, not in the repository
    assert r.returncode == 0, r.stderr
    saved = load_file(str(tmp_path / "w.safetensors"))
    assert np.array_equal(saved["fc1.weight"], start["fc1.weight"])
    assert not np.array_equal(saved["fc1.bias"], start["fc1.bias"])


@pytest.mark.parametrize("then", ["fc1.*", "*"])
def test_resuming_over_other_parameters_is_refused_before_anything_is_restored(net_file, tmp_path, then):
    """A checkpoint trained over "head.*" holds Adam's moments of the head alone: resumed over fewer
    parameters it would drop some silently, over more start them from nothing."""
    ckpt = tmp_path / "ckpt"
    quiet = {"progress": False, "log": lambda s: None}
    dln.train(net_file, over="head.*", epochs=1, checkpoint=str(ckpt), **quiet)
    same = dln.train(net_file, over="head.*", epochs=2, checkpoint=str(ckpt), **quiet)
    assert len(same) == 2
    state = (ckpt / "state.json").read_text()
    with pytest.raises(DlnError) as e:
        dln.train(net_file, over=then, epochs=3, checkpoint=str(ckpt), **quiet)
    d = e.value.diagnostics[0]
    assert d.code == "E0703" and "trained other parameters than this run does" in d.message
    if then == "fc1.*":
        assert "trained there, frozen here: head.bias, head.weight; trained here, frozen there: fc1.bias, " \
               "fc1.weight" in d.message
    else:
        assert "trained here, frozen there: bn.bias, bn.weight, fc1.bias, fc1.weight" in d.message
    assert (ckpt / "state.json").read_text() == state   # the checkpoint as it was
