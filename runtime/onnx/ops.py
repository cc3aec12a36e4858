"""Every ONNX converter module: importing this registers them all in `convert.ONNX_OPS`."""

from dln.runtime.onnx import ops_basic  # noqa: F401
from dln.runtime.onnx import ops_elementwise  # noqa: F401
