"""Integer CNNs: requantized Conv units (requantize-outputs), cross-layer equalization (equalize)
and bias correction (bias-correction), against onnxruntime and numpy."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qc
from qc.calib.data import from_arrays
from qc.onnx.evaluator import ort_session
from qc.pm import PassContext, PassManager
from qc.quant.schemes import QuantOptions


def _he(rng: np.random.RandomState, shape: tuple[int, ...]) -> np.ndarray:
    return (rng.randn(*shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)


def conv_chain(seed: int = 0) -> onnx.ModelProto:
    """x [1, 3, 12, 12] -> Conv 3x3 -> Relu -> depthwise 3x3 -> Clip(0, 6) -> Conv 1x1 -> Relu ->
    Concat with a 1x1 branch (Relu) -> Conv 1x1 -> GlobalAveragePool: every Conv but the last is
    followed by an activation and a Concat / pooling, none by a QuantizeLinear of its own."""
    rng = np.random.RandomState(seed)
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("w1", _he(rng, (8, 3, 3, 3))), ("b1", rng.uniform(-0.1, 0.1, 8).astype(np.float32)),
        ("w2", _he(rng, (8, 1, 3, 3)) * rng.uniform(0.05, 3.0, (8, 1, 1, 1)).astype(np.float32)),
        ("b2", rng.uniform(-0.1, 0.1, 8).astype(np.float32)),
        ("w3", _he(rng, (8, 8, 1, 1))), ("w4", _he(rng, (4, 3, 1, 1))), ("w5", _he(rng, (6, 12, 1, 1))),
        ("zero", np.array(0.0, np.float32)), ("six", np.array(6.0, np.float32)))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8, name="dw"),
        helper.make_node("Clip", ["c2", "zero", "six"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="pw"),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("Conv", ["x", "w4"], ["c4"], name="branch"),
        helper.make_node("Relu", ["c4"], ["r4"]),
        helper.make_node("Concat", ["r3", "r4"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w5"], ["c5"], name="head"),
        helper.make_node("Relu", ["c5"], ["r5"]),
        helper.make_node("GlobalAveragePool", ["r5"], ["y"]),
    ]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 1, 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def images(n: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).rand(n, 1, 3, 12, 12).astype(np.float32)


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got.astype(np.float64)) ** 2)))


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(onnx.ValueInfoProto(name=n))
    return m


def _qlinear_conv_reference(x_q, xs, xz, w_q, ws, wz, ys, yz, bias, node: onnx.NodeProto) -> np.ndarray:
    """QLinearConv in numpy: the int32 accumulation of (x - xz) * (w - wz) plus the bias, then
    requantized with the float multiplier xs * ws / ys, rounded half to even, saturated."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    group, pads = int(attrs.get("group", 1)), list(attrs.get("pads", [0, 0, 0, 0]))
    strides = list(attrs.get("strides", [1, 1]))
    x = x_q.astype(np.int64) - int(xz)
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    w = w_q.astype(np.int64) - np.asarray(wz, np.int64).reshape(-1, 1, 1, 1)
    m, cg, kh, kw = w.shape
    n, _, h, wd = x.shape
    oh, ow = (h - kh) // strides[0] + 1, (wd - kw) // strides[1] + 1
    acc = np.zeros((n, m, oh, ow), np.int64)
    for o in range(m):
        gi = o // (m // group)
        xs_ = x[:, gi * cg:(gi + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs_[:, :, i:i + oh * strides[0]:strides[0], j:j + ow * strides[1]:strides[1]]
                acc[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, i, j])
    if bias is not None:
        acc += bias.astype(np.int64).reshape(1, -1, 1, 1)
    mult = (np.float32(xs) * np.asarray(ws, np.float32).reshape(1, -1, 1, 1) / np.float32(ys)).astype(np.float32)
    info = np.iinfo(np.asarray(yz).dtype)
    return np.clip(np.rint(acc.astype(np.float32) * mult) + int(yz), info.min, info.max)


@pytest.mark.parametrize("target", ["x86-avx2", "cortex-a76"])
def test_requantized_conv_chain_runs_as_qlinearconv(tmp_path, target):
    """w8a8 closes every Conv unit (no Conv left as dequantize + float), the QOperator form is
    QLinearConv only, each QLinearConv's integers match a numpy reference of the integer
    arithmetic within one code, and the output stays close to FP32."""
    model = conv_chain()
    npz = tmp_path / "calib.npz"
    np.savez(npz, x=images(8, 1))
    onnx.save(model, tmp_path / "chain.onnx")
    res = qc.compile(str(tmp_path / "chain.onnx"), target=target, quant=QuantOptions("w8a8", form="qop"),
                     calibration=str(npz), emit="onnx")
    assert res.placement["emulated"] == [], res.placement["emulated"]
    path = res.write(tmp_path / "q.onnx", measure=False)
    q = onnx.load(path)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QLinearConv") == 5 and "Conv" not in ops and "Relu" not in ops and "Clip" not in ops, ops
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    convs = [n for n in q.graph.node if n.op_type == "QLinearConv"]
    names = sorted({n.input[0] for n in convs} | {n.output[0] for n in convs} - {"y"})
    sess = ort_session(_with_outputs(q, names))
    ref_sess = ort_session(model)
    for x in images(3, 7):
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
        for node in convs:
            args = [outs[n] if n in outs else inits[n] for n in node.input[:8]]
            bias = inits[node.input[8]] if len(node.input) > 8 and node.input[8] else None
            want = _qlinear_conv_reference(*args, bias, node)
            got = outs[node.output[0]].astype(np.int64)
            assert np.abs(got - want).max() <= 1, node.name
            assert np.mean(got == want) > 0.99, node.name
        assert _sqnr(ref_sess.run(None, {"x": x})[0], outs["y"]) > 25.0


def test_equalize_keeps_the_float_model_and_matches_ranges():
    model = conv_chain()
    module = qc.import_onnx(model)
    PassManager.parse("equalize").run(module)
    out = qc.export_onnx(module)
    w = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    # conv1 -> Relu -> dw: each channel's range is the same in both weights now
    r1 = np.abs(w["w1"]).reshape(8, -1).max(axis=1)
    r2 = np.abs(w["w2"]).reshape(8, -1).max(axis=1)
    np.testing.assert_allclose(r1, r2, rtol=1e-4)
    before = np.abs(numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w2"))).reshape(8, -1)
    # the depthwise channels' ranges, far apart before, are closer (the geometric mean of both spreads)
    assert before.max(axis=1).max() / before.max(axis=1).min() > 1.5 * r2.max() / r2.min()
    a, b = ort_session(model), ort_session(out)
    for x in images(3, 3):
        want, got = a.run(None, {"x": x})[0], b.run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_equalize_leaves_clip_alone_unless_relu6():
    module = qc.import_onnx(conv_chain())
    ctx = PassContext(quiet=True)
    PassManager.parse("equalize", ctx=ctx).run(module)
    assert "equalized 1 Conv pairs" in " ".join(ctx.remarks)   # conv1 -> dw; not dw -Clip-> pw
    ctx6 = PassContext(quiet=True)
    PassManager.parse("equalize{relu6=true}", ctx=ctx6).run(qc.import_onnx(conv_chain()))
    assert "equalized 2 Conv pairs" in " ".join(ctx6.remarks)


def test_bias_correction_removes_the_mean_error_of_rounded_weights():
    """Coarse weights (4-bit codes, one scale per tensor) shift each output channel's mean; the
    corrected bias takes that shift out: the per-channel mean error and the MSE drop."""
    model = conv_chain(seed=3)
    data = from_arrays({"x": images(8, 5)})
    qw = "quantize-weights{bits=4,dtype=i8,granularity=tensor,ops=Conv}"
    bc = "bias-correction{bits=4,dtype=i8,granularity=tensor}"
    tap = ["c1", "c2", "c3", "c4", "c5"]
    results = {}
    for spec in (f"calibrate{{ops=Conv}},{qw}", f"calibrate{{ops=Conv}},{bc},{qw}"):
        module = qc.import_onnx(model)
        PassManager.parse(spec, ctx=PassContext(calibration_data=data, quiet=True)).run(module)
        results[spec] = ort_session(_with_outputs(qc.export_onnx(module), tap))
    ref = ort_session(_with_outputs(model, tap))
    xs = images(8, 9)
    plain, corrected = (list(results.values()))
    for name_i, name in enumerate(tap):
        errs = {}
        for key, sess in (("plain", plain), ("corrected", corrected)):
            d = np.stack([sess.run(None, {"x": x})[1 + name_i] - ref.run(None, {"x": x})[1 + name_i] for x in xs])
            errs[key] = (np.abs(d.mean(axis=(0, 1, 3, 4))).mean(), float(np.mean(d ** 2)))
        if name in ("c1", "c4"):   # Convs reading the image: no error upstream, the calibration means hold
            assert errs["corrected"][0] < 0.3 * errs["plain"][0], (name, errs)
        assert errs["corrected"][1] < errs["plain"][1], (name, errs)
