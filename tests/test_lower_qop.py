"""lower-qop: QDQ models built with onnx.helper, lowered, checked, and run next to the original.

Every lowered model passes ``onnx.checker`` (full check) and runs in onnxruntime (graph
optimizations off) beside its QDQ original. Tolerances:

* QLinearMatMul / QLinearConv outputs are integers: at most 1 step apart (the QDQ model rounds a
  float32 sum, the kernel requantizes an exact int32 sum through a float multiplier).
* Float outputs of integer products (MatMulInteger + Cast + Mul, DynamicQuantizeMatMul): the
  QDQ model sums K float32 products; the bound per element is (K + 2) * 2**-23 * xs * ws *
  sum_k |x.q - xz| * |W.q - wz|, i.e. float32 accumulation rounding, nothing else.
* MatMulNBits (accuracy_level 0): the same float32 accumulation bound over |x| @ |W|.

i8 weights with u8 activations stay within [-64, 63] where onnxruntime's x86 AVX2 u8 x i8
kernel could otherwise saturate int16 pair sums (checked separately below).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import qc
from conftest import op_counts, run_and_check
from qc.errors import QCError
from qc.onnx.evaluator import ort_session

RNG = np.random.default_rng(7)
NP = {T.UINT8: np.uint8, T.INT8: np.int8, T.UINT4: ml_dtypes.uint4, T.INT4: ml_dtypes.int4,
      T.UINT2: ml_dtypes.uint2, T.INT2: ml_dtypes.int2}


# -- building QDQ models ----------------------------------------------------------------------
def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def init(name, array, dtype=None):
    array = np.asarray(array)
    if dtype is not None and dtype in NP:
        array = array.astype(NP[dtype])
    return numpy_helper.from_array(array, name)


def model(nodes, inputs, outputs, inits, opset=21):
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                          opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m, full_check=True)
    return m


def int_range(dtype, seven_bit=False):
    info = ml_dtypes.iinfo(NP[dtype]) if dtype in (T.UINT4, T.INT4, T.UINT2, T.INT2) else np.iinfo(NP[dtype])
    lo, hi = int(info.min), int(info.max)
    if seven_bit and dtype == T.INT8:
        lo, hi = -64, 63
    return lo, hi


def weight(K, N, dtype, per_channel, name="W"):
    """@W.q [K, N] with scale/zp per tensor or per column (axis 1), and the dequantized float W."""
    lo, hi = int_range(dtype, seven_bit=True)
    q = RNG.integers(lo, hi + 1, (K, N))
    shape = (N,) if per_channel else ()
    scale = RNG.uniform(0.005, 0.02, shape).astype(np.float32)
    zp = RNG.integers(lo // 8, hi // 8 + 1, shape) if dtype == T.UINT8 else np.zeros(shape, np.int64)
    inits = [init(f"{name}.q", q, dtype), init(f"{name}.scale", scale), init(f"{name}.zp", zp, dtype)]
    node = helper.make_node("DequantizeLinear", [f"{name}.q", f"{name}.scale", f"{name}.zp"], [f"{name}.dq"],
                            **({"axis": 1} if per_channel else {}))
    return node, inits, q, scale, zp


def static_act(xdtype, x_scale=0.05, x_zp=None):
    """%x -> Q -> DQ with scalar scale / zero point."""
    if x_zp is None:
        x_zp = 128 if xdtype == T.UINT8 else 0
    inits = [init("x.scale", np.float32(x_scale)), init("x.zp", np.array(x_zp), xdtype)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x.scale", "x.zp"], ["x.q"]),
             helper.make_node("DequantizeLinear", ["x.q", "x.scale", "x.zp"], ["x.dq"])]
    return nodes, inits


def dynamic_act():
    return [helper.make_node("DynamicQuantizeLinear", ["x"], ["x.q", "x.qs", "x.qz"]),
            helper.make_node("DequantizeLinear", ["x.q", "x.qs", "x.qz"], ["x.dq"])]


def lower(m, spec="lower-qop"):
    return run_and_check(m, spec)


def run(m, feeds):
    return ort_session(m).run(None, feeds)


def fp_bound(K, a_abs, b_abs):
    """float32 accumulation rounding of K products: (K + 2) * 2**-23 * (|a| @ |b|)."""
    return (K + 2) * 2.0**-23 * (a_abs @ b_abs) + 1e-30


# -- static -----------------------------------------------------------------------------------
STATIC_QLINEAR = [(T.UINT8, T.UINT8, T.UINT8), (T.UINT8, T.INT8, T.UINT8), (T.INT8, T.INT8, T.INT8)]


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("xdt,wdt,ydt", STATIC_QLINEAR)
def test_static_matmul_with_q_becomes_qlinearmatmul(xdt, wdt, ydt, per_channel):
    K, N = 32, 6
    act_nodes, act_inits = static_act(xdt)
    wnode, winits, *_ = weight(K, N, wdt, per_channel)
    nodes = act_nodes + [wnode, helper.make_node("MatMul", ["x.dq", "W.dq"], ["y"], name="mm"),
                         helper.make_node("QuantizeLinear", ["y", "y.scale", "y.zp"], ["y.q"])]
    inits = act_inits + winits + [init("y.scale", np.float32(0.08)), init("y.zp", np.array(3), ydt)]
    m = model(nodes, [vi("x", T.FLOAT, [2, 5, K])], [vi("y.q", ydt, [2, 5, N])], inits)
    out, remarks = lower(m)
    assert op_counts(out) == {"QuantizeLinear": 1, "QLinearMatMul": 1}
    assert any("lowered to QLinearMatMul" in r for r in remarks)
    x = RNG.standard_normal((2, 5, K)).astype(np.float32) * 2
    ref, got = run(m, {"x": x})[0], run(out, {"x": x})[0]
    assert got.dtype == ref.dtype
    assert np.abs(got.astype(np.int32) - ref.astype(np.int32)).max() <= 1


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("xdt,wdt", [(T.UINT8, T.UINT8), (T.UINT8, T.INT8), (T.INT8, T.UINT8), (T.INT8, T.INT8)])
def test_static_matmul_without_q_becomes_matmulinteger(xdt, wdt, per_channel):
    K, N = 48, 5
    xs, xz = 0.04, (120 if xdt == T.UINT8 else -3)
    act_nodes, act_inits = static_act(xdt, xs, xz)
    wnode, winits, wq, ws, wz = weight(K, N, wdt, per_channel)
    nodes = act_nodes + [wnode, helper.make_node("MatMul", ["x.dq", "W.dq"], ["y"])]
    m = model(nodes, [vi("x", T.FLOAT, [3, K])], [vi("y", T.FLOAT, [3, N])], act_inits + winits)
    out, _ = lower(m)
    assert op_counts(out) == {"QuantizeLinear": 1, "MatMulInteger": 1, "Cast": 1, "Mul": 1}
    muls = [i for i in out.graph.initializer if i.name.endswith(".xw")]
    assert len(muls) == 1 and list(muls[0].dims) == ([N] if per_channel else [])  # xs * ws folded into one const
    x = RNG.standard_normal((3, K)).astype(np.float32)
    (xq,) = run(helper.make_model(helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])], "q", [vi("x", T.FLOAT, [3, K])],
        [vi("q", xdt, [3, K])], [init("s", np.float32(xs)), init("z", np.array(xz), xdt)]),
        opset_imports=[helper.make_opsetid("", 21)]), {"x": x})
    ref, got = run(m, {"x": x})[0], run(out, {"x": x})[0]
    bound = fp_bound(K, np.abs(xq.astype(np.float64) - xz), np.abs(wq - wz.astype(np.float64))) * xs * ws
    assert np.all(np.abs(got.astype(np.float64) - ref) <= bound)


def test_static_combination_without_qlinearmatmul_kernel_keeps_q():
    """u8 x i8 -> i8 has no QLinearMatMul kernel on CPU: MatMulInteger form, the QuantizeLinear stays."""
    K, N = 16, 4
    act_nodes, act_inits = static_act(T.UINT8)
    wnode, winits, *_ = weight(K, N, T.INT8, True)
    nodes = act_nodes + [wnode, helper.make_node("MatMul", ["x.dq", "W.dq"], ["y"]),
                         helper.make_node("QuantizeLinear", ["y", "y.scale", "y.zp"], ["y.q"])]
    inits = act_inits + winits + [init("y.scale", np.float32(0.05)), init("y.zp", np.array(0), T.INT8)]
    m = model(nodes, [vi("x", T.FLOAT, [2, K])], [vi("y.q", T.INT8, [2, N])], inits)
    out, remarks = lower(m)
    assert op_counts(out) == {"QuantizeLinear": 2, "MatMulInteger": 1, "Cast": 1, "Mul": 1}
    assert any("no QLinearMatMul for (u8, i8, i8)" in r for r in remarks)
    x = RNG.standard_normal((2, K)).astype(np.float32)
    assert np.abs(run(out, {"x": x})[0].astype(int) - run(m, {"x": x})[0].astype(int)).max() <= 1


def test_quantized_graph_input_and_output_name_kept():
    """DQ(x_q) with x_q a graph input; the QLinearMatMul result keeps the output's name."""
    K, N = 8, 3
    wnode, winits, *_ = weight(K, N, T.UINT8, False)
    nodes = [helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["x.dq"]), wnode,
             helper.make_node("MatMul", ["x.dq", "W.dq"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["out"])]
    inits = winits + [init("xs", np.float32(0.1)), init("xz", np.array(7), T.UINT8),
                      init("ys", np.float32(0.2)), init("yz", np.array(100), T.UINT8)]
    m = model(nodes, [vi("xq", T.UINT8, [4, K])], [vi("out", T.UINT8, [4, N])], inits)
    out, _ = lower(m)
    assert op_counts(out) == {"QLinearMatMul": 1}
    assert [o.name for o in out.graph.output] == ["out"]
    xq = RNG.integers(0, 256, (4, K)).astype(np.uint8)
    assert np.abs(run(out, {"xq": xq})[0].astype(int) - run(m, {"xq": xq})[0].astype(int)).max() <= 1


def test_shared_activation_dq_lowers_every_matmul_and_stays_for_other_users():
    K, N = 16, 4
    act_nodes, act_inits = static_act(T.UINT8)
    w1, i1, *_ = weight(K, N, T.INT8, True, "A")
    w2, i2, *_ = weight(K, N, T.UINT8, False, "B")
    nodes = act_nodes + [w1, w2, helper.make_node("MatMul", ["x.dq", "A.dq"], ["y1"]),
                         helper.make_node("MatMul", ["x.dq", "B.dq"], ["y2"]),
                         helper.make_node("Relu", ["x.dq"], ["r"])]
    m = model(nodes, [vi("x", T.FLOAT, [2, K])], [vi("y1", T.FLOAT, [2, N]), vi("y2", T.FLOAT, [2, N]),
                                                 vi("r", T.FLOAT, [2, K])], act_inits + i1 + i2)
    out, _ = lower(m)
    c = op_counts(out)
    assert c["MatMulInteger"] == 2 and c["DequantizeLinear"] == 1 and "MatMul" not in c
    x = RNG.standard_normal((2, K)).astype(np.float32)
    for got, ref in zip(run(out, {"x": x}), run(m, {"x": x})):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


# -- dynamic ----------------------------------------------------------------------------------
def dynamic_model(K, N, wdt, per_channel, batch=(2, 3)):
    wnode, winits, wq, ws, wz = weight(K, N, wdt, per_channel)
    nodes = dynamic_act() + [wnode, helper.make_node("MatMul", ["x.dq", "W.dq"], ["y"], name="mm")]
    return model(nodes, [vi("x", T.FLOAT, [*batch, K])], [vi("y", T.FLOAT, [*batch, N])], winits), (wq, ws, wz)


def dynamic_bound(x, K, w):
    """float32 accumulation bound for DynamicQuantizeLinear(x) @ W, both as integers times scales."""
    wq, ws, wz = w
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    xs = (hi - lo) / 255
    # |x.q - xz| * xs <= |x| + xs / 2 (rounding), |W.q - wz| * ws = |W|
    return fp_bound(K, np.abs(x.astype(np.float64)) + xs, np.abs(wq - wz.astype(np.float64)) * ws)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("wdt", [T.UINT8, T.INT8])
def test_dynamic_matmul_contrib_form(wdt, per_channel):
    K, N = 64, 7
    m, w = dynamic_model(K, N, wdt, per_channel)
    out, remarks = lower(m)
    assert op_counts(out) == {"DynamicQuantizeMatMul": 1}
    assert any(o.domain == "com.microsoft" and o.version == 1 for o in out.opset_import)
    assert any("DynamicQuantizeMatMul" in r for r in remarks)
    x = RNG.standard_normal((2, 3, K)).astype(np.float32)
    ref, got = run(m, {"x": x})[0], run(out, {"x": x})[0]
    assert np.all(np.abs(got.astype(np.float64) - ref) <= dynamic_bound(x, K, w))


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_matmul_standard_form(per_channel):
    K, N = 40, 5
    m, w = dynamic_model(K, N, T.INT8, per_channel)
    out, _ = lower(m, "lower-qop{form=standard}")
    assert op_counts(out) == {"DynamicQuantizeLinear": 1, "MatMulInteger": 1, "Cast": 1, "Mul": 2}
    assert not any(o.domain == "com.microsoft" for o in out.opset_import)
    x = RNG.standard_normal((2, 3, K)).astype(np.float32)
    ref, got = run(m, {"x": x})[0], run(out, {"x": x})[0]
    assert np.all(np.abs(got.astype(np.float64) - ref) <= dynamic_bound(x, K, w))


@pytest.mark.parametrize("form", ["contrib", "standard"])
def test_dynamic_gemm_with_bias_and_transposed_weight(form):
    K, N = 24, 6
    q = RNG.integers(-64, 64, (N, K))  # transB = 1: W stored [N, K], per-channel along axis 0
    ws = RNG.uniform(0.01, 0.02, (N,)).astype(np.float32)
    bias = RNG.standard_normal(N).astype(np.float32)
    nodes = dynamic_act() + [helper.make_node("DequantizeLinear", ["W.q", "W.scale", "W.zp"], ["W.dq"], axis=0),
                             helper.make_node("Gemm", ["x.dq", "W.dq", "C"], ["y"], transB=1, beta=0.5)]
    inits = [init("W.q", q, T.INT8), init("W.scale", ws), init("W.zp", np.zeros(N), T.INT8), init("C", bias)]
    m = model(nodes, [vi("x", T.FLOAT, [4, K])], [vi("y", T.FLOAT, [4, N])], inits)
    out, _ = lower(m, f"lower-qop{{form={form}}}")
    c = op_counts(out)
    assert "Gemm" not in c and "DequantizeLinear" not in c
    assert c.get("DynamicQuantizeMatMul" if form == "contrib" else "MatMulInteger") == 1
    x = RNG.standard_normal((4, K)).astype(np.float32)
    ref, got = run(m, {"x": x})[0], run(out, {"x": x})[0]
    bound = dynamic_bound(x, K, (q.T, ws, np.zeros(N))) + 2.0**-22 * np.abs(0.5 * bias)
    assert np.all(np.abs(got.astype(np.float64) - ref) <= bound)


def test_static_gemm_with_bias():
    K, N = 16, 4
    act_nodes, act_inits = static_act(T.UINT8)
    wnode, winits, *_ = weight(K, N, T.UINT8, True)
    nodes = act_nodes + [wnode, helper.make_node("Gemm", ["x.dq", "W.dq", "C"], ["y"])]
    m = model(nodes, [vi("x", T.FLOAT, [3, K])], [vi("y", T.FLOAT, [3, N])],
              act_inits + winits + [init("C", RNG.standard_normal(N).astype(np.float32))])
    out, _ = lower(m)
    assert op_counts(out) == {"QuantizeLinear": 1, "MatMulInteger": 1, "Cast": 1, "Mul": 1, "Add": 1}
    x = RNG.standard_normal((3, K)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(m, {"x": x})[0], rtol=1e-5, atol=1e-5)


# -- MatMulNBits ------------------------------------------------------------------------------
def block_weight(K, N, dtype, bs, symmetric):
    lo, hi = int_range(dtype)
    q = RNG.integers(lo, hi + 1, (K, N))
    blocks = -(-K // bs)
    scale = RNG.uniform(0.01, 0.05, (blocks, N)).astype(np.float32)
    zp = np.full((blocks, N), 0 if dtype in (T.INT4, T.INT8, T.INT2) else (hi + 1) // 2) if symmetric \
        else RNG.integers(lo, hi + 1, (blocks, N))
    inits = [init("W.q", q, dtype), init("W.scale", scale), init("W.zp", zp, dtype)]
    node = helper.make_node("DequantizeLinear", ["W.q", "W.scale", "W.zp"], ["W.dq"], axis=0, block_size=bs)
    w = (q - np.repeat(zp, bs, 0)[:K]) * np.repeat(scale, bs, 0)[:K].astype(np.float64)
    return node, inits, w


@pytest.mark.parametrize("dtype,K,bs,symmetric", [
    (T.UINT4, 64, 32, False), (T.INT4, 64, 32, True), (T.INT4, 80, 32, False), (T.UINT4, 48, 16, True),
    (T.UINT8, 64, 32, False), (T.INT8, 96, 64, True), (T.UINT2, 64, 16, False),
])
def test_blockwise_weight_becomes_matmulnbits(dtype, K, bs, symmetric):
    N = 6
    node, inits, w = block_weight(K, N, dtype, bs, symmetric)
    m = model([node, helper.make_node("MatMul", ["x", "W.dq"], ["y"])], [vi("x", T.FLOAT, [2, 3, K])],
              [vi("y", T.FLOAT, [2, 3, N])], inits, opset=25 if dtype == T.UINT2 else 21)
    out, remarks = lower(m)
    assert op_counts(out) == {"MatMulNBits": 1}
    (nb,) = out.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in nb.attribute}
    bits = {T.UINT4: 4, T.INT4: 4, T.UINT8: 8, T.INT8: 8, T.UINT2: 2}[dtype]
    blocks = -(-K // bs)
    assert attrs == {"K": K, "N": N, "bits": bits, "block_size": bs, "accuracy_level": 0}
    shapes = {i.name: list(i.dims) for i in out.graph.initializer}
    assert shapes[nb.input[1]] == [N, blocks, bs * bits // 8]
    assert shapes[nb.input[2]] == [N, blocks]
    if symmetric:  # every zero point is the default 2^(bits-1): no zero_points input
        assert len(nb.input) == 3
    else:
        assert shapes[nb.input[3]] == [N, -(-blocks * bits // 8)]
    assert [i.name for i in out.graph.initializer if i.name.startswith("W.") and "nbits" not in i.name] == []
    x = RNG.standard_normal((2, 3, K)).astype(np.float32)
    ref, got = run(m, {"x": x})[0], run(out, {"x": x})[0]
    assert np.all(np.abs(got.astype(np.float64) - ref) <= fp_bound(K, np.abs(x.astype(np.float64)), np.abs(w)))


def test_matmulnbits_accuracy_level_4_and_w4a8():
    """accuracy_level 4 quantizes the input to int8 per block: error within half an int8 step per block."""
    K, N, bs = 64, 8, 32
    node, inits, w = block_weight(K, N, T.INT4, bs, False)
    plain = model([node, helper.make_node("MatMul", ["x", "W.dq"], ["y"])], [vi("x", T.FLOAT, [5, K])],
                  [vi("y", T.FLOAT, [5, N])], inits)
    w4a8 = model(dynamic_act() + [node, helper.make_node("MatMul", ["x.dq", "W.dq"], ["y"])],
                 [vi("x", T.FLOAT, [5, K])], [vi("y", T.FLOAT, [5, N])], inits)
    x = RNG.standard_normal((5, K)).astype(np.float32)
    exact = x.astype(np.float64) @ w
    # per block, int8 symmetric: |x - x~| <= absmax(block) / 127 / 2 per element
    step = np.abs(x).reshape(5, K // bs, bs).max(-1) / 127
    bound = (np.repeat(step, bs, 1) / 2) @ np.abs(w) * 1.01 + fp_bound(K, np.abs(x), np.abs(w))
    for m, spec in ((plain, "lower-qop{accuracy-level=4}"), (w4a8, "lower-qop")):
        out, remarks = lower(m, spec)
        assert op_counts(out) == {"MatMulNBits": 1}
        attrs = {a.name: helper.get_attribute_value(a) for a in out.graph.node[0].attribute}
        assert attrs["accuracy_level"] == 4
        assert np.all(np.abs(run(out, {"x": x})[0] - exact) <= bound)
    assert any("w4a8" in r for r in remarks)


def test_gemm_blockwise_with_bias_uses_matmulnbits_bias():
    K, N, bs = 32, 4, 16
    node, inits, w = block_weight(K, N, T.UINT4, bs, False)
    bias = RNG.standard_normal(N).astype(np.float32)
    m = model([node, helper.make_node("Gemm", ["x", "W.dq", "C"], ["y"])], [vi("x", T.FLOAT, [3, K])],
              [vi("y", T.FLOAT, [3, N])], inits + [init("C", bias)])
    out, _ = lower(m)
    assert op_counts(out) == {"MatMulNBits": 1} and len(out.graph.node[0].input) == 6
    x = RNG.standard_normal((3, K)).astype(np.float32)
    bound = fp_bound(K, np.abs(x), np.abs(w)) + 2.0**-22 * np.abs(bias)
    assert np.all(np.abs(run(out, {"x": x})[0].astype(np.float64) - run(m, {"x": x})[0]) <= bound)


# -- Conv -------------------------------------------------------------------------------------
@pytest.mark.parametrize("xdt,wdt,per_channel", [(T.UINT8, T.INT8, True), (T.UINT8, T.UINT8, False),
                                                 (T.INT8, T.INT8, True)])
def test_conv_with_q_becomes_qlinearconv(xdt, wdt, per_channel):
    C, Cout = 3, 4
    act_nodes, act_inits = static_act(xdt, 0.03)
    lo, hi = int_range(wdt, seven_bit=True)
    wq = RNG.integers(lo, hi + 1, (Cout, C, 3, 3))
    shape = (Cout,) if per_channel else ()
    ws = RNG.uniform(0.005, 0.01, shape).astype(np.float32)
    wz = RNG.integers(0, 5, shape) if wdt == T.UINT8 else np.zeros(shape, np.int64)
    bias = RNG.standard_normal(Cout).astype(np.float32)
    nodes = act_nodes + [
        helper.make_node("DequantizeLinear", ["W.q", "W.scale", "W.zp"], ["W.dq"],
                         **({"axis": 0} if per_channel else {})),
        helper.make_node("Conv", ["x.dq", "W.dq", "B"], ["y"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["y.q"])]
    inits = act_inits + [init("W.q", wq, wdt), init("W.scale", ws), init("W.zp", wz, wdt), init("B", bias),
                         init("ys", np.float32(0.05)), init("yz", np.array(10), xdt)]
    m = model(nodes, [vi("x", T.FLOAT, [1, C, 6, 6])], [vi("y.q", xdt, [1, Cout, 6, 6])], inits)
    out, remarks = lower(m)
    assert op_counts(out) == {"QuantizeLinear": 1, "QLinearConv": 1}
    bq = [i for i in out.graph.initializer if i.name == "B.q"]
    assert bq and bq[0].data_type == T.INT32
    x = RNG.standard_normal((1, C, 6, 6)).astype(np.float32)
    assert np.abs(run(out, {"x": x})[0].astype(int) - run(m, {"x": x})[0].astype(int)).max() <= 1


# -- left alone -------------------------------------------------------------------------------
def test_weight_not_constant_stays_qdq_with_remark():
    K, N = 8, 3
    nodes = dynamic_act() + [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["W.dq"]),
                             helper.make_node("MatMul", ["x.dq", "W.dq"], ["y"], name="mm")]
    m = model(nodes, [vi("x", T.FLOAT, [2, K]), vi("wq", T.INT8, [K, N])], [vi("y", T.FLOAT, [2, N])],
              [init("ws", np.float32(0.1)), init("wz", np.array(0), T.INT8)])
    out, remarks = lower(m)
    assert op_counts(out) == op_counts(m)
    assert any("'mm'" in r and "not a constant" in r for r in remarks)


def test_per_row_weight_zero_point_stays_qdq():
    """Per-channel along K (axis 0 of [K, N]): MatMulInteger has no per-row B zero point."""
    K, N = 8, 3
    nodes = dynamic_act() + [helper.make_node("DequantizeLinear", ["W.q", "W.scale", "W.zp"], ["W.dq"], axis=0),
                             helper.make_node("MatMul", ["x.dq", "W.dq"], ["y"], name="mm")]
    inits = [init("W.q", RNG.integers(-60, 60, (K, N)), T.INT8), init("W.scale", np.full(K, 0.1, np.float32)),
             init("W.zp", np.arange(K) % 3, T.INT8)]
    m = model(nodes, [vi("x", T.FLOAT, [2, K])], [vi("y", T.FLOAT, [2, N])], inits)
    out, remarks = lower(m)
    assert op_counts(out) == op_counts(m)
    assert any("per channel along K" in r for r in remarks)


def test_block_size_not_power_of_two_stays_qdq():
    node, inits, _ = block_weight(48, 4, T.UINT4, 24, False)
    m = model([node, helper.make_node("MatMul", ["x", "W.dq"], ["y"], name="mm")], [vi("x", T.FLOAT, [2, 48])],
              [vi("y", T.FLOAT, [2, 4])], inits)
    out, remarks = lower(m)
    assert op_counts(out) == op_counts(m)
    assert any("power of two >= 16, not 24" in r for r in remarks)


def test_unknown_input_rank_stays_qdq():
    node, inits, _ = block_weight(32, 4, T.UINT4, 16, False)
    nodes = [node, helper.make_node("Reshape", ["x", "shape"], ["r"]),  # a shape of unknown length: rank unknown
             helper.make_node("MatMul", ["r", "W.dq"], ["y"], name="mm")]
    m = model(nodes, [vi("x", T.FLOAT, [2, 32]), vi("shape", T.INT64, [None])], [vi("y", T.FLOAT, [None, None])], inits)
    out, remarks = lower(m)
    assert op_counts(out) == op_counts(m)
    assert any("known rank" in r for r in remarks)


def test_dq_in_subgraph_is_left_alone():
    K, N = 8, 3
    wnode, winits, *_ = weight(K, N, T.INT8, False)
    body = helper.make_graph(dynamic_act() + [helper.make_node("MatMul", ["x.dq", "W.dq"], ["y_then"])], "then", [],
                             [vi("y_then", T.FLOAT, [2, N])])
    other = helper.make_graph([helper.make_node("MatMul", ["x", "W.dq"], ["y_else"])], "else", [],
                              [vi("y_else", T.FLOAT, [2, N])])
    nodes = [wnode, helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=other)]
    m = model(nodes, [vi("x", T.FLOAT, [2, K]), vi("c", T.BOOL, [])], [vi("y", T.FLOAT, [2, N])], winits)
    out, _ = lower(m)
    assert op_counts(out) == op_counts(m)
    then = next(a.g for a in out.graph.node[-1].attribute if a.name == "then_branch")
    assert [n.op_type for n in then.node] == ["DynamicQuantizeLinear", "DequantizeLinear", "MatMul"]


def test_ops_option_selects_rewrites_and_bad_options_are_errors():
    m, _ = dynamic_model(16, 4, T.INT8, True)
    out, _ = lower(m, "lower-qop{ops=nbits,conv}")
    assert op_counts(out) == op_counts(m)
    with pytest.raises(QCError, match="unknown rewrite 'mystery'"):
        lower(m, "lower-qop{ops=mystery}")
    with pytest.raises(QCError, match="accuracy-level must be 0..4"):
        lower(m, "lower-qop{accuracy-level=7}")


# -- onnxruntime constraints the pass encodes ---------------------------------------------------
def test_qlinearmatmul_cpu_kernels_are_the_listed_combinations():
    from qc.ir.dtypes import DType
    from qc.passes.lower_qop import QLINEAR_MATMUL_TYPES

    for xdt in (T.UINT8, T.INT8):
        for wdt in (T.UINT8, T.INT8):
            for ydt in (T.UINT8, T.INT8):
                node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
                inits = [init("as", np.float32(0.1)), init("az", np.array(0), xdt), init("b", np.ones((4, 2)), wdt),
                         init("bs", np.full(2, 0.1, np.float32)), init("bz", np.zeros(2), wdt),
                         init("ys", np.float32(0.1)), init("yz", np.array(0), ydt)]
                m = model([node], [vi("a", xdt, [1, 4])], [vi("y", ydt, [1, 2])], inits)
                try:
                    ort_session(m)
                    supported = True
                except Exception as e:  # onnxruntime raises its own exception types
                    assert "NOT_IMPLEMENTED" in str(e)
                    supported = False
                assert supported == ((DType(xdt), DType(wdt), DType(ydt)) in QLINEAR_MATMUL_TYPES)


def test_u8_i8_saturation_is_flagged():
    K, N = 16, 4
    q = RNG.integers(-128, 128, (K, N))
    nodes = dynamic_act() + [helper.make_node("DequantizeLinear", ["W.q", "W.scale"], ["W.dq"]),
                             helper.make_node("MatMul", ["x.dq", "W.dq"], ["y"], name="mm")]
    m = model(nodes, [vi("x", T.FLOAT, [2, K])], [vi("y", T.FLOAT, [2, N])],
              [init("W.q", q, T.INT8), init("W.scale", np.float32(0.01))])
    out, remarks = lower(m)
    assert op_counts(out) == {"DynamicQuantizeMatMul": 1}
    assert any("can saturate" in r for r in remarks)


def test_shared_matcher_rewrite_mode_stays_in_the_graph():
    """lower-qop matches with ``qc.quant.units.node_unit(op, graph=g)``: a DQ of an enclosing graph
    is no member (check-kernels, matching without a graph, still sees it); the dynamic source and
    the output Q are found in the same graph."""
    from qc.quant.units import node_unit

    wq = np.arange(12, dtype=np.int8).reshape(4, 3)
    inits = [init("W.q", wq), init("W.scale", np.float32(0.1))]
    wdq = helper.make_node("DequantizeLinear", ["W.q", "W.scale"], ["W.dq"])
    body = helper.make_graph([helper.make_node("MatMul", ["x.dq", "W.dq"], ["y_then"], name="inner")], "then", [],
                             [vi("y_then", T.FLOAT, [2, 3])])
    other = helper.make_graph([helper.make_node("Identity", ["y"], ["y_else"])], "else", [],
                              [vi("y_else", T.FLOAT, [2, 3])])
    nodes = dynamic_act() + [wdq, helper.make_node("MatMul", ["x.dq", "W.dq"], ["y"], name="outer"),
                             helper.make_node("If", ["c"], ["z"], then_branch=body, else_branch=other)]
    m = model(nodes, [vi("x", T.FLOAT, [2, 4]), vi("c", T.BOOL, [])], [vi("z", T.FLOAT, [2, 3])], inits)
    module = qc.import_onnx(m)
    outer = next(op for op in module.graph if op.op_type == "MatMul")
    branches = next(op for op in module.graph if op.op_type == "If").subgraphs()
    inner = next(op for b in branches for op in b if op.op_type == "MatMul")
    u = node_unit(outer, graph=module.graph)
    assert u.act_dq is not None and u.weight_dq is not None and u.act_dynamic.op_type == "DynamicQuantizeLinear"
    assert (u.act, u.weight, u.granularity, u.zero_point) == ("uint8", "int8", "tensor", "symmetric")
    seen_from_inside = node_unit(inner, graph=inner.graph)
    assert seen_from_inside.act_dq is None and seen_from_inside.weight_dq is None
    assert node_unit(inner).weight_dq is not None
