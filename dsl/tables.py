"""The parse tables: shipped with the package, else cached as JSON.

Building the LALR tables costs 0.1-0.3 s that every `dln` command would pay, in a fresh install with
empty caches too.  So they ship beside the grammar, as plain JSON (grammar.tables.json, made by
`tables.ship()`; tests/dsl/test_parser_cache.py fails when grammar.lark has changed since).
Tables that do not match — an edited grammar, another Lark version — are built and kept in the user's
cache directory instead, keyed by the grammar's and Lark's versions; a missing, stale or damaged file
is simply rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from lark import Lark

SHIPPED = Path(__file__).with_name("grammar.tables.json")


def grammar_digest(grammar: str) -> str:
    return hashlib.sha256(grammar.encode()).hexdigest()[:16]


def key(grammar: str) -> str:
    """What tables are good for: this grammar under this Lark."""
    import lark

    return hashlib.sha256((grammar + lark.__version__).encode()).hexdigest()[:16]


def path_for(grammar: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dln"
    return base / f"grammar-{key(grammar)}.json"


def load(grammar: str, callbacks) -> Lark | None:
    """The shipped tables, else the cached ones, when they are this grammar's under this Lark."""
    for path in (SHIPPED, path_for(grammar)):
        try:
            saved = json.loads(path.read_text())
            if saved["key"] == key(grammar):
                return Lark._load_from_dict(_decode(saved["data"]), _decode(saved["memo"]),
                                            lexer_callbacks=callbacks)
        except Exception:  # missing, unreadable or from another version: the next, else rebuild
            continue
    return None


def save(grammar: str, parser: Lark) -> None:
    """Keep `parser`'s tables in the user's cache."""
    try:
        _write(path_for(grammar), _text(grammar, parser))
    except OSError:
        pass  # an unwritable cache only costs time


def _text(grammar: str, parser: Lark) -> str:
    from lark.grammar import Rule
    from lark.lexer import TerminalDef

    data, memo = parser.memo_serialize([TerminalDef, Rule])
    data["options"] = {k: v for k, v in data["options"].items() if k != "lexer_callbacks"}  # given at load
    return json.dumps({"key": key(grammar), "grammar": grammar_digest(grammar), "data": _encode(data),
                       "memo": _encode(memo)}, separators=(",", ":"))


def _write(path: Path, text: str) -> None:
    """Written beside its final name and renamed over it, as runtime/checkpoint.py writes (dsl does not
    import the runtime): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _encode(x):
    """JSON keeps only string keys and no tuples: spell the others out."""
    if isinstance(x, dict):
        if all(isinstance(k, str) for k in x):
            return {k: _encode(v) for k, v in x.items()}
        return {"__items__": [[_encode(k), _encode(v)] for k, v in x.items()]}
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v) for v in x]}
    if isinstance(x, list):
        return [_encode(v) for v in x]
    return x


def _decode(x):
    if isinstance(x, dict):
        if set(x) == {"__items__"}:
            return {_decode(k): _decode(v) for k, v in x["__items__"]}
        if set(x) == {"__tuple__"}:
            return tuple(_decode(v) for v in x["__tuple__"])
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v) for v in x]
    return x



def ship() -> None:
    """Build the shipped tables again from grammar.lark (after editing it):

        .venv/bin/python -c "from dln.dsl.tables import ship; ship()"
    """
    from dln.dsl.parser import GRAMMAR_PATH, lark_options

    grammar = GRAMMAR_PATH.read_text()
    _write(SHIPPED, _text(grammar, Lark(grammar, **lark_options())))
    SHIPPED.chmod(0o644)   # mkstemp's files are private; this one ships
