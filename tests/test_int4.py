"""int4 weights: the scale / clip search, GPTQ with act-order and with the search, AWQ + GPTQ, and the
MatMulNBits form (any block size 16..256, per channel, K not a multiple of the block) run in
onnxruntime against numpy, and the symmetric block-32 layout the Arm W4A8 kernels read."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qc
from qc.backends.c.lower_w4 import _weights as nbits_weights
from qc.backends.c.packing_s4 import matmul_s4a8_ref
from qc.calib.stats import CalibrationStats, TensorStats
from qc.onnx.evaluator import ort_session
from qc.pm import PassContext, PassManager
from qc.quant import schemes
from qc.quant.weight_algos import (
    IntGrid,
    _dequantize_kn,
    dequantize,
    find_params,
    gptq,
    quantize_rtn,
    quantize_search,
    quantize_with,
    search_params,
)


def outlier_layer(seed: int, k: int = 160, n: int = 48, rows: int = 1024, outliers: int = 6):
    """A weight [K, N] and inputs whose few outlier channels carry 30x the energy of the rest."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    x = rng.standard_normal((rows, k))
    x[:, rng.choice(k, outliers, replace=False)] *= 30.0
    return w, x.astype(np.float32)


def rel_output_error(x, w, w_hat) -> float:
    x = x.astype(np.float64)
    return float(np.linalg.norm(x @ (w_hat.astype(np.float64) - w)) / np.linalg.norm(x @ w.astype(np.float64)))


def weighted_error(w, w_hat, d) -> float:
    return float(np.sum(d[:, None] * (w_hat.astype(np.float64) - w) ** 2))


GRIDS = [("block", True, True), ("block", False, False), ("channel", True, True), ("channel", False, False)]


# -- the search ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("granularity,symmetric,signed", GRIDS)
def test_search_beats_rtn_on_outlier_channels(seed, granularity, symmetric, signed):
    w, x = outlier_layer(seed)
    x_test = outlier_layer(seed)[1][::-1].copy() * np.float32(1.1)        # the same channels, other rows
    d = np.sum(x.astype(np.float64) ** 2, axis=0)
    rtn = _dequantize_kn(*quantize_rtn(w, 4, granularity, 32, symmetric, signed), granularity, 32)
    q, scale, zp = quantize_search(w, d, 4, granularity, 32, symmetric, signed)
    got = _dequantize_kn(q, scale, zp, granularity, 32)
    assert weighted_error(w, got, d) <= weighted_error(w, rtn, d)
    for xs in (x, x_test):
        assert rel_output_error(xs, w, got) < 0.85 * rel_output_error(xs, w, rtn)
    assert np.all(scale > 0) and scale.dtype == np.float32
    grid = IntGrid(4, symmetric, signed)
    assert q.min() >= grid.storage_min and q.max() <= grid.storage_max


@pytest.mark.parametrize("granularity,symmetric,signed", GRIDS)
def test_search_never_worse_than_rtn_per_block_and_codes_are_round_to_nearest(granularity, symmetric, signed):
    """Per block and column the weighted error is at most RTN's (r = 1 is a candidate and wins ties),
    and the codes are exactly QuantizeLinear's for the chosen parameters (what the pass stores)."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((70, 9)) * rng.uniform(0.01, 1, 9)).astype(np.float32)
    w[:, 2] = 0.0
    d = rng.uniform(0.0, 4.0, 70)
    grid = IntGrid(4, symmetric, signed)
    scale, zp = search_params(w, grid, granularity, 32, d)
    s0, z0 = find_params(w, grid, granularity, 32)
    assert scale.shape == s0.shape and zp.shape == z0.shape

    def per_block(s, z):
        from qc.quant.weight_algos import expand_params
        se, ze = expand_params(s, w.shape, granularity, 32), expand_params(z, w.shape, granularity, 32)
        e = d[:, None] * (w - (quantize_with(w, se, ze, grid) - ze) * se.astype(np.float64)) ** 2
        bs = 32 if granularity == "block" else 70
        return np.add.reduceat(e, np.arange(0, 70, bs), axis=0)

    assert np.all(per_block(scale, zp) <= per_block(s0, z0) * (1 + 1e-12) + 1e-30)
    q, s, z = quantize_search(w, d, 4, granularity, 32, symmetric, signed)
    assert np.array_equal(s, scale) and np.array_equal(z.astype(np.int64), zp)
    assert np.all(_dequantize_kn(q, s, z, granularity, 32)[:, 2] == 0.0)


def test_search_of_uniform_importance_lowers_plain_mse():
    w = np.random.default_rng(3).standard_normal((256, 32)).astype(np.float32)   # Gaussian: RTN's clip is too wide
    rtn = _dequantize_kn(*quantize_rtn(w, 4, "block", 32, True, True), "block", 32)
    got = _dequantize_kn(*quantize_search(w, None, 4, "block", 32, True, True), "block", 32)
    assert np.mean((got - w) ** 2) < 0.9 * np.mean((rtn - w) ** 2)


# -- GPTQ: act-order, search ---------------------------------------------------------------------
@pytest.mark.parametrize("granularity,symmetric,signed", GRIDS)
def test_gptq_act_order_and_search_beat_rtn_on_outlier_channels(granularity, symmetric, signed):
    w, x = outlier_layer(2)
    h = x.astype(np.float64).T @ x
    rtn = rel_output_error(x, w, _dequantize_kn(*quantize_rtn(w, 4, granularity, 32, symmetric, signed),
                                                granularity, 32))
    plain = rel_output_error(x, w, _dequantize_kn(*gptq(w, h, 4, granularity, 32, symmetric, signed),
                                                  granularity, 32))
    for kw in ({"act_order": True}, {"search": True}, {"act_order": True, "search": True}):
        got = rel_output_error(x, w, _dequantize_kn(*gptq(w, h, 4, granularity, 32, symmetric, signed, **kw),
                                                    granularity, 32))
        assert got < 0.95 * rtn, (kw, got, rtn)
        if kw.get("search"):
            assert got < plain, (kw, got, plain)


def test_gptq_act_order_keeps_block_scales_in_the_natural_layout():
    """Static groups: the block parameters are the plain range's of the original rows in their own
    order (not the permuted one), so the codes dequantize through ONNX DequantizeLinear
    (onnxruntime) to numpy's dequantization, and the walk visits rows in decreasing H[k, k]."""
    w, x = outlier_layer(4, k=96, n=16)
    h = x.astype(np.float64).T @ x
    grid = IntGrid(4, False, False)
    q, scale, zp = gptq(w, h, 4, "block", 32, False, False, act_order=True)
    s0, z0 = find_params(w, grid, "block", 32)
    assert np.array_equal(scale, s0) and np.array_equal(zp.astype(np.int64), z0)
    q_plain, _, _ = gptq(w, h, 4, "block", 32, False, False)
    assert not np.array_equal(q, q_plain)          # the order matters: another walk
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=0, block_size=32)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(w.shape))],
                              [helper.make_tensor("q", TensorProto.UINT4, q.shape, q.reshape(-1).tolist()),
                               numpy_helper.from_array(scale, "s"),
                               helper.make_tensor("z", TensorProto.UINT4, zp.shape, zp.reshape(-1).tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    (got,) = ort_session(model, optimize=False).run(None, {})
    assert np.array_equal(got, dequantize(q, scale, zp, axis=0, block_size=32))


# -- the pass and MatMulNBits in onnxruntime -----------------------------------------------------
def matmul_model(w: np.ndarray) -> onnx.ModelProto:
    k, n = w.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="proj")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
                              [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def calibration(x: np.ndarray, rows: int = 0) -> CalibrationStats:
    s = TensorStats(hessian_enabled=True, max_rows=rows)
    for batch in np.array_split(x, 4):
        s.update(batch)
    return CalibrationStats(tensors={"x": s}, samples=4)


def compile_w4(w: np.ndarray, x: np.ndarray, options: str):
    """quantize-weights{bits=4,...} then lower-qop on calibration stats of x: (module before
    lowering, model, summary)."""
    ctx = PassContext(calibration=calibration(x, rows=512))
    module = qc.import_onnx(matmul_model(w))
    PassManager.parse(f"quantize-weights{{bits=4,{options}}}", ctx=ctx).run(module)
    before = qc.import_onnx(qc.export_onnx(module))
    summary = next(op for op in module.graph if "qc.quant" in op.meta).meta["qc.quant"]
    PassManager.parse("lower-qop", ctx=ctx).run(module)
    out = qc.export_onnx(module)
    onnx.checker.check_model(out, full_check=True)
    return before, out, summary


def stored(module, k: int, n: int):
    """(q, scale, zp, attrs) of the weight's DequantizeLinear in a quantized module."""
    dq = next(op for op in module.graph if op.op_type == "DequantizeLinear")
    q, s, z = (v.const.numpy() for v in dq.operands)
    return q, s, z, {name: dq.attr(name) for name in ("axis", "block_size") if dq.attr(name) is not None}


def effective_weight(module, k: int, n: int) -> np.ndarray:
    q, s, z, attrs = stored(module, k, n)
    return dequantize(q, s, z, attrs.get("axis"), attrs.get("block_size"))


@pytest.mark.parametrize("k,bs", [(70, 16), (70, 32), (100, 64), (200, 128), (300, 256), (45, 32), (70, 48)])
@pytest.mark.parametrize("options", ["granularity=block,symmetric=true,algo=gptq,search=true,act-order=true",
                                     "granularity=block,symmetric=false,algo=rtn,search=true"])
def test_any_block_size_and_k_not_a_multiple_run_in_onnxruntime_as_numpy(k, bs, options):
    """Powers of two 16..256 become MatMulNBits (padded to whole blocks with the zero point, as the C
    backend unpacks them); 48 stays a blocked DequantizeLinear. Both agree with numpy's
    x @ dequantize(q) within float32 accumulation."""
    w, x = outlier_layer(k, k=k, n=24, rows=256)
    before, out, _ = compile_w4(w, x, f"{options},block-size={bs}")
    types = [n.op_type for n in out.graph.node]
    assert types == (["MatMulNBits"] if bs & (bs - 1) == 0 else ["DequantizeLinear", "MatMul"])
    wd = effective_weight(before, k, w.shape[1]).astype(np.float64)
    q, s, z, attrs = stored(before, k, 24)
    assert attrs == {"axis": 0, "block_size": bs} and s.shape == (-(-k // bs), 24)
    xe = x[:16]
    (got,) = ort_session(out, optimize=False).run(None, {"x": xe})
    ref = xe.astype(np.float64) @ wd
    bound = (k + 2) * 2.0 ** -23 * (np.abs(xe.astype(np.float64)) @ np.abs(wd)) + 1e-30
    assert np.all(np.abs(got - ref) <= bound)
    if bs & (bs - 1) == 0:   # the C backend's decoding of the MatMulNBits operands gives the same codes
        nb = next(op for op in qc.import_onnx(out).graph if op.op_type == "MatMulNBits")
        cq, cs, cz = nbits_weights(nb, k, 24, bs)
        signed = str(q.dtype).startswith("int")
        offset = 8 if signed else 0
        assert np.array_equal(cq.astype(np.int64), q.astype(np.int64) + offset)
        assert np.array_equal(cs, s)
        if cz is None:
            assert np.all(z.astype(np.int64) == 0) and signed
        else:
            assert np.array_equal(cz.astype(np.int64), z.astype(np.int64) + offset)


def test_symmetric_block32_is_the_arm_w4a8_layout():
    """Symmetric int4 blocks of 32 become a MatMulNBits without zero points (all 8): exactly what the
    Arm W4A8 kernels take (zp None), and their bit-exact numpy model matches onnxruntime's
    accuracy_level 4 result within the int8 activation rounding."""
    k, n = 100, 20
    w, x = outlier_layer(9, k=k, n=n, rows=256)
    before, out, _ = compile_w4(w, x, "granularity=block,symmetric=true,algo=rtn,search=true,block-size=32")
    (nb_node,) = out.graph.node
    assert nb_node.op_type == "MatMulNBits" and len(nb_node.input) == 3
    nb = next(op for op in qc.import_onnx(out).graph if op.op_type == "MatMulNBits")
    cq, cs, cz = nbits_weights(nb, k, n, 32)
    assert cz is None
    xe = x[:8]
    c_out = matmul_s4a8_ref(xe, cq, cs, None)
    wd = effective_weight(before, k, n).astype(np.float64)
    ref = xe.astype(np.float64) @ wd
    # int8 activations per block of 32: |x - x~| <= absmax(block) / 254
    step = np.zeros((8, -(-k // 32) * 32))
    step[:, :k] = np.abs(xe)
    step = np.repeat(step.reshape(8, -1, 32).max(-1) / 254, 32, axis=1)[:, :k]
    bound = step @ np.abs(wd) * 1.01 + 1e-4 * np.abs(xe) @ np.abs(wd)
    assert np.all(np.abs(c_out - ref) <= bound)


def test_per_channel_int4_runs_in_onnxruntime_as_numpy():
    k, n = 70, 24
    w, x = outlier_layer(11, k=k, n=n, rows=256)
    before, out, _ = compile_w4(w, x, "granularity=channel,symmetric=true,algo=gptq,search=true")
    q, s, z, attrs = stored(before, k, n)
    assert attrs == {"axis": 1} and s.shape == (n,)
    wd = effective_weight(before, k, n).astype(np.float64)
    (got,) = ort_session(out, optimize=False).run(None, {"x": x[:8]})
    ref = x[:8].astype(np.float64) @ wd
    assert np.all(np.abs(got - ref) <= (k + 2) * 2.0 ** -23 * (np.abs(x[:8]) @ np.abs(wd)) + 1e-30)
    rtn = _dequantize_kn(*quantize_rtn(w, 4, "channel", 32, True, True), "channel", 32)
    assert rel_output_error(x, w, wd) < 0.8 * rel_output_error(x, w, rtn)


@pytest.mark.parametrize("options", ["algo=awq+gptq", "algo=awq+gptq,search=true,act-order=true",
                                     "algo=rtn,search=true", "algo=gptq,act-order=true"])
def test_pass_algorithms_beat_rtn_in_onnxruntime(options):
    """The whole model through onnxruntime: each algorithm's output error below RTN's on inputs
    with outlier channels (AWQ's input scaling included: it is a Mul in the graph)."""
    w, x = outlier_layer(13, k=128, n=32, rows=512)
    base = "granularity=block,symmetric=false,block-size=32"
    _, rtn, _ = compile_w4(w, x, f"{base},algo=rtn")
    _, got, summary = compile_w4(w, x, f"{base},{options}")
    xe = x[::3]
    ref = xe.astype(np.float64) @ w

    def err(m):
        return np.linalg.norm(ort_session(m, optimize=False).run(None, {"x": xe})[0] - ref)

    assert err(got) < 0.9 * err(rtn), (err(got), err(rtn))
    for part in ("gptq", "act-order", "search", "awq"):
        assert (part in summary) == (part in options), summary


def test_calibrated_int4_default_is_the_measured_best_and_rtn_without_data():
    with_data = schemes.pipeline(schemes.with_calibration(schemes.QuantOptions("w4")))
    assert "algo=awq+gptq" in with_data and "search=true" in with_data and "act-order=true" in with_data
    assert "hessian=true" in with_data and "rows=512" in with_data
    assert "algo=rtn" in schemes.pipeline(schemes.QuantOptions("w4"))
    explicit = schemes.with_calibration(schemes.QuantOptions("w4", weight_algo="rtn"))
    assert "algo=rtn" in schemes.pipeline(explicit) and "search" not in schemes.pipeline(explicit)
