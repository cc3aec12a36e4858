"""The parse tables, cached as JSON.

Building the LALR tables costs about 0.1 s that every `dln check` would pay
again.  They are kept in the user's cache directory as plain JSON, keyed by
the grammar's and Lark's versions; a missing, stale or damaged file is
simply rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from lark import Lark


def path_for(grammar: str) -> Path:
    import lark

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dln"
    digest = hashlib.sha256((grammar + lark.__version__).encode()).hexdigest()[:16]
    return base / f"grammar-{digest}.json"


def load(grammar: str, callbacks) -> Lark | None:
    try:
        saved = json.loads(path_for(grammar).read_text())
        return Lark._load_from_dict(_decode(saved["data"]), _decode(saved["memo"]), lexer_callbacks=callbacks)
    except Exception:  # missing, unreadable or from another version: rebuild
        return None


def save(grammar: str, parser: Lark) -> None:
    from lark.grammar import Rule
    from lark.lexer import TerminalDef

    path = path_for(grammar)
    data, memo = parser.memo_serialize([TerminalDef, Rule])
    data["options"] = {k: v for k, v in data["options"].items() if k != "lexer_callbacks"}  # given at load
    text = json.dumps({"data": _encode(data), "memo": _encode(memo)})
    # Written beside its final name and renamed over it, as runtime/checkpoint.py writes (dsl does not
    # import the runtime): a reader never sees half a cache.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs time


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
