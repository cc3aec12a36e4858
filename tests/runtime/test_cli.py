"""The `dln` command as a user runs it (INTERFACE.md): subprocesses, exit codes, files written.

Exit status: 0 success, 1 an error in the user's program or data (a
diagnostic, never a traceback), 2 wrong command-line usage.  Values are
checked against the Python API and torch, never against numbers written here.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import dln
from dln.compiler import pipeline
from conftest import EXAMPLES, run_dln

EXAMPLE = (EXAMPLES / "mlp_digits.dln").read_text()


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    """A copy of the digits example in a fresh directory, which is also the working directory."""
    (tmp_path / "mlp.dln").write_text(EXAMPLE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def dln_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_dln(*args, cwd=cwd, timeout=120)


def assert_user_error(result: subprocess.CompletedProcess, code: str) -> None:
    assert result.returncode == 1, result.stderr
    assert f"error[{code}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "internal error" not in result.stderr


def count(n: int) -> str:
    return f"{n:,}"


# ---- check, params -----------------------------------------------------------------------------------------------
def test_check_prints_ok_with_parameters_and_flops(project: Path):
    total = sum(v.size for v in dln.compile("mlp.dln").parameters().values())
    result = dln_cli("check", "mlp.dln", cwd=project)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("ok") and "mlp" in line
    assert f"{count(total)} parameters" in line
    assert re.search(r"[\d.]+ ?[kMG]?FLOPs per example", line), line

    bad = project / "bad.dln"
    bad.write_text("model m() {\n    input x: f32[B, 4]\n    param W: f32[3, 2] = zeros\n    output y = x @ W\n}\n")
    result = dln_cli("check", "bad.dln", cwd=project)
    assert_user_error(result, "E0203")
    assert "--> bad.dln:4:" in result.stderr and "^" in result.stderr


def test_params_lists_every_parameter_and_totals(project: Path):
    for sets, hidden in (([], 128), (["--set", "hidden=32"], 32)):
        model = dln.compile("mlp.dln", hidden=hidden)
        params = model.parameters()
        result = dln_cli("params", "mlp.dln", *sets, cwd=project)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert lines[0].split() == ["name", "shape", "init", "count"]
        rows = {ln.split()[0]: ln for ln in lines[1:-1]}
        assert list(rows) == list(params)
        for name, value in params.items():
            row = rows[name]
            assert "[" + ", ".join(map(str, value.shape)) + "]" in row
            assert row.split()[-1] == count(value.size)
            assert "uniform(" in row   # linear's default initializer, as torch's
        assert lines[-1] == f"{len(params)} parameters, {count(sum(v.size for v in params.values()))} values"
    assert "[32, 64]" in result.stdout


# ---- compile -----------------------------------------------------------------------------------------------------
def test_compile_writes_ir_and_manifest(project: Path):
    result = dln_cli("compile", "mlp.dln", "-o", "build", cwd=project)
    assert result.returncode == 0, result.stderr
    build = project / "build"
    assert {"forward.ir", "backward.ir", "manifest.json"} <= {p.name for p in build.iterdir()}

    model = dln.compile("mlp.dln")
    forward = (build / "forward.ir").read_text()
    backward = (build / "backward.ir").read_text()
    assert forward == model.ir
    assert backward == model.backward_ir
    assert "matmul(" in forward and "mlp.dln:" in forward
    assert "# -- backward" in backward and "# -- optimizer" in backward

    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["model"] == "mlp"
    assert manifest["source_sha256"] == hashlib.sha256(EXAMPLE.encode()).hexdigest()
    assert [(i["name"], i["dtype"], i["shape"]) for i in manifest["inputs"]] == \
        [("x", "f32", ["B", 64]), ("y", "i64", ["B"])]
    assert [(o["name"], o["shape"]) for o in manifest["outputs"]] == [("logits", ["B", 10])]
    assert {p["name"]: p["shape"] for p in manifest["parameters"]} == \
        {k: list(v.shape) for k, v in model.parameters().items()}
    assert manifest["hparams"]["hidden"] == 128


# ---- run ---------------------------------------------------------------------------------------------------------
class TorchMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.h = torch.nn.Linear(64, 128)
        self.logits = torch.nn.Linear(128, 10)

    def forward(self, x):
        return self.logits(torch.relu(self.h(x)))   # dropout: identity in evaluation


def test_run_with_weights_against_torch(project: Path):
    rng = np.random.default_rng(0)
    x = rng.random((5, 64), dtype=np.float32)
    np.save(project / "x.npy", x)
    torch.manual_seed(0)
    net = TorchMLP()
    save_file({k: v.numpy() for k, v in net.state_dict().items()}, str(project / "W.safetensors"))

    result = dln_cli("run", "mlp.dln", "--input", "x=x.npy", "--weights", "W.safetensors", "-o", "out.npz",
                     cwd=project)
    assert result.returncode == 0, result.stderr
    with np.load(project / "out.npz") as out:
        assert out.files == ["logits"]
        np.testing.assert_allclose(out["logits"], net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)

    # without -o the outputs are printed
    result = dln_cli("run", "mlp.dln", "--input", "x=x.npy", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "logits: float32[5, 10]" in result.stdout


@pytest.mark.parametrize("name", ["outs", "out.npz", "results.bin"])
def test_run_writes_the_file_it_names(project: Path, capsys, name):
    """`-o outs` writes `outs` and says so (numpy would have written outs.npz)."""
    from dln.runtime import cli

    np.save(project / "x.npy", np.ones((3, 64), np.float32))
    assert cli.main(["run", "mlp.dln", "--input", "x=x.npy", "-o", name]) == 0
    assert capsys.readouterr().out.strip() == f"wrote logits to {name}"
    assert sorted(p.name for p in project.iterdir()) == sorted(["mlp.dln", "x.npy", name])
    with np.load(project / name) as out:
        np.testing.assert_allclose(out["logits"], dln.compile("mlp.dln")(x=np.ones((3, 64), np.float32))["logits"])
    assert cli.main(["run", "mlp.dln", "--input", "x=x.npy", "-o", "no/such/dir/out.npz"]) == 1
    assert "error[E0702]: cannot write no/such/dir/out.npz" in capsys.readouterr().err


def test_run_errors(project: Path):
    np.save(project / "narrow.npy", np.zeros((3, 63), np.float32))
    result = dln_cli("run", "mlp.dln", "--input", "x=narrow.npy", cwd=project)
    assert_user_error(result, "E0")
    assert "'x'" in result.stderr and "mlp.dln:3:" in result.stderr
    result = dln_cli("run", "mlp.dln", "--input", "x=absent.npy", cwd=project)
    assert_user_error(result, "E0702")
    assert "absent.npy" in result.stderr


def test_every_command_picks_the_model_no_other_model_uses(project: Path, capsys):
    """A file whose `autoencoder` makes instances of `enc` and `dec`: run, params, compile and graph are
    about `autoencoder` without --model (INTERFACE.md)."""
    from dln.runtime import cli
    ae = (Path(__file__).parents[1] / "programs" / "autoencoder.dln").read_text()
    (project / "ae.dln").write_text(ae)
    np.save(project / "x.npy", np.ones((2, 4), np.float32))
    assert cli.main(["run", "ae.dln", "--input", "x=x.npy"]) == 0
    assert "y: float32[2, 4]" in capsys.readouterr().out
    assert cli.main(["params", "ae.dln"]) == 0
    assert "E.h.weight" in capsys.readouterr().out
    assert cli.main(["compile", "ae.dln", "-o", "build"]) == 0
    assert json.loads((project / "build" / "manifest.json").read_text())["model"] == "autoencoder"
    assert cli.main(["graph", "ae.dln"]) == 0
    assert "E.h" in capsys.readouterr().out
    (project / "two.dln").write_text(ae + "\nmodel other {\n    input x: f32[B, 2]\n    output y = relu(x)\n}\n")
    result = dln_cli("params", "two.dln", cwd=project)
    assert_user_error(result, "E0301")
    assert "(autoencoder, other); name one" in result.stderr and "--> two.dln:12:7" in result.stderr


def test_limits_are_raised_on_the_command_line(project: Path, capsys):
    """E0312 names the flag that raises the limit; the flag does raise it, for check and the other commands."""
    from dln.runtime import cli

    (project / "long.dln").write_text("model m {\n    input x: f32[B, 4]\n    h = x\n"
                                      "    repeat i in 0..20000 { h = h }\n    output h\n}\n")
    for command in ("check", "params"):
        assert cli.main([command, "long.dln"]) == 1
        err = capsys.readouterr().err
        assert "error[E0312]" in err and "--> long.dln:4:17" in err and "--max-unroll N" in err, err
        assert cli.main([command, "long.dln", "--max-unroll", "20000"]) == 0, capsys.readouterr().err
    assert cli.main(["check", "mlp.dln", "--max-nodes", "10"]) == 1
    assert "max_nodes = 10" in capsys.readouterr().err


# Every command that takes FILE, with what it needs besides.
FILE_COMMANDS = [["check"], ["params"], ["compile", "-o", "build"], ["run"], ["train", "--no-progress"],
                 ["eval", "--weights", "W.safetensors"], ["graph"], ["bench"]]


@pytest.mark.parametrize("path", ["adir", "adir/", "missing", "missing.dln", "/dev/null"])
def test_a_path_that_is_not_a_readable_file_is_e0702_naming_it(project: Path, capsys, path):
    """FILE is a path, never program text: `dln check adir` must not parse 'adir' as a program."""
    from dln.runtime import cli

    (project / "adir").mkdir()
    for command in FILE_COMMANDS:
        assert cli.main([command[0], path, *command[1:]]) == 1, command
        err = capsys.readouterr().err
        assert err.startswith("error[E0702]: cannot read ") and path.rstrip("/") in err.splitlines()[0], (command, err)
        assert "<string>" not in err and "internal error" not in err, (command, err)


# ---- train, eval -------------------------------------------------------------------------------------------------
def test_train_save_then_eval(project: Path):
    result = dln_cli("train", "mlp.dln", "--epochs", "2", "--no-progress", "--save", "W.safetensors", cwd=project)
    assert result.returncode == 0, result.stderr
    epochs = [ln for ln in result.stdout.splitlines() if ln.startswith("epoch")]
    assert len(epochs) == 2 and epochs[-1].startswith("epoch 2/2")
    assert "\r" not in result.stdout + result.stderr     # no progress bar
    final = json.loads(next(ln for ln in result.stdout.splitlines() if ln.startswith("final "))[len("final "):])
    assert final["epoch"] == 2

    weights = load_file(str(project / "W.safetensors"))
    assert {k: v.shape for k, v in weights.items()} == \
        {k: v.shape for k, v in dln.compile("mlp.dln").parameters().items()}

    result = dln_cli("eval", "mlp.dln", "--weights", "W.safetensors", cwd=project)
    assert result.returncode == 0, result.stderr
    metrics = dict(ln.split(": ") for ln in result.stdout.strip().splitlines())
    assert set(metrics) == {"loss", "accuracy"}
    # the same validation data as training's last epoch, the same weights: the same numbers
    assert abs(float(metrics["loss"]) - final["val_loss"]) < 1e-5
    assert abs(float(metrics["accuracy"].rstrip("%")) / 100 - final["val_accuracy"]) < 1e-4

    # weights of another shape are a user error
    result = dln_cli("eval", "mlp.dln", "--weights", "W.safetensors", "--set", "hidden=32", cwd=project)
    assert_user_error(result, "E0703")


def test_train_sync_batchnorm_flag_is_the_setting_in_every_nproc_worker(tmp_path: Path):
    """`--sync-batchnorm` reaches the recipe of every worker `--nproc` starts (they get the same arguments):
    2 ranks of a batch-norm model save the weights its train section's own `sync_batchnorm = true` trains,
    bit for bit, and those are one process's at twice the batch (which per-rank statistics do not give:
    test_distributed.py); `dln.train(..., sync_batchnorm=...)` takes it as a setting, checked as one."""
    from tests.runtime.test_distributed import SYNC_ATOL, SYNC_BN

    plain, synced = tmp_path / "bn.dln", tmp_path / "bn_sync.dln"
    plain.write_text(SYNC_BN.replace("    sync_batchnorm = true\n", ""))
    synced.write_text(SYNC_BN)
    assert "sync_batchnorm" not in plain.read_text()
    common = ["--backend", "numpy", "--nproc", "2", "--batch", "24", "--epochs", "1", "--no-progress",
              "--logdir", "none"]
    for file, flag, out in ((plain, ["--sync-batchnorm"], "flag"), (synced, [], "setting")):
        result = dln_cli("train", str(file), *common, *flag, "--save", f"{out}.safetensors", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    by_flag, by_setting = (load_file(str(tmp_path / f"{out}.safetensors")) for out in ("flag", "setting"))
    assert sorted(by_flag) == sorted(by_setting) and any("running_var" in k for k in by_flag)
    for name, w in by_setting.items():
        np.testing.assert_array_equal(by_flag[name], w, err_msg=name)
    one = dln.train(str(plain), backend="numpy", batch=48, epochs=1, progress=False, logdir=False,
                    sync_batchnorm=True, log=lambda s: None)
    for name, w in one.model.state_dict().items():
        np.testing.assert_allclose(by_flag[name], w, rtol=0, atol=SYNC_ATOL, err_msg=name)
    with pytest.raises(dln.DlnError) as e:
        dln.train(str(plain), backend="numpy", epochs=1, progress=False, logdir=False, sync_batchnorm="yes")
    assert e.value.code == "E0601" and "sync_batchnorm must be true or false" in e.value.diagnostics[0].message


# ---- exit codes --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    [],
    ["frobnicate", "mlp.dln"],
    ["check"],
    ["params", "mlp.dln", "--set", "hidden"],
    ["run", "mlp.dln", "--input", "x"],
    ["train", "mlp.dln", "--epochs", "two"],
    ["check", "mlp.dln", "--max-nodes", "0"],
], ids=["nothing", "unknown-command", "no-file", "set-without-value", "input-without-file", "epochs-not-int",
        "max-nodes-zero"])
def test_usage_errors_exit_2(project: Path, args):
    result = dln_cli(*args, cwd=project)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "usage" in result.stderr.lower() or "expects" in result.stderr


@pytest.mark.parametrize("args, code", [
    (["check", "absent.dln"], "E0702"),
    (["params", "mlp.dln", "--set", "hidden=abc"], "E0401"),
    (["params", "mlp.dln", "--set", "hiden=3"], "E0402"),
    (["train", "mlp.dln", "--batch", "0", "--no-progress"], "E0601"),
], ids=["missing-file", "hparam-wrong-type", "hparam-unknown", "batch-zero"])
def test_user_errors_exit_1(project: Path, args, code):
    assert_user_error(dln_cli(*args, cwd=project), code)


def test_console_script_and_module_agree(project: Path):
    script = Path(sys.executable).parent / "dln"
    assert script.is_file()
    as_script = subprocess.run([str(script), "check", "mlp.dln"], capture_output=True, text=True, cwd=project,
                               timeout=120)
    as_module = dln_cli("check", "mlp.dln", cwd=project)
    assert as_script.returncode == as_module.returncode == 0
    assert as_script.stdout == as_module.stdout and as_script.stdout.startswith("ok")


# ---- dln graph: DOT, or SVG through Graphviz's dot program when it is there -------------------------------------
def test_graph_writes_svg_through_dot(project: Path, monkeypatch, capsys):
    from dln.runtime import cli

    fake_dot = project / "dot"   # stands for Graphviz: records what it was given, writes an SVG
    fake_dot.write_text(f"#!{sys.executable}\nimport sys\nsource = sys.stdin.read()\n"
                        "assert sys.argv[1] == '-Tsvg' and source.startswith('digraph')\n"
                        "open(sys.argv[3], 'w').write('<svg/>')\n")
    fake_dot.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda name: str(fake_dot) if name == "dot" else None)
    assert cli.main(["graph", "mlp.dln", "-o", "g.svg"]) == 0
    assert (project / "g.svg").read_text() == "<svg/>"
    assert "wrote g.svg" in capsys.readouterr().out


def test_graph_without_dot_writes_dot_and_says_so(project: Path, monkeypatch, capsys):
    from dln.runtime import cli

    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert cli.main(["graph", "mlp.dln", "-o", "g.svg"]) == 0
    out = capsys.readouterr()
    assert not (project / "g.svg").exists()
    assert (project / "g.dot").read_text().startswith("digraph")
    assert "wrote g.dot" in out.out and "dot program" in out.err


def test_graph_with_kernels_draws_the_kernels_the_triton_backend_makes(project: Path):
    """`dln graph --backend triton`: one box per kernel of the training step as the Triton backend generates
    it, composites it has no kernel for (the digits model's cross_entropy) decomposed first."""
    from dln.kernels.module import generate_module
    from dln.runtime.artefacts import graph_dot
    from dln.runtime.train import default_objective

    model = dln.compile("mlp.dln", backend="numpy")
    dot = graph_dot(model, kernels=True)
    step = pipeline.train_step(model.train_spec, default_objective(model))
    kernels = [k.name for k in generate_module(step.graph, step.donate).kernels]
    assert re.findall(r'subgraph "cluster_(\w+)"', dot) == kernels


def test_graph_labels_a_composite_by_its_name(project: Path):
    """A composite's box says what it is (`sdpa`), as the IR printer writes it, not `composite`."""
    from dln.runtime.artefacts import graph_dot

    (project / "att.dln").write_text("model m() {\n    input x: f32[B, T, 8]\n"
                                     "    output y = scaled_dot_product_attention(x, x, x)\n}\n")
    dot = graph_dot(dln.compile("att.dln", backend="numpy"))
    assert re.search(r'label="%\d+ sdpa\\n', dot) and "composite" not in dot


def test_a_reader_that_goes_away_stops_train_quietly(tmp_path: Path):
    """`dln train FILE | head -1`: the pipe closes after one line; dln stops without an internal error."""
    proc = subprocess.Popen([sys.executable, "-m", "dln", "train", str(EXAMPLES / "iris.dln")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert proc.stdout.readline().startswith("epoch")
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert "internal error" not in err and "Traceback" not in err, err
    assert proc.returncode == 141
