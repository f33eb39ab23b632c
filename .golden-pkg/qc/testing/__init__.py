"""Test helpers: the ONNX -> qc IR -> ONNX conformance harness (``qc.testing.conformance``)."""
