"""Every ONNX converter module: importing this registers them all in `convert.ONNX_OPS`."""

from dln.runtime.onnx import ops_attention  # noqa: F401
from dln.runtime.onnx import ops_basic  # noqa: F401
from dln.runtime.onnx import ops_bitwise  # noqa: F401
from dln.runtime.onnx import ops_conv  # noqa: F401
from dln.runtime.onnx import ops_einsum  # noqa: F401
from dln.runtime.onnx import ops_elementwise  # noqa: F401
from dln.runtime.onnx import ops_nn  # noqa: F401
from dln.runtime.onnx import ops_norm  # noqa: F401
from dln.runtime.onnx import ops_recurrent  # noqa: F401
from dln.runtime.onnx import ops_reduce  # noqa: F401
from dln.runtime.onnx import ops_shape  # noqa: F401
