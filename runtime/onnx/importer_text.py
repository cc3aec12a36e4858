"""The text the importer writes: identifiers from ONNX names, numbers as `.dln` literals, call
arguments, and the values a walk holds (see importer.py).

Every name that reaches the program goes through `identifier` or `layer_path`, which keep letters,
digits and underscores (and dots between the parts of a layer's path) and nothing else; strings go
through `quoted`.  So no text of an ONNX file is ever pasted into a program unescaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dln.compiler.symbolic import Sym
from dln.dsl.diagnostics import Diagnostic, DlnError, Note

KEYWORDS = {"and", "block", "false", "import", "in", "input", "minimize", "model", "not", "or", "output", "over",
            "param", "repeat", "return", "train", "true", "with"}
DTYPES = {"f32", "f16", "bf16", "f64", "i32", "i64", "bool"}
# Common dim_param spellings, as the names LANGUAGE.md uses by convention.
DIM_ALIASES = {"batch": "B", "batch_size": "B", "batchsize": "B", "bs": "B", "n": "B", "b": "B", "batch_dim": "B",
               "seq": "T", "seq_len": "T", "seqlen": "T", "sequence": "T", "sequence_length": "T", "time": "T",
               "t": "T", "length": "T", "len": "T"}


def fail(message: str, *notes: str) -> DlnError:
    return DlnError(Diagnostic("E0716", message, None, tuple(Note(n) for n in notes)))


def unsupported(node: Any, why: str) -> DlnError:
    """The error for a node the importer cannot write as `.dln`: it names the node and its op type."""
    return fail(f"ONNX node '{identifier(node.name, keep_dots=True) or '?'}' ({identifier(node.op)}): {why}")


# ---- names ----------------------------------------------------------------------------------------------

def identifier(text: str, keep_dots: bool = False) -> str:
    """`text` with only letters, digits and underscores (and dots, when asked), not starting with a digit."""
    out = re.sub(r"[^A-Za-z0-9_.]" if keep_dots else r"[^A-Za-z0-9_]", "_", text)
    out = re.sub(r"_+", "_", out).strip("_")
    if keep_dots:
        out = ".".join(p.strip("_") or "x" for p in out.split(".") if p)
    return f"v{out}" if out[:1].isdigit() else out


def layer_path(weights: list[str], node_name: str) -> str:
    """A layer's parameter prefix: the prefix its weights' names share (`layer1.0.conv1` of
    `layer1.0.conv1.weight`), else the module path torch writes into node names (`/layer1/layer1.0/
    conv1/Conv` -> `layer1.0.conv1`), else the node's name."""
    for w in weights:
        head, dot, leaf = w.rpartition(".")
        if dot and head and not w.startswith("onnx::") and re.fullmatch(r"[A-Za-z0-9_]+", leaf):
            return identifier(head, keep_dots=True)
    parts = [p for p in node_name.split("/") if p]
    if len(parts) > 1:
        path: list[str] = []
        for p in parts[:-1]:   # torch repeats the enclosing path: /layer1/layer1.0/conv1
            if path and p.startswith(".".join(path) + "."):
                path = p.split(".")
            else:
                path += p.split(".")
        return identifier(".".join(path), keep_dots=True)
    return identifier(node_name, keep_dots=True)


def _reserved() -> set[str]:
    from dln.compiler import expressions  # noqa: F401  (registers every built-in)
    from dln.compiler.builtins import BUILTINS

    return KEYWORDS | DTYPES | set(BUILTINS)


class Names:
    """Unique identifiers for bindings, inputs, dimensions and params, none a keyword or a built-in."""

    def __init__(self) -> None:
        self.taken = _reserved()

    def fresh(self, hint: str, fallback: str = "h") -> str:
        base = identifier(hint) or fallback
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name


# ---- values -----------------------------------------------------------------------------------------------

@dataclass
class Known:
    """A value known while importing: numbers, or an object array of dimensions (ints and Syms)."""

    value: Any                  # np.ndarray or importer_fold.Fill
    source: str = ""            # the initializer's name, for a param declared from it


@dataclass
class Layer:
    """A layer call in a pipe: `conv2d(16, 3, padding = 1)`; `path` names its parameters."""

    call: str
    args: list[str]
    path: str
    weights: dict[str, np.ndarray]


@dataclass
class Tensor:
    """A runtime value: an expression (a name, or an operator expression) and the pipe stages after it
    that are not bound to a name yet."""

    text: str
    stages: list[str | Layer] = field(default_factory=list)
    hint: str = "h"
    layer: Layer | None = None

    @property
    def bare(self) -> bool:
        return not self.stages and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.text) is not None


def dim_text(d: Any) -> str:
    return str(int(d)) if not isinstance(d, Sym) else str(d)


def number(v: Any) -> str:
    """A number as a `.dln` literal: the shortest text that reads back as the same float32."""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if np.isnan(v):
        raise fail("the constant nan has no .dln literal")
    if np.isinf(v):   # as a mask, the largest float32 does what infinity does: exp of it is 0
        return ("-" if v < 0 else "") + repr(float(np.finfo(np.float32).max)).replace("e+", "e")
    text = str(np.float32(v)) if np.float32(v) == v or isinstance(v, np.float32) else repr(float(v))
    text = text.replace("e+", "e")
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exp = text.split("e")
        text = f"{mantissa}.0e{exp}"
    return text if "." in text or "e" in text else text + ".0"


def args_text(positional: list[Any], keywords: dict[str, Any], defaults: dict[str, Any] | None = None) -> list[str]:
    """Call arguments as text, keywords equal to their defaults left out."""
    defaults = defaults or {}
    out = [_value_text(v) for v in positional]
    for k, v in keywords.items():
        if k in defaults and _same(v, defaults[k]):
            continue
        out.append(f"{k} = {_value_text(v)}")
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-9 * max(1, abs(b))
    return a == b


def _value_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, tuple):
        return "(" + ", ".join(_value_text(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, Sym):
        return str(v)
    return number(v)


def quoted(text: str) -> str:
    """A `.dln` string literal of `text` (escaped: backslash, quote, newline, tab)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
