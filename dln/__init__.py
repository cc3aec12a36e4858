"""dln: a declarative language for neural networks, compiled to fused Triton kernels.

    import dln
    model = dln.compile("mlp.dln", backend="numpy", hidden=256)
    out = model(x=x)
"""

from dln.dsl.diagnostics import DlnError
from dln.runtime.api import Model, compile, train

__version__ = "0.1.0"
__all__ = ["DlnError", "Model", "compile", "train", "__version__"]
