"""The quantize-weights pass: IR form, ONNX validity, numerics in onnxruntime against the float model."""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qc
from qc.calib.stats import CalibrationStats, TensorStats
from qc.errors import QCError
from qc.onnx.evaluator import ort_session
from qc.pm import PassContext, PassManager
from qc.quant.weight_algos import dequantize

RNG = np.random.default_rng(1234)


# -- model builders ------------------------------------------------------------------------------
def make_model(nodes, inputs, outputs, weights: dict[str, np.ndarray], opset: int = 21) -> onnx.ModelProto:
    """``inputs`` / ``outputs``: (name, shape) pairs; float32 tensors."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def matmul_model(k: int = 70, n: int = 24, opset: int = 21, w: np.ndarray | None = None) -> onnx.ModelProto:
    w = RNG.standard_normal((k, n)).astype(np.float32) if w is None else w
    return make_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="proj")],
                      [("x", ["rows", k])], [("y", ["rows", n])], {"W": w}, opset)


def run_pass(model: onnx.ModelProto, spec: str, ctx: PassContext | None = None):
    module = qc.import_onnx(model)
    pm = PassManager.parse(spec, ctx=ctx)
    pm.run(module)
    out = qc.export_onnx(module)
    onnx.checker.check_model(out, full_check=True)
    return module, out, pm.ctx


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort_session(model, optimize=False).run(None, feeds)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def dq_node(model: onnx.ModelProto, weight: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == f"{weight}.q")


def dequantized(model: onnx.ModelProto, weight: str) -> tuple[np.ndarray, np.ndarray]:
    """(the weight as the DQ node computes it, each element's scale) from the exported model."""
    node = dq_node(model, weight)
    inits = initializers(model)
    q, scale, zp = (inits[name] for name in node.input)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis, block = attrs.get("axis"), attrs.get("block_size")
    w_hat = dequantize(q.astype(np.int64), scale, zp.astype(np.int64), axis if scale.ndim else None, block)
    per_element = dequantize(np.ones(q.shape, np.int64), scale, np.zeros_like(zp, np.int64),
                             axis if scale.ndim else None, block)
    return w_hat, per_element


def output_bound(x: np.ndarray, w: np.ndarray, scale_kn: np.ndarray) -> np.ndarray:
    """|X W - X dq(Wq)| <= sum_k |x_k| scale_kn / 2, plus float32 accumulation of both products."""
    ax = np.abs(x.astype(np.float64))
    accumulation = 2 * x.shape[-1] * np.finfo(np.float32).eps * (ax @ np.abs(w.astype(np.float64)))
    return ax @ (scale_kn.astype(np.float64) / 2) + accumulation + 1e-6


# -- round to nearest ----------------------------------------------------------------------------
@pytest.mark.parametrize("spec,dtype,axis,block", [
    ("quantize-weights{granularity=tensor}", TensorProto.INT8, None, None),
    ("quantize-weights", TensorProto.INT8, 1, None),
    ("quantize-weights{symmetric=false}", TensorProto.UINT8, 1, None),
    ("quantize-weights{dtype=u8}", TensorProto.UINT8, 1, None),
    ("quantize-weights{bits=4,granularity=block,block-size=32}", TensorProto.INT4, 0, 32),
    ("quantize-weights{bits=4,granularity=block,block-size=32,symmetric=false}", TensorProto.UINT4, 0, 32),
    ("quantize-weights{dtype=u4,granularity=block,block-size=16}", TensorProto.UINT4, 0, 16),
])
def test_matmul_weight_error_bounded_by_scales(spec, dtype, axis, block):
    k, n = 70, 24                         # 70 is not a multiple of the block size
    model = matmul_model(k, n)
    module, out, ctx = run_pass(model, spec)
    w = initializers(model)["W"]
    inits = initializers(out)
    assert "W" not in inits                # the float weight is gone
    node = dq_node(out, "W")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs.get("axis") == axis and attrs.get("block_size") == block
    q_init = next(t for t in out.graph.initializer if t.name == "W.q")
    assert q_init.data_type == dtype and list(q_init.dims) == [k, n]
    scale = inits["W.scale"]
    expected_scale_shape = {None: (), 1: (n,), 0: (-(-k // (block or 1)), n)}[axis]
    assert scale.shape == expected_scale_shape and inits["W.zp"].shape == expected_scale_shape
    if "symmetric=false" not in spec:
        middle = {TensorProto.UINT8: 128, TensorProto.UINT4: 8}.get(dtype, 0)
        assert np.all(inits["W.zp"].astype(np.int64) == middle)
    w_hat, scale_kn = dequantized(out, "W")
    assert np.all(np.abs(w_hat - w) <= scale_kn / 2 + np.spacing(np.abs(w)) * 4)

    x = RNG.standard_normal((5, k)).astype(np.float32)
    (y,), (y_ref,) = run(out, {"x": x}), run(model, {"x": x})
    assert np.all(np.abs(y - y_ref) <= output_bound(x, w, scale_kn))
    assert np.allclose(y, x.astype(np.float64) @ w_hat, rtol=1e-5, atol=1e-5)   # ORT's DQ == the reference

    mm = next(op for op in module.graph if op.op_type == "MatMul")
    assert mm.meta["qc.quant"].startswith("w ")
    assert any("proj" in r and "max |W - dq(Wq)|" in r for r in ctx.remarks)


def test_printed_ir_shows_quantization_on_the_weight():
    module, _, _ = run_pass(matmul_model(64, 8), "quantize-weights")
    text = qc.print_ir(module)
    assert re.search(r"const @W\.q : i8\[64, 8\] q\(scale = @W\.scale, zp = @W\.zp, axis = 1\)", text), text
    assert "onnx.DequantizeLinear(@W.q, @W.scale, @W.zp) {axis = 1}" in text
    module, _, _ = run_pass(matmul_model(64, 8), "quantize-weights{granularity=tensor}")
    assert re.search(r"const @W\.q : i8\[64, 8\] q\(scale = [0-9.e-]+, zp = 0\)", qc.print_ir(module))
    module, _, _ = run_pass(matmul_model(64, 8), "quantize-weights{bits=4,granularity=block,symmetric=false}")
    assert "u4[64, 8] q(scale = @W.scale, zp = @W.zp, axis = 0, block = 32)" in qc.print_ir(module)


@pytest.mark.parametrize("granularity,bits", [("channel", 8), ("block", 4), ("tensor", 8)])
def test_gemm_trans_b_keeps_axes_on_the_stored_layout(granularity, bits):
    k, n = 48, 20
    b = RNG.standard_normal((n, k)).astype(np.float32)        # [N, K] with transB = 1
    c = RNG.standard_normal(n).astype(np.float32)
    model = make_model([helper.make_node("Gemm", ["a", "B", "C"], ["y"], name="fc", transB=1, alpha=0.5)],
                       [("a", [3, k])], [("y", [3, n])], {"B": b, "C": c})
    _, out, _ = run_pass(model, f"quantize-weights{{bits={bits},granularity={granularity},block-size=16}}")
    node = dq_node(out, "B")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    scale = initializers(out)["B.scale"]
    if granularity == "channel":
        assert attrs == {"axis": 0} and scale.shape == (n,)
    elif granularity == "block":
        assert attrs == {"axis": 1, "block_size": 16} and scale.shape == (n, 3)
    b_hat, scale_nk = dequantized(out, "B")
    assert np.all(np.abs(b_hat - b) <= scale_nk / 2 + np.spacing(np.abs(b)) * 4)
    a = RNG.standard_normal((3, k)).astype(np.float32)
    (y,), (y_ref,) = run(out, {"a": a}), run(model, {"a": a})
    assert np.all(np.abs(y - y_ref) <= 0.5 * output_bound(a, b.T, scale_nk.T) + 1e-5)


def test_shared_weight_gets_one_dequantize_and_the_float_const_goes():
    k, n = 32, 16
    w = RNG.standard_normal((k, n)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x1", "W"], ["y1"], name="a"),
                        helper.make_node("MatMul", ["x2", "W"], ["y2"], name="b")],
                       [("x1", [2, k]), ("x2", [2, k])], [("y1", [2, n]), ("y2", [2, n])], {"W": w})
    module, out, _ = run_pass(model, "quantize-weights")
    dqs = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 1
    assert [n.input[1] for n in out.graph.node if n.op_type == "MatMul"] == [dqs[0].output[0]] * 2
    assert "W" not in module.graph.consts
    feeds = {"x1": RNG.standard_normal((2, k)).astype(np.float32), "x2": RNG.standard_normal((2, k)).astype(np.float32)}
    _, scale_kn = dequantized(out, "W")
    for y, y_ref, x in zip(run(out, feeds), run(model, feeds), feeds.values()):
        assert np.all(np.abs(y - y_ref) <= output_bound(x, w, scale_kn))


def test_weight_with_other_readers_keeps_its_float_const():
    k, n = 16, 16
    w = RNG.standard_normal((k, n)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
                        helper.make_node("Add", ["h", "W"], ["y"], name="add")],
                       [("x", [16, k])], [("y", [16, n])], {"W": w})
    module, out, _ = run_pass(model, "quantize-weights")
    assert "W" in module.graph.consts and "W.q" in module.graph.consts
    assert next(n for n in out.graph.node if n.op_type == "Add").input[1] == "W"


def test_exclude_min_size_and_ops_filters():
    k = 32
    weights = {"Wa": RNG.standard_normal((k, k)), "Wb": RNG.standard_normal((k, k)), "Wc": RNG.standard_normal((k, 4))}
    nodes = [helper.make_node("MatMul", ["x", "Wa"], ["a"], name="layer0.attn.q"),
             helper.make_node("MatMul", ["a", "Wb"], ["b"], name="layer0.mlp.up"),
             helper.make_node("Gemm", ["b", "Wc"], ["y"], name="head")]
    model = make_model(nodes, [("x", [2, k])], [("y", [2, 4])], weights)
    module, out, ctx = run_pass(model, r'quantize-weights{exclude="attn\.q$"}')
    names = set(initializers(out))
    assert "Wa" in names and "Wa.q" not in names and "Wb.q" in names and "Wc.q" in names
    assert any("layer0.attn.q" in r and "excluded" in r for r in ctx.remarks)
    _, out, _ = run_pass(model, "quantize-weights{min-size=1000}")
    names = set(initializers(out))
    assert {"Wa.q", "Wb.q"} <= names and "Wc" in names and "Wc.q" not in names
    _, out, _ = run_pass(model, "quantize-weights{ops=Gemm}")
    names = set(initializers(out))
    assert {"Wa", "Wb", "Wc.q"} <= names


def test_non_constant_and_overridable_weights_are_left_alone():
    k = 8
    model = make_model([helper.make_node("MatMul", ["x", "w_in"], ["y"], name="mm")],
                       [("x", [2, k]), ("w_in", [k, 4])], [("y", [2, 4])], {})
    module, _, _ = run_pass(model, "quantize-weights")
    assert not any(op.op_type == "DequantizeLinear" for op in module.graph)


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset,spec,need", [
    (17, "quantize-weights{bits=4,granularity=block}", 21),
    (17, "quantize-weights{granularity=block}", 21),
    (11, "quantize-weights", 13),
])
def test_old_opset_is_a_clear_error(opset, spec, need):
    with pytest.raises(QCError, match=rf"opset {need}, the model has opset {opset}.*--upgrade-opset {max(need, 13)}"):
        run_pass(matmul_model(32, 8, opset=opset), spec)


def test_old_opset_without_candidates_is_not_an_error():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [2])], [("y", [2])], {}, opset=11)
    module, _, _ = run_pass(model, "quantize-weights{bits=4,granularity=block}")
    assert [op.op_type for op in module.graph] == ["Relu"]


@pytest.mark.parametrize("spec,message", [
    ("quantize-weights{algo=gptq}",
     "algo=gptq needs calibration statistics with hessians: run calibrate{hessian=true} first"),
    ("quantize-weights{algo=awq}", "algo=awq needs calibration statistics with row samples"),
    ("quantize-weights{algo=magic}", "unknown algo 'magic'"),
    ("quantize-weights{bits=3}", "bits must be 8 or 4"),
    ("quantize-weights{bits=9,dtype=i8}", "bits=9 does not fit dtype=i8"),
    ("quantize-weights{bits=8,dtype=u4}", "bits=8 does not fit dtype=u4"),
    ("quantize-weights{granularity=row}", "unknown granularity 'row'"),
    ('quantize-weights{exclude="("}', "not a valid regex"),
])
def test_option_and_missing_statistics_errors(spec, message):
    with pytest.raises(QCError, match=re.escape(message)):
        run_pass(matmul_model(32, 8), spec)


def test_gptq_statistics_missing_for_one_activation():
    calib = CalibrationStats(tensors={"other": TensorStats(hessian_enabled=True)})
    with pytest.raises(QCError, match=r"%x .*algo=gptq needs calibration statistics with hessians"):
        run_pass(matmul_model(32, 8), "quantize-weights{algo=gptq}", PassContext(calibration=calib))


# -- GPTQ / AWQ with statistics --------------------------------------------------------------------
def correlated(rng, rows: int, k: int, outliers: int = 0, mix: np.ndarray | None = None) -> np.ndarray:
    """Rows with correlated features: white noise through a mixing matrix (random unless given)."""
    mix = rng.standard_normal((k, k)) / np.sqrt(k) + np.eye(k) if mix is None else mix
    x = rng.standard_normal((rows, k)) @ mix.T
    if outliers:
        x[:, rng.choice(k, outliers, replace=False)] *= 30.0
    return x.astype(np.float32)


def calibration(values: dict[str, np.ndarray], hessian: bool = True, rows: int = 0) -> CalibrationStats:
    stats = {}
    for name, x in values.items():
        s = TensorStats(hessian_enabled=hessian, max_rows=rows)
        for batch in np.array_split(x, 4):
            s.update(batch)
        stats[name] = s
    return CalibrationStats(tensors=stats, samples=4)


def output_error(model_q: onnx.ModelProto, model_f: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    return float(sum(np.linalg.norm(a.astype(np.float64) - b)
                     for a, b in zip(run(model_q, feeds), run(model_f, feeds))))


@pytest.mark.parametrize("options", ["bits=4,granularity=block", "bits=8,granularity=channel",
                                     "bits=4,granularity=block,symmetric=false,act-order=true"])
def test_gptq_lowers_output_error_on_correlated_inputs(options):
    rng = np.random.default_rng(7)
    k, n = 96, 48
    model = matmul_model(k, n, w=(rng.standard_normal((k, n)) * 0.1).astype(np.float32))
    mix = rng.standard_normal((k, k)) / np.sqrt(k) + np.eye(k)
    x_cal, x_test = correlated(rng, 512, k, mix=mix), correlated(rng, 512, k, mix=mix)   # one distribution
    ctx = PassContext(calibration=calibration({"x": x_cal}))
    module, q_gptq, ctx = run_pass(model, f"quantize-weights{{{options},algo=gptq}}", ctx)
    _, q_rtn, _ = run_pass(model, f"quantize-weights{{{options}}}")
    for x in (x_cal, x_test):
        err_gptq, err_rtn = output_error(q_gptq, model, {"x": x}), output_error(q_rtn, model, {"x": x})
        assert err_gptq < 0.9 * err_rtn, (err_gptq, err_rtn)
    summary = next(op for op in module.graph if op.op_type == "MatMul").meta["qc.quant"]
    assert summary.endswith("gptq+act-order" if "act-order=true" in options else "gptq"), summary
    assert any("relative (rtn" in r for r in ctx.remarks)


def rmsnorm_block(k: int, rng, gamma: np.ndarray) -> tuple[onnx.ModelProto, list[str]]:
    """h -> RMSNorm (Mul by gamma) -> x -> q/k projections (two MatMuls sharing x)."""
    wq = (rng.standard_normal((k, 64)) * 0.05).astype(np.float32)
    wk = (rng.standard_normal((k, 32)) * 0.05).astype(np.float32)
    nodes = [helper.make_node("Mul", ["h", "h"], ["h2"]),
             helper.make_node("ReduceMean", ["h2", "axes"], ["ms"], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["ms_eps"]),
             helper.make_node("Sqrt", ["ms_eps"], ["rms"]),
             helper.make_node("Div", ["h", "rms"], ["normed"]),
             helper.make_node("Mul", ["normed", "gamma"], ["x"], name="norm_weight"),
             helper.make_node("MatMul", ["x", "Wq"], ["q"], name="q_proj"),
             helper.make_node("MatMul", ["x", "Wk"], ["kk"], name="k_proj")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("h", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [None, 64]),
         helper.make_tensor_value_info("kk", TensorProto.FLOAT, [None, 32])],
        [numpy_helper.from_array(a, n) for n, a in (("gamma", gamma), ("Wq", wq), ("Wk", wk),
                                                     ("axes", np.array([-1], np.int64)),
                                                     ("eps", np.array(1e-6, np.float32)))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), ["q", "kk"]


def reference_x(h: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    h64 = h.astype(np.float64)
    return (h64 / np.sqrt((h64 ** 2).mean(-1, keepdims=True) + 1e-6) * gamma).astype(np.float32)


def test_awq_folds_into_the_norm_weight_and_lowers_error():
    rng = np.random.default_rng(11)
    k = 128
    gamma = np.ones(k, np.float32)
    gamma[rng.choice(k, 6, replace=False)] = 25.0            # salient channels, as in LLM norms
    model, _ = rmsnorm_block(k, rng, gamma)
    h_cal, h_test = rng.standard_normal((256, k)).astype(np.float32), rng.standard_normal((256, k)).astype(np.float32)
    calib = calibration({"x": reference_x(h_cal, gamma)}, hessian=False, rows=128)
    module, q_awq, ctx = run_pass(model, "quantize-weights{bits=4,granularity=block,algo=awq}",
                                  PassContext(calibration=calib))
    _, q_rtn, _ = run_pass(model, "quantize-weights{bits=4,granularity=block}")
    muls = [n for n in q_awq.graph.node if n.op_type == "Mul"]
    assert len(muls) == 2                                       # folded: no new Mul
    norm = next(n for n in muls if n.name == "norm_weight")
    assert norm.input[1] == "gamma.awq"
    gamma_awq = initializers(q_awq)["gamma.awq"]
    assert not np.allclose(gamma_awq, gamma) and "gamma" not in initializers(q_awq)
    for h in (h_cal, h_test):
        err_awq, err_rtn = output_error(q_awq, model, {"h": h}), output_error(q_rtn, model, {"h": h})
        assert err_awq < 0.9 * err_rtn, (err_awq, err_rtn)
    assert any("awq: %x / s (folded into onnx.Mul 'norm_weight'" in r for r in ctx.remarks)
    assert {op.meta.get("qc.quant") for op in module.graph if op.op_type == "MatMul"} == {"w i4 block32 sym awq"}


def test_awq_inserts_a_mul_when_x_is_a_graph_input_and_never_loses_to_rtn():
    rng = np.random.default_rng(5)
    k, n = 64, 32
    model = matmul_model(k, n, w=(rng.standard_normal((k, n)) * 0.05).astype(np.float32))
    x = rng.standard_normal((256, k)).astype(np.float32)
    x[:, :4] *= 20.0
    calib = calibration({"x": x}, hessian=True, rows=256)
    module, q_awq, ctx = run_pass(model, "quantize-weights{bits=4,granularity=block,algo=awq}",
                                  PassContext(calibration=calib))
    mul = next(n for n in q_awq.graph.node if n.op_type == "Mul")
    assert list(mul.input) == ["x", "x.awq_inv_scale"]
    assert next(n for n in q_awq.graph.node if n.op_type == "MatMul").input[0] == mul.output[0]
    _, q_rtn, _ = run_pass(model, "quantize-weights{bits=4,granularity=block}")
    assert output_error(q_awq, model, {"x": x}) < output_error(q_rtn, model, {"x": x})
    assert any("relative (rtn" in r for r in ctx.remarks)      # with a Hessian the remark compares


def test_awq_rescales_the_calibration_ranges_of_the_scaled_activation():
    """Static activation schemes (w4a4) quantize x / s after AWQ: its range is x's divided per
    feature, for a new Mul's result and for x itself when the division is folded into the norm."""
    rng = np.random.default_rng(5)
    k = 64
    x = rng.standard_normal((256, k)).astype(np.float32)
    x[:, :4] *= 20.0
    model = matmul_model(k, 32, w=(rng.standard_normal((k, 32)) * 0.05).astype(np.float32))
    _, q, ctx = run_pass(model, "quantize-weights{bits=4,granularity=block,algo=awq+gptq}",
                         PassContext(calibration=calibration({"x": x}, hessian=True, rows=256)))
    inv_s = initializers(q)["x.awq_inv_scale"]
    scaled = ctx.calibration.tensors["x.awq"]
    np.testing.assert_allclose([scaled.min, scaled.max], [(x * inv_s).min(), (x * inv_s).max()], rtol=1e-5)
    assert ctx.calibration.tensors["x"].max == pytest.approx(float(x.max()))   # x itself is unchanged

    gamma = np.ones(128, np.float32)
    gamma[:6] = 25.0
    norm_model, _ = rmsnorm_block(128, rng, gamma)
    h = rng.standard_normal((256, 128)).astype(np.float32)
    _, folded, ctx = run_pass(norm_model, "quantize-weights{bits=4,granularity=block,algo=awq}",
                              PassContext(calibration=calibration({"x": reference_x(h, gamma)}, hessian=False,
                                                                  rows=128)))
    x_after = reference_x(h, initializers(folded)["gamma.awq"])
    np.testing.assert_allclose(ctx.calibration.tensors["x"].max, x_after.max(), rtol=1e-4)


def test_awq_plus_gptq_beats_both_alone_or_ties():
    rng = np.random.default_rng(3)
    k, n = 96, 48
    model = matmul_model(k, n, w=(rng.standard_normal((k, n)) * 0.05).astype(np.float32))
    x = correlated(rng, 512, k, outliers=5)
    calib = calibration({"x": x}, hessian=True, rows=256)
    errors = {}
    for algo in ("rtn", "awq", "gptq", "awq+gptq"):
        _, out, _ = run_pass(model, f"quantize-weights{{bits=4,granularity=block,algo={algo}}}",
                             PassContext(calibration=calib))
        errors[algo] = output_error(out, model, {"x": x})
    assert errors["awq+gptq"] < errors["rtn"] and errors["gptq"] < errors["rtn"] and errors["awq"] < errors["rtn"]
    assert errors["awq+gptq"] < 1.05 * min(errors["awq"], errors["gptq"]), errors


def test_awq_folds_into_layernorm_scale_and_bias():
    rng = np.random.default_rng(21)
    k, n = 96, 40
    scale = np.ones(k, np.float32)
    scale[rng.choice(k, 5, replace=False)] = 20.0
    bias = (rng.standard_normal(k) * 0.1).astype(np.float32)
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    model = make_model([helper.make_node("LayerNormalization", ["h", "ln_scale", "ln_bias"], ["x"], name="ln"),
                        helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")],
                       [("h", ["rows", k])], [("y", ["rows", n])], {"ln_scale": scale, "ln_bias": bias, "W": w})
    h = rng.standard_normal((256, k)).astype(np.float32)
    x = run(make_model([helper.make_node("LayerNormalization", ["h", "ln_scale", "ln_bias"], ["x"])],
                       [("h", ["rows", k])], [("x", ["rows", k])], {"ln_scale": scale, "ln_bias": bias}), {"h": h})[0]
    calib = calibration({"x": x}, hessian=False, rows=256)
    _, q_awq, _ = run_pass(model, "quantize-weights{bits=4,granularity=block,algo=awq}",
                           PassContext(calibration=calib))
    _, q_rtn, _ = run_pass(model, "quantize-weights{bits=4,granularity=block}")
    ln = next(n for n in q_awq.graph.node if n.op_type == "LayerNormalization")
    assert list(ln.input) == ["h", "ln_scale.awq", "ln_bias.awq"]
    assert not any(n.op_type == "Mul" for n in q_awq.graph.node)
    inits = initializers(q_awq)
    s = scale / inits["ln_scale.awq"]                       # the s the weight was multiplied by
    assert np.allclose(inits["ln_bias.awq"] * s, bias, rtol=1e-5, atol=1e-7)
    assert output_error(q_awq, model, {"h": h}) < output_error(q_rtn, model, {"h": h})


def test_awq_leaves_other_readers_of_x_unscaled():
    rng = np.random.default_rng(8)
    k, n = 64, 32
    gamma = np.ones(k, np.float32)
    gamma[:3] = 30.0
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    model = make_model([helper.make_node("Mul", ["h", "gamma"], ["x"], name="norm_weight"),
                        helper.make_node("MatMul", ["x", "W"], ["y"], name="fc"),
                        helper.make_node("Relu", ["x"], ["r"], name="residual")],
                       [("h", ["rows", k])], [("y", ["rows", n]), ("r", ["rows", k])], {"gamma": gamma, "W": w})
    h = rng.standard_normal((128, k)).astype(np.float32)
    calib = calibration({"x": h * gamma}, hessian=False, rows=128)
    _, out, _ = run_pass(model, "quantize-weights{bits=4,granularity=block,algo=awq}",
                         PassContext(calibration=calib))
    muls = [n for n in out.graph.node if n.op_type == "Mul"]
    assert [list(m.input) for m in muls] == [["h", "gamma"], ["x", "x.awq_inv_scale"]]
    (_, r), (_, r_ref) = run(out, {"h": h}), run(model, {"h": h})
    assert np.array_equal(r, r_ref)                        # the Relu still reads the unscaled x


def test_quantized_module_prints_and_parses_back():
    module, _, _ = run_pass(matmul_model(40, 8),
                            "quantize-weights{bits=4,granularity=block,block-size=16,symmetric=false}")
    text = qc.print_ir(module, elide_above=None)
    again = qc.parse_ir(text)
    assert qc.print_ir(again, elide_above=None) == text
    assert again.graph.consts["W.q"].type.quant.block_size == 16


def test_other_op_types_in_ops_are_skipped_with_a_remark():
    _, out, ctx = run_pass(matmul_model(16, 4), "quantize-weights{ops=MatMul,Softmax}")
    assert "W.q" in initializers(out)
    assert any("Softmax weights stay float" in r for r in ctx.remarks)


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_conv_weights_per_output_channel(granularity):
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((6, 3, 3, 3)) * rng.uniform(0.05, 1.0, (6, 1, 1, 1))).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")], "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8, 8])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    module = qc.import_onnx(model)
    PassManager.parse(f"quantize-weights{{ops=Conv,granularity={granularity}}}").run(module)
    out = qc.export_onnx(module)
    onnx.checker.check_model(out, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    scale = inits["w.scale"]
    assert inits["w.q"].dtype == np.int8 and inits["w.q"].shape == w.shape and "w" not in inits
    assert scale.shape == ((6,) if granularity == "channel" else ())
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = ort_session(out).run(None, {"x": x})[0]
    want = ort_session(model).run(None, {"x": x})[0]
    # each output sums 27 products; each weight is off by at most half its channel's step
    per_channel = np.broadcast_to(scale, (6,)).reshape(1, 6, 1, 1)
    bound = per_channel / 2 * 27 * np.abs(x).max() + 1e-5
    assert np.all(np.abs(got - want) <= bound)
