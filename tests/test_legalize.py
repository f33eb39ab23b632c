"""legalize: units without a kernel on the preferred device are rewritten into forms that have one,
the rewritten model computes the same function in onnxruntime, and --fallback decides the rest."""
import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_qc
from qc.errors import QCError
from qc.frontend.onnx import import_onnx
from qc.onnx.evaluator import ort_session
from qc.onnx.writer import export_onnx
from qc.pm import PassContext, PassManager, parse_pass

K, N = 64, 32


def _mlp(tmp_path, name="mlp.onnx"):
    """x[1, 4, K] -> MatMul(W[K, N]) -> y: rank 3, so onnxruntime's MatMul+Add -> Gemm fusion stays out."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32) * 0.1, "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, N])], [w])
    path = str(tmp_path / name)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _u8_qdq(tmp_path):
    """uint8 activations and output, int8 symmetric per-channel weights (an x86-style QDQ unit)."""
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor("xs", TensorProto.FLOAT, [], [0.02]),
             helper.make_tensor("xz", TensorProto.UINT8, [], [131]),
             numpy_helper.from_array(rng.integers(-127, 127, (K, N)).astype(np.int8), "wq"),
             numpy_helper.from_array(np.full(N, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(N, np.int8), "wz"),
             helper.make_tensor("ys", TensorProto.FLOAT, [], [0.1]),
             helper.make_tensor("yz", TensorProto.UINT8, [], [120])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["mm"], name="mm"),
             helper.make_node("QuantizeLinear", ["mm", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, N])], inits)
    path = str(tmp_path / "u8.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), path)
    return path


def _int4_block(tmp_path):
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor("wq", TensorProto.INT4, [K, N], rng.integers(-8, 8, K * N).tolist()),
             numpy_helper.from_array(rng.uniform(0.005, 0.02, (K // 32, N)).astype(np.float32), "ws")]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"], axis=0, block_size=32),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, N])], inits)
    path = str(tmp_path / "i4.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), path)
    return path


def _target(tmp_path, gpu_kernels: list[tuple[str, str, str, str, str]], name="soc") -> str:
    """A user target: cpu + gpu (preferred), float32 everywhere on the cpu, the given (op, act, weight,
    out, granularity) kernels on the gpu."""
    def entry(dev, op, act, w, out, gran):
        return (f'[[kernels.{dev}]]\nop = "{op}"\nact = "{act}"\nweight = "{w}"\nout = "{out}"\n'
                f'granularity = "{gran}"\ncost = {0.2 if dev == "gpu" else 1.0}\nsource = "test"\n\n')
    text = (f'name = "{name}"\ndevices = ["cpu", "gpu"]\npreferred_device = "gpu"\ncopy_cost = 1.0\n\n'
            '[other_ops]\ngpu = ["float32", "float16", "int8", "uint8"]\ncpu = ["*"]\n\n')
    text += entry("cpu", "MatMul", "float32", "float32", "float32", "any")
    text += "".join(entry("gpu", *k) for k in gpu_kernels)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


def _legalize(path, target, fallback="allow"):
    module = import_onnx(onnx.load(path))
    ctx = PassContext(target=target)
    PassManager([parse_pass("legalize"), parse_pass(f"check-kernels{{fallback={fallback}}}")], ctx=ctx).run(module)
    return module, ctx


def _run(model, x):
    return ort_session(model).run(None, {"x": x})[0]


def _x():
    return np.random.default_rng(1).standard_normal((1, 4, K)).astype(np.float32)


def _ops(module):
    return collections.Counter(op.op_type for op in module.graph.ops)


def test_uint8_unit_becomes_int8_exactly_for_ethos_u55(tmp_path):
    path = _u8_qdq(tmp_path)
    module, ctx = _legalize(path, "ethos-u55")
    (change,) = ctx.legalized
    assert change["node"] == "mm"
    assert change["change"].startswith("uint8 -> int8") and change["change"].endswith("-> npu")
    assert ctx.placement.fallbacks == []
    out = export_onnx(module)
    zps = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer if "zp_s8" in i.name}
    assert sorted(int(v) for v in zps.values()) == [-8, 3]  # 120 - 128 and 131 - 128
    np.testing.assert_array_equal(_run(out, _x()), _run(path, _x()))  # exact


def test_int4_block_becomes_int8_block_exactly(tmp_path):
    soc = _target(tmp_path, [("MatMul", "float32", "int8", "float32", "block")])
    path = _int4_block(tmp_path)
    module, ctx = _legalize(path, soc)
    (change,) = ctx.legalized
    assert "int4 -> int8 weights (block 32, same scales, exact)" in change["change"]
    assert ctx.placement.fallbacks == []
    np.testing.assert_array_equal(_run(export_onnx(module), _x()), _run(path, _x()))


def test_int4_block_becomes_int8_per_channel(tmp_path):
    soc = _target(tmp_path, [("MatMul", "float32", "int8", "float32", "channel")])
    path = _int4_block(tmp_path)
    module, ctx = _legalize(path, soc)
    assert "re-rounded to int8 per column" in ctx.legalized[0]["change"]
    ref, got = _run(path, _x()), _run(export_onnx(module), _x())
    # 8-bit re-rounding of 4-bit values: error far below the 4-bit step
    assert np.max(np.abs(got - ref)) < 0.02 * np.max(np.abs(ref))


@pytest.mark.parametrize("scheme", ["w4", "dyn8"])
def test_lowered_units_become_float16_on_the_gpu(tmp_path, scheme):
    """MatMulNBits (w4) on mali-gpu and DynamicQuantizeLinear units (dyn8) on cuda: no GPU kernel ->
    float16 weights, activations cast to float16; the function stays within float16 rounding."""
    src = _mlp(tmp_path)
    q = str(tmp_path / f"{scheme}.onnx")
    # dyn8 --reduce-range keeps the per-tensor DynamicQuantizeLinear form (the default is per token)
    extra = ["--reduce-range"] if scheme == "dyn8" else []
    r = run_qc("compile", src, "--target", "x86-avx2", "--quant", scheme, "-o", q, "--quiet", *extra)
    assert r.returncode == 0, r.stderr
    target = "mali-gpu" if scheme == "w4" else "cuda"
    module, ctx = _legalize(q, target)
    (change,) = ctx.legalized
    assert "weights stored as float16" in change["change"] and change["change"].endswith("-> gpu")
    assert change["cost_after"] < change["cost_before"]
    assert ctx.placement.fallbacks == []
    ops = _ops(module)
    assert ops["MatMul"] == 1 and ops["Cast"] == 2 and "MatMulNBits" not in ops and "DynamicQuantizeLinear" not in ops
    out = export_onnx(module)
    assert [o.name for o in out.graph.output] == ["y"]  # the graph output keeps its name
    x = _x()
    ref_float, ref_quant, got = _run(src, x), _run(q, x), _run(out, x)
    scale = np.max(np.abs(ref_float))
    if scheme == "w4":  # same weights (4-bit values held exactly in float16), float16 arithmetic
        assert np.max(np.abs(got - ref_quant)) < 2e-3 * scale
    # the quantized weights stay: close to the quantized model's, not to the float model's bit for bit
    assert np.max(np.abs(got - ref_float)) < 0.1 * scale


def test_float32_when_the_gpu_has_only_float32(tmp_path):
    soc = _target(tmp_path, [("MatMul", "float32", "float32", "float32", "any")])
    src = _mlp(tmp_path)
    q = str(tmp_path / "w4.onnx")
    assert run_qc("compile", src, "--target", "x86-avx2", "--quant", "w4", "-o", q, "--quiet").returncode == 0
    module, ctx = _legalize(q, soc)
    assert "weights stored as float32" in ctx.legalized[0]["change"]
    np.testing.assert_allclose(_run(export_onnx(module), _x()), _run(q, _x()), rtol=1e-4, atol=1e-5)


def test_single_device_target_is_not_rewritten(tmp_path):
    """On x86 a unit without an integer kernel runs as dequantize + float: the float forms are no cheaper."""
    path = _int4_block(tmp_path)
    before = onnx.load(path)
    module, ctx = _legalize(path, "cortex-a53")
    assert ctx.legalized == []
    assert _ops(module) == collections.Counter(n.op_type for n in before.graph.node)


def test_fallback_error_lists_the_nodes(tmp_path):
    soc = _target(tmp_path, [("MatMul", "float16", "float16", "float16", "any")])
    path = _u8_qdq(tmp_path)
    # uint8 QDQ with an int8 output Q: fp16 would be a rewrite, so forbid it by a target without float
    soc2 = _target(tmp_path, [("Conv", "int8", "int8", "int8", "channel")], name="soc2")
    with pytest.raises(QCError, match=r"1 node units fall back from gpu on target soc2: mm \(MatMul uint8 x int8 "
                                      r"\(channel\): no kernel on gpu -> cpu"):
        _legalize(path, soc2, fallback="error")
    module, ctx = _legalize(path, soc2, fallback="warn")
    assert any("fallback: MatMul uint8 x int8 (channel): no kernel on gpu -> cpu" in r for r in ctx.remarks)
    module, ctx = _legalize(path, soc)  # with a float16 kernel it is rewritten
    assert ctx.placement.fallbacks == []


def test_qc_compile_fallback_error_exit_2(tmp_path):
    soc2 = _target(tmp_path, [("Conv", "int8", "int8", "int8", "channel")], name="soc2")
    out = tmp_path / "out.onnx"
    r = run_qc("compile", _u8_qdq(tmp_path), "--target", soc2, "--fallback", "error", "-o", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "1 node units fall back from gpu on target soc2: mm (" in r.stderr
    assert not out.exists()
    r = run_qc("compile", _u8_qdq(tmp_path), "--target", soc2, "-o", str(out))
    assert r.returncode == 0 and out.exists()
    assert "fallbacks (1):" in r.stdout and "mm: MatMul uint8 x int8 (channel): no kernel on gpu -> cpu" in r.stdout
