"""The weights sidecar of a ``.qir`` file: raw tensor bytes at 64-byte aligned offsets.

The text refers to each tensor as ``blob("key", offset = N, bytes = M)``; the layout is the
same as ONNX external data (little-endian, int4 packed two per byte), so the bytes can be
read back lazily with ``numpy.memmap``.
"""
from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

import numpy as np
from onnx import TensorProto, numpy_helper

from .dtypes import DType
from .errors import QCError
from .tensor import Tensor

ALIGN = 64


class SidecarWriter:
    """Collects tensor bytes for a sidecar; ``reference`` is the name the text records."""

    def __init__(self, reference: str):
        self.reference = reference
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, t: Tensor) -> int:
        pad = -self.size % ALIGN
        if pad:
            self.chunks.append(b"\0" * pad)
            self.size += pad
        offset = self.size
        raw = t.raw_bytes()
        self.chunks.append(raw)
        self.size += len(raw)
        return offset

    def write(self, path: str) -> None:
        from .fileio import atomic_write

        with atomic_write(path) as f:
            for chunk in self.chunks:
                f.write(chunk)


class SharedSidecar(SidecarWriter):
    """One sidecar file shared by many ``.qir`` files (the stages of ``--dump-ir-dir``).

    Bytes are appended as tensors are added; a tensor whose bytes are already in the file is
    not written again, so stages that leave most weights alone cost little disk."""

    def __init__(self, path: str):
        super().__init__(os.path.basename(path))
        self.path = path
        self._offsets: dict[tuple[bytes, int], int] = {}
        self._file: BinaryIO | None = None  # created with the first tensor: no elided tensor, no file
        self.added = 0  # tensors added since the last flush

    def add(self, t: Tensor) -> int:
        raw = t.raw_bytes()
        self.added += 1
        key = (hashlib.blake2b(raw, digest_size=16).digest(), len(raw))
        if key not in self._offsets:
            if self._file is None:
                self._file = open(self.path, "wb")
            pad = -self.size % ALIGN
            self._file.write(b"\0" * pad + raw)
            self._offsets[key] = self.size + pad
            self.size += pad + len(raw)
        return self._offsets[key]

    def flush(self) -> int:
        """Make the bytes so far readable; returns how many tensors were added since the last flush."""
        if self._file is not None:
            self._file.flush()
        added, self.added = self.added, 0
        return added

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class SidecarReader:
    """Lazy tensors from a sidecar file."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise QCError("the weights sidecar is missing", where=path,
                          hint="keep the sidecar beside the .qir file (-o FILE.qir writes both), "
                               "or print with --full")
        self.path = path
        self.size = os.path.getsize(path)

    def tensor(self, dtype: DType, shape: tuple[int, ...], offset: int, nbytes: int, key: str) -> Tensor:
        if offset < 0 or offset + nbytes > self.size:
            raise QCError(f"tensor '{key}' lies outside the weights sidecar ({offset}+{nbytes} > {self.size} bytes)",
                          where=self.path)
        t = Tensor(dtype, shape)
        if t.nbytes != nbytes:
            raise QCError(f"tensor '{key}' is {dtype}{list(shape)} = {t.nbytes} bytes, but its blob says {nbytes}",
                          where=self.path)
        path = self.path

        def load() -> np.ndarray:
            raw = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(nbytes,)) if nbytes else b""
            proto = TensorProto(data_type=int(dtype), dims=list(shape), raw_data=bytes(raw))
            return numpy_helper.to_array(proto)

        return Tensor.lazy(dtype, shape, load)
