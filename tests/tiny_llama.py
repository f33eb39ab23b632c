"""A tiny random-weight Llama decoder in SmolLM2's ONNX layout (qc.models.smollm2.make_model with
its own LlamaConfig): grouped-query attention with Reshape-grouped queries, cached rotary tables,
the Optimum KV-cache inputs, so the C decode runtime's passes see what they see on SmolLM2.

    write(path, kv_cache=True)   # vocab 512, hidden 128, 2 layers, 4 query / 2 key-value heads

Its float32 weights are 1.7 MB (fits 2 MB of flash), int8 about 0.45 MB.
"""
from __future__ import annotations

import numpy as np
import onnx

from qc.models.smollm2 import LlamaConfig, make_model

CONFIG = LlamaConfig(layers=2, hidden=128, intermediate=256, heads=4, kv_heads=2, head_dim=32, rope_theta=10000.0,
                     rms_eps=1e-5, vocab=512, context_length=256)


def weights(config: LlamaConfig = CONFIG, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under the GGUF names and shapes ([out, in]) that make_model reads; the
    embeddings are unit-scale and the projections 1/sqrt(fan-in), so the logits spread and greedy
    decoding wanders over the vocabulary instead of settling on one token."""
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def gain(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    h, kv = config.hidden, config.kv_heads * config.head_dim
    w = {"token_embd.weight": rng.standard_normal((config.vocab, h)).astype(np.float32),
         "output_norm.weight": gain(h), "output.weight": matrix(config.vocab, h)}
    for i in range(config.layers):
        p = f"blk.{i}."
        ffn = config.intermediate
        w |= {p + "attn_norm.weight": gain(h), p + "ffn_norm.weight": gain(h),
              p + "attn_q.weight": matrix(h, h), p + "attn_k.weight": matrix(kv, h), p + "attn_v.weight": matrix(kv, h),
              p + "attn_output.weight": matrix(h, h), p + "ffn_gate.weight": matrix(ffn, h),
              p + "ffn_up.weight": matrix(ffn, h), p + "ffn_down.weight": matrix(h, ffn)}
    return w


def write(path: str, *, kv_cache: bool = True, config: LlamaConfig = CONFIG, seed: int = 0) -> None:
    onnx.save(make_model(weights(config, seed), kv_cache=kv_cache, config=config), path)


def calibration(model_path: str, out_dir: str, *, windows: int = 4, seq: int = 20, steps: int = 4,
                seed: int = 1) -> str:
    """A --calib directory (one .npz per sample) for the KV-cache model at *model_path*, as
    ``--calib-text`` makes them for SmolLM2 (qc.calib.data.kv_from_text): per window of *seq*
    random token ids, its prefill (empty cache) and *steps* one-token decode steps against the
    cache onnxruntime wrote for the float model."""
    import os

    import onnxruntime as ort

    model = onnx.load(model_path)
    layers = sum(1 for i in model.graph.input if i.name.startswith("past_key_values.") and i.name.endswith(".key"))
    dims = [d.dim_value for d in model.graph.input[3].type.tensor_type.shape.dim]  # [batch, kv_heads, past, d]
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    presents = [f"present.{i}.{k}" for i in range(layers) for k in ("key", "value")]
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    for w in range(windows):
        ids = rng.integers(0, int(model.graph.output[0].type.tensor_type.shape.dim[2].dim_value), seq)
        cache = [np.zeros((1, dims[1], 0, dims[3]), np.float32) for _ in presents]
        start = 0
        for j, end in enumerate([seq - steps, *range(seq - steps + 1, seq + 1)]):
            feed = {"input_ids": ids[None, start:end].astype(np.int64),
                    "attention_mask": np.ones((1, end), np.int64),
                    "position_ids": np.arange(start, end, dtype=np.int64)[None],
                    **{p.replace("present", "past_key_values"): c for p, c in zip(presents, cache)}}
            np.savez(os.path.join(out_dir, f"w{w}-{j}.npz"), **feed)
            cache = session.run(presents, feed)
            start = end
    return out_dir
