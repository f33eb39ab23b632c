"""Reductions over a run of middle axes (qc_ops_nn.c qc_reduce_middle: MiniLM's mean pooling over
the sequence): the NEON build under qemu-aarch64 gives the portable host build's bits, and both
match onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper

from qc.backends.c import emit_c, prepare, toolchain
from qc.backends.c.runner import build_model, run_model
from qc.frontend.onnx import import_onnx
from qc.onnx.evaluator import ort_session
from qc.targets import load_target

# (op, input shape, axes, keepdims): middle runs, a trailing run kept, a run of two, an odd inner
CASES = [("ReduceSum", (2, 7, 12), [1], 0), ("ReduceMean", (1, 128, 20), [1], 1),
         ("ReduceSumSquare", (3, 4, 5, 8), [1, 2], 0), ("ReduceMean", (2, 3, 9, 6), [2], 1),
         ("ReduceSum", (5, 2, 3), [0], 0)]


def _model(op: str, shape, axes, keepdims: int):
    ax = helper.make_tensor("axes", TP.INT64, [len(axes)], axes)
    nodes = [helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)], [ax])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("op,shape,axes,keepdims", CASES)
def test_middle_axis_reductions(tmp_path, op, shape, axes, keepdims):
    toolchain.require_tools("aarch64")
    model = _model(op, shape, axes, keepdims)
    x = np.random.RandomState(3).randn(*shape).astype(np.float32)
    ref = ort_session(model).run(None, {"x": x})[0]
    outs = {}
    for name, variant, arch, cpu in (("portable", "portable", "host", None), ("neon", None, "aarch64", "cortex-a76")):
        module = import_onnx(model)
        prepare(module, {})
        report = emit_c(module, tmp_path / name, load_target("cortex-a76"), harness=True,
                        **({"variant": variant} if variant else {}))
        exe = build_model(report, arch, cpu) if cpu else build_model(report, arch)
        outs[name] = (run_model(exe, report, {"x": x}, arch, cpu) if cpu else run_model(exe, report, {"x": x}, arch))[0]
    assert outs["neon"].tobytes() == outs["portable"].tobytes()
    np.testing.assert_allclose(outs["portable"].reshape(ref.shape), ref, rtol=1e-5, atol=1e-5)
