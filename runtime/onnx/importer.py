"""ONNX -> `.dln`: an ONNX model as readable `.dln` source text, its weights as safetensors.

    dln import model.onnx -o model.dln         # writes model.dln and model.safetensors
    text = dln.import_onnx("model.onnx", out="model.dln")

The text is the product: a `model` with one `input` per graph input (a `dim_param` becomes a
symbolic dimension, `B` for a batch, `T` for a sequence), one statement per layer, pipes where a
chain is linear, and an `output` per graph output.  dln's compiler checks it like any other file,
so the importer never builds IR itself: what it writes either compiles or is a bug here.

How a graph becomes text (`Importer.run`):
  1. older opsets go through onnx.version_converter to TARGET_OPSET; shapes are inferred (with data
     propagation, so reshape targets computed from `Shape` have their sizes);
  2. the layer patterns exporters spell with several nodes are rewritten into one (importer_graph);
  3. each node either folds (its inputs are known: shape arithmetic, importer_fold) or goes to its
     handler (importer_ops), which turns it into a pipe stage, an expression or a statement.
A value read once stays pending, so the next stage extends its pipe; a value read several times,
or a graph output, is bound to a name.  A layer starts a new statement named after it; its weights
go into the weights file under the parameter names the text gives it (the layer's own ONNX name,
`name = "..."` when that is not the binding's).  Every name comes from the ONNX file through
`identifier` or `layer_path`, which keep letters, digits, underscores (and dots in a layer path)
and nothing else, so no text of the file reaches the program unescaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dln.compiler.symbolic import Sym
from dln.dsl.diagnostics import Diagnostic, DlnError, Note

TARGET_OPSET = 17

KEYWORDS = {"and", "block", "false", "import", "in", "input", "minimize", "model", "not", "or", "output", "over",
            "param", "repeat", "return", "train", "true", "with"}
DTYPES = {"f32", "f16", "bf16", "f64", "i32", "i64", "bool"}
# Common dim_param spellings, as the names LANGUAGE.md uses by convention.
DIM_ALIASES = {"batch": "B", "batch_size": "B", "batchsize": "B", "bs": "B", "n": "B", "b": "B", "batch_dim": "B",
               "seq": "T", "seq_len": "T", "seqlen": "T", "sequence": "T", "sequence_length": "T", "time": "T",
               "t": "T", "length": "T", "len": "T"}


def fail(message: str, *notes: str) -> DlnError:
    return DlnError(Diagnostic("E0715", message, None, tuple(Note(n) for n in notes)))


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
    if not np.isfinite(v):
        raise fail(f"the constant {v} has no .dln literal")
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


@dataclass
class Imported:
    """What an import makes: the `.dln` text, the weights by parameter name, the model's name, and
    the names the model gives the ONNX graph's inputs and outputs (sanitized identifiers)."""

    text: str
    weights: dict[str, np.ndarray]
    name: str
    inputs: dict[str, str]
    outputs: dict[str, str]


# ---- entry points --------------------------------------------------------------------------------------------

def import_onnx(path: str | Path, out: str | Path | None = None) -> str:
    """The `.dln` text of the ONNX model at `path`.  With `out`, also writes it there and its weights
    beside it (`model.dln` -> `model.safetensors`), loadable with `Model.load` or `--weights`."""
    from dln.runtime.checkpoint import check_output, save_arrays, write_text

    path = Path(path)
    imported = import_model(load(path), path.stem)
    if out is not None:
        out = Path(out)
        weights = weights_path(out)
        check_output(out, "file", "the imported model", suffix=".dln", before="nothing was written")
        check_output(weights, "file", "the imported weights", before="nothing was written")
        write_text(out, imported.text)
        save_arrays(weights, imported.weights, {"model": imported.name})
    return imported.text


def weights_path(out: str | Path) -> Path:
    """Where the weights of a model imported to `out` go: beside it, `.safetensors` for `.dln`."""
    return Path(out).with_suffix(".safetensors")


def load(path: Path):
    try:
        import onnx
    except ImportError:
        raise DlnError(Diagnostic("E0714", "dln import needs the onnx package", None,
                                  (Note("pip install onnx (or dln[onnx])"),))) from None
    if not path.is_file():
        raise DlnError(Diagnostic("E0702", f"cannot read {path}: " + ("it is a directory" if path.is_dir() else
                                                                       "No such file or directory")))
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf reports a damaged file in several ways
        raise DlnError(Diagnostic("E0702", f"cannot read {path} as an ONNX model: {type(e).__name__}")) from None


def import_model(model, name: str = "imported") -> Imported:
    """An ONNX `ModelProto` as `.dln` text and weights."""
    return Importer(prepare(model), name).run()


def prepare(model):
    """The model at TARGET_OPSET or later (older opsets converted), with every value's shape inferred."""
    import onnx
    from onnx import shape_inference, version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise fail("the ONNX model imports no standard opset (ai.onnx)")
    if opset < TARGET_OPSET:
        try:
            model = version_converter.convert_version(model, TARGET_OPSET)
        except Exception as e:
            raise fail(f"cannot convert the model from opset {opset} to {TARGET_OPSET}: {str(e)[:200]}") from None
    try:
        model = shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError):
        pass   # shapes stay unknown where inference fails; a handler that needs one says so
    return model


from dln.runtime.onnx.importer_core import Importer  # noqa: E402  (the core uses the names above)
