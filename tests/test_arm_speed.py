"""benchmarks/arm_speed.py: the per-call profile of qc's C (-DQC_PROFILE marks) and onnxruntime's
arm64 build under the counting plugin (benchmarks/arm/ort_run.c)."""
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from qc.backends.c import emit_c, prepare, toolchain
from qc.frontend.onnx import import_onnx
from qc.targets import load_target

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import arm_speed  # noqa: E402


def _mlp(m: int = 16, k: int = 64, n: int = 32, tail: int = 0):
    """x @ w1 -> Relu -> @ w2, then TAIL Sigmoids (more calls than the syscall numbers of marks)."""
    rng = np.random.RandomState(0)
    w1 = numpy_helper.from_array((rng.randn(k, k) * 0.1).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.randn(k, n) * 0.1).astype(np.float32), "w2")
    names = ["y0"] + [f"s{i}" for i in range(tail)]
    names[-1] = "y"
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], [names[0] if tail else "y"])]
    nodes += [helper.make_node("Sigmoid", [names[i]], [names[i + 1]]) for i in range(tail)]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TP.FLOAT, [m, k])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [m, n])], [w1, w2])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_profile_sums_to_one_inference(tmp_path):
    """The per-call counts of a -DQC_PROFILE build cover one inference of that build (counted
    independently, -r 3 minus -r 2 between the harness's clock calls) up to model_run's entry and
    exit; both inferences of the profiled run agree; the marks cost about 9 instructions each;
    150 calls: labels past the clock_gettime and clone syscall numbers (113, 220) are calls too."""
    toolchain.require_tools("aarch64")
    module = import_onnx(_mlp(tail=150))
    prepare(module, {})
    out = tmp_path / "c"
    report = emit_c(module, out, load_target("cortex-a76"), harness=True)
    plain = arm_speed.c_model(out, "cortex-a76")
    marked = arm_speed.c_model(out, "cortex-a76", extra_flags=("-DQC_PROFILE",))
    prof = arm_speed.c_profile(out, "cortex-a76", runs=2)
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


def _ort_lib():
    """The cached onnxruntime arm64 library; without it a skip, or under QC_REQUIRE_ARM=1 a fetch
    from the npm registry (a failure if that fails)."""
    import os

    toolchain.require_tools("aarch64")
    oa = arm_speed._ort_arm()
    if not oa.available():
        if os.environ.get("QC_REQUIRE_ARM") != "1":
            pytest.skip(f"onnxruntime's arm64 library is not in {oa.CACHE} (python benchmarks/arm_speed.py --fetch)")
        oa.fetch()
    return oa


def _gemm_model(path: Path, m: int = 8, k: int = 64, n: int = 48) -> Path:
    rng = np.random.RandomState(1)
    w = numpy_helper.from_array((rng.randn(k, n) * 0.1).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.randn(n).astype(np.float32), "b")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
                          "gemm", [helper.make_tensor_value_info("x", TP.FLOAT, [m, k])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [m, n])], [w, b])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_ort_arm_matches_host_and_is_stable(tmp_path):
    """ort_run.c on onnxruntime's arm64 build under qemu: the output equals onnxruntime on the
    host, the last-run count (main thread) is the same in two processes, the optimized model it
    saved (SetOptimizedModelFilePath) has MatMul+Add fused at level ALL and not at level 0; its
    quantize_dynamic model runs its MatMul in SDOT (one per 16 MACs) and matches the host."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _ort_lib()
    model = _gemm_model(tmp_path / "gemm.onnx")
    x = np.random.RandomState(2).randn(8, 64).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    a = arm_speed.ort_model(model, {"x": x}, [("y", ref)], runs=2, work=tmp_path / "a")
    b = arm_speed.ort_model(model, {"x": x}, [("y", ref)], runs=2, work=tmp_path / "b")
    np.testing.assert_allclose(a["outputs"][0], ref, rtol=1e-5, atol=1e-5)
    # the arithmetic is the same instruction for instruction; the total is not: on a loaded CI
    # machine two processes differed by 252 of 21,991 instructions, all loads/stores and branches
    # (onnxruntime's helper threads start beside the measured run, so its bookkeeping varies)
    pa, pb = a["per_inference"], b["per_inference"]
    assert all(pa["classes"][k] == pb["classes"][k] for k in ("dot", "mmla", "fmla_vec", "fmadd_scalar")), (pa, pb)
    assert abs(pa["total"] - pb["total"]) <= 0.02 * pa["total"] and pa["total"] > 1000, (pa, pb)
    assert a["per_inference"]["classes"]["fmla_vec"] > 0
    # saving the optimized model changes the heap that the measured run's allocations walk, so its
    # count is not compared with a and b; the model it saves is what this run checks
    arm_speed.ort_model(model, {"x": x}, [("y", ref)], runs=1, work=tmp_path / "s", optimized=tmp_path / "opt.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert "MatMul" not in ops and ("Gemm" in ops or "FusedMatMul" in ops or "FusedGemm" in ops), ops
    arm_speed.ort_model(model, {"x": x}, [("y", ref)], runs=1, work=tmp_path / "c", optimized=tmp_path / "o0.onnx",
                        extra=("-G", "0"))  # the level's slot: 0 keeps the graph as written
    assert [n.op_type for n in onnx.load(str(tmp_path / "o0.onnx")).graph.node] == ["MatMul", "Add"]

    q = tmp_path / "gemm-dyn.onnx"
    quantize_dynamic(str(model), str(q), weight_type=QuantType.QInt8)
    qref = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    r = arm_speed.ort_model(q, {"x": x}, [("y", qref)], runs=2, work=tmp_path / "q")
    np.testing.assert_allclose(r["outputs"][0], qref, rtol=1e-5, atol=1e-5)
    assert r["per_inference"]["classes"]["dot"] == 8 * 64 * 48 // 16  # MLAS SDOT kernel: 16 MACs each
