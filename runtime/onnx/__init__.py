"""ONNX in and out: a dln backend for ONNX models (dln.runtime.onnx.backend), held to the ONNX
conformance suite (dln.runtime.onnx.conformance)."""
