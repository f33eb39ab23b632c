"""to-fp16: small models built with onnx.helper and the onnx package's light models.

Every converted model passes ``onnx.checker`` (full check) and runs in onnxruntime (graph
optimizations off) next to the float32 original. Tolerances: weights-only changes each weight by
float16 rounding (relative 2**-11), so |dy| <= 2**-11 * (|x| @ |W|) plus float32 accumulation;
full float16 compares relative to the output's largest magnitude (1e-2: a few float16 roundings
per op through the network).
"""
from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import qc
from conftest import LIGHT_DIR, op_counts, run_and_check, small_mlp
from qc.errors import QCError
from qc.ir.tensor import Tensor
from qc.onnx.evaluator import ort_session
from qc.testing.conformance import random_feeds

RNG = np.random.default_rng(11)


def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def model(nodes, inputs, outputs, inits=(), opset=17):
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                          opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m, full_check=True)
    return m


def convert(m, spec="to-fp16"):
    return run_and_check(m, spec)


def run(m, feeds):
    return ort_session(m).run(None, feeds)


def elem_types(m):
    return {v.name: v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)}


def float_bytes(m, dtype):
    return sum(len(numpy_helper.to_array(i).tobytes()) for i in m.graph.initializer if i.data_type == dtype)


def mlp(K=64, H=32, N=10):
    w1 = (RNG.standard_normal((K, H)) / np.sqrt(K)).astype(np.float32)
    w2 = (RNG.standard_normal((H, N)) / np.sqrt(H)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2")]
    inits = [init("w1", w1), init("b1", RNG.standard_normal(H).astype(np.float32)), init("w2", w2),
             init("b2", RNG.standard_normal(N).astype(np.float32))]
    return model(nodes, [vi("x", T.FLOAT, [4, K])], [vi("y", T.FLOAT, [4, N])], inits), (w1, w2)


# -- weights only -----------------------------------------------------------------------------
def test_weights_only_halves_weight_bytes_and_stays_close():
    m, (w1, w2) = mlp()
    out, remarks = convert(m, "to-fp16{weights-only=true}")
    weight_bytes = w1.nbytes + w2.nbytes
    assert float_bytes(out, T.FLOAT16) == weight_bytes // 2
    assert float_bytes(out, T.FLOAT) == float_bytes(m, T.FLOAT) - weight_bytes  # biases stay float32
    assert op_counts(out) == {"Cast": 2, "MatMul": 1, "Add": 1, "Relu": 1, "Gemm": 1}
    assert elem_types(out) == {"x": T.FLOAT, "y": T.FLOAT}
    assert any(f"{weight_bytes // 2} bytes saved" in r for r in remarks)
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    ref, got = run(m, {"x": x})[0], run(out, {"x": x})[0]
    h = np.maximum(x @ w1 + numpy_helper.to_array(m.graph.initializer[1]), 0)
    bound = 2.0**-11 * (np.abs(np.abs(x) @ np.abs(w1)) @ np.abs(w2) + np.abs(h) @ np.abs(w2)) + 1e-5
    assert np.all(np.abs(got - ref) <= bound)


def test_weights_only_converts_conv_weights_and_light_model():
    path = os.path.join(LIGHT_DIR, "light_squeezenet.onnx")
    module = qc.import_onnx(path)
    qc.run_pipeline(module, "fold-constants,dce")  # the light models build their weights with ConstantOfShape
    m = qc.export_onnx(module)
    conv_weights = {n.input[1] for n in m.graph.node if n.op_type == "Conv"}
    before = sum(len(numpy_helper.to_array(i).tobytes()) for i in m.graph.initializer if i.name in conv_weights)
    assert before > 0
    out, _ = convert(m, "to-fp16{weights-only=true}")
    assert float_bytes(out, T.FLOAT16) == before // 2
    feeds = random_feeds(m)
    ref, got = run(m, feeds)[0], run(out, feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


def test_weights_only_exclude_keeps_named_ops():
    m, (w1, _) = mlp()
    out, _ = convert(m, 'to-fp16{weights-only=true,exclude="^fc2$"}')
    assert float_bytes(out, T.FLOAT16) == w1.nbytes // 2


# -- full float16 -----------------------------------------------------------------------------
def test_full_fp16_mlp_keeps_io_float32():
    m, _ = mlp()
    out, remarks = convert(m)
    assert elem_types(out) == {"x": T.FLOAT, "y": T.FLOAT}
    assert [o.name for o in out.graph.output] == ["y"]
    assert float_bytes(out, T.FLOAT) == 0  # every constant is float16
    assert op_counts(out)["Cast"] == 2  # in and out
    assert any("4 ops run in float16" in r for r in remarks)
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    ref, got = run(m, {"x": x})[0], run(out, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


def test_full_fp16_without_keep_io():
    m = small_mlp()
    out, _ = convert(m, "to-fp16{keep-io=false}")
    assert elem_types(out) == {"x": T.FLOAT16, "y": T.FLOAT16}
    assert "Cast" not in op_counts(out)
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    ref, got = run(m, {"x": x})[0], run(out, {"x": x.astype(np.float16)})[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


def test_blocklisted_and_schema_fixed_inputs_stay_float32():
    """TopK (blocklist) reads a float32 Cast; Resize's scales stay float32 (the schema fixes them)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("TopK", ["r", "k"], ["vals", "idx"], axis=-1),
             helper.make_node("Resize", ["r", "", "scales"], ["big"], mode="nearest"),
             helper.make_node("Range", ["start", "limit", "delta"], ["ramp"])]
    inits = [init("k", np.array([2], np.int64)), init("scales", np.array([1, 1, 2, 2], np.float32)),
             init("start", np.float32(0)), init("limit", np.float32(3)), init("delta", np.float32(1))]
    m = model(nodes, [vi("x", T.FLOAT, [1, 1, 3, 4])],
              [vi("vals", T.FLOAT, [1, 1, 3, 2]), vi("idx", T.INT64, [1, 1, 3, 2]), vi("big", T.FLOAT, [1, 1, 6, 8]),
               vi("ramp", T.FLOAT, [3])], inits, opset=13)
    out, _ = convert(m)
    resize = next(n for n in out.graph.node if n.op_type == "Resize")
    topk = next(n for n in out.graph.node if n.op_type == "TopK")
    types = {i.name: i.data_type for i in out.graph.initializer}
    assert types["scales"] == T.FLOAT and types["start"] == T.FLOAT
    casts = {n.output[0]: n for n in out.graph.node if n.op_type == "Cast"}
    assert topk.input[0] in casts and helper.get_attribute_value(casts[topk.input[0]].attribute[0]) == T.FLOAT
    assert resize.input[0] == "r" and "Range" in op_counts(out)
    x = RNG.standard_normal((1, 1, 3, 4)).astype(np.float32)
    for got, ref in zip(run(out, {"x": x}), run(m, {"x": x})):
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)


def test_out_of_range_constants_are_clamped():
    nodes = [helper.make_node("Add", ["x", "mask"], ["masked"]), helper.make_node("Softmax", ["masked"], ["p"]),
             helper.make_node("Add", ["x", "eps"], ["xe"]), helper.make_node("Div", ["x", "xe"], ["ratio"])]
    mask = np.array([0, -1e9, 0, 0], np.float32)
    m = model(nodes, [vi("x", T.FLOAT, [2, 4])], [vi("p", T.FLOAT, [2, 4]), vi("ratio", T.FLOAT, [2, 4])],
              [init("mask", mask), init("eps", np.float32(1e-12))])
    out, remarks = convert(m)
    consts = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    assert consts["mask"].dtype == np.float16 and consts["mask"][1] == -65504
    assert consts["eps"] == np.float16(2.0**-24)
    assert any("2 float32 constant value(s)" in r for r in remarks)
    x = np.abs(RNG.standard_normal((2, 4))).astype(np.float32) + 0.5
    got, ref = run(out, {"x": x}), run(m, {"x": x})
    assert np.all(np.isfinite(got[0])) and got[0][:, 1].max() == 0
    np.testing.assert_allclose(got[0], ref[0], rtol=2e-3, atol=1e-3)


def test_exclude_keeps_matching_ops_float32():
    m, _ = mlp()
    out, _ = convert(m, 'to-fp16{exclude="^fc"}')
    inits = {i.name: i.data_type for i in out.graph.initializer}
    assert inits["w1"] == T.FLOAT and inits["w2"] == T.FLOAT and inits["b1"] == T.FLOAT16
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(m, {"x": x})[0], rtol=1e-2, atol=1e-2)


def test_subgraph_reads_outer_values_as_float32():
    then = helper.make_graph([helper.make_node("Neg", ["r"], ["t"])], "then", [], [vi("t", T.FLOAT, [2, 3])])
    other = helper.make_graph([helper.make_node("Identity", ["r"], ["e"])], "else", [], [vi("e", T.FLOAT, [2, 3])])
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("Mul", ["y", "y"], ["z"])]
    m = model(nodes, [vi("x", T.FLOAT, [2, 3]), vi("c", T.BOOL, [])], [vi("z", T.FLOAT, [2, 3])])
    out, _ = convert(m)
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    for c in (True, False):
        feeds = {"x": x, "c": np.array(c)}
        np.testing.assert_allclose(run(out, feeds)[0], run(m, feeds)[0], rtol=2e-3, atol=1e-3)


def test_ort_cpu_kernels_keeps_ops_without_float16_kernels():
    from qc.passes.fold_constants import _ort_has_f16_kernel

    m, _ = mlp()
    out, _ = convert(m, "to-fp16{ort-cpu-kernels=true}")
    opsets = {"": 17}
    f16_ops = [n.op_type for n in out.graph.node if n.op_type != "Cast"
               and any(v.type.tensor_type.elem_type == T.FLOAT16 for v in out.graph.value_info if v.name in n.output)]
    assert all(_ort_has_f16_kernel("", t, opsets) for t in f16_ops)
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(m, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_bad_exclude_regex_is_an_error():
    m, _ = mlp()
    with pytest.raises(QCError, match=r"to-fp16: exclude '\(' is not a valid regular expression"):
        convert(m, 'to-fp16{exclude="("}')


# -- light models -----------------------------------------------------------------------------
LIGHT = sorted(os.path.basename(p) for p in glob.glob(os.path.join(LIGHT_DIR, "*.onnx")))


def float32_peak(m, feeds) -> float:
    """The largest magnitude any float op result reaches in the float32 model."""
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    del probe.graph.output[:]
    for n in m.graph.node:
        probe.graph.output.extend(onnx.ValueInfoProto(name=o) for o in n.output if o)
    return max(float(np.abs(a).max()) for a in run(probe, feeds) if a.dtype == np.float32 and a.size)


@pytest.mark.parametrize("name", LIGHT)
def test_light_models_in_fp16(name):
    """Every light model converts, is checker-clean and runs with float32 I/O. Their constant-fill
    weights drive some activations past float16's 65504 (squeezenet: ~9e9, inception_v1: ~8e20):
    no float16 model represents those, so outputs are compared only where float32 stays in range."""
    path = os.path.join(LIGHT_DIR, name)
    original = onnx.load(path)
    out, remarks = convert(original)
    assert any("ops run in float16" in r and not r.startswith("[to-fp16] 0 ops") for r in remarks)
    feeds = random_feeds(original)
    ref, got = run(original, feeds)[0], run(out, feeds)[0]
    assert got.dtype == np.float32 and got.shape == ref.shape
    if float32_peak(original, feeds) < 60000:
        np.testing.assert_allclose(got, ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


@pytest.mark.parametrize("name", ["light_squeezenet.onnx", "light_shufflenet.onnx", "light_densenet121.onnx"])
def test_light_models_with_random_weights_in_fp16(name):
    """The light models' weights are constant fills (their outputs are uniform): random weights,
    scaled 1/sqrt(fan_in), make the comparison discriminating."""
    module = qc.import_onnx(os.path.join(LIGHT_DIR, name))
    qc.run_pipeline(module, "fold-constants,dce")
    rng = np.random.default_rng(0)
    for v in module.graph.consts.values():
        a = v.const.numpy()
        if a.dtype == np.float32:
            r = (rng.standard_normal(a.shape) / np.sqrt(max(1, int(np.prod(a.shape[1:]))))) if a.ndim >= 2 \
                else rng.uniform(0.9, 1.1, a.shape)
            v.const = Tensor.from_array(r.astype(np.float32))
    m = qc.export_onnx(module)
    out, _ = convert(m)
    feeds = random_feeds(m)
    ref, got = run(m, feeds)[0], run(out, feeds)[0]
    assert np.all(np.isfinite(ref))
    np.testing.assert_allclose(got, ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


def test_full_mode_stores_the_weights_of_if_branches_in_float16(tmp_path):
    """All the compute inside If branches (as silero-vad exports it): full mode converts the main
    graph and stores the branches' MatMul weights in float16 (weights-only rewrite there)."""
    rng = np.random.default_rng(2)

    def branch(tag):  # its own weight, then the outer-scope one (silero's ifless export reads those)
        w = numpy_helper.from_array((rng.standard_normal((16, 8)) / 4).astype(np.float32), f"{tag}_w")
        nodes = [helper.make_node("MatMul", ["x", f"{tag}_w"], [f"{tag}_h"]),
                 helper.make_node("MatMul", [f"{tag}_h", "outer_w"], [f"{tag}_y"])]
        return helper.make_graph(nodes, tag, [], [vi(f"{tag}_y", T.FLOAT, [2, 8])], [w])

    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=branch("a"), else_branch=branch("b"))]
    path = str(tmp_path / "if.onnx")
    outer = init("outer_w", (rng.standard_normal((8, 8)) / 3).astype(np.float32))
    onnx.save(model(nodes, [vi("x", T.FLOAT, [2, 16]), vi("c", T.BOOL, [])], [vi("y", T.FLOAT, [2, 8])],
                    [outer]), path)
    out = str(tmp_path / "f16.onnx")
    result = qc.compile(path, target="cortex-a76", quant="fp16", emit="onnx")
    result.write(out)
    m = onnx.load(out)
    branches = [a.g for a in m.graph.node[-1].attribute]
    assert [i.data_type for g in branches for i in g.initializer] == [T.FLOAT16, T.FLOAT16]
    assert [(i.name, i.data_type) for i in m.graph.initializer] == [("outer_w", T.FLOAT16)]
    assert any("weights in If/Loop/Scan bodies stored as float16" in r for r in result.remarks)
    x = rng.standard_normal((2, 16)).astype(np.float32)
    for c in (True, False):
        feeds = {"x": x, "c": np.array(c)}
        want = ort_session(path).run(None, feeds)[0]
        np.testing.assert_allclose(ort_session(out).run(None, feeds)[0], want, rtol=1e-2, atol=1e-2)
