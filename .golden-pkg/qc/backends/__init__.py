"""Backends: qc IR -> ONNX (``qc.backends.onnx``); the C backend arrives with its issue."""
