"""dln: a declarative language for neural networks, compiled to fused Triton kernels.

    import dln
    model = dln.compile("mlp.dln", backend="numpy", hidden=256)
    out = model(x=x)

The public names load on first use, so `dln check` starts without the runtime.
"""

from dln.dsl.diagnostics import DlnError

__version__ = "0.1.0"
__all__ = ["DlnError", "Model", "compile", "import_onnx", "optimizer", "train", "__version__"]


def __getattr__(name: str):
    if name in ("Model", "compile", "train"):
        from dln.runtime import api

        return getattr(api, name)
    if name == "import_onnx":
        from dln.runtime.onnx.importer import import_onnx

        return import_onnx
    if name == "optimizer":
        from dln.runtime.optim import optimizer

        return optimizer
    raise AttributeError(f"module 'dln' has no attribute {name!r}")
