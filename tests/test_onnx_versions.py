"""The ONNX IR version and opset qc writes: the lowest the model needs, never more than the
target's runtime loads (the target's [onnx] table), and a clear error when the model needs more."""
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import qc
from qc.backends.onnx import versions
from qc.errors import QCError
from qc.targets import builtin_targets, load_target

ROOT = Path(__file__).resolve().parent.parent
ONNX_TARGETS = [t for t in builtin_targets() if load_target(t).onnx is not None]


def _mlp(opset: int = 17, ir: int = onnx.IR_VERSION):
    rng = np.random.RandomState(0)
    w1 = numpy_helper.from_array((rng.randn(64, 64) * 0.1).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.randn(64, 32) * 0.1).astype(np.float32), "w2")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                           helper.make_node("MatMul", ["r", "w2"], ["y"])], "mlp",
                          [helper.make_tensor_value_info("x", TP.FLOAT, [16, 64])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [16, 32])], [w1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return m


# int4 weights as DequantizeLinear on int4 (no lower-qop: MatMulNBits would pack them in uint8)
INT4_QDQ = "quantize-weights{bits=4,granularity=block,symmetric=true,dtype=i4,block-size=32},dce"


def _compile(src, target, quant, tmp_path):
    if quant == "int4-qdq":
        return qc.compile(str(src), target=target, pipeline=INT4_QDQ, emit="onnx", upgrade_opset=21)
    return qc.compile(str(src), target=target, quant=quant, emit="onnx",
                      calibration=_calib(tmp_path) if quant in ("w8a8",) else None)


def _calib(tmp_path):
    p = tmp_path / "calib.npz"
    np.savez(p, x=np.random.RandomState(1).randn(8, 16, 64).astype(np.float32))
    return str(p)


def _run(path, x):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_targets_declare_their_runtime():
    """The Arm targets' runtime is onnxruntime 1.30's arm64 build (IR 13, opset 26)."""
    for name in ("cortex-a76", "cortex-a53", "armv8.6-i8mm", "mali-gpu"):
        lim = load_target(name).onnx
        assert (lim.max_ir_version, lim.max_opset) == (13, 26), name
    assert load_target("x86-avx2").onnx.max_ir_version == 14


@pytest.mark.parametrize("target", ONNX_TARGETS)
@pytest.mark.parametrize("quant,ir,opset", [(None, 7, 14), ("dyn8", 7, 14), ("w8a8", 7, 14), ("w4", None, None),
                                              ("int4-qdq", 10, 21)])
def test_written_versions_per_target(tmp_path, target, quant, ir, opset):
    """An IR-14 / opset-17 MLP: float / int8 MatMul + Relu-14 need opset 14 and IR 7; int4
    weights as DequantizeLinear-21 on int4 need opset 21 and IR 10. w4 (upgraded to opset 21):
    7 / 14 where the weights become MatMulNBits on uint8, 10 / 21 where int4 tensors or Cast-21
    (mali-gpu's float16 fallback) remain. The output loads in onnxruntime and computes what the
    float model does (within the scheme's error)."""
    src = tmp_path / "mlp.onnx"
    onnx.save(_mlp(), str(src))
    out = tmp_path / "out.onnx"
    _compile(src, target, quant, tmp_path).write(str(out))
    m = onnx.load(str(out))
    lim = load_target(target).onnx
    got_opset = next(o.version for o in m.opset_import if o.domain == "")
    if ir is None:
        int4 = any(t.data_type in (TP.INT4, TP.UINT4) for t in m.graph.initializer)
        ir, opset = (10, 21) if int4 or any(n.op_type == "Cast" for n in m.graph.node) else (7, 14)
    assert (m.ir_version, got_opset) == (ir, opset)
    assert m.ir_version <= lim.max_ir_version and got_opset <= lim.max_opset
    onnx.checker.check_model(m)
    x = np.random.RandomState(3).randn(16, 64).astype(np.float32)
    ref, got = _run(src, x), _run(out, x)
    if quant is None:
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    else:  # relative L2 error of 8-bit / 4-bit weights
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < (0.05 if quant in ("dyn8", "w8a8") else 0.2)


def test_c_output_model_onnx_fits_the_arm_runtime(tmp_path):
    """The C output's model.onnx (the oracle) for cortex-a76 declares what onnxruntime 1.30's arm64 build loads."""
    src = tmp_path / "mlp.onnx"
    onnx.save(_mlp(), str(src))
    res = qc.compile(str(src), target="cortex-a76", quant="w8a8", calibration=_calib(tmp_path))
    res.write(str(tmp_path / "c"))
    m = onnx.load(str(tmp_path / "c" / "model.onnx"))
    assert m.ir_version == 7 and next(o.version for o in m.opset_import if o.domain == "") == 14


def test_loads_in_onnxruntime_arm64_build(tmp_path):
    """qc's int8 ONNX for cortex-a76, written from an IR-14 model, runs in onnxruntime 1.30's arm64
    build under qemu (which refuses IR 14) and agrees with onnxruntime on the host."""
    from qc.backends.c import toolchain

    toolchain.require_tools("aarch64")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import arm_speed

    oa = arm_speed._ort_arm()
    if not oa.available():
        if os.environ.get("QC_REQUIRE_ARM") != "1":
            pytest.skip(f"onnxruntime's arm64 library is not in {oa.CACHE}")
        oa.fetch()
    src = tmp_path / "mlp.onnx"
    onnx.save(_mlp(), str(src))
    out = tmp_path / "q.onnx"
    qc.compile(str(src), target="cortex-a76", quant="w8a8", emit="onnx", calibration=_calib(tmp_path)).write(str(out))
    assert onnx.load(str(out)).ir_version <= 13
    x = np.random.RandomState(3).randn(16, 64).astype(np.float32)
    ref = _run(out, x)
    r = arm_speed.ort_model(out, {"x": x}, [("y", ref)], runs=1, work=tmp_path / "arm")
    # the arm64 build fuses the Q/DQ pairs into its int8 kernels (ORT_ENABLE_ALL), the host
    # reference runs them in float: the same codes, rounded apart
    got = r["outputs"][0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.01


def _target_file(tmp_path, **limits):
    text = (ROOT / "qc" / "targets" / "x86-avx2.toml").read_text()
    start = text.index("[onnx]")
    end = text.index("\n[", start + 1)
    table = "[onnx]\nruntime = \"an old runtime\"\nsource = \"test\"\n" + "".join(
        f"{k} = {v}\n" for k, v in limits.items())
    p = tmp_path / "old.toml"
    p.write_text(text[:start] + table + text[end:])
    return str(p)


def test_model_needing_more_than_the_runtime_fails(tmp_path):
    """int4 weights need IR 10 and opset 21: a runtime of IR 9 or opset 20 is refused by name,
    and no file is written; the float model fits both."""
    src = tmp_path / "mlp.onnx"
    onnx.save(_mlp(), str(src))
    out = tmp_path / "out.onnx"
    with pytest.raises(QCError, match=r"needs ONNX IR version 10 \(.*an old runtime loads IR version 9"):
        _compile(src, _target_file(tmp_path, max_ir_version=9), "int4-qdq", tmp_path).write(str(out))
    assert not out.exists()
    with pytest.raises(QCError, match=r"needs ai.onnx opset 21 \(DequantizeLinear-21\).*loads opset 20 at most"):
        _compile(src, _target_file(tmp_path, max_opset=20), "int4-qdq", tmp_path).write(str(out))
    assert not out.exists()
    qc.compile(str(src), target=_target_file(tmp_path, max_ir_version=9, max_opset=20), emit="onnx").write(str(out))
    assert onnx.load(str(out)).ir_version == 7


def test_bad_onnx_table(tmp_path):
    text = (ROOT / "qc" / "targets" / "x86-avx2.toml").read_text()
    for bad, msg in (('max_ir_version = "13"', "expected an integer"), ("max_ir_version = 2", "at least 3"),
                     ("max_irversion = 13", "unknown key")):
        p = tmp_path / "bad.toml"
        p.write_text(text.replace("max_ir_version = 14", bad))
        with pytest.raises(QCError, match=msg):
            load_target(str(p))


def _model(nodes, inputs, outputs, opset, inits=(), functions=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], functions=list(functions))
    m.ir_version = onnx.IR_VERSION
    return m


def test_needed_versions_follow_the_schemas_and_types():
    vi = helper.make_tensor_value_info
    f32 = [vi("x", TP.FLOAT, [4])]
    # Softmax-13, Relu-14 at opset 21 -> opset 14, IR 7
    m = _model([helper.make_node("Softmax", ["x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
               f32, [vi("y", TP.FLOAT, [4])], 21)
    v = versions.needed(m)
    assert (v.ir_version, v.opsets[""], v.why_opset[""]) == (7, 14, "Relu-14")
    # a float8 Cast at opset 21 resolves to Cast-21 (IR 10); at opset 19 to Cast-19 (IR 9)
    for opset, want in ((21, (10, 21)), (19, (9, 19))):
        m = _model([helper.make_node("Cast", ["x"], ["y"], to=TP.FLOAT8E4M3FN)], f32,
                   [vi("y", TP.FLOAT8E4M3FN, [4])], opset)
        v = versions.needed(m)
        assert (v.ir_version, v.opsets[""]) == want
    # element types set the IR version where the opset does not: float8 9, int2 13
    m = _model([helper.make_node("Relu", ["x"], ["y"])], f32, [vi("y", TP.FLOAT, [4])], 17)
    assert versions.needed(m).ir_version == 7
    v = versions.needed(m, extra_dtypes=[TP.FLOAT8E5M2])
    assert (v.ir_version, v.why_ir) == (9, "float8e5m2 tensors")
    assert versions.needed(m, extra_dtypes=[TP.INT2]).ir_version == 13
    # a model-local function needs IR 8
    fn = helper.make_function("local", "F", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                              [helper.make_opsetid("", 21)])
    m = _model([helper.make_node("F", ["x"], ["y"], domain="local")], f32, [vi("y", TP.FLOAT, [4])], 21,
               functions=[fn])
    m.opset_import.add(domain="local", version=1)
    v = versions.fit(m)
    assert (m.ir_version, v.opsets[""]) == (8, 14)
    assert [o.version for o in m.functions[0].opset_import if o.domain == ""] == [14]
    onnx.checker.check_model(m)
    x = np.arange(4, dtype=np.float32) - 2
    np.testing.assert_array_equal(ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0], np.maximum(x, 0))
