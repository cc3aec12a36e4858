"""Every program of the language draft (shared/spec/LANGUAGE.md) parses; those
compiles with `dln check`.

The spec lives next to the repository (`<repo>/../shared/spec/LANGUAGE.md`); a copy of its
programs is kept in tests/programs/language/, so the tests run without it, and
`test_copies_match_the_spec` notices when the spec moves on.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from dlncheck import ROOT, check_many, diagnostics
from dln.dsl import DlnError, parse

SPEC = ROOT.parent / "shared" / "spec" / "LANGUAGE.md"

# The model each block is about (see _name).
EXPECTED = ["mlp", "gan", "vae", "gcn", "gpt", "classifier_lstm",
            "lenet"]  # the statement-only pipe fragment, wrapped in a model

# A statement-only fragment becomes the body of this model; `images` is the input the
# fragment reads (LeNet's [B, 1, 28, 28]), `h` the value it binds.
WRAPPER = "model lenet() {{\n    input images: f32[B, 1, 28, 28]\n{body}    output h\n}}\n"


COPIES = Path(__file__).resolve().parents[1] / "programs" / "language"


def _spec_blocks() -> list[str]:
    text = SPEC.read_text()
    return [textwrap.dedent(b) for b in re.findall(r"^[ \t]*```dln[ \t]*\n(.*?)^[ \t]*```", text, re.S | re.M)]


def _blocks() -> list[str]:
    if SPEC.is_file():
        return _spec_blocks()
    return [p.read_text() for p in sorted(COPIES.glob("block_*.dln"), key=lambda p: int(p.stem.split("_")[1]))]


def _is_complete(block: str) -> bool:
    return re.search(r"^\s*(model|block)\s", block, re.M) is not None


def _program(block: str) -> str:
    return block if _is_complete(block) else WRAPPER.format(body=textwrap.indent(block, "    "))


def _name(block: str) -> str:
    """The model a block is about: the one it trains, else its last."""
    source = _program(block)
    trained = re.search(r"^\s*train\s+([A-Za-z_]\w*)", source, re.M)
    models = re.findall(r"^\s*model\s+([A-Za-z_]\w*)", source, re.M)
    return trained.group(1) if trained else models[-1] if models else "block"


BLOCKS = _blocks()


@pytest.mark.skipif(not SPEC.is_file(), reason=f"{SPEC} is absent")
def test_copies_match_the_spec():
    copies = [p.read_text() for p in sorted(COPIES.glob("block_*.dln"), key=lambda p: int(p.stem.split("_")[1]))]
    assert copies == _spec_blocks(), "LANGUAGE.md changed: refresh tests/programs/language/"


def test_spec_has_the_known_examples():
    names = [_name(b) for b in BLOCKS]
    assert len(BLOCKS) >= 7
    assert set(EXPECTED) <= set(names), names
    assert sum(not _is_complete(b) for b in BLOCKS) >= 1, "the LeNet pipe fragment"


@pytest.mark.parametrize("block", BLOCKS, ids=[_name(b) for b in BLOCKS])
def test_example_parses(block):
    source = _program(block)
    try:
        module = parse(source, f"LANGUAGE.md:{_name(block)}")
    except DlnError as e:
        pytest.fail(f"does not parse:\n{e}\n\n{source}")
    assert module.models or module.blocks


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    d = tmp_path_factory.mktemp("spec")
    paths = {}
    for k, block in enumerate(BLOCKS):
        name = _name(block)
        f = d / f"{k}_{name}.dln"
        f.write_text(_program(block))
        paths[name] = f.name
    results = check_many(list(paths.values()), cwd=d)
    return {name: results[p] for name, p in paths.items()}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_example_checks(checked, name):
    r = checked[name]
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    assert f"ok  {name}:" in r.stdout, r.stdout
