"""Model inputs for a token model, from token ids: what ``qc eval`` and text calibration feed."""
from __future__ import annotations

from typing import Any

import numpy as np

from qc.errors import QCError

_IDS = "input_ids"


def token_feeds(sess: Any, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                where: str | None = None) -> dict[str, np.ndarray]:
    """Feeds for a token model: ``input_ids`` plus the usual companions (``attention_mask``: given
    or ones, ``token_type_ids``: zeros, ``position_ids``: 0..L-1). Any other input is an error."""
    ids = np.asarray(input_ids, dtype=np.int64)
    feeds: dict[str, np.ndarray] = {}
    for inp in sess.get_inputs():
        if inp.name == _IDS:
            feeds[_IDS] = ids
        elif inp.name == "attention_mask":
            feeds[inp.name] = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int64)
        elif inp.name == "token_type_ids":
            feeds[inp.name] = np.zeros_like(ids)
        elif inp.name == "position_ids":
            feeds[inp.name] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
        elif _is_cache_input(sess, inp.name):
            feeds[inp.name] = _empty_cache(inp, ids.shape[0], where)
        else:
            raise QCError(f"the model has an input '{inp.name}' that qc cannot feed from text",
                          where=where, hint="token models take input_ids and optionally attention_mask, "
                                            "token_type_ids, position_ids, and past_key_values.* (empty)")
    if _IDS not in feeds:
        raise QCError("the model has no 'input_ids' input, so it cannot be fed text", where=where,
                      hint="inputs: " + ", ".join([i.name for i in sess.get_inputs()]))
    for name, value in feeds.items():  # int32 token inputs exist too
        declared = next(i.type for i in sess.get_inputs() if i.name == name)
        if declared == "tensor(int32)":
            feeds[name] = value.astype(np.int32)
    return feeds


def _is_cache_input(sess: Any, name: str) -> bool:
    """A past key/value input: its name holds ``past`` and the model has the matching ``present`` output
    (the naming rule of ``qc.onnx.kv_layout``)."""
    get_outputs = getattr(sess, "get_outputs", None)
    if "past" not in name or get_outputs is None:
        return False
    present = name.replace("past_key_values", "present", 1) if "past_key_values" in name else name.replace(
        "past", "present", 1)
    return any(o.name == present for o in get_outputs())


_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8,
       "tensor(uint8)": np.uint8}


def _empty_cache(inp: Any, batch: int, where: str | None) -> np.ndarray:
    """An empty cache (length 0 on the symbolic axis after the batch), so the whole window is the prompt."""
    shape = [batch]
    for dim in list(inp.shape)[1:]:
        shape.append(dim if isinstance(dim, int) else 0)
    if shape.count(0) != 1 or inp.type not in _NP:
        raise QCError(f"cannot make an empty cache for input '{inp.name}' {list(inp.shape)} {inp.type}", where=where,
                      hint="cache inputs are [batch, heads, past, head_dim] with static heads and head size")
    return np.zeros(shape, dtype=_NP[inp.type])
