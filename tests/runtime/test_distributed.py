"""Data-parallel training (dln.runtime.distributed): N ranks with per-rank batch b follow one process with
batch N·b — every step's loss, the per-epoch history and the final weights.

Real worker processes on `gloo` over localhost (free ports), on the digits MLP; the single-process run
is the reference.  The global batches are chosen so that the last one is short (some ranks get fewer rows,
one gets none): the rows-weighted gradient average must still equal the single process's mean.

Tolerances (float32; measured: every step's loss within 3.3e-7 relative, the final weights within 2.4e-7
absolute, the per-epoch history within 8.4e-8, for 2 and 3 ranks, SGD with clipping and input noise, Adam
with dropout, and the Triton interpreter with dropout): the asserts allow 5e-6, over ten times that; and
the ranks' weights are equal bit for bit.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dln.runtime import distributed, gradient_sync
from dln.runtime.cli import main as dln_main
from dln.runtime.launch import free_port, worker_environment
from dln.runtime.train import Trainer, train_file
from tests.conftest import EXAMPLES, ROOT

pytest.importorskip("torch.distributed")

WORKER = Path(__file__).with_name("_ddp_worker.py")
sys.path.insert(0, str(WORKER.parent))
from _ddp_worker import record_steps  # noqa: E402

TRAIN = 1438   # digits' training rows after validate = 0.2

# A small variant of examples/mlp_digits.dln: SGD with momentum, so that gradient clipping (which must see
# the averaged gradients) changes the trajectory; noise added to the inputs (drawn for the global batch, each
# rank keeping its rows).
SGD_MLP = """
model mlp(hidden: int = 24) {
    input x: f32[B, 64]
    input y: i64[B]
    h      = x -> linear(hidden) -> tanh
    logits = h -> linear(10)
    loss   = cross_entropy(logits, y)
    output logits
}

train mlp {
    data      = dataset("digits")
    validate  = 0.2
    optimizer = sgd(lr = 0.2, momentum = 0.9)
    clip_grad = 0.5
    augment   = [gaussian_noise(0.05)]
    batch     = 24
    epochs    = 2
    seed      = 3
    minimize loss
}
"""


def run_ranks(tmp_path: Path, file: Path, nproc: int, settings: dict,
              environ: dict[str, str] | None = None) -> list[dict[str, np.ndarray]]:
    """`nproc` workers of _ddp_worker.py (with `environ` added to their environment); each rank's record."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(tmp_path), str(file), json.dumps(settings)],
                              env={**worker_environment(rank, nproc, port), **(environ or {})}, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(nproc)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {rank} exited {p.returncode}:\n{out}"
    return [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(nproc)]


def single(file: Path, settings: dict, monkeypatch) -> dict[str, np.ndarray]:
    """One process, in this one, recorded as the workers record themselves."""
    losses: list[float] = []
    monkeypatch.setattr(Trainer, "_step", record_steps(losses))
    history = train_file(file, progress=False, logdir=False, **{"backend": "numpy", **settings})
    record = {"losses": np.array(losses)}
    record.update({f"w:{k}": v for k, v in history.model.state_dict().items()})
    record.update({f"h:{k}": np.array([e[k] for e in history.epochs]) for k in history.epochs[0] if k != "time"})
    return record


def assert_same_trajectory(ranks: list[dict], one: dict, loss_rtol: float, weight_atol: float,
                           from_start: bool = True) -> None:
    for r, rec in enumerate(ranks):
        assert rec["losses"].shape == one["losses"].shape
        np.testing.assert_allclose(rec["losses"], one["losses"], rtol=loss_rtol, err_msg=f"rank {r}'s losses")
        for key in [k for k in one if k.startswith("h:")]:
            np.testing.assert_allclose(rec[key], one[key], rtol=loss_rtol, atol=1e-12, err_msg=f"rank {r} {key}")
        weights = [k for k in one if k.startswith("w:")]
        assert weights and sorted(weights) == sorted(k for k in rec if k.startswith("w:"))
        for key in weights:
            np.testing.assert_allclose(rec[key], one[key], rtol=0, atol=weight_atol, err_msg=f"rank {r} {key}")
            # Every rank made the same updates from the same averaged gradients: bit for bit.
            np.testing.assert_array_equal(rec[key], ranks[0][key])
    # It trained: a trajectory that stood still would agree trivially (a resumed epoch: the first did).
    assert not from_start or one["losses"][-5:].mean() < one["losses"][:5].mean() - 0.1


@pytest.fixture
def sgd_mlp(tmp_path: Path) -> Path:
    path = tmp_path / "mlp_sgd.dln"
    path.write_text(SGD_MLP)
    return path


def test_two_ranks_follow_one_process_at_twice_the_batch(tmp_path: Path, sgd_mlp: Path, monkeypatch):
    b, n = 24, 2
    assert 0 < TRAIN % (n * b) < n * b, "the last global batch should be short"
    ranks = run_ranks(tmp_path, sgd_mlp, n, {"batch": b})
    one = single(sgd_mlp, {"batch": n * b}, monkeypatch)
    assert len(one["losses"]) == 2 * math.ceil(TRAIN / (n * b))
    assert_same_trajectory(ranks, one, loss_rtol=5e-6, weight_atol=5e-6)
    # Clipping acted on the averaged gradients (it changes this trajectory).
    unclipped = single(sgd_mlp, {"batch": n * b, "clip_grad": 100.0}, monkeypatch)
    assert np.abs(unclipped["losses"] - one["losses"]).max() > 1e-3


# Buckets of 10 kB: the MLPs' gradients travel in several, each started during the backward (overlap).
SMALL_BUCKETS = {"DLN_BUCKET_MB": "0.01"}


def test_three_ranks_follow_one_process_with_an_empty_rank_at_the_end(tmp_path: Path, monkeypatch):
    """examples/mlp_digits.dln (Adam, dropout 0.1: each rank draws the masks of its rows of the global
    batch); b = 50: the last global batch of 88 rows gives ranks 50, 38 and 0 rows.  In small buckets, so
    that several all_reduce ops overlap the backward (and the rank without rows starts them too)."""
    b, n = 50, 3
    assert TRAIN % (n * b) <= (n - 1) * b
    settings = {"batch": b, "epochs": 2}
    ranks = run_ranks(tmp_path, EXAMPLES / "mlp_digits.dln", n, settings, SMALL_BUCKETS)
    one = single(EXAMPLES / "mlp_digits.dln", {**settings, "batch": n * b}, monkeypatch)
    assert_same_trajectory(ranks, one, loss_rtol=5e-6, weight_atol=5e-6)


def test_a_stacked_rnn_s_dropout_between_layers_is_one_process_s(tmp_path: Path, monkeypatch):
    """The mask between two recurrent layers is drawn over the batch (batch-major), so each rank draws one
    process's numbers for its rows: 2 ranks follow one process at twice the batch."""
    path = tmp_path / "rnn_dropout.dln"
    path.write_text((EXAMPLES / "rnn_digits.dln").read_text()
                    .replace("rnn(hidden, layers = 2)", "rnn(hidden, layers = 2, dropout = 0.3)")
                    .replace("hidden: int = 64", "hidden: int = 16"))
    assert "dropout = 0.3" in path.read_text()
    settings = {"batch": 24, "epochs": 1}
    ranks = run_ranks(tmp_path, path, 2, settings)
    one = single(path, {**settings, "batch": 48}, monkeypatch)
    assert_same_trajectory(ranks, one, loss_rtol=5e-6, weight_atol=5e-6)
    # Without the dropout the trajectory is another: the masks acted.
    plain = single(EXAMPLES / "rnn_digits.dln", {**settings, "batch": 48, "hidden": 16}, monkeypatch)
    assert np.abs(plain["losses"] - one["losses"]).max() > 1e-3


@pytest.mark.parametrize("bucket_mb", [None, "0.0001"])
def test_the_triton_backend_exchanges_its_own_buffers(tmp_path: Path, monkeypatch, bucket_mb: str | None):
    """The Triton backend (its interpreter, on the CPU here: torch CPU tensors over gloo) lays the update's
    gradient inputs out in an arena of its own: the buckets follow them there; its kernels count the
    dropout draws from the rank's first row; its launcher hands each gradient over after the kernel making
    it (in one bucket, or in one each: 4 all_reduce ops started during the backward); and 2 ranks still
    follow one process at twice the batch."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    iris = tmp_path / "iris_dropout.dln"
    iris.write_text((EXAMPLES / "iris.dln").read_text().replace("-> tanh ->", "-> tanh -> dropout(0.3) ->"))
    assert "dropout" in iris.read_text()
    settings = {"backend": "triton", "epochs": 1, "batch": 16}
    ranks = run_ranks(tmp_path, iris, 2, settings, {"DLN_BUCKET_MB": bucket_mb} if bucket_mb else None)
    one = single(iris, {**settings, "batch": 32}, monkeypatch)
    for rec in ranks:
        np.testing.assert_allclose(rec["losses"], one["losses"], rtol=5e-6)
        for key in [k for k in one if k.startswith("w:")]:
            np.testing.assert_allclose(rec[key], one[key], rtol=0, atol=5e-6, err_msg=key)


def test_nproc_from_the_command_line_trains_with_one_set_of_logs(tmp_path: Path, sgd_mlp: Path, capsys):
    """`dln train --nproc 2`: exit 0, rank 0's output alone (one line an epoch, one `final`), one run
    directory and checkpoint, and the weights one process at twice the batch trains; torchrun's launch
    (`python -m torch.distributed.run`, the `torchrun` command) trains the same."""
    out = subprocess.run([sys.executable, "-m", "dln", "train", str(sgd_mlp), "--nproc", "2", "--no-progress",
                          "--checkpoint", str(tmp_path / "ckpt"), "--save", str(tmp_path / "two.safetensors")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[:2] for line in lines if line.startswith("epoch")] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert sum(line.startswith("final ") for line in lines) == 1
    assert sum(line.startswith("saved weights") for line in lines) == 1
    csv = (tmp_path / "ckpt" / "metrics.csv").read_text().splitlines()
    assert len(csv) == 1 + 2   # a header and one row an epoch: one writer
    assert not (tmp_path / "runs").exists()
    assert dln_main(["train", str(sgd_mlp), "--batch", "48", "--no-progress", "--logdir", "none",
                     "--save", str(tmp_path / "one.safetensors")]) == 0
    capsys.readouterr()
    import dln

    two, one = dln.compile(str(sgd_mlp), backend="numpy"), dln.compile(str(sgd_mlp), backend="numpy")
    two.load(tmp_path / "two.safetensors")
    one.load(tmp_path / "one.safetensors")
    for name, w in one.state_dict().items():
        np.testing.assert_allclose(two.state_dict()[name], w, rtol=0, atol=5e-6, err_msg=name)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "dln",
                          "train", str(sgd_mlp), "--no-progress", "--logdir", "none",
                          "--save", str(tmp_path / "torchrun.safetensors")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert sum(line.startswith("final ") for line in run.stdout.splitlines()) == 1   # rank 0's alone
    by_torchrun = dln.compile(str(sgd_mlp), backend="numpy")
    by_torchrun.load(tmp_path / "torchrun.safetensors")
    for name, w in two.state_dict().items():
        np.testing.assert_array_equal(by_torchrun.state_dict()[name], w, err_msg=name)


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "two"])
def test_a_bad_nproc_is_a_usage_error(sgd_mlp: Path, value: str, capsys):
    with pytest.raises(SystemExit) as e:
        dln_main(["train", str(sgd_mlp), f"--nproc={value}"])
    assert e.value.code == 2
    assert "--nproc" in capsys.readouterr().err


def test_a_bad_timeout_stops_nproc_before_it_starts_a_worker(sgd_mlp: Path, monkeypatch, capsys):
    monkeypatch.setenv("DLN_DIST_TIMEOUT", "abc")
    assert dln_main(["train", str(sgd_mlp), "--nproc", "2"]) == 1
    err = capsys.readouterr().err
    assert "error[E0720]" in err and "DLN_DIST_TIMEOUT='abc'" in err and "internal error" not in err


def test_nproc_under_a_launcher_of_another_size_is_a_usage_error(sgd_mlp: Path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert dln_main(["train", str(sgd_mlp), "--nproc", "2"]) == 2
    assert "WORLD_SIZE=3" in capsys.readouterr().err


@pytest.mark.parametrize("environ, message", [
    ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR, MASTER_PORT are not"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, "RANK='2'"),
    ({"WORLD_SIZE": "x"}, "WORLD_SIZE='x'"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "DLN_DIST_TIMEOUT": "soon"},
     "DLN_DIST_TIMEOUT='soon' must be a number of seconds > 0"),
])
def test_a_broken_environment_is_a_dln_error(environ: dict, message: str):
    with pytest.raises(distributed.DlnError) as e:
        distributed.from_environment("cpu", environ)
    assert e.value.code == "E0720" and message in e.value.diagnostics[0].message


def test_a_ranks_draws_are_one_process_s_rows():
    """Counted from a global row, a rank's draws over its b rows are rows [lo, lo + b) of one process's draw
    over the global batch, on the NumPy backend and in the torch reference alike."""
    from dln.runtime import philox

    whole = philox.uniform(12345, 3, 7, (13, 5))
    np.testing.assert_array_equal(philox.uniform(12345, 3, 7, (4, 5), first=6 * 5), whole[6:10])
    np.testing.assert_array_equal(philox.uniform(12345, 3, 7, (4, 5), first=0), whole[:4])


def test_the_split_step_counts_batch_draws_from_the_ranks_first_row():
    """`global_rows`: the gradient graph's dropout draw reads `rng.row`; the update graph has no draws."""
    import dln
    from dln.compiler import pipeline
    from dln.compiler.ir import Op
    from dln.runtime.train import default_objective

    model = dln.compile(str(EXAMPLES / "mlp_digits.dln"), backend="numpy")
    split = pipeline.split_step(model.train_spec, default_objective(model))
    rands = [n for n in split.graph.nodes if n.op is Op.RAND]
    assert rands and all(len(n.inputs) == 3 and split.graph.node(n.inputs[2]).attrs["name"] == "rng.row"
                         for n in rands)
    fused = pipeline.train_step(model.train_spec, default_objective(model))
    assert all(len(n.inputs) == 2 for n in fused.graph.nodes if n.op is Op.RAND)   # one process: unchanged


def test_no_launcher_or_one_rank_is_one_process():
    assert distributed.from_environment("cpu", {}) is None
    assert distributed.from_environment("cpu", {"WORLD_SIZE": "1", "RANK": "0"}) is None


def test_the_split_step_computes_what_the_fused_step_does(sgd_mlp: Path):
    """The gradient graph then the update graph, fed its gradients, on one process: the fused step's loss,
    and the same parameters and optimizer state, over three steps (clipping and momentum included)."""
    import dln
    from dln.compiler import pipeline
    from dln.runtime.interpreter import Executable
    from dln.runtime.train import default_objective

    rng = np.random.default_rng(0)
    x, y = rng.random((30, 64), np.float32), rng.integers(0, 10, 30)
    models = [dln.compile(str(sgd_mlp), backend="numpy") for _ in range(2)]
    objective = default_objective(models[0])
    fused = pipeline.train_step(models[0].train_spec, objective, clip_grad=0.5)
    split = pipeline.split_step(models[1].train_spec, objective, clip_grad=0.5)
    assert [s.name for s in split.states] == [s.name for s in fused.states] and split.params == fused.params
    assert {o for o, _ in split.graph.outputs} >= {f"grad:{p}" for p in split.params}

    def persistent(model, step):
        state = {s.name: np.zeros([int(d) for d in s.type.shape], np.float32) for s in step.states}
        rng_state = {"rng.seed": np.array(0, np.int64), "rng.step": np.array(0, np.int64)}
        return {**model.persistent, **state, **rng_state}

    one = Executable(fused.graph, persistent(models[0], fused), fused.donate)
    held = persistent(models[1], split)
    grads = Executable(split.graph, held, split.donate)
    update = Executable(split.update, held, split.update_donate)
    for step in range(1, 4):
        hyper = {"lr": np.array(0.2), "step": np.array(float(step))}
        a = one.run({"x": x, "y": y, **hyper}, {"B": 30})
        g = grads.run({"x": x, "y": y}, {"B": 30})
        update.run({**hyper, **{k: v for k, v in g.items() if k.startswith("grad:")}}, {})
        np.testing.assert_allclose(g["loss"], a["loss"], rtol=1e-6)
    for name, w in models[0].state_dict().items():
        np.testing.assert_allclose(models[1].state_dict()[name], w, rtol=0, atol=1e-6, err_msg=name)
    assert any(not np.array_equal(w, dln.compile(str(sgd_mlp), backend="numpy").state_dict()[k])
               for k, w in models[1].state_dict().items())


def test_sync_batchnorm_runs_its_statistics_and_their_gradients_through_the_communicator(tmp_path: Path,
                                                                                       monkeypatch):
    """The training graph of sync_batchnorm sums the statistics (forward) and their cotangents (backward,
    weighted) through the communicator the env hands the interpreter, in graph order.  Without one (one
    process) it computes the per-rank graph's loss and gradients; with two ranks holding the same rows
    (the exchange doubling each sum) too, as the global batch is then the rows twice over."""
    import dln
    from dln.compiler import pipeline
    from dln.compiler.passes.global_rows import ROW
    from dln.runtime.interpreter import Executable
    from dln.runtime.numpy_ops import COMMUNICATOR
    from dln.runtime.train import default_objective

    path = tmp_path / "mlp_sync.dln"
    path.write_text(SYNC_BN)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.random((30, 64), np.float32), "y": rng.integers(0, 10, 30)}
    plain, synced = dln.compile(str(path), backend="numpy"), dln.compile(str(path), backend="numpy")
    synced.sync_batchnorm = True
    objective = default_objective(plain)
    steps = [pipeline.split_step(m.train_spec, objective) for m in (plain, synced)]
    ops = distributed.collectives(steps[1].graph)
    assert not distributed.collectives(steps[0].graph)
    assert [n.attrs["weighted"] for n in ops].count(False) == 2 and [n.attrs["weighted"] for n in ops].count(True)

    def run(model, step, env):
        rng_state = {"rng.seed": np.array(0, np.int64), "rng.step": np.array(0, np.int64),
                     ROW: np.array(0, np.int64)}
        out = Executable(step.graph, {**model.persistent, **rng_state}, step.donate).run(feeds, env)
        return {k: np.array(v) for k, v in out.items() if k == "loss" or k.startswith("grad:")}

    reference = run(plain, steps[0], {"B": 30})
    seen: list[int] = []

    def doubled(group, buffers, what):   # two ranks of the same rows
        seen.append(len(buffers))
        for b in buffers:
            b *= 2

    monkeypatch.setattr(distributed, "all_reduce", doubled)
    communicator = distributed.Communicator(distributed.Group(0, 2, 0, "gloo", 1.0), ops)
    communicator.weight = 0.5
    for env in ({"B": 30}, {"B": 30, COMMUNICATOR: communicator}):
        got = run(synced, steps[1], env)
        assert sorted(got) == sorted(reference)
        for k in reference:
            np.testing.assert_allclose(got[k], reference[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert len(seen) == len(ops)   # (the backward's weights cancel here; with unequal ranks they matter:
    #                                 test_sync_batchnorm_with_a_rank_without_rows_at_the_end fails without them)


def test_buckets_hold_every_gradient_once_in_reverse_order(sgd_mlp: Path):
    """Flat buckets up to a cap, a view per gradient, no overlap; a gradient over the cap gets its own."""
    import dln
    from dln.compiler import pipeline
    from dln.runtime.backends import NumpyBackend
    from dln.runtime.train import default_objective

    model = dln.compile(str(sgd_mlp), backend="numpy")
    step = pipeline.split_step(model.train_spec, default_objective(model))
    sizes = {p: model.parameters()[p].nbytes for p in step.params}
    cap = sizes["h.bias"] + sizes["logits.weight"] + sizes["logits.bias"]   # the last three fit one bucket
    buckets = gradient_sync.buckets(step, NumpyBackend(), cap)
    assert [list(b.views) for b in buckets] == [["logits.bias", "logits.weight", "h.bias"], ["h.weight"]]
    for b in buckets:
        b.flat[...] = np.arange(b.flat.size)
        seen = np.concatenate([v.ravel() for v in b.views.values()])
        np.testing.assert_array_equal(seen, np.arange(b.flat.size))   # views tile the flat buffer, in order
        for name, v in b.views.items():
            assert v.shape == model.parameters()[name].shape and np.shares_memory(v, b.flat)
    assert len(gradient_sync.buckets(step, NumpyBackend())) == 1   # 25 MB holds this model whole


def test_a_small_first_bucket_then_buckets_up_to_the_cap_in_the_order_given(sgd_mlp: Path, monkeypatch):
    """DDP's layout: the first bucket small (its all_reduce starts early in the backward), the others up to
    the cap, filled in the order the backward makes the gradients; DLN_BUCKET_MB sets the cap."""
    import dln
    from dln.compiler import pipeline
    from dln.dsl.diagnostics import DlnError
    from dln.runtime.backends import NumpyBackend
    from dln.runtime.train import default_objective

    model = dln.compile(str(sgd_mlp), backend="numpy")
    step = pipeline.split_step(model.train_spec, default_objective(model))
    sizes = {p: model.parameters()[p].nbytes for p in step.params}
    order = ["logits.bias", "h.bias", "logits.weight", "h.weight"]
    buckets = gradient_sync.buckets(step, NumpyBackend(), cap=sizes["h.weight"] + sizes["h.bias"],
                                  first_cap=sizes["logits.bias"], order=order)
    assert [list(b.views) for b in buckets] == [["logits.bias"], ["h.bias", "logits.weight"], ["h.weight"]]
    assert gradient_sync.bucket_caps() == (2 ** 20, 25 * 2 ** 20)
    monkeypatch.setenv("DLN_BUCKET_MB", "0.5")
    assert gradient_sync.bucket_caps() == (2 ** 19, 2 ** 19)
    monkeypatch.setenv("DLN_BUCKET_MB", "5")
    assert gradient_sync.bucket_caps() == (2 ** 20, 5 * 2 ** 20)
    for bad in ("0", "-1", "lots", "inf"):
        monkeypatch.setenv("DLN_BUCKET_MB", bad)
        with pytest.raises(DlnError, match="DLN_BUCKET_MB"):
            gradient_sync.bucket_cap()


def test_the_backward_hands_each_gradient_over_once_as_soon_as_it_is_final():
    """The interpreter's `ready`: every output once, holding its final value when handed over (checked on
    a second run with other inputs, so that a buffer still holding the first run's value would show), and
    the gradients spread over the backward rather than all at its end — what the all_reduce overlaps."""
    import dln
    from dln.compiler import pipeline
    from dln.compiler.passes.global_rows import ROW
    from dln.runtime.train import default_objective

    model = dln.compile(str(EXAMPLES / "cnn_digits.dln"), backend="numpy")
    step = pipeline.split_step(model.train_spec, default_objective(model))
    ex = model.backend.prepare(step.graph, {**model.persistent, **model.step_rng(), ROW: np.array(0, np.int64)},
                               step.donate)
    rng = np.random.default_rng(1)
    for run in range(2):
        feeds = {"images": rng.random((7, 1, 8, 8), np.float32), "y": rng.integers(0, 10, 7)}
        names: list[str] = []
        handed: dict[str, np.ndarray] = {}

        def ready(name: str, array: np.ndarray) -> None:
            names.append(name)
            handed[name] = array.copy()

        results = ex.run(feeds, {"B": 7}, ready)
        assert sorted(names) == sorted(results)   # each once
        assert names == ex.handover_order()      # in the order the buckets are laid out in
        for name, value in results.items():
            np.testing.assert_array_equal(handed[name], value, err_msg=f"run {run}: {name}")
    plan = next(iter(ex._plans.values()))
    when = {name: k for k, outs in enumerate(plan.handovers) for name, _ in outs}
    grads = sorted(when[n] for n in when if n.startswith("grad:"))
    # (measured: the 10 gradients after steps 80 to 142 of 143: the forward is the first 75 or so)
    assert len(grads) == len(set(grads)) == 10 and len(plan.steps) - grads[0] > len(plan.steps) // 3, grads


@pytest.mark.parametrize("backend, file, cap", [("numpy", "cnn_digits.dln", 4096), ("triton", "iris.dln", 100)])
def test_buckets_start_their_all_reduce_while_the_backward_goes_on(monkeypatch, backend: str, file: str, cap: int):
    """A group of one rank (gloo, in this process): with small buckets, the first buckets start their
    all_reduce before the backward has made the last gradients, in bucket order — on the NumPy backend
    (LeNet) as its interpreter hands each gradient over, on the Triton backend (its interpreter; iris) as the
    launcher does after the kernel making it, when it runs the launcher and when it replays its tape."""
    import torch.distributed as dist

    import dln
    from dln.runtime.optim import Optimizer
    from dln.runtime.train import default_objective

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    steps: list[list[tuple[str, int]]] = []
    try:
        group = distributed.Group(0, 1, 0, "gloo", 30.0)
        monkeypatch.setenv("DLN_BUCKET_MB", str(cap / 2 ** 20))
        model = dln.compile(str(EXAMPLES / file), backend=backend)
        sync = Optimizer(model, default_objective(model), group=group).sync
        ready, start = sync._ready, dist.all_reduce
        monkeypatch.setattr(sync, "_ready", lambda name, a: (steps[-1].append(("made", name)), ready(name, a)))
        monkeypatch.setattr(dist, "all_reduce", lambda t, **kw: (steps[-1].append(("sent", t.numel())),
                                                                   start(t, **kw))[1])
        rng = np.random.default_rng(0)
        x = rng.random((7, 1, 8, 8) if file == "cnn_digits.dln" else (7, 4), np.float32)
        feeds = {"images" if file == "cnn_digits.dln" else "x": x, "y": rng.integers(0, 3, 7)}
        for _ in range(2):
            steps.append([])
            sync.run(feeds, {"B": 7}, {"lr": np.array(1e-3), "step": np.array(1.0)}, 7, 7)
    finally:
        dist.destroy_process_group()
        distributed._GRADIENT_GROUPS.clear()
    assert sync.overlaps and len(sync.buckets) >= 4
    for events in steps:
        sent = [k for k, (what, _) in enumerate(events) if what == "sent"]
        made = [k for k, (what, name) in enumerate(events) if what == "made" and name.startswith("grad:")]
        # The loss and metrics' sums travel in the last bucket, or, where the Triton backend moved it into its
        # update's arena, in an all_reduce of their own after it.
        assert len(sent) == len(sync.buckets) + (sync.tally is None) and (sync.tally is None) == (backend == "triton")
        assert sent[0] < made[-1] and sent[1] < made[-1] and sent[len(sync.buckets) - 1] > made[-1], events
        assert [events[k][1] for k in sent[:len(sync.buckets)]] == [np.asarray(b.flat).size for b in sync.buckets]


def test_a_bucket_follows_inputs_a_backend_moved(sgd_mlp: Path):
    """Gradient inputs laid out back to back elsewhere (torch tensors, any order): that run becomes the
    bucket; inputs scattered: the bucket is copied to them after the all_reduce."""
    import torch

    flat = torch.zeros(10)
    views = {"a": flat[0:6].view(2, 3), "b": flat[6:10].view(4)}
    arena = torch.zeros(10)
    moved = {"b": arena[0:4].view(4), "a": arena[4:10].view(2, 3)}
    bucket = gradient_sync.Bucket(flat, dict(views))
    gradient_sync._bind(bucket, moved)
    assert bucket.flat.data_ptr() == arena.data_ptr() and bucket.flat.numel() == 10 and not bucket.copies
    bucket.flat += 1   # the all_reduce, in place
    assert all(float(t.min()) == 1 for t in moved.values())
    scattered = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    bucket = gradient_sync.Bucket(flat, dict(views))
    gradient_sync._bind(bucket, scattered)
    assert bucket.flat is flat and [m for _, m in bucket.copies][0] is scattered["a"] and len(bucket.copies) == 2


def start_ranks(file: Path, nproc: int, args: list[str], cwd: Path, timeout: float) -> list[subprocess.Popen]:
    """`dln train` as `nproc` ranks, each started here (as a launcher would), collectives timing out after
    `timeout` seconds."""
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", "dln", "train", str(file), *args],
                             env={**worker_environment(rank, nproc, port), "DLN_DIST_TIMEOUT": str(timeout)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
            for rank in range(nproc)]


def wait_for_epoch(proc: subprocess.Popen, deadline: float = 60) -> None:
    """Until `proc` (rank 0) has logged its first epoch: training is under way, a checkpoint written."""
    import select
    import time

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready and proc.stdout.readline().startswith("epoch "):
            return
        assert proc.poll() is None, proc.stderr.read()
    raise AssertionError("rank 0 logged no epoch")


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_rank_that_dies_or_hangs_ends_the_others_with_a_dln_error(tmp_path: Path, sgd_mlp: Path, how: str):
    """Rank 1 killed (its connections close) or stopped (it hangs): rank 0 stops within the timeout with
    E0720, not a hang; the checkpoint it wrote before is whole, and resumes on one process."""
    import signal
    import time

    ckpt = tmp_path / "ckpt"
    ranks = start_ranks(sgd_mlp, 2, ["--epochs", "1000", "--no-progress", "--checkpoint", str(ckpt)], tmp_path,
                        timeout=3)
    try:
        wait_for_epoch(ranks[0])
        ranks[1].send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        began = time.monotonic()
        _, err = ranks[0].communicate(timeout=30)
        took = time.monotonic() - began
    finally:
        for p in ranks:
            p.kill()
            p.communicate()
    assert ranks[0].returncode == 1
    assert "error[E0720]: rank 0 of 2: the all_reduce" in err and "Traceback" not in err
    assert took < 3 + 10
    state = json.loads((ckpt / "state.json").read_text())
    done = state["epochs_done"]
    assert done >= 1 and all((ckpt / name).is_file() for name in state["files"].values())
    resumed = subprocess.run([sys.executable, "-m", "dln", "train", str(sgd_mlp), "--epochs", str(done + 1),
                              "--no-progress", "--checkpoint", str(ckpt)],
                             capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {ckpt} after epoch {done}" in resumed.stdout


def test_batch_norm_per_rank_leaves_every_rank_with_rank_0s_statistics(tmp_path: Path, sgd_mlp: Path, monkeypatch):
    """Batch norm normalizes each rank's rows with their own statistics (PyTorch's default); the running
    statistics, which each rank updates from its own rows, are rank 0's on every rank after training, as
    are the parameters: the ranks evaluate and return what rank 0 saves.  With dropout."""
    bn = tmp_path / "mlp_bn.dln"
    bn.write_text(SGD_MLP.replace("linear(hidden) -> tanh", "linear(hidden) -> batchnorm -> tanh -> dropout(0.2)"))
    ranks = run_ranks(tmp_path, bn, 2, {"batch": 24, "epochs": 1})
    # Not one process's trajectory at 48 (what sync_batchnorm gives: test_sync_batchnorm_...).
    one = single(bn, {"batch": 48, "epochs": 1}, monkeypatch)
    assert np.abs(ranks[0]["losses"] - one["losses"]).max() > 1e-3
    stats = [k for k in ranks[0] if k.startswith("w:") and "running" in k]
    assert stats, sorted(ranks[0])
    for key in [k for k in ranks[0] if k.startswith(("w:", "h:"))]:
        np.testing.assert_array_equal(ranks[1][key], ranks[0][key], err_msg=key)
    np.testing.assert_array_equal(ranks[1]["losses"], ranks[0]["losses"])
    assert np.isfinite(ranks[0]["losses"]).all() and ranks[0]["losses"][-5:].mean() < ranks[0]["losses"][:5].mean()


# Measured (2 ranks of 24, 3 of 50, 2 epochs): every step's loss within 6.3e-7 relative, the parameters
# within 3.6e-7 absolute and the running statistics within 1.4e-6 (the running mean: sums of ranks' sums
# against one sum); the asserts allow over ten times that.
SYNC_RTOL, SYNC_ATOL = 1e-5, 2e-5
# The SGD MLP with batch norm before the nonlinearity (and dropout after it), its statistics across ranks.
SYNC_BN = SGD_MLP.replace("linear(hidden) -> tanh", "linear(hidden) -> batchnorm -> tanh -> dropout(0.2)") \
                 .replace("    minimize loss", "    sync_batchnorm = true\n    minimize loss")


def test_sync_batchnorm_follows_one_process_and_resumes_on_another_number_of_ranks(tmp_path: Path, monkeypatch):
    """sync_batchnorm: the batch statistics, their gradients and the running statistics are the global
    batch's, so 2 ranks of 24 follow one process at 48 — losses, weights, running statistics — also at the
    short last batch (1438 = 29·48 + 46: ranks of 24 and 22 rows).  A checkpoint holds nothing of the number
    of ranks: the second epoch, resumed on 3 ranks of 16 (the same global batch, so the same order, draws
    and statistics), follows one process resumed at 48.  With dropout."""
    path = tmp_path / "mlp_sync.dln"
    path.write_text(SYNC_BN)
    ranks, one = tmp_path / "ranks", tmp_path / "one"
    two = run_ranks(tmp_path, path, 2, {"batch": 24, "epochs": 1, "checkpoint": str(ranks)})
    first = single(path, {"batch": 48, "epochs": 1, "checkpoint": str(one)}, monkeypatch)
    assert any("running_var" in k for k in first)
    assert_same_trajectory(two, first, loss_rtol=SYNC_RTOL, weight_atol=SYNC_ATOL)
    three = run_ranks(tmp_path, path, 3, {"batch": 16, "epochs": 2, "checkpoint": str(ranks)})
    second = single(path, {"batch": 48, "epochs": 2, "checkpoint": str(one)}, monkeypatch)
    assert len(second["losses"]) == math.ceil(TRAIN / 48) and len(second["h:loss"]) == 2
    assert_same_trajectory(three, second, loss_rtol=SYNC_RTOL, weight_atol=SYNC_ATOL, from_start=False)
    assert np.abs(second["losses"] - first["losses"][:len(second["losses"])]).max() > 1e-3   # it moved on


def test_sync_batchnorm_with_a_rank_without_rows_at_the_end(tmp_path: Path, monkeypatch):
    """3 ranks of 50: the last global batch of 88 rows gives ranks 50, 38 and 0 rows; the rank without rows
    still adds its zeros to every all_reduce of the statistics (forward and backward), so the others do not
    wait for it, and the trajectory is one process's at 150."""
    path = tmp_path / "mlp_sync.dln"
    path.write_text(SYNC_BN)
    b, n = 50, 3
    assert TRAIN % (n * b) <= (n - 1) * b
    # Small buckets: their all_reduce ops start between the statistics' (in a process group of their own).
    ranks = run_ranks(tmp_path, path, n, {"batch": b}, SMALL_BUCKETS)
    one = single(path, {"batch": n * b}, monkeypatch)
    assert_same_trajectory(ranks, one, loss_rtol=SYNC_RTOL, weight_atol=SYNC_ATOL)

