"""benchmarks/arm_speed.py: the per-call profile of qc's C (-DQC_PROFILE marks) and onnxruntime's
arm64 build under the counting plugin (benchmarks/arm/ort_run.c)."""
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from qc.backends.c import emit_c, prepare, toolchain
from qc.frontend.onnx import import_onnx
from qc.targets import load_target

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import arm_speed  # noqa: E402


def _mlp(m: int = 16, k: int = 64, n: int = 32):
    rng = np.random.RandomState(0)
    w1 = numpy_helper.from_array((rng.randn(k, k) * 0.1).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.randn(k, n) * 0.1).astype(np.float32), "w2")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                           helper.make_node("MatMul", ["r", "w2"], ["y"])], "mlp",
                          [helper.make_tensor_value_info("x", TP.FLOAT, [m, k])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [m, n])], [w1, w2])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_profile_sums_to_one_inference(tmp_path):
    """The per-call counts of a -DQC_PROFILE build cover one inference of that build (counted
    independently, -r 3 minus -r 2 between the harness's clock calls) up to model_run's entry and
    exit; both inferences of the profiled run agree; the marks cost about 9 instructions each."""
    toolchain.require_tools("aarch64")
    module = import_onnx(_mlp())
    prepare(module, {})
    out = tmp_path / "c"
    report = emit_c(module, out, load_target("cortex-a76"), harness=True)
    plain = arm_speed.c_model(out, "cortex-a76")
    marked = arm_speed.c_model(out, "cortex-a76", extra_flags=("-DQC_PROFILE",))
    prof = arm_speed.c_profile(out, "cortex-a76")
    rows = prof["calls"]
    assert [(r["node"], r["kernel"]) for r in rows] == [tuple(c) for c in report["calls"]]
    assert prof["runs_agree"] and prof["n_marks"] == 2 * (len(report["calls"]) + 1)
    total = sum(r["total"] for r in rows)
    assert total == prof["marked_total"]["total"]
    for c in arm_speed.CLASSES:
        assert sum(r["classes"][c] for r in rows) == prof["marked_total"]["classes"][c]
    one = marked["per_inference"]["total"]
    assert 0 <= one - total <= 40, (one, total)  # the call into model_run, its prologue and epilogue
    assert 0 < one - plain["per_inference"]["total"] <= 12 * prof["n_marks"] // 2
    matmul = [r for r in rows if r["kernel"].startswith("matmul")]
    assert len(matmul) == 2 and matmul[0]["total"] > matmul[1]["total"] > 0  # 64x64 vs 64x32 weights
