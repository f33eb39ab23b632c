"""check-kernels and `qc check`: node units placed on a target's devices, fallbacks with reasons."""
import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qc.cli import main
from qc.frontend.onnx import import_onnx
from qc.pm import PassContext, PassManager, parse_pass


def _save(tmp_path, nodes, inits, name="m.onnx", x_shape=(2, 64), y_shape=(2, 32)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    path = str(tmp_path / name)
    onnx.save(m, path)
    return path


def int8_qdq(tmp_path):
    rng = np.random.default_rng(0)
    inits = [
        helper.make_tensor("x_s", TensorProto.FLOAT, [], [0.05]),
        helper.make_tensor("x_zp", TensorProto.UINT8, [], [128]),
        numpy_helper.from_array(rng.integers(-127, 127, (64, 32)).astype(np.int8), "w_q"),
        helper.make_tensor("w_s", TensorProto.FLOAT, [], [0.01]),
        helper.make_tensor("w_zp", TensorProto.INT8, [], [0]),
        helper.make_tensor("y_s", TensorProto.FLOAT, [], [0.1]),
        helper.make_tensor("y_zp", TensorProto.UINT8, [], [128]),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_zp"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_dq"]),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["mm"], name="mm0"),
        helper.make_node("QuantizeLinear", ["mm", "y_s", "y_zp"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_s", "y_zp"], ["y"]),
    ]
    return _save(tmp_path, nodes, inits)


def int4_block(tmp_path):
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w_q", TensorProto.INT4, [64, 32], rng.integers(-8, 7, 64 * 32).tolist())
    inits = [w, numpy_helper.from_array(np.full((2, 32), 0.01, np.float32), "w_s")]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w_dq"], axis=0, block_size=32),
        helper.make_node("MatMul", ["x", "w_dq"], ["y"], name="mm4"),
    ]
    return _save(tmp_path, nodes, inits)


def float_mm(tmp_path):
    w = numpy_helper.from_array(np.ones((64, 32), np.float32), "w")
    return _save(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["y"], name="mmf")], [w])


def _check(path, target):
    module = import_onnx(onnx.load(path))
    ctx = PassContext(target=target)
    PassManager([parse_pass("check-kernels")], ctx=ctx).run(module)
    return module, ctx.placement.units


def test_int8_qdq_on_x86_cpu_no_fallback(tmp_path):
    module, placement = _check(int8_qdq(tmp_path), "x86-avx2")
    assert len(placement) == 1
    p = placement[0]
    assert (p["node"], p["to"], p["fallback"], p["dtypes"]) == ("mm0", "cpu", False, ["uint8", "int8", "uint8"])
    assert p["granularity"] == "tensor"


def test_int4_block_on_mali_falls_back(tmp_path):
    module, placement = _check(int4_block(tmp_path), "mali-gpu")
    (p,) = placement
    assert p["from"] == "gpu" and p["to"] == "cpu" and p["fallback"]
    assert "int4" in p["reason"] and "block 32" in p["reason"] and "no kernel on gpu -> cpu" in p["reason"]
    mm = [op for op in module.graph.ops if op.op_type == "MatMul"][0]
    assert mm.device == "cpu"
    from qc.ir.printer import print_ir
    assert "on cpu" in print_ir(module)


def test_float_matmul_on_cuda_gpu(tmp_path):
    module, placement = _check(float_mm(tmp_path), "cuda")
    (p,) = placement
    assert p["to"] == "gpu" and not p["fallback"]


def test_second_run_changes_nothing(tmp_path):
    module = import_onnx(onnx.load(float_mm(tmp_path)))
    p = parse_pass("check-kernels{target=cuda}")
    assert p.run(module, PassContext()) is True
    assert p.run(module, PassContext()) is False


def test_qc_check_json(tmp_path, capsys):
    assert main(["check", int4_block(tmp_path), "--target", "mali-gpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == "mali-gpu" and out["units"] == 1
    (f,) = out["fallbacks"]
    assert f["node"] == "mm4" and f["from"] == "gpu" and f["to"] == "cpu" and "int4" in f["reason"]


def test_qc_check_table(tmp_path, capsys):
    assert main(["check", int8_qdq(tmp_path), "--target", "x86-avx2"]) == 0
    out = capsys.readouterr().out
    assert "on cpu: 1 units, 6 ops in all" in out and "fallbacks (0)" in out
    assert "mm0" in out and "uint8 x int8 -> uint8" in out
    # 2 x 64 x 32 MACs at the QLinearMatMul-style kernel's cost 0.35
    assert "estimated cost: 1.43k (compute 1.43k + copies 0" in out


def test_qc_check_unknown_target(tmp_path, capsys):
    assert main(["check", float_mm(tmp_path), "--target", "no-such-target"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown target 'no-such-target'" in err and len(err.splitlines()) == 1


# --- the x86-avx2 table against onnxruntime's own choice --------------------------------------
_FUSED = {"QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "QLinearConv", "ConvInteger", "MatMulNBits",
          "DynamicQuantizeMatMul", "QGemm"}
_INT = {"u8": (TensorProto.UINT8, np.uint8, 128), "s8": (TensorProto.INT8, np.int8, 0)}


def _qdq_unit(path, kind, act, weight, granularity, out_q):
    """x -> Q/DQ(act) -> MatMul|Conv <- DQ(W: weight, per tensor|channel) [-> Q/DQ] -> y."""
    rng = np.random.default_rng(1)
    at, wt = _INT[act], _INT[weight]
    if kind == "MatMul":
        wshape, axis, ch, xs, ys = (16, 8), 1, 8, [2, 16], [2, 8]
    else:
        wshape, axis, ch, xs, ys = (8, 3, 3, 3), 0, 8, [1, 3, 6, 6], [1, 8, 4, 4]
    lo, hi = (0, 255) if weight == "u8" else (-127, 127)
    inits = [helper.make_tensor("xs", TensorProto.FLOAT, [], [0.05]), helper.make_tensor("xz", at[0], [], [at[2]]),
             numpy_helper.from_array(rng.integers(lo, hi, wshape).astype(wt[1]), "wq")]
    if granularity == "tensor":
        inits += [helper.make_tensor("ws", TensorProto.FLOAT, [], [0.01]), helper.make_tensor("wz", wt[0], [], [wt[2]])]
        dq_attrs = {}
    else:
        inits += [numpy_helper.from_array(np.full(ch, 0.01, np.float32), "ws"),
                  numpy_helper.from_array(np.full(ch, wt[2], wt[1]), "wz")]
        dq_attrs = {"axis": axis}
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], **dq_attrs),
             helper.make_node(kind, ["xd", "wd"], ["mm"], name="anchor")]
    if out_q:
        inits += [helper.make_tensor("ys", TensorProto.FLOAT, [], [0.2]), helper.make_tensor("yz", at[0], [], [at[2]])]
        nodes += [helper.make_node("QuantizeLinear", ["mm", "ys", "yz"], ["yq"]),
                  helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    else:
        nodes.append(helper.make_node("Relu", ["mm"], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ys)], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), path)
    return path


def _ort_fused(path, tmp_path) -> dict[str, str]:
    """onnxruntime's optimized graph (CPU EP, extended level): node name -> op type."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return {n.name: n.op_type for n in onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node}


def _agreement(path, tmp_path) -> list[tuple[str, bool, bool]]:
    """Per quantized unit: (node, check says a native integer kernel runs it, onnxruntime fused it into
    one). onnxruntime keeps the anchor's name, or prefixes it when a fusion renames it ("mm/MatMulAddFusion")."""
    _, placement = _check(path, "x86-avx2")
    fused = _ort_fused(path, tmp_path)
    rows = []
    for p in placement:
        if p["dtypes"][0] in ("float32", "float16") and p["dtypes"][1] in ("float32", "float16"):
            continue
        ort_ops = {t for name, t in fused.items() if name == p["node"] or name.startswith(p["node"] + "/")}
        rows.append((p["node"], p["kernel"] and p["status"] == "native", bool(ort_ops & _FUSED)))
    return rows


@pytest.mark.parametrize("kind", ["MatMul", "Conv"])
@pytest.mark.parametrize("act,weight", [("u8", "u8"), ("u8", "s8"), ("s8", "s8"), ("s8", "u8")])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("out_q", [True, False])
def test_x86_table_agrees_with_onnxruntime(tmp_path, kind, act, weight, granularity, out_q):
    path = _qdq_unit(str(tmp_path / "u.onnx"), kind, act, weight, granularity, out_q)
    (row,) = _agreement(path, tmp_path)
    assert row[1] == row[2], f"check says integer kernel={row[1]}, onnxruntime fused={row[2]}"


def test_x86_agrees_with_onnxruntime_on_qc_models(tmp_path):
    """The quantized MatMul / Conv units qc itself produces (w8a8 on a light CNN and an MLP; w4 on the MLP)."""
    from conftest import LIGHT_DIR, run_qc, small_mlp

    rng = np.random.default_rng(0)
    cnn = os.path.join(LIGHT_DIR, "light_squeezenet.onnx")
    g = onnx.load(cnn, load_external_data=False).graph
    (x_name,) = {i.name for i in g.input} - {t.name for t in g.initializer}
    np.savez(tmp_path / "cnn.npz", **{x_name: rng.standard_normal((2, 1, 3, 224, 224)).astype(np.float32)})
    small_mlp(str(tmp_path / "mlp.onnx"))
    np.savez(tmp_path / "mlp.npz", x=rng.standard_normal((8, 2, 4)).astype(np.float32))
    jobs = [(cnn, "cnn.npz", "w8a8"), (str(tmp_path / "mlp.onnx"), "mlp.npz", "w8a8"),
            (str(tmp_path / "mlp.onnx"), None, "w8")]
    total = 0
    for i, (model, calib, scheme) in enumerate(jobs):
        out = str(tmp_path / f"q{i}.onnx")
        args = ["compile", model, "--target", "x86-avx2", "--quant", scheme, "-o", out, "--quiet"]
        if calib:
            args += ["--calib", str(tmp_path / calib)]
        r = run_qc(*args)
        assert r.returncode == 0, r.stderr
        rows = _agreement(out, tmp_path)
        assert rows, f"no quantized units in {out}"
        total += len(rows)
        bad = [r for r in rows if r[1] != r[2]]
        assert not bad, f"{scheme} {os.path.basename(model)}: check vs onnxruntime disagree on {bad[:5]}"
    assert total >= 20


# --- what each built-in target claims for the three kinds of unit -------------------------------
# int8 x int8 per-channel MatMul with an int8 output; int4 block weight-only MatMul; float MatMul.
_CLAIMS = {
    "x86-avx2": (("cpu", "native"), ("cpu", "native"), ("cpu", "native")),
    "cuda": (("gpu", "dequantize + float"), ("gpu", "native"), ("gpu", "native")),
    "cortex-a53": (("cpu", "emulated"), ("cpu", "dequantize + float"), ("cpu", "native")),
    "cortex-a76": (("cpu", "native"), ("cpu", "dequantize + float"), ("cpu", "native")),
    "armv8.6-i8mm": (("cpu", "native"), ("cpu", "dequantize + float"), ("cpu", "native")),
    "cortex-m4": (("cpu", "native"), ("cpu", "dequantize + float"), ("cpu", "native")),
    "cortex-m55": (("cpu", "native"), ("cpu", "dequantize + float"), ("cpu", "native")),
    "ethos-u55": (("npu", "native"), ("cpu", "dequantize + float"), ("cpu", "native")),
    "ethos-u65": (("npu", "native"), ("cpu", "dequantize + float"), ("cpu", "native")),
    "ethos-u85": (("npu", "native"), ("cpu", "dequantize + float"), ("cpu", "native")),
    "mali-gpu": (("gpu", "native"), ("cpu", "dequantize + float"), ("gpu", "native")),
}


@pytest.mark.parametrize("target", sorted(_CLAIMS))
def test_builtin_target_places_the_three_kinds_of_unit(tmp_path, target):
    from qc.targets import builtin_targets

    assert sorted(builtin_targets()) == sorted(_CLAIMS)
    makers = [lambda: _qdq_unit(str(tmp_path / "q.onnx"), "MatMul", "s8", "s8", "channel", True),
              lambda: int4_block(tmp_path), lambda: float_mm(tmp_path)]
    got = []
    for make in makers:
        (p,) = _check(make(), target)[1]
        got.append((p["to"], p["status"]))
        if p["to"] != p["from"]:
            assert p["fallback"] and f"-> {p['to']}" in p["reason"]
    assert tuple(got) == _CLAIMS[target]
