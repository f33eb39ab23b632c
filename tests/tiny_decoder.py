"""A tiny Llama-architecture decoder with random weights, in the Optimum KV-cache layout, built
independently of qc.models.smollm2 (other structure, other node and weight names) so that
tests show qc's KV-cache support depends on the layout only, not on qc having built the model.

Differences from qc's SmolLM2 builder, on purpose: interleaved-pair rotary embeddings computed
from ``position_ids`` with Sin/Cos at run time (no tables); grouped-query attention by tiling
the key/value heads (``Tile``, not ``Expand``); the 1/sqrt(d) scale applied to the queries;
an optional sliding window in the mask; tied input/output embeddings; RMSNorm as
``x * (1 / sqrt(mean(x^2) + eps))``; weights named ``dec.{i}.wq`` etc.; a fused ``wqkv``.
:func:`reference` is the numpy forward pass it must match.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class TinyConfig:
    vocab: int = 49152
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 96
    theta: float = 10000.0
    eps: float = 1e-5
    window: int | None = None    # sliding-window attention: keys within the last `window` slots

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def weights(cfg: TinyConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = {"tok": rng.normal(0, 0.5, (cfg.vocab, cfg.hidden)).astype(np.float32),
         "final_gain": (1 + 0.1 * rng.normal(size=cfg.hidden)).astype(np.float32)}
    kv = cfg.kv_heads * cfg.head_dim
    for i in range(cfg.layers):
        scale = 1 / np.sqrt(cfg.hidden)
        w[f"dec.{i}.wqkv"] = rng.normal(0, scale, (cfg.hidden, cfg.hidden + 2 * kv)).astype(np.float32)
        w[f"dec.{i}.wo"] = rng.normal(0, scale, (cfg.hidden, cfg.hidden)).astype(np.float32)
        w[f"dec.{i}.w_gate"] = rng.normal(0, scale, (cfg.hidden, cfg.ffn)).astype(np.float32)
        w[f"dec.{i}.w_up"] = rng.normal(0, scale, (cfg.hidden, cfg.ffn)).astype(np.float32)
        w[f"dec.{i}.w_down"] = rng.normal(0, 1 / np.sqrt(cfg.ffn), (cfg.ffn, cfg.hidden)).astype(np.float32)
        w[f"dec.{i}.g_attn"] = (1 + 0.1 * rng.normal(size=cfg.hidden)).astype(np.float32)
        w[f"dec.{i}.g_mlp"] = (1 + 0.1 * rng.normal(size=cfg.hidden)).astype(np.float32)
    return w


def model(cfg: TinyConfig, w: dict[str, np.ndarray]) -> ModelProto:
    nodes: list = []
    inits = [numpy_helper.from_array(a, k) for k, a in w.items()]
    count = [0]

    def n(op: str, ins: list[str], **attrs) -> str:
        count[0] += 1
        out = f"t{count[0]}"
        nodes.append(helper.make_node(op, ins, [out], name=f"n{count[0]}_{op}", **attrs))
        return out

    def c(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    d, half = cfg.head_dim, cfg.head_dim // 2
    c("k_eps", np.float32(cfg.eps))
    c("k_inv_freq", (cfg.theta ** -(np.arange(half) * 2.0 / d)).astype(np.float32))
    c("k_qscale", np.float32(1 / np.sqrt(d)))
    c("k_neg", np.float32(-1e9))
    c("k_one_i", np.int64(1))
    c("k_zero_i", np.int64(0))
    c("k_ax0", np.array([0], np.int64))
    c("k_ax1", np.array([1], np.int64))
    c("k_ax_last", np.array([-1], np.int64))
    c("k_pair_shape", np.array([0, 0, 0, half, 2], np.int64))
    c("k_merge_pairs", np.array([0, 0, 0, d], np.int64))
    c("k_tile", np.array([1, cfg.heads // cfg.kv_heads, 1, 1], np.int64))
    c("k_split_qkv", np.array([cfg.hidden, cfg.kv_heads * d, cfg.kv_heads * d], np.int64))
    c("k_q_shape", np.array([0, 0, cfg.heads, d], np.int64))
    c("k_kv_shape", np.array([0, 0, cfg.kv_heads, d], np.int64))
    c("k_hidden_shape", np.array([0, 0, cfg.hidden], np.int64))

    def rms(x: str, gain: str) -> str:
        inv = n("Reciprocal", [n("Sqrt", [n("Add", [n("ReduceMean", [n("Mul", [x, x]), "k_ax_last"], keepdims=1),
                                                    "k_eps"])])])
        return n("Mul", [n("Mul", [x, inv]), gain])

    # angles [b, 1, s, half] from position_ids; cos/sin broadcast over heads
    pos = n("Cast", [n("Unsqueeze", ["position_ids", "k_ax_last"])], to=TensorProto.FLOAT)
    angles = n("Unsqueeze", [n("Mul", [pos, "k_inv_freq"]), "k_ax1"])
    cos, sin = n("Cos", [angles]), n("Sin", [angles])

    def rope(x: str) -> str:  # interleaved pairs (2i, 2i+1)
        pairs = n("Reshape", [x, "k_pair_shape"])
        even, odd = pairs + "_even", pairs + "_odd"
        nodes.append(helper.make_node("Split", [pairs], [even, odd], axis=-1, num_outputs=2, name=pairs + "_split"))
        e, o = n("Squeeze", [even, "k_ax_last"]), n("Squeeze", [odd, "k_ax_last"])
        re = n("Sub", [n("Mul", [e, cos]), n("Mul", [o, sin])])
        ro = n("Add", [n("Mul", [e, sin]), n("Mul", [o, cos])])
        stacked = n("Concat", [n("Unsqueeze", [re, "k_ax_last"]), n("Unsqueeze", [ro, "k_ax_last"])], axis=-1)
        return n("Reshape", [stacked, "k_merge_pairs"])

    # mask [b, 1, s, total]: causal in cache slots, padding from attention_mask, optional window
    seq = n("Gather", [n("Shape", ["input_ids"]), "k_one_i"], axis=0)
    total = n("Gather", [n("Shape", ["attention_mask"]), "k_one_i"], axis=0)
    q_slot = n("Unsqueeze", [n("Range", [n("Sub", [total, seq]), total, "k_one_i"]), "k_ax1"])
    k_slot = n("Unsqueeze", [n("Range", ["k_zero_i", total, "k_one_i"]), "k_ax0"])
    blocked = n("Greater", [k_slot, q_slot])
    if cfg.window is not None:
        c("k_window", np.int64(cfg.window))
        blocked = n("Or", [blocked, n("LessOrEqual", [k_slot, n("Sub", [q_slot, "k_window"])])])
    pad = n("Equal", [n("Unsqueeze", [n("Unsqueeze", ["attention_mask", "k_ax1"]), "k_ax1"]), "k_zero_i"])
    bias = n("Where", [n("Or", [blocked, pad]), "k_neg", n("Cast", ["k_zero_i"], to=TensorProto.FLOAT)])

    x = n("Gather", ["tok", "input_ids"], axis=0)
    presents = []
    for i in range(cfg.layers):
        h = rms(x, f"dec.{i}.g_attn")
        qkv = n("MatMul", [h, f"dec.{i}.wqkv"])
        nodes.append(helper.make_node("Split", [qkv, "k_split_qkv"], [f"q{i}", f"k{i}", f"v{i}"], axis=-1,
                                      name=f"split_qkv_{i}"))
        q = rope(n("Transpose", [n("Reshape", [f"q{i}", "k_q_shape"])], perm=[0, 2, 1, 3]))
        k = rope(n("Transpose", [n("Reshape", [f"k{i}", "k_kv_shape"])], perm=[0, 2, 1, 3]))
        v = n("Transpose", [n("Reshape", [f"v{i}", "k_kv_shape"])], perm=[0, 2, 1, 3])
        nodes.append(helper.make_node("Concat", [f"past_key_values.{i}.key", k], [f"present.{i}.key"], axis=2,
                                      name=f"cache_k_{i}"))
        nodes.append(helper.make_node("Concat", [f"past_key_values.{i}.value", v], [f"present.{i}.value"], axis=2,
                                      name=f"cache_v_{i}"))
        presents += [f"present.{i}.key", f"present.{i}.value"]
        keys = n("Tile", [f"present.{i}.key", "k_tile"])
        values = n("Tile", [f"present.{i}.value", "k_tile"])
        # Tile repeats the kv heads as [kv0, kv1, kv0, kv1]: query head j reads kv head j % kv_heads
        scores = n("Add", [n("MatMul", [n("Mul", [q, "k_qscale"]), n("Transpose", [keys], perm=[0, 1, 3, 2])]), bias])
        ctx = n("MatMul", [n("Softmax", [scores], axis=-1), values])
        merged = n("Reshape", [n("Transpose", [ctx], perm=[0, 2, 1, 3]), "k_hidden_shape"])
        x = n("Add", [x, n("MatMul", [merged, f"dec.{i}.wo"])])
        h = rms(x, f"dec.{i}.g_mlp")
        gate = n("MatMul", [h, f"dec.{i}.w_gate"])
        act = n("Mul", [gate, n("Sigmoid", [gate])])
        x = n("Add", [x, n("MatMul", [n("Mul", [act, n("MatMul", [h, f"dec.{i}.w_up"])]), f"dec.{i}.w_down"])])
    final = rms(x, "final_gain")
    nodes.append(helper.make_node("MatMul", [final, n("Transpose", ["tok"], perm=[1, 0])], ["logits"], name="lm"))

    kv_shape = ["b", cfg.kv_heads, "past", d]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "all"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["b", "s"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", cfg.vocab])]
    for i in range(cfg.layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT,
                                                         ["b", cfg.kv_heads, "all", d]))
    graph = helper.make_graph(nodes, "tiny_decoder", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tests.tiny_decoder",
                             ir_version=9)


def reference(cfg: TinyConfig, w: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Logits [seq, vocab] of one sequence, float64 numpy, no cache."""
    d, s = cfg.head_dim, len(ids)
    x = w["tok"][ids].astype(np.float64)
    freq = cfg.theta ** -(np.arange(d // 2) * 2.0 / d)
    ang = np.arange(s)[:, None] * freq[None]

    def rms(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + cfg.eps) * g

    def rope(t):  # [heads, s, d]
        e, o = t[..., 0::2], t[..., 1::2]
        out = np.empty_like(t)
        out[..., 0::2] = e * np.cos(ang) - o * np.sin(ang)
        out[..., 1::2] = e * np.sin(ang) + o * np.cos(ang)
        return out

    slots = np.arange(s)
    visible = slots[None, :] <= slots[:, None]
    if cfg.window is not None:
        visible &= slots[None, :] > slots[:, None] - cfg.window
    kvd = cfg.kv_heads * d
    for i in range(cfg.layers):
        h = rms(x, w[f"dec.{i}.g_attn"]) @ w[f"dec.{i}.wqkv"]
        q = rope(h[:, :cfg.hidden].reshape(s, cfg.heads, d).transpose(1, 0, 2))
        k = rope(h[:, cfg.hidden:cfg.hidden + kvd].reshape(s, cfg.kv_heads, d).transpose(1, 0, 2))
        v = h[:, cfg.hidden + kvd:].reshape(s, cfg.kv_heads, d).transpose(1, 0, 2)
        ctx = np.empty((cfg.heads, s, d))
        for head in range(cfg.heads):
            kv = head % cfg.kv_heads
            sc = np.where(visible, q[head] @ k[kv].T / np.sqrt(d), -np.inf)
            p = np.exp(sc - sc.max(-1, keepdims=True))
            ctx[head] = (p / p.sum(-1, keepdims=True)) @ v[kv]
        x = x + ctx.transpose(1, 0, 2).reshape(s, cfg.hidden) @ w[f"dec.{i}.wo"]
        h = rms(x, w[f"dec.{i}.g_mlp"])
        gate = h @ w[f"dec.{i}.w_gate"]
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w[f"dec.{i}.w_up"])) @ w[f"dec.{i}.w_down"]
    return (rms(x, w["final_gain"]) @ w["tok"].T).astype(np.float32)
