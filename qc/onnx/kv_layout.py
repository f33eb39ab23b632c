"""Recognize a decoder's key/value-cache interface from its graph inputs and outputs.

The layout that Hugging Face Optimum and onnxruntime-genai's model builder export (and that
``qc models build smollm2-135m --kv-cache`` writes)::

    inputs   input_ids [batch, seq] int64, attention_mask [batch, past + seq] int64,
             position_ids [batch, seq] int64, past_key_values.{i}.key|value [batch, kv_heads, past, head_dim]
    outputs  logits [batch, seq, vocab], present.{i}.key|value [batch, kv_heads, past + seq, head_dim]

Recognition goes by names and shapes, never by who built the model: a cache *pair* is a graph
input whose name holds ``past`` and a graph output named the same with ``past_key_values`` (or
``past``) replaced by ``present``, of the same element type and rank, with one symbolic axis
(the sequence) where the other dims agree. Every such pair is fed back step to step, so extra
per-step state beside the cache (e.g. the scales of an int8 cache, ``...key_scale``) needs no
special case. Other naming is given explicitly with :func:`parse_override`
(``ids=tokens,mask=am,positions=pos,logits=out,past=cache.{i}.{kv},present=new_cache.{i}.{kv}``).

``attention_mask`` and ``position_ids`` are optional (models that take positions from the cache
length); ``input_ids`` and ``logits`` are required.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import ModelProto

from ..errors import QCError

Dim = int | str | None


@dataclass(frozen=True)
class Port:
    """One graph input or output: its name, ONNX element type and dims (int, symbol or None)."""

    name: str
    elem_type: int
    dims: tuple[Dim, ...]

    @property
    def numpy_dtype(self) -> Any:
        return onnx.helper.tensor_dtype_to_np_dtype(self.elem_type)


@dataclass(frozen=True)
class CachePair:
    """A past input fed by the present output of the previous step; ``seq_axis`` grows each step."""

    past: Port
    present: Port
    seq_axis: int
    layer: int | None = None
    kind: str = ""  # "key", "value", or another suffix (e.g. "key_scale")


@dataclass(frozen=True)
class KVLayout:
    """The decoder's step interface: token and position inputs, logits, and the cache pairs."""

    input_ids: Port
    logits: Port
    attention_mask: Port | None
    position_ids: Port | None
    pairs: tuple[CachePair, ...]
    other_inputs: tuple[Port, ...] = field(default=())

    @property
    def layers(self) -> int:
        return len({p.layer for p in self.pairs if p.layer is not None})

    def describe(self) -> str:
        kinds = sorted({p.kind for p in self.pairs})
        key = next((p for p in self.pairs if p.kind == "key"), self.pairs[0])
        dims = ", ".join(str(d) for d in key.past.dims)
        extra = [n for n, p in (("attention_mask", self.attention_mask), ("position_ids", self.position_ids)) if p]
        return (f"KV cache: {self.layers} layers x {'/'.join(kinds)} [{dims}] "
                f"{onnx.helper.tensor_dtype_to_string(key.past.elem_type).removeprefix('TensorProto.')}, "
                f"inputs {', '.join([self.input_ids.name, *extra])}")


_DEFAULT = {"ids": "input_ids", "mask": "attention_mask", "positions": "position_ids", "logits": "logits"}
_OVERRIDE_KEYS = ("ids", "mask", "positions", "logits", "past", "present")


def parse_override(text: str) -> dict[str, str]:
    """``key=value,...`` with keys ids, mask, positions, logits, past, present; ``past`` and
    ``present`` are patterns with ``{i}`` (the layer) and ``{kv}`` (key or value)."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in _OVERRIDE_KEYS or not value:
            raise QCError(f"bad KV layout entry '{item}'",
                          hint="use key=value with keys " + ", ".join(_OVERRIDE_KEYS)
                               + " (past/present: patterns with {i} and {kv})")
        out[key] = value
    if ("past" in out) != ("present" in out):
        raise QCError("a KV layout override needs both past= and present= patterns")
    for key in ("past", "present"):
        if key in out and ("{i}" not in out[key] or "{kv}" not in out[key]):
            raise QCError(f"the {key}= pattern '{out[key]}' needs both {{i}} and {{kv}}")
    return out


def ports(values: Iterable[onnx.ValueInfoProto]) -> list[Port]:
    """Ports of ONNX value infos (tensors only)."""
    result = []
    for v in values:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        result.append(Port(v.name, t.elem_type, dims))
    return result


def recognize(model: ModelProto, override: Mapping[str, str] | None = None, *, where: str = "") -> KVLayout | None:
    """The model's KV layout, or None when it has no cache pair (a plain forward pass).

    Raises QCError when cache pairs exist but the rest of the interface cannot be matched."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [p for p in ports(model.graph.input) if p.name not in initializers]
    return recognize_ports(inputs, ports(model.graph.output), override, where=where)


def recognize_module(module: Any, override: Mapping[str, str] | None = None, *, where: str = "") -> KVLayout | None:
    """:func:`recognize` for a qc IR module (its non-constant graph inputs and its outputs)."""
    from .writer import value_info

    inputs = ports(value_info(v) for v in module.graph.inputs if v.const is None)
    return recognize_ports(inputs, ports(value_info(v) for v in module.graph.outputs), override, where=where)


def module_cache_pairs(module: Any, *, where: str = "") -> list[CachePair]:
    """Only the cache pairs of a qc IR module (the named-pair rule), whatever its other inputs."""
    from .writer import value_info

    inputs = {p.name: p for p in ports(value_info(v) for v in module.graph.inputs if v.const is None)}
    return _named_pairs(inputs, {p.name: p for p in ports(value_info(v) for v in module.graph.outputs)}, where)


def recognize_ports(inputs: Sequence[Port], outputs: Sequence[Port], override: Mapping[str, str] | None = None,
                    *, where: str = "") -> KVLayout | None:
    names = {**_DEFAULT, **(override or {})}
    by_in = {p.name: p for p in inputs}
    by_out = {p.name: p for p in outputs}
    pairs = _override_pairs(names, by_in, by_out, where) if "past" in names else _named_pairs(by_in, by_out, where)
    if not pairs:
        return None
    ids = by_in.get(names["ids"])
    logits = by_out.get(names["logits"])
    if ids is None or logits is None:
        missing = names["ids"] if ids is None else names["logits"]
        raise QCError(f"the model has a key/value cache but no '{missing}'", where=where,
                      hint="name the inputs and outputs with --kv-layout ids=...,logits=...")
    paired = {p.past.name for p in pairs}
    mask, positions = by_in.get(names["mask"]), by_in.get(names["positions"])
    known = paired | {ids.name} | {p.name for p in (mask, positions) if p}
    return KVLayout(ids, logits, mask, positions, tuple(pairs), tuple(p for p in inputs if p.name not in known))


_LAYER = re.compile(r"\.(\d+)\.")


def _present_name(past: str) -> str | None:
    for old in ("past_key_values", "past"):
        if old in past:
            return past.replace(old, "present", 1)
    return None


def _named_pairs(by_in: Mapping[str, Port], by_out: Mapping[str, Port], where: str) -> list[CachePair]:
    pairs = []
    for name, past in by_in.items():
        present_name = _present_name(name)
        if present_name is None or present_name not in by_out:
            continue
        layer = _LAYER.search(name)
        kind = name[layer.end():] if layer else name.rsplit(".", 1)[-1]
        pairs.append(_pair(past, by_out[present_name], int(layer.group(1)) if layer else None, kind, where))
    return pairs


def _override_pairs(names: Mapping[str, str], by_in: Mapping[str, Port], by_out: Mapping[str, Port],
                    where: str) -> list[CachePair]:
    pairs = []
    for layer in range(len(by_in)):
        found = False
        for kind in ("key", "value"):
            past_name = names["past"].format(i=layer, kv=kind)
            present_name = names["present"].format(i=layer, kv=kind)
            if past_name in by_in and present_name in by_out:
                pairs.append(_pair(by_in[past_name], by_out[present_name], layer, kind, where))
                found = True
            elif past_name in by_in or present_name in by_out:
                raise QCError(f"KV layout: '{past_name}' and '{present_name}' must both exist", where=where)
        if not found:
            break
    if not pairs:
        raise QCError(f"KV layout: no input matches '{names['past'].format(i=0, kv='key')}'", where=where)
    return pairs


def _pair(past: Port, present: Port, layer: int | None, kind: str, where: str) -> CachePair:
    if past.elem_type != present.elem_type or len(past.dims) != len(present.dims):
        raise QCError(f"cache input '{past.name}' and output '{present.name}' differ in type or rank", where=where)
    growing = [axis for axis, (a, b) in enumerate(zip(past.dims, present.dims))
               if not isinstance(a, int) and (a != b or a is None) and axis > 0]
    if len(growing) != 1 and len(past.dims) == 4 and all(isinstance(d, int) for d in (past.dims[1], past.dims[3])):
        growing = [2]  # [batch, heads, seq, head_dim] with the sequence dims not named apart
    if len(growing) != 1:
        raise QCError(f"cannot tell the sequence axis of cache input '{past.name}' {list(past.dims)} "
                      f"vs output {list(present.dims)}", where=where,
                      hint="the past and present shapes must differ in exactly one symbolic axis after the batch")
    return CachePair(past, present, growing[0], layer, kind)


# -- int8 caches (passes/quantize_kv_cache.py) as seen from outside ------------------------------

SCALE_SUFFIX = "_scale"


def quantize_cache_feed(feed: Mapping[str, Any], int8_inputs: Iterable[str]) -> dict[str, Any]:
    """A feed with float caches for a model whose caches are int8: each float ``X`` named in
    ``int8_inputs`` becomes int8 codes and ``X_scale`` (per token and head, as the pass rounds)."""
    import numpy as np

    out = dict(feed)
    for name in int8_inputs:
        x = out.get(name)
        if x is None or x.dtype == np.int8:
            continue
        scale = (np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(1e-8)) / np.float32(127.0))
        scale = scale.astype(np.float32)
        out[name] = np.clip(np.round(x / scale), -127, 127).astype(np.int8)
        out[name + SCALE_SUFFIX] = scale
    return out


def dequantize_cache_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Outputs with each int8 ``X`` that has an ``X_scale`` beside it replaced by ``X * X_scale``."""
    import numpy as np

    out = dict(outputs)
    for name, x in outputs.items():
        scale = outputs.get(name + SCALE_SUFFIX)
        if scale is not None and x.dtype == np.int8:
            out[name] = x.astype(np.float32) * scale
    return out
