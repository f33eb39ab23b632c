"""check-kernels and `qc check`: node units placed on a target's devices, fallbacks with reasons."""
import json

import numpy as np
import onnx
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
    return module, ctx.cache["placement"]


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
    assert "on cpu (1)" in out and "fallbacks (0)" in out


def test_qc_check_unknown_target(tmp_path, capsys):
    assert main(["check", float_mm(tmp_path), "--target", "no-such-target"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown target 'no-such-target'" in err and len(err.splitlines()) == 1
