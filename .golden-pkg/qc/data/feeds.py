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
        else:
            raise QCError(f"the model has an input '{inp.name}' that qc cannot feed from text",
                          where=where, hint="token models take input_ids and optionally attention_mask, "
                                            "token_type_ids, position_ids")
    if _IDS not in feeds:
        raise QCError("the model has no 'input_ids' input, so it cannot be fed text", where=where,
                      hint="inputs: " + ", ".join([i.name for i in sess.get_inputs()]))
    for name, value in feeds.items():  # int32 token inputs exist too
        declared = next(i.type for i in sess.get_inputs() if i.name == name)
        if declared == "tensor(int32)":
            feeds[name] = value.astype(np.int32)
    return feeds
