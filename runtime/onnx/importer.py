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
     handler (importer_ops, importer_layers, importer_rnn), which turns it into a pipe stage, an
     expression or a statement (importer_core holds the walk's state, importer_text the text).
A value read once stays pending, so the next stage extends its pipe; a value read several times,
or a graph output, is bound to a name.  A layer starts a new statement named after it; its weights
go into the weights file under the parameter names the text gives it (the layer's own ONNX name,
`name = "..."` when that is not the binding's).  Every name comes from the ONNX file through
`identifier` or `layer_path`, which keep letters, digits, underscores (and dots in a layer path)
and nothing else, so no text of the file reaches the program unescaped.
"""

from __future__ import annotations

import os
from pathlib import Path

from dln.dsl.diagnostics import Diagnostic, DlnError, Note
from dln.runtime.onnx import importer_layers, importer_ops, importer_rnn  # noqa: F401  (register their handlers)
from dln.runtime.onnx.importer_core import Imported, Importer
from dln.runtime.onnx.importer_text import fail

TARGET_OPSET = 17   # older opsets are converted to this one; newer ones are read as they are


# ---- entry points --------------------------------------------------------------------------------------------

def import_onnx(path: str | Path, out: str | Path | None = None) -> str:
    """The `.dln` text of the ONNX model at `path`.  With `out`, also writes it there and its weights
    beside it (`model.dln` -> `model.safetensors`), loadable with `Model.load` or `--weights`."""
    from dln.runtime.checkpoint import check_output, save_arrays, write_text

    for name, value in (("path", path), ("out", out)):
        if not isinstance(value, (str, os.PathLike)) and not (name == "out" and value is None):
            raise DlnError(Diagnostic("E0710", f"argument {name} of import_onnx must be a file path, got "
                                               f"{type(value).__name__}"))
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
