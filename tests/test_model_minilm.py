"""all-MiniLM-L6-v2 built as plain ONNX (qc.models.minilm): structure, numerics, tokenizer.

The full 6-layer model is built once per module (about 1 s, 90 MB in a temporary directory).

Tolerance for ONNX (float32, onnxruntime with graph optimizations off) against the numpy
reference (float64): ``ULPS`` float32 ulps of the largest magnitude in the compared output,
i.e. ``64 * 2**-23 * max|ref|``. Each of the 13 LayerNorms renormalizes, so the error stays a
few ulps of the output's scale instead of growing with depth; measured: about 3 ulps for the
hidden states at real tokens and 5 for the sentence embedding. Hidden states at padded
positions (never pooled) are worse conditioned (outlier channel 99 grows there from layer 2 on;
numpy's own float32 run is off by about 11 ulps at those positions, onnxruntime by up to about
40), so they get ``PAD_ULPS``.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from qc.errors import QCError
from qc.models import build as build_registered
from qc.models import minilm
from qc.testing.conformance import run_onnx

ULPS = 64
PAD_ULPS = 256
F32_EPS = float(np.finfo(np.float32).eps)

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "Quantizing transformer encoders to int8 on Arm Cortex-A cores, and what it costs in accuracy.",
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("minilm") / "minilm.onnx")
    minilm.build_onnx(path)
    return path


@pytest.fixture(scope="module")
def model(model_path) -> onnx.ModelProto:
    return onnx.load(model_path)


@pytest.fixture(scope="module")
def session(model_path):
    """One onnxruntime session (CPU, graph optimizations off) for the whole module."""
    from qc.onnx.evaluator import ort_session

    return ort_session(model_path)


@pytest.fixture(scope="module")
def weights() -> minilm.Weights:
    return minilm.load_weights()


def embed(session, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(last_hidden_state, sentence_embedding, attention_mask) from onnxruntime."""
    ids, mask = minilm.encode_batch(texts)
    hidden, sentence = session.run(None, {"input_ids": ids, "attention_mask": mask})
    return hidden, sentence, mask


def ulps(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| in float32 ulps of max |ref|."""
    return float(np.abs(got.astype(np.float64) - ref).max() / (F32_EPS * np.abs(ref).max()))


# -- structure ----------------------------------------------------------------------------

def test_full_check_and_plain_ops(model, model_path):
    onnx.checker.check_model(model, full_check=True)
    config = minilm.load_config()
    ops = {n.op_type for n in model.graph.node}
    assert "LayerNormalization" not in ops and "Gelu" not in ops
    assert {"Gather", "ReduceMean", "Pow", "Sqrt", "Erf", "Softmax", "MatMul", "ReduceSum"} <= ops
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    names = {i.name for i in model.graph.initializer}
    last = config.layers - 1
    assert f"encoder.layer.{last}.attention.self.query.weight" in names
    assert f"encoder.layer.{last + 1}.attention.self.query.weight" not in names
    q = next(i for i in model.graph.initializer if i.name == "encoder.layer.0.intermediate.dense.weight")
    assert list(q.dims) == [config.hidden, config.intermediate]  # MatMul weights are [in, out]
    assert sum(n.op_type == "Softmax" for n in model.graph.node) == config.layers


def test_interface_is_dynamic(model):
    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    hidden = minilm.load_config().hidden
    assert [(i.name, i.type.tensor_type.elem_type, dims(i)) for i in model.graph.input] == [
        ("input_ids", onnx.TensorProto.INT64, ["batch", "seq"]),
        ("attention_mask", onnx.TensorProto.INT64, ["batch", "seq"])]
    assert [(o.name, o.type.tensor_type.elem_type, dims(o)) for o in model.graph.output] == [
        ("last_hidden_state", onnx.TensorProto.FLOAT, ["batch", "seq", hidden]),
        ("sentence_embedding", onnx.TensorProto.FLOAT, ["batch", hidden])]


def test_build_writes_atomically_through_the_registry(tmp_path):
    path = tmp_path / "two.onnx"
    build_registered("minilm-l6", str(path), layers=2)
    assert os.listdir(tmp_path) == ["two.onnx"]  # no temporary file left behind
    names = {i.name for i in onnx.load(str(path)).graph.initializer}
    assert "encoder.layer.1.output.dense.weight" in names and "encoder.layer.2.output.dense.weight" not in names


@pytest.mark.parametrize("layers", [0, 7, -1])
def test_layers_out_of_range(layers):
    with pytest.raises(QCError, match="out of range"):
        minilm.build_model(layers=layers, weights={})


# -- numerics -----------------------------------------------------------------------------

def test_onnx_matches_numpy_reference(session, weights):
    hidden, sentence, mask = embed(session, TEXTS)
    ref_hidden, ref_sentence = minilm.reference_forward(weights, *minilm.encode_batch(TEXTS))
    real = mask.astype(bool)
    assert ulps(hidden[real], ref_hidden[real]) < ULPS
    assert ulps(hidden[~real], ref_hidden[~real]) < PAD_ULPS
    assert ulps(sentence, ref_sentence) < ULPS


def test_truncated_model_matches_reference(weights):
    model = minilm.build_model(layers=2, weights=weights)
    onnx.checker.check_model(model, full_check=True)
    ids, mask = minilm.encode_batch(TEXTS[:2])
    hidden, sentence = run_onnx(model, {"input_ids": ids, "attention_mask": mask})
    ref_hidden, ref_sentence = minilm.reference_forward(weights, ids, mask, layers=2)
    real = mask.astype(bool)
    assert ulps(hidden[real], ref_hidden[real]) < ULPS
    assert ulps(sentence, ref_sentence) < ULPS


def test_sentence_embedding_is_unit_length(session):
    _, sentence, _ = embed(session, TEXTS)
    assert minilm.load_config().normalize
    np.testing.assert_allclose(np.linalg.norm(sentence, axis=1), 1.0, atol=8 * F32_EPS)


def test_padding_invariance(session):
    """A sentence embeds the same alone and padded beside a longer one."""
    alone_hidden, alone, alone_mask = embed(session, TEXTS[:1])
    batch_hidden, batch, batch_mask = embed(session, [TEXTS[0], TEXTS[3]])
    n = alone_mask.shape[1]
    assert batch_mask.shape[1] > n and batch_mask[0, n:].sum() == 0
    np.testing.assert_allclose(batch_hidden[0, :n], alone_hidden[0], rtol=0,
                               atol=ULPS * F32_EPS * np.abs(alone_hidden).max())
    np.testing.assert_allclose(batch[0], alone[0], rtol=0, atol=ULPS * F32_EPS * np.abs(alone).max())


def test_cosine_similarity_sanity(session):
    _, sentence, _ = embed(session, TEXTS[:3])
    cos = sentence @ sentence.T  # unit vectors
    assert cos[0, 1] > 0.6, "paraphrases should be close"
    assert cos[0, 2] < 0.3, "unrelated sentences should be far apart"


# -- tokenizer ----------------------------------------------------------------------------

def vocab() -> list[str]:
    with open(os.path.join(minilm.model_dir(), "vocab.txt"), encoding="utf-8") as f:
        return f.read().splitlines()


def test_tokenizer_ids_from_vocab():
    ids, mask = minilm.encode_batch(["A man is eating food."])
    words = vocab()
    expected = [words.index(t) for t in ["[CLS]", "a", "man", "is", "eating", "food", ".", "[SEP]"]]
    assert expected == [101, 1037, 2158, 2003, 5983, 2833, 1012, 102]
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.tolist() == [expected] and mask.tolist() == [[1] * len(expected)]


def test_tokenizer_pads_to_longest_and_truncates():
    ids, mask = minilm.encode_batch(["hi", "hello there"])
    pad = vocab().index("[PAD]")
    assert ids.shape == (2, 4) and ids[0, -1] == pad and mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    long_ids, long_mask = minilm.encode_batch(["word " * 1000], max_length=16)
    assert long_ids.shape == (1, 16) and long_ids[0, 0] == 101 and long_ids[0, -1] == 102 and long_mask.all()
    assert minilm.tokenizer().truncation["max_length"] == minilm.load_config().max_seq_length
