"""qc.metrics on known values: perplexity of a hand-built LM, SQNR, cosine stats, embeddings.

The tiny models here (also used by test_cli_eval.py) are built with onnx.helper:
- ``tiny_lm``: logits = table[input_ids], so every next-token probability is known in closed form;
- ``tiny_encoder``: sentence_embedding = masked mean of an embedding table over the tokens.
"""
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qc.errors import QCError
from qc.tools import metrics

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "a", "model", "is", "small", "and", "text", "runs", "fast",
         "slow", "on", "cpu", "arm", "edge", "device", "."]


def lm_table(vocab_size: int = len(VOCAB), seed: int = 0, scale: float = 2.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((vocab_size, vocab_size)) * scale).astype(np.float32)


def tiny_lm(table: np.ndarray, path: str | None = None, *, producer: str = "test") -> onnx.ModelProto:
    """input_ids int64 [batch, seq] -> logits float32 [batch, seq, vocab] = table[input_ids]."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["logits"], axis=0, name="lookup")], "tiny_lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", table.shape[1]])],
        [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name=producer)
    model.ir_version = 8
    if path:
        onnx.save(model, path)
    return model


def tiny_encoder(emb: np.ndarray, path: str | None = None) -> onnx.ModelProto:
    """input_ids, attention_mask -> sentence_embedding = sum(emb[ids] * mask) / sum(mask), and
    last_hidden_state = emb[ids]."""
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["last_hidden_state"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis_m1"], ["mask3"]),
        helper.make_node("Mul", ["last_hidden_state", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis_1"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis_1"], ["count"], keepdims=0),
        helper.make_node("Div", ["total", "count"], ["sentence_embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", emb.shape[1]]),
         helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", emb.shape[1]])],
        [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(np.array([-1], np.int64), "axis_m1"),
         numpy_helper.from_array(np.array([1], np.int64), "axis_1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    model.ir_version = 8
    if path:
        onnx.save(model, path)
    return model


def word_tokenizer(path: str | None = None):
    """A WordLevel tokenizer over VOCAB (lower-cased, split on whitespace and punctuation),
    adding [CLS] ... [SEP] around a sentence and padding with [PAD]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                ("[SEP]", 3)])
    if path:
        tok.save(path)
    return tok


def closed_form_perplexity(table: np.ndarray, windows: np.ndarray) -> float:
    """exp(mean over windows and positions of -log softmax(table[x_t])[x_{t+1}]), in plain Python."""
    total, count = 0.0, 0
    for row in windows.tolist():
        for cur, nxt in zip(row[:-1], row[1:]):
            logits = [float(v) for v in table[cur]]
            top = max(logits)
            lse = top + math.log(sum(math.exp(v - top) for v in logits))
            total += lse - logits[nxt]
            count += 1
    return math.exp(total / count)


# -- perplexity -----------------------------------------------------------------------------------
def test_perplexity_matches_closed_form():
    table = lm_table()
    windows = np.random.default_rng(1).integers(0, len(VOCAB), size=(5, 9)).astype(np.int64)
    got = metrics.perplexity(tiny_lm(table), windows, progress=False)
    assert got == pytest.approx(closed_form_perplexity(table, windows), rel=1e-9)


def test_uniform_model_has_perplexity_of_the_vocabulary_size():
    table = np.zeros((len(VOCAB), len(VOCAB)), np.float32)
    windows = np.arange(40, dtype=np.int64).reshape(4, 10) % len(VOCAB)
    assert metrics.perplexity(tiny_lm(table), windows, progress=False) == pytest.approx(len(VOCAB), rel=1e-12)


def test_perplexity_batches_and_paths_agree(tmp_path):
    table = lm_table(seed=3)
    windows = np.random.default_rng(2).integers(0, len(VOCAB), size=(7, 6)).astype(np.int64)
    path = str(tmp_path / "lm.onnx")
    tiny_lm(table, path)
    one = metrics.perplexity(path, windows, batch_size=1, progress=False)
    three = metrics.perplexity(path, windows, batch_size=3, progress=False)
    assert one == pytest.approx(three, rel=1e-12)
    assert one == pytest.approx(closed_form_perplexity(table, windows), rel=1e-9)


def test_nll_is_stable_for_huge_logits():
    logits = np.array([[1e4, 1e4 - 1.0, -1e4]], np.float32)
    got = metrics.nll(logits, np.array([1]))
    assert np.isfinite(got).all()
    assert got[0] == pytest.approx(1.0 + math.log1p(math.exp(-1.0)), rel=1e-9)


def test_perplexity_errors(tmp_path):
    table = lm_table()
    with pytest.raises(QCError, match="onnxruntime failed running the model: .*out of data bounds.*; is the "
                                      "tokenizer the model's own"):
        metrics.perplexity(tiny_lm(table), np.array([[1, 2, 25]], np.int64), progress=False)
    wide = np.zeros((30, len(VOCAB)), np.float32)  # more embedding rows than logits: ids past the vocabulary
    with pytest.raises(QCError, match="token id 25 is outside the model's vocabulary of 20"):
        metrics.perplexity(tiny_lm(wide), np.array([[1, 2, 25]], np.int64), progress=False)
    with pytest.raises(QCError, match=r"token windows \[n >= 1, seq_len >= 2\]"):
        metrics.perplexity(tiny_lm(table), np.array([[1]], np.int64), progress=False)
    with pytest.raises(QCError, match="not a language model"):
        metrics.perplexity(tiny_encoder(np.ones((20, 4), np.float32)), np.array([[1, 2]], np.int64), progress=False)
    missing = str(tmp_path / "missing.onnx")
    with pytest.raises(QCError, match="no such file"):
        metrics.perplexity(missing, np.array([[1, 2]], np.int64), progress=False)


# -- SQNR and cosine -------------------------------------------------------------------------------
def test_sqnr_known_values():
    ref = np.array([1.0, 2.0, 3.0])
    assert metrics.sqnr_db(ref, ref + np.array([0.1, 0.0, 0.0])) == pytest.approx(10 * math.log10(14 / 0.01))
    assert metrics.sqnr_db(ref, ref * 0.5) == pytest.approx(10 * math.log10(4.0))  # noise = ref/2: 6.02 dB
    assert metrics.sqnr_db(ref, ref.copy()) == math.inf
    assert metrics.sqnr_db(np.zeros(3), np.ones(3)) == -math.inf
    assert metrics.sqnr_db(np.float32([1e-20, 2e-20]), np.float32([1e-20, 2e-20])) == math.inf
    with pytest.raises(QCError, match=r"shapes \[3\] and \[2\]"):
        metrics.sqnr_db(ref, ref[:2])


def test_cosine_stats_known_values():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    b = np.array([[2.0, 0.0], [1.0, 1.0], [-3.0, -4.0]])
    mean, low = metrics.cosine_stats(a, b)
    assert low == pytest.approx(-1.0)
    assert mean == pytest.approx((1.0 + 1 / math.sqrt(2) - 1.0) / 3)
    assert metrics.cosine_stats(a, a) == pytest.approx((1.0, 1.0))
    with pytest.raises(QCError, match="same shape|one shape"):
        metrics.cosine_stats(a, b[:2])


def test_compare_outputs_sums_energy_over_feeds():
    table = lm_table(seed=4)
    noisy = table + np.float32(0.25)
    ids = [np.array([[1, 2, 3]], np.int64), np.array([[4, 5, 6, 7]], np.int64)]
    got = metrics.compare_outputs(tiny_lm(noisy), tiny_lm(table), [{"input_ids": i} for i in ids])
    signal = sum(float(np.square(table[i].astype(np.float64)).sum()) for i in ids)
    noise = sum(i.size * len(VOCAB) * 0.25 ** 2 for i in ids)
    assert set(got) == {"logits"}
    assert got["logits"] == pytest.approx(10 * math.log10(signal / noise), rel=1e-6)
    assert metrics.compare_outputs(tiny_lm(table), tiny_lm(table), {"input_ids": ids[0]}) == {"logits": math.inf}


def test_compare_outputs_needs_the_reference_outputs():
    with pytest.raises(QCError, match="lacks the reference's output"):
        metrics.compare_outputs(tiny_lm(lm_table()), tiny_encoder(np.ones((20, 4), np.float32)),
                                {"input_ids": np.array([[1]], np.int64), "attention_mask": np.array([[1]], np.int64)})


# -- embeddings and latency --------------------------------------------------------------------------
def test_sentence_embeddings_are_masked_means():
    emb = np.random.default_rng(5).standard_normal((len(VOCAB), 6)).astype(np.float32)
    tok = word_tokenizer()
    texts = ["The model is small.", "Text runs fast on the ARM edge device and the CPU", "a"]
    got = metrics.sentence_embeddings(tiny_encoder(emb), texts, tok, batch_size=2, progress=False)
    assert got.shape == (3, 6)
    for text, row in zip(texts, got):
        ids = tok.encode(text).ids  # [CLS] ... [SEP], unpadded
        np.testing.assert_allclose(row, emb[ids].mean(axis=0), rtol=1e-5, atol=1e-6)
    mean, low = metrics.cosine_stats(got, got)
    assert (mean, low) == pytest.approx((1.0, 1.0))


def test_sentence_embeddings_accepts_an_encode_callable():
    emb = np.eye(len(VOCAB), dtype=np.float32)

    def encode(texts, max_length):
        ids = np.array([[2, 4, 3]] * len(texts), np.int64)
        return ids, np.ones_like(ids)

    got = metrics.sentence_embeddings(tiny_encoder(emb), ["x", "y"], encode, progress=False)
    np.testing.assert_allclose(got[0], emb[[2, 4, 3]].mean(axis=0), rtol=1e-6)


def test_sentence_embeddings_needs_an_encoder():
    with pytest.raises(QCError, match="not a sentence encoder"):
        metrics.sentence_embeddings(tiny_lm(lm_table()), ["the model"], word_tokenizer(), progress=False)


def test_latency_is_a_positive_median():
    ms = metrics.latency_ms(tiny_lm(lm_table()), {"input_ids": np.zeros((1, 8), np.int64)}, runs=10)
    assert 0 < ms < 1000
