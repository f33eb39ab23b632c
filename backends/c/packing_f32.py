"""Compile-time packing of constant float32 B operands for qc_sgemm (runtime/qc_sgemm.c).

The layout is the one ``qc_sgemm_pack_b`` writes at run time, the same on every target: B (K x N)
cut into panels of 16 columns; panel p holds K rows of w floats at float offset 16 * p * K, where
w = 16, or for the last panel its width rounded up to 4 (the padding columns are 0). So the
packed matrix is K x roundup(N, 4) floats: at most 3 columns more than B.
"""
from __future__ import annotations

import numpy as np

from qc.errors import QCError

PANEL = 16  # QC_NR in qc_sgemm.c


def packed_size(K: int, N: int) -> int:
    """Floats in the packed form of a K x N matrix (qc_sgemm_packed_size)."""
    return K * ((N + 3) // 4 * 4)


def pack_b(b: np.ndarray) -> np.ndarray:
    """The packed float32 panels of a K x N matrix (1-D, ``packed_size(K, N)`` floats)."""
    b = np.asarray(b)
    if b.ndim != 2:
        raise QCError(f"pack_b expects a 2-D K x N matrix, got shape {b.shape}")
    K, N = b.shape
    b = b.astype(np.float32, copy=False)
    parts = []
    for j0 in range(0, N, PANEL):
        n = min(PANEL, N - j0)
        w = PANEL if n == PANEL else (n + 3) // 4 * 4
        panel = np.zeros((K, w), np.float32)
        panel[:, :n] = b[:, j0:j0 + n]
        parts.append(panel.ravel())
    out = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    assert out.size == packed_size(K, N)
    return out


def pack_batches(b: np.ndarray) -> tuple[np.ndarray, int]:
    """(packed, floats per batch) of a (..., K, N) stack: each K x N matrix packed, one after another."""
    b = np.asarray(b, np.float32)
    K, N = b.shape[-2:]
    mats = b.reshape(-1, K, N)
    return np.concatenate([pack_b(m) for m in mats]), packed_size(K, N)
