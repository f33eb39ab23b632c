"""Two-level block scales: a float32 per column times a small integer per block (W4A8 per token)."""
from __future__ import annotations

import numpy as np

MAX_BLOCK_SCALE = 127
"""The largest integer block scale (7 bits: an int8 operand of the kernels)."""


def factor_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(ws N float32, wsi blocks x N int32 in 1..MAX_BLOCK_SCALE) with ws[n] * wsi[b][n] == scales[b][n]
    exactly in float32, for *scales* blocks x N; None when some column has no such factoring.
    Per column, ws is the largest candidate max(scales) / k, k = 127 .. 1, that divides every
    scale into an integer."""
    s = np.asarray(scales, np.float32)
    nb, N = s.shape
    top = s.max(axis=0)
    ws = np.zeros(N, np.float32)
    wsi = np.zeros((nb, N), np.int32)
    done = np.zeros(N, bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(127, 0, -1):
            cand = (top / np.float32(k)).astype(np.float32)
            i = np.rint(s / cand).astype(np.float32)
            ok = ~done & (cand > 0) & np.all((i >= 1) & (i <= 127) & ((cand * i).astype(np.float32) == s), axis=0)
            ws[ok] = cand[ok]
            wsi[:, ok] = i[:, ok].astype(np.int32)
            done |= ok
            if done.all():
                return ws, wsi
    return None
