"""Models whose compute sits inside If / Loop bodies, and weights stored as Constant nodes
(issue 18, bugs 4 and 5): shaped like the exporters' output (Silero VAD: an If on the sample
rate whose branches hold the Convs; torch.onnx: weights as Constant nodes)."""
import os
import platform
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qc
from conftest import run_qc
from qc.pm import PassContext

RNG = np.random.default_rng(18)
F = TensorProto.FLOAT


def _w(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    """A weight drawn from a generator seeded by its name: each model builder gives the same model."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _constant(out: str, tensor: onnx.TensorProto) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [out], value=tensor, name=out + ".const")


def if_model() -> onnx.ModelProto:
    """x[2, 16], flag -> If(flag): then: MatMul(x, @W_outer) -> Gemm(@G_then initializer of the branch)
    else: MatMul(x, @W_outer) -> Relu -> Conv over a reshape with a Constant-node weight.
    @W_outer (16 x 16) is an initializer of the main graph read by both branches."""
    then_nodes = [helper.make_node("MatMul", ["x", "W_outer"], ["t_h"], name="then_mm"),
                  helper.make_node("Gemm", ["t_h", "G_then"], ["t_y"], name="then_gemm", transB=1)]
    then_branch = helper.make_graph(then_nodes, "then", [], [helper.make_tensor_value_info("t_y", F, [2, 8])],
                                    [_w("G_then", 8, 16)])
    else_nodes = [helper.make_node("MatMul", ["x", "W_outer"], ["e_h"], name="else_mm"),
                  helper.make_node("Relu", ["e_h"], ["e_r"], name="else_relu"),
                  _constant("e_shape", numpy_helper.from_array(np.array([2, 16, 1], np.int64), "s")),
                  helper.make_node("Reshape", ["e_r", "e_shape"], ["e_img"], name="else_reshape"),
                  _constant("C_else", _w("C_else", 8, 16, 1)),
                  helper.make_node("Conv", ["e_img", "C_else"], ["e_c"], name="else_conv"),
                  _constant("e_flat", numpy_helper.from_array(np.array([2, 8], np.int64), "s2")),
                  helper.make_node("Reshape", ["e_c", "e_flat"], ["e_y"], name="else_flatten")]
    else_branch = helper.make_graph(else_nodes, "else", [], [helper.make_tensor_value_info("e_y", F, [2, 8])])
    nodes = [helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)]
    graph = helper.make_graph(nodes, "if_model", [helper.make_tensor_value_info("x", F, [2, 16]),
                                                  helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", F, [2, 8])], [_w("W_outer", 16, 16)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def loop_model(static: bool) -> onnx.ModelProto:
    """x[2, 16] -> Loop (trip count 3, or the input n) carrying h: h = Tanh(MatMul(h, @W_loop)),
    @W_loop a Constant node of the body; output h and the stacked per-iteration MatMul results."""
    body_nodes = [_constant("W_loop", _w("W_loop", 16, 16)),
                  helper.make_node("MatMul", ["h_in", "W_loop"], ["b_mm"], name="body_mm"),
                  helper.make_node("Tanh", ["b_mm"], ["h_out"], name="body_tanh"),
                  helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
                  helper.make_node("Identity", ["b_mm"], ["scan_mm"], name="body_scan")]
    body = helper.make_graph(body_nodes, "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("h_in", F, [2, 16])],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("h_out", F, [2, 16]),
                              helper.make_tensor_value_info("scan_mm", F, [2, 16])])
    inits = [numpy_helper.from_array(np.array(True), "true")]
    inputs = [helper.make_tensor_value_info("x", F, [2, 16])]
    if static:
        inits.append(numpy_helper.from_array(np.array(3, np.int64), "n"))
    else:
        inputs.append(helper.make_tensor_value_info("n", TensorProto.INT64, []))
    nodes = [helper.make_node("Loop", ["n", "true", "x"], ["h", "steps"], name="loop", body=body)]
    graph = helper.make_graph(nodes, "loop_model", inputs,
                              [helper.make_tensor_value_info("h", F, [2, 16]),
                               helper.make_tensor_value_info("steps", F, ["T", 2, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort(model: onnx.ModelProto, feed: dict, outputs: list[str] | None = None) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(outputs, feed)


def transposed_weight_model() -> onnx.ModelProto:
    """Both If branches read Transpose(@W) of one main-graph weight (as Silero's branches each
    reorder the same LSTM weights): folding must leave one transposed copy, not one per branch."""
    def branch(name: str, act: str) -> onnx.GraphProto:
        nodes = [helper.make_node("Transpose", ["W"], [f"{name}_wt"], name=f"{name}_transpose", perm=[1, 0]),
                 helper.make_node("MatMul", ["x", f"{name}_wt"], [f"{name}_mm"], name=f"{name}_mm"),
                 helper.make_node(act, [f"{name}_mm"], [f"{name}_y"], name=f"{name}_act")]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", F, [2, 64])])

    nodes = [helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=branch("then", "Relu"),
                              else_branch=branch("else", "Tanh"))]
    graph = helper.make_graph(nodes, "transposed", [helper.make_tensor_value_info("x", F, [2, 64]),
                                                    helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", F, [2, 64])], [_w("W", 64, 64)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def branch_initializer_model() -> onnx.ModelProto:
    """An If whose branches hold their own 16 KB initializer (above the size that sessions read
    from the IR's buffers): calibration failed with '... should be stored in qc-in-memory-weights,
    but it is not regular file'."""
    def branch(name: str) -> onnx.GraphProto:
        nodes = [helper.make_node("MatMul", ["x", f"{name}_W"], [f"{name}_mm"], name=f"{name}_mm"),
                 helper.make_node("Relu", [f"{name}_mm"], [f"{name}_y"], name=f"{name}_relu")]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", F, [2, 64])],
                                 [_w(f"{name}_W", 64, 64)])

    nodes = [helper.make_node("Relu", ["x0"], ["x"], name="pre"),
             helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=branch("then"),
                              else_branch=branch("else"))]
    graph = helper.make_graph(nodes, "branch_init", [helper.make_tensor_value_info("x0", F, [2, 64]),
                                                     helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", F, [2, 64])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def constant_weight_model() -> onnx.ModelProto:
    """torch.onnx style: x[1, 256] -> MatMul with a Constant-node weight [256, 256] -> Add of a
    Constant-node bias -> y."""
    nodes = [_constant("fc.weight", _w("fc.weight", 256, 256, scale=0.05)),
             _constant("fc.bias", _w("fc.bias", 256)),
             helper.make_node("MatMul", ["x", "fc.weight"], ["h"], name="fc"),
             helper.make_node("Add", ["h", "fc.bias"], ["y"], name="fc_bias")]
    graph = helper.make_graph(nodes, "constant_weights", [helper.make_tensor_value_info("x", F, [1, 256])],
                              [helper.make_tensor_value_info("y", F, [1, 256])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


X = RNG.standard_normal((6, 2, 16)).astype(np.float32)
FLAGS = [True, False, True, False, True, True]


def _if_samples() -> list[dict]:
    return [{"x": X[i], "flag": np.array(FLAGS[i])} for i in range(len(FLAGS))]


def _loop_samples(static: bool) -> list[dict]:
    counts = [1, 2, 3, 0, 1, 2]
    return [{"x": X[i]} if static else {"x": X[i], "n": np.array(n, np.int64)} for i, n in enumerate(counts)]


def _calibrate(model: onnx.ModelProto, samples: list[dict], spec: str = "calibrate"):
    from qc.calib.data import from_samples

    module = qc.import_onnx(model)
    ctx = PassContext()
    ctx.calibration_data = from_samples(samples)
    qc.run_pipeline(module, spec, ctx=ctx)
    return module, ctx


def _matmul_reference(x: np.ndarray, w: onnx.TensorProto) -> np.ndarray:
    """What onnxruntime computes for MatMul(x, w) alone."""
    graph = helper.make_graph([helper.make_node("MatMul", ["x", w.name], ["y"])], "ref",
                              [helper.make_tensor_value_info("x", F, list(x.shape))],
                              [helper.make_tensor_value_info("y", F, None)], [w])
    return _ort(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {"x": x})[0]


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


# -- calibration inside subgraphs ---------------------------------------------------------------
def test_calibration_observes_the_operands_inside_if_branches():
    model = if_model()
    _, ctx = _calibrate(model, _if_samples())
    stats = ctx.calibration.tensors
    # x (graph input, read by both MatMuls), t_h (then: Gemm input), e_img (else: Conv input); the
    # weights (outer initializer, branch initializer, Constant node) are not activations
    assert sorted(stats) == ["e_img", "t_h", "x"]
    assert "[calibrate] 2 of the observed tensors are inside If/Loop bodies (threaded out as extra outputs)" \
        in ctx.remarks
    assert "[calibrate] 6 samples, 3 tensors" in " ".join(ctx.remarks)
    w = _initializer(model, "W_outer")
    then_rows = np.concatenate([_matmul_reference(X[i], w) for i in range(6) if FLAGS[i]])
    else_rows = np.maximum(np.concatenate([_matmul_reference(X[i], w) for i in range(6) if not FLAGS[i]]), 0)
    np.testing.assert_allclose([stats["t_h"].min, stats["t_h"].max], [then_rows.min(), then_rows.max()], rtol=1e-6)
    np.testing.assert_allclose([stats["e_img"].min, stats["e_img"].max], [else_rows.min(), else_rows.max()],
                               rtol=1e-6)
    assert stats["t_h"].count == then_rows.size   # the padded empty tensor of the other branch counts nothing


@pytest.mark.parametrize("static", [True, False], ids=["static-trip-count", "dynamic-trip-count"])
def test_calibration_observes_every_iteration_of_a_loop_body(static):
    model = loop_model(static)
    samples = _loop_samples(static)
    _, ctx = _calibrate(model, samples)
    stats = ctx.calibration.tensors
    assert sorted(stats) == ["h_in"]          # the body's MatMul input; its weight is a Constant node
    rows = []
    for feed in samples:
        h, steps = _ort(model, feed)
        # h_in: x in the first iteration, then Tanh of the previous iteration's MatMul
        rows += [feed["x"]] + [np.tanh(s) for s in steps[:-1]] if len(steps) else []
    rows = np.concatenate(rows)
    assert stats["h_in"].count == rows.size
    np.testing.assert_allclose([stats["h_in"].min, stats["h_in"].max], [rows.min(), rows.max()], rtol=1e-6)


def test_calibration_runs_with_large_initializers_inside_branches():
    rng = np.random.default_rng(0)
    samples = [{"x0": rng.standard_normal((2, 64)).astype(np.float32), "flag": np.array(i % 2 == 0)}
               for i in range(4)]
    _, ctx = _calibrate(branch_initializer_model(), samples)
    assert sorted(ctx.calibration.tensors) == ["x"]
    assert ctx.calibration.samples == 4


# -- quantization inside subgraphs --------------------------------------------------------------
def _quantize(model: onnx.ModelProto, samples: list[dict], scheme: str, opset: int | None = None):
    from qc.calib.data import from_samples
    from qc.quant.schemes import QuantOptions, pipeline

    module = qc.import_onnx(model, upgrade_opset=opset)
    ctx = PassContext()
    ctx.calibration_data = from_samples(samples)
    # the result runs in the host's onnxruntime: on x86 quantize for x86 (dyn8's weights then go
    # u8, which its u8 x u8 kernels take exactly; on an AVX2 CPU without VNNI its u8 x s8 kernels
    # saturate int16 pair sums on full-range int8 weights: 0.71 relative error on this Loop)
    features = ("avx2",) if platform.machine().lower() in ("x86_64", "amd64") else ()
    qc.run_pipeline(module, pipeline(QuantOptions(scheme, target_features=features)), ctx=ctx)
    out = qc.export_onnx(module)
    onnx.checker.check_model(out, full_check=True)
    return module, out, ctx


def _body_ops(module, op_type: str) -> dict[str, list[str]]:
    """For each subgraph of ``op_type``'s op: its op types."""
    op = next(o for o in module.graph.walk() if o.op_type == op_type)
    return {name: [o.op_type for o in a.value] for name, a in op.attrs.items() if a.kind == "graph"}


def _relative_error(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(ref - got).max() / np.abs(ref).max())


@pytest.mark.parametrize("scheme", ["w8a8", "dyn8"])
def test_ops_inside_if_branches_are_quantized(scheme):
    model = if_model()
    module, out, ctx = _quantize(model, _if_samples(), scheme)
    bodies = _body_ops(module, "If")
    act = "QuantizeLinear" if scheme == "w8a8" else "DynamicQuantizeLinear"
    # the outer weight and x are quantized once in the main graph (both branches read them);
    # the branches quantize their own activations and weights (Gemm initializer, Constant-node Conv weight)
    main = [o.op_type for o in module.graph]
    assert main.count("DequantizeLinear") == 2 and act in main
    gemm = "DynamicQuantizeMatMul" if scheme == "dyn8" else "Gemm"    # lower-qop's form of a dynamic Gemm
    assert {"QuantizeLinear", "DequantizeLinear", gemm} <= set(bodies["then_branch"]) if scheme == "w8a8" \
        else gemm in bodies["then_branch"], bodies
    assert {act, "DequantizeLinear", "Conv"} <= set(bodies["else_branch"]), bodies
    # the Conv weight and e_img; static w8a8 also the Relu output before the Reshape (insert-qdq
    # quantizes a Conv input made by single-use shape ops before them, with the same statistics)
    # and the Conv's own output (requantize-outputs: the Conv unit ends in int8)
    assert bodies["else_branch"].count("DequantizeLinear") == (4 if scheme == "w8a8" else 2)
    assert "Constant" not in bodies["else_branch"]
    for flag in (True, False):
        feed = {"x": X[0], "flag": np.array(flag)}
        assert _relative_error(_ort(model, feed)[0], _ort(out, feed)[0]) < 0.03


@pytest.mark.parametrize("static", [True, False], ids=["static-trip-count", "dynamic-trip-count"])
@pytest.mark.parametrize("scheme", ["w8a8", "dyn8", "w4"])
def test_ops_inside_a_loop_body_are_quantized(scheme, static):
    model = loop_model(static)
    module, out, ctx = _quantize(model, _loop_samples(static), scheme, opset=21 if scheme == "w4" else None)
    body = _body_ops(module, "Loop")["body"]
    expected = {"w8a8": {"QuantizeLinear", "DequantizeLinear"}, "dyn8": {"DynamicQuantizeMatMul"},
                "w4": {"MatMulNBits"}}[scheme]
    assert expected <= set(body), body
    assert "Constant" not in body     # the Constant-node weight is stored quantized
    feed = {"x": X[0]} if static else {"x": X[0], "n": np.array(3, np.int64)}
    ref, got = _ort(model, feed), _ort(out, feed)
    assert _relative_error(ref[0], got[0]) < (0.3 if scheme == "w4" else 0.05)


# -- no weights copied into branches ----------------------------------------------------------
def test_fold_constants_keeps_one_copy_of_a_weight_both_branches_reorder():
    model = transposed_weight_model()
    module = qc.import_onnx(model)
    from qc.quant.schemes import OPTIMIZATION_PIPELINE

    qc.run_pipeline(module, OPTIMIZATION_PIPELINE)
    out = qc.export_onnx(module)
    weights = [t for t in out.graph.initializer if len(t.dims) == 2]
    assert len(weights) == 1 and list(weights[0].dims) == [64, 64]       # Transpose(W), shared
    for branch in out.graph.node[0].attribute:
        assert not branch.g.initializer and [n.op_type for n in branch.g.node][0] == "MatMul"
    assert out.ByteSize() <= model.ByteSize()
    for flag in (True, False):
        feed = {"x": np.ones((2, 64), np.float32), "flag": np.array(flag)}
        np.testing.assert_allclose(_ort(out, feed)[0], _ort(model, feed)[0], rtol=1e-5, atol=1e-5)


# -- Constant-node weights -----------------------------------------------------------------------
def test_show_summary_counts_constant_node_weights(tmp_path):
    path = str(tmp_path / "m.onnx")
    onnx.save(constant_weight_model(), path)
    r = run_qc("show", "--summary", path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "ops: 4 (3 kinds), consts: 2 (0.26 MB), inputs: 1, outputs: 1"
    onnx.save(if_model(), path)   # consts of branches and Constant nodes inside branches count too
    r = run_qc("show", "--summary", path)
    assert "consts: 5 (0.00 MB)" in r.stdout, r.stdout


def test_quantize_weights_quantizes_a_constant_node_weight(tmp_path):
    src, dst = str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx")
    model = constant_weight_model()
    onnx.save(model, src)
    r = run_qc("opt", src, "-p", "quantize-weights", "-o", dst)
    assert r.returncode == 0, r.stderr
    out = onnx.load(dst)
    assert [n.op_type for n in out.graph.node] == ["Constant", "DequantizeLinear", "MatMul", "Add"]
    q = next(t for t in out.graph.initializer if t.name == "fc.weight.q")
    assert q.data_type == TensorProto.INT8 and list(q.dims) == [256, 256]
    assert os.path.getsize(dst) < os.path.getsize(src) / 2
    feed = {"x": RNG.standard_normal((1, 256)).astype(np.float32)}
    assert _relative_error(_ort(model, feed)[0], _ort(out, feed)[0]) < 0.02


def test_smooth_quant_scales_a_constant_node_weight():
    from qc.calib.data import from_samples

    model = constant_weight_model()
    module = qc.import_onnx(model)
    ctx = PassContext()
    x = RNG.standard_normal((4, 1, 256)).astype(np.float32)
    x[..., 7] *= 40.0                       # an outlier channel for SmoothQuant to move into the weight
    ctx.calibration_data = from_samples([{"x": s} for s in x])
    qc.run_pipeline(module, "calibrate,smooth-quant", ctx=ctx)
    matmul = next(op for op in module.graph if op.op_type == "MatMul")
    assert matmul.operands[1].name == "fc.weight.smooth"       # the lifted Constant weight, rescaled
    out = qc.export_onnx(module)
    feed = {"x": x[0]}
    np.testing.assert_allclose(_ort(out, feed)[0], _ort(model, feed)[0], rtol=1e-4, atol=1e-4)


def test_calibration_in_worker_processes_observes_the_branches_too():
    _, serial = _calibrate(if_model(), _if_samples())
    _, workers = _calibrate(if_model(), _if_samples(), "calibrate{jobs=2}")
    assert "[calibrate] calibrated in 2 worker processes, statistics merged" in workers.remarks
    assert sorted(workers.calibration.tensors) == sorted(serial.calibration.tensors) == ["e_img", "t_h", "x"]
    for name, s in serial.calibration.tensors.items():
        w = workers.calibration.tensors[name]
        assert (w.min, w.max, w.count) == (s.min, s.max, s.count), name
