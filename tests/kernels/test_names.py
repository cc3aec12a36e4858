"""Names in what `dln compile --backend triton` writes (generation only, nothing runs): kernels, buffers
and plan entries say which value, gradient or parameter they are (docs/architecture.md, "Names")."""

from __future__ import annotations

import ast
import keyword
import re
from pathlib import Path

import dln
from dln.compiler import pipeline
from dln.compiler.ir import Phase
from dln.compiler.recipe import Objective, OptimizerSpec
from dln.kernels.module import generate_module
from dln.runtime import cli
from dln.runtime.train import default_objective

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

RANDOM = """
model noisy(d: int = 64) {
    input x: f32[B, d]
    input y: i64[B]
    h      = x -> linear(32) -> relu -> dropout(0.2)
    mask   = bernoulli(sigmoid(h))
    jitter = rand_like(h)
    z      = h * mask + 0.1 * jitter + 0.1 * randn_like(h)
    logits = linear(z, 10)
    loss   = cross_entropy(logits, y)
    output logits
}

train noisy {
    data      = dataset("digits")
    optimizer = adam(lr = 1e-3)
    minimize loss
}
"""

# Names the language allows that are Python keywords or builtins, or that sanitizing shortens.
ODD = """
model odd(d: int = 64) {
    input x: f32[B, d]
    input y: i64[B]
    lambda = x -> linear(32, name = "enc.0") -> relu
    __x__  = linear(lambda, 32) -> tanh -> dropout(0.1)
    None   = linear(__x__, 10, name = "_")
    loss   = cross_entropy(None, y)
    output None
}

train odd {
    data      = dataset("digits")
    optimizer = adam(lr = 1e-3)
    minimize loss
}
"""


def compile_triton(path: Path, out: Path) -> tuple[dict[str, dict[str, str]], str, str]:
    """(plan.txt's kernel entries by name, kernels.py, backward.ir) as `dln compile` writes them."""
    assert cli.main(["compile", str(path), "-o", str(out), "--backend", "triton"]) == 0
    return _entries((out / "plan.txt").read_text()), (out / "kernels.py").read_text(), \
        (out / "backward.ir").read_text()


def _entries(plan: str) -> dict[str, dict[str, str]]:
    """plan.txt's kernels: name -> {field: text} (`fuses`, `stores`, `updates`, ...)."""
    entries = {}
    for block in plan.split("\n\n"):
        head, *fields = block.strip("\n").split("\n")
        if re.fullmatch(r"k\d+_\w+  \[\w+\]", head):
            entries[head.split()[0]] = dict(f.strip().split(None, 1) for f in fields)
    return entries


def _kernel_source(source: str, name: str) -> str:
    start = source.index(f"def {name}(")
    end = source.find("\n@triton.jit", start)
    return source[start:end]


def test_update_kernels_are_named_by_the_parameters_they_update(tmp_path):
    plan, source, _ = compile_triton(EXAMPLES / "mlp_digits.dln", tmp_path)
    for param in ("h.weight", "h.bias", "logits.weight", "logits.bias"):
        (name,) = [k for k, e in plan.items() if param in e.get("updates", "").split(", ")]
        assert re.fullmatch(rf"k\d+_update_{param.replace('.', '_')}", name), name
        assert f"def {name}(" in source
        # The bias corrections every update computes alike are the optimizer's, no other parameter's.
        others = {"h.weight", "h.bias", "logits.weight", "logits.bias"} - {param}
        assert not any(f"optimizer.{p}" in _kernel_source(source, name) for p in others), name
    assert not [k for k in plan if k.endswith("_update")]


def test_random_ops_are_named_by_what_draws_and_the_value_it_makes(tmp_path):
    (tmp_path / "noisy.dln").write_text(RANDOM)
    plan, source, _ = compile_triton(tmp_path / "noisy.dln", tmp_path / "build")
    draws = set(re.findall(r"# %\d+ (\w+) draw \((\w+)\)", source))
    assert draws == {("dropout", "h"), ("bernoulli", "mask"), ("rand_like", "jitter"), ("randn_like", "z")}


def test_a_vae_draws_randn_like_not_dropout(tmp_path):
    plan, source, _ = compile_triton(EXAMPLES / "vae_digits.dln", tmp_path)
    assert [k for k in plan if "randn_like" in k] and not [k for k in plan if "dropout" in k]
    assert "randn_like draw (code)" in source and "dropout" not in source


def test_gradient_buffers_are_named_as_gradients(tmp_path):
    plan, source, backward = compile_triton(EXAMPLES / "mlp_digits.dln", tmp_path)
    assert re.search(r"\bp\d+_grad_logits,", source) and re.search(r"\bp\d+_grad_h,", source)
    assert re.search(r"# grad:h\.weight ", backward) and re.search(r"# grad:logits ", backward)
    assert [k for k in plan if re.fullmatch(r"k\d+_grad_h_matmul\w*", k)]
    assert re.search(r"slot \d+: .* holds .*%\d+ grad:logits\b", (tmp_path / "plan.txt").read_text())


def test_every_buffer_of_the_backward_pass_is_a_gradient():
    # A GAN names a value `d_loss`: gradients are `grad_...`, so the two never read alike.
    for example in ("mlp_digits", "gan_digits", "cnn_digits", "transformer_charlm"):
        model = dln.compile(str(EXAMPLES / f"{example}.dln"), backend="numpy")
        step = pipeline.train_step(model.train_spec, default_objective(model))
        generated = generate_module(step.graph, step.donate)
        graph = generated.plan.graph
        misnamed = [(k.name, p.name) for k in generated.kernels for p in k.pointers
                    if graph.node(p.node).phase is Phase.BACKWARD and not re.fullmatch(r"p\d+_grad\w*", p.name)]
        assert not misnamed, example


def test_a_multi_tensor_update_names_its_parameters_and_arenas():
    model = dln.compile(str(EXAMPLES / "mlp_digits.dln"), backend="numpy")
    objective = Objective("loss", None, OptimizerSpec("adam", {"lr": 1e-3}), None)
    step = pipeline.train_step(model.train_spec, objective, 1.0)
    generated = generate_module(step.graph, step.donate)
    (kernel,) = [k for k in generated.kernels if k.kind == "multi_tensor"]
    (group,) = [g for g in generated.plan.groups if g.name == kernel.name]
    assert re.fullmatch(rf"k\d+_update_{group.updates[0].replace('.', '_')}_and_{len(group.updates) - 1}_more",
                        kernel.name)
    assert ", ".join(group.updates) in " ".join(kernel.source.split())
    arenas = {p.name for p in kernel.pointers if p.name.startswith("arena")}
    assert {re.sub(r"arena\d+_", "", a) for a in arenas} == \
        {"params", "grads", "exp_avg", "exp_avg_sq", "new_exp_avg", "new_exp_avg_sq"}
    # The memory plan names them by the kernel's position, as the kernel does.
    position = kernel.name.split("_")[0]
    assert {a.name for a in generated.plan.memory.arenas} == {f"{position}.{a}" for a in arenas}


def test_odd_names_give_unique_stable_identifiers(tmp_path):
    (tmp_path / "odd.dln").write_text(ODD)
    plan, source, _ = compile_triton(tmp_path / "odd.dln", tmp_path / "a")
    again, source_again, _ = compile_triton(tmp_path / "odd.dln", tmp_path / "b")
    assert source == source_again and plan == again
    tree = ast.parse(source)
    kernels = [f for f in tree.body if isinstance(f, ast.FunctionDef) and re.match(r"k\d+_", f.name)]
    assert sorted(f.name for f in kernels) == sorted(plan)
    names = [f.name for f in kernels] + [a.arg for f in kernels for a in f.args.args]
    assert all(n.isidentifier() and n.isascii() and not keyword.iskeyword(n) for n in names)
    for f in kernels:
        assert len({a.arg for a in f.args.args}) == len(f.args.args), f.name
    assert len(set(plan)) == len(plan)
    assert [k for k, e in plan.items() if e.get("updates") == "enc.0.weight" and k.endswith("_update_enc_0_weight")]


def test_a_kernel_that_only_lays_out_a_view_says_it_copies(tmp_path):
    plan, _, _ = compile_triton(EXAMPLES / "lstm_charlm.dln", tmp_path)
    assert {"fill", "copy"} <= {k.rsplit("_", 1)[1] for k in plan}
    assert [k for k in plan if re.fullmatch(r"k\d+_logits_copy", k)]
