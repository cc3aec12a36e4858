"""The parse tables ship with the package and are current; tables built for another grammar are cached as
JSON (never pickle); a parser from either behaves like a fresh one."""

import json
import os
import subprocess
import sys
from pathlib import Path

from lark import Lark

from dln.dsl import tables
from dln.dsl.parser import GRAMMAR_PATH, lark_options

ROOT = Path(__file__).resolve().parents[2]
BAD = "model m() {\n    input x: f32[B, 4]\n    model = relu(x)\n    output model\n}\n"


def _check(path: Path, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    return subprocess.run([sys.executable, "-m", "dln", "check", str(path)], capture_output=True, text=True, env=env,
                          cwd=ROOT)


def test_shipped_tables_are_current():
    shipped = json.loads(tables.SHIPPED.read_text())
    assert shipped["grammar"] == tables.grammar_digest(GRAMMAR_PATH.read_text()), \
        'grammar.lark changed: run .venv/bin/python -c "from dln.dsl.tables import ship; ship()"'


def test_a_fresh_install_parses_without_building_or_caching(tmp_path):
    program = tmp_path / "bad.dln"
    program.write_text(BAD)
    cache = tmp_path / "cache"
    first = _check(program, cache)
    second = _check(program, cache)
    assert first.returncode == second.returncode == 1
    assert first.stderr == second.stderr and "error[E0101]" in second.stderr
    shipped_fits = json.loads(tables.SHIPPED.read_text())["key"] == tables.key(GRAMMAR_PATH.read_text())
    assert len(list((cache / "dln").glob("grammar-*.json"))) == (0 if shipped_fits else 1)


def test_tables_of_an_edited_grammar_are_cached_as_json(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    edited = GRAMMAR_PATH.read_text() + "\n// edited\n"
    callbacks = lark_options()["lexer_callbacks"]
    assert tables.load(edited, callbacks) is None   # the shipped tables are another grammar's
    fresh = Lark(edited, **lark_options())
    tables.save(edited, fresh)
    json.loads(tables.path_for(edited).read_text())  # plain JSON
    cached = tables.load(edited, callbacks)
    text = (ROOT / "examples" / "mlp_digits.dln").read_text()
    assert cached.parse(text) == fresh.parse(text)


def test_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    edited = GRAMMAR_PATH.read_text() + "\n// edited\n"
    tables.path_for(edited).parent.mkdir(parents=True)
    tables.path_for(edited).write_text("{ not json")
    assert tables.load(edited, lark_options()["lexer_callbacks"]) is None
