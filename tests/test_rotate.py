"""rotate: the rotated float model computes what the original does (onnxruntime, optimizations
off) on an independent tiny Llama, on SmolLM2 (2 layers) and on MiniLM (online rotations);
Hadamard matrices are orthogonal; outliers shrink; LayerNorm streams are left alone, saying why."""
import os
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qc
import qc.models
from qc.calib.data import from_npz
from qc.errors import QCError
from qc.onnx.evaluator import ort_session
from qc.passes import _hadamard as H
from qc.pm import PassContext, PassManager
from qc.quant.schemes import QuantOptions, pipeline

sys.path.insert(0, os.path.dirname(__file__))
import tiny_decoder as td

CLEANUP = "propagate-shapes,remove-identity,fold-constants,cse,dce"


def rotated(proto: onnx.ModelProto, spec: str = "rotate", ctx: PassContext | None = None):
    ctx = ctx or PassContext(quiet=True)
    module = qc.import_onnx(proto)
    PassManager.parse(f"{CLEANUP},{spec}", ctx=ctx).run(module)
    out = qc.export_onnx(module)
    onnx.checker.check_model(out)
    return out, ctx


def assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-5 * max(1.0, float(np.abs(w).max())))


@pytest.mark.parametrize("n", [2, 12, 20, 28, 36, 44, 384, 576, 1536])
def test_hadamard_factorizations_are_orthogonal(n):
    fs = H.factors(n)
    assert fs is not None and int(np.prod(fs)) == n and all(f <= max(H.MAX_FACTOR, 44) for f in fs)
    h = H.normalized(fs)
    np.testing.assert_allclose(h @ h.T, np.eye(n), atol=1e-12)
    assert np.allclose(np.abs(h), 1 / np.sqrt(n))   # a Hadamard matrix: every entry +-1/sqrt(n)


def test_sizes_without_hadamard_get_a_dense_orthogonal_matrix():
    assert H.factors(9) is None and H.factors(100) is None
    q, how = H.randomized_hadamard(100, 0)
    np.testing.assert_allclose(q @ q.T, np.eye(100), atol=1e-12)
    assert how.startswith("random orthogonal")


def tiny_feeds(cfg: td.TinyConfig, ids: np.ndarray) -> dict[str, np.ndarray]:
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    for i in range(cfg.layers):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = np.zeros((1, cfg.kv_heads, 0, cfg.head_dim), np.float32)
    return feeds


@pytest.mark.parametrize("online", ["down", "all", "none"])
def test_tiny_decoder_computes_the_same(online):
    cfg = td.TinyConfig(vocab=300, hidden=48, ffn=96, layers=2)
    proto = td.model(cfg, td.weights(cfg))
    out, ctx = rotated(proto, f"rotate{{online={online}}}")
    feeds = tiny_feeds(cfg, np.array([[3, 1, 4, 1, 5, 9, 2, 6]], np.int64))
    assert_same(ort_session(out).run(None, feeds), ort_session(proto).run(None, feeds))
    [region] = ctx.cache["rotate"]
    assert region["hidden"] == 48 and region["rotation"] == "randomized Hadamard 12 x 4"
    assert len(region["readers"]) == 2 * 3 + 1     # wqkv, gate, up per layer; lm_head
    assert len(region["writers"]) == 2 * 2         # wo, down per layer
    assert len(region["online"]) == (0 if online == "none" else 2)
    names = {n.name for n in out.graph.initializer}
    assert "dec.0.g_attn" not in names and "final_gain" not in names    # gains folded, the Muls gone
    assert "tok" not in names     # tied embedding untied: a rotated table and a rotated lm_head
    counts = [n.op_type for n in out.graph.node].count("MatMul") - [n.op_type for n in proto.graph.node].count("MatMul")
    # 96 = 12 x 8 (down projections), 48 = 12 x 4 (attention outputs): two MatMuls each
    assert counts == {"none": 0, "down": 2 * 2, "all": 2 * 2 + 2 * 2}[online]


def test_seeded_and_deterministic():
    cfg = td.TinyConfig(vocab=100, hidden=32, ffn=64, layers=1)
    proto = td.model(cfg, td.weights(cfg))
    a, _ = rotated(proto, "rotate{seed=3}")
    b, _ = rotated(proto, "rotate{seed=3}")
    c, _ = rotated(proto, "rotate{seed=4}")
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()


@pytest.fixture(scope="module")
def smollm2_path(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("smollm2") / "smollm2-2l.onnx")
    qc.models.build("smollm2-135m", path, layers=2)
    return path


def crest(stats) -> float:
    return float(stats.channel_absmax.max() / (stats.channel_abssum.sum() / (stats.rows * stats.features)))


def test_smollm2_computes_the_same_and_outliers_shrink(smollm2_path, tmp_path):
    proto = onnx.load(smollm2_path)
    ids = np.random.default_rng(0).integers(0, 49152, (4, 1, 24)).astype(np.int64)
    np.savez(tmp_path / "calib.npz", input_ids=ids)
    ctx = PassContext(calibration_data=from_npz(str(tmp_path / "calib.npz")), quiet=True)
    out, ctx = rotated(proto, "rotate,calibrate{activation-pairs=false}", ctx)
    [region] = ctx.cache["rotate"]
    assert region["rotation"] == "randomized Hadamard 36 x 16"
    assert [o["how"] for o in region["online"]] == ["Hadamard 12 x 32 x 4 online"] * 2
    assert_same(ort_session(out).run(None, {"input_ids": ids[0]}), ort_session(proto).run(None, {"input_ids": ids[0]}))
    before = PassContext(calibration_data=from_npz(str(tmp_path / "calib.npz")), quiet=True)
    module = qc.import_onnx(proto)
    PassManager.parse(f"{CLEANUP},calibrate{{activation-pairs=false}}", ctx=before).run(module)
    inputs = {op.name: op.operands[0].name for op in module.graph if op.op_type == "MatMul"}
    after = {n.name: n.input[0] for n in out.graph.node if n.op_type == "MatMul"}
    q_proj = "/model/layers/0/self_attn/q_proj/MatMul"
    down = "/model/layers/1/mlp/down_proj/MatMul"
    for name in (q_proj, down):   # max |x| over mean |x|: the gain moved into the weights
        was, now = crest(before.calibration.tensors[inputs[name]]), crest(ctx.calibration.tensors[after[name]])
        assert now < was / 2, (name, was, now)


def test_minilm_online_rotations_compute_the_same(minilm_fp32):
    proto = onnx.load(minilm_fp32)
    out, ctx = rotated(proto, "rotate{online=all}")
    assert ctx.cache["rotate"] == []     # post-norm: no residual rotation ...
    assert any("subtracts the mean of the residual stream" in r for r in ctx.remarks)
    assert any("24 online Hadamard(s)" in r for r in ctx.remarks)   # ... but every linear's input online
    ids = np.random.default_rng(1).integers(1000, 20000, (2, 20)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    assert_same(ort_session(out).run(None, feeds), ort_session(proto).run(None, feeds))


def layernorm_block() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "emb"),
             numpy_helper.from_array(np.ones(8, np.float32), "g"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")]
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["x"], name="embed"),
             helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], name="ln", axis=-1),
             helper.make_node("MatMul", ["n", "w"], ["o"], name="proj"),
             helper.make_node("Add", ["x", "o"], ["y"], name="residual"),
             helper.make_node("ReduceSum", ["y"], ["s"], keepdims=0)]
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_layernorm_stream_is_left_alone_with_a_remark():
    proto = layernorm_block()
    out, ctx = rotated(proto, "rotate{online=none}")
    assert ctx.cache["rotate"] == []
    [remark] = [r for r in ctx.remarks if "[rotate]" in r]
    assert "onnx.LayerNormalization 'ln' subtracts the mean of the residual stream" in remark
    assert {n.name: numpy_helper.to_array(n).tobytes() for n in out.graph.initializer} == \
        {n.name: numpy_helper.to_array(n).tobytes() for n in proto.graph.initializer}


def test_bad_option_and_pipeline():
    with pytest.raises(QCError, match="online must be one of down, all, none"):
        PassManager.parse("rotate{online=some}")
    spec = pipeline(QuantOptions("w8a8", rotate="down", outliers="none"))
    assert spec.index("rotate{online=down}") < spec.index("calibrate")
    assert "smooth-quant" not in spec and "split-outliers" not in spec
    assert "quantize-weights{" in spec and spec.count(r"exclude=rotate\.hadamard$") == 4  # 4 passes
    with pytest.raises(QCError, match="unknown rotate online Hadamards 'some'"):
        pipeline(QuantOptions("w8a8", rotate="some"))


def test_cli_rotate_needs_quant(qc_cli, tmp_path):
    path = str(tmp_path / "ln.onnx")
    onnx.save(layernorm_block(), path)
    r = qc_cli("compile", path, "--target", "x86-avx2", "--rotate", "-o", str(tmp_path / "out.onnx"))
    assert r.returncode == 2 and "--rotate is a step of quantization" in r.stderr and "Traceback" not in r.stderr


def test_w8a8_keeps_the_online_hadamards_float_and_quantizes_their_output(smollm2_path, tmp_path):
    ids = np.random.default_rng(2).integers(0, 49152, (4, 1, 16)).astype(np.int64)
    np.savez(tmp_path / "calib.npz", input_ids=ids)
    ctx = PassContext(calibration_data=from_npz(str(tmp_path / "calib.npz")), quiet=True)
    module = qc.import_onnx(onnx.load(smollm2_path))
    PassManager.parse(pipeline(QuantOptions("w8a8", rotate="down", outliers="none")), ctx=ctx).run(module)
    out = qc.export_onnx(module)
    producers = {o: n for n in out.graph.node for o in n.output}
    hadamards = [n for n in out.graph.node if n.name.endswith("rotate.hadamard") and n.op_type == "MatMul"]
    assert len(hadamards) == 2 * 3     # 1536 = 12 x 32 x 4 per layer
    for n in hadamards:
        assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in n.input), n.name
    down = next(n for n in out.graph.node if n.name == "/model/layers/0/mlp/down_proj/MatMul")
    assert [producers[i].op_type for i in down.input] == ["DequantizeLinear", "DequantizeLinear"]
