"""The memory plan runs elementwise kernels in place (backends/c/memplan.py ``in_place``): an
output takes the memory of an input whose whole buffer dies at that call, never of an input
read later, read through broadcast strides, or of another size; the C still matches
onnxruntime (graph optimizations off)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from qc.backends.c import emit_c, prepare, toolchain
from qc.backends.c.kernels import gemm_variant
from qc.backends.c.lower import Lowering, lower
from qc.backends.c.memplan import plan
from qc.backends.c.runner import build_model, run_model
from qc.frontend.onnx import import_onnx
from qc.onnx.evaluator import ort_session
from qc.targets import load_target

A76 = load_target("cortex-a76")


def _model():
    """a = Relu(x); b = Exp(a)  [a dies: in place]; c = Add(b, row) [b dies, row broadcast: b's
    memory]; d = Mul(c, a2) with a2 = Neg(x) also read by e = Sub(a2, d) [a2 lives on: not in
    place for d, c's memory instead; Sub, its last reader, writes over it]; f = Less(e, x)
    [bool: never over float memory]."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Exp", ["a"], ["b"]),
             helper.make_node("Add", ["b", "row"], ["c"]), helper.make_node("Neg", ["x"], ["a2"]),
             helper.make_node("Mul", ["c", "a2"], ["d"]), helper.make_node("Sub", ["a2", "d"], ["e"]),
             helper.make_node("Less", ["e", "x"], ["f"]), helper.make_node("Cast", ["f"], ["g"], to=1),
             helper.make_node("Add", ["g", "e"], ["y"])]
    row = numpy_helper.from_array(np.linspace(-1, 1, 8).astype(np.float32), "row")
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], [row])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _lowered():
    module = import_onnx(_model())
    prepare(module, {})
    low = lower(Lowering(module, tuple(A76.features), gemm_variant(A76)))
    plan(low.calls, low.arena_buffers)
    return low


def test_outputs_alias_dying_inputs_only():
    low = _lowered()
    calls = {c.node.split(" ")[0]: c for c in low.calls}
    out = {name: c.args[-1].buf for name, c in calls.items()}

    def reads(name, i):
        return [a.buf for a in calls[name].args if hasattr(a, "buf")][i]

    assert out["b"].root is reads("b", 0).root          # Exp over Relu's dying buffer
    assert out["c"].root is reads("c", 0).root          # Add over b (row is a weight, broadcast)
    assert out["d"].root is out["c"].root               # Mul over c, not over a2 (read again by Sub)
    assert out["d"].root is not out["a2"].root
    assert out["e"].root is out["a2"].root              # Sub over a2, whose last read it is
    assert out["f"].root is not out["e"].root           # a bool result never takes float memory


def test_in_place_c_matches_onnxruntime(tmp_path):
    toolchain.require_tools("host")
    model = _model()
    module = import_onnx(model)
    prepare(module, {})
    report = emit_c(module, tmp_path / "c", A76, harness=True)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    got = run_model(build_model(report, "host"), report, {"x": x})[0]
    ref = ort_session(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    # two float [4, 8] values and one bool one at a time (without the in-place plan: 384 bytes)
    assert report["arena_bytes"] <= 2 * 4 * 8 * 4 + 4 * 8
