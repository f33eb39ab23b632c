"""Constant tensor payloads, loaded lazily.

A :class:`Tensor` holds one of: a numpy array, an ONNX ``TensorProto`` not yet decoded
(possibly with external data still on disk), a lazy reader into a weights sidecar, or an
*elided* placeholder from text IR printed without its weights, which fails loudly when read.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
from onnx import TensorProto, numpy_helper

from ..errors import QCError
from .dtypes import DType


class Tensor:
    """A dense constant of a known dtype and static shape."""

    __slots__ = ("dtype", "shape", "_array", "_proto", "_base_dir", "_loader", "_elided_key")

    def __init__(self, dtype: DType, shape: tuple[int, ...]):
        self.dtype = dtype
        self.shape = tuple(int(d) for d in shape)
        self._array: np.ndarray | None = None
        self._proto: TensorProto | None = None
        self._base_dir: str | None = None
        self._loader: Callable[[], np.ndarray] | None = None
        self._elided_key: str | None = None

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def from_array(cls, array: np.ndarray, dtype: DType | None = None) -> "Tensor":
        array = np.asarray(array)
        if dtype is None:
            dtype = DType.str if array.dtype.kind in "OSU" else DType.from_numpy(array.dtype)
        if dtype is DType.str:
            array = array.astype(object)
        elif array.dtype != dtype.numpy:
            array = array.astype(dtype.numpy)
        t = cls(dtype, array.shape)
        t._array = array
        return t

    @classmethod
    def from_proto(cls, proto: TensorProto, base_dir: str | None = None) -> "Tensor":
        """Wrap a TensorProto without decoding it; external data stays on disk."""
        t = cls(DType(proto.data_type), tuple(proto.dims))
        t._proto = proto
        t._base_dir = base_dir
        return t

    @classmethod
    def lazy(cls, dtype: DType, shape: tuple[int, ...], loader: Callable[[], np.ndarray]) -> "Tensor":
        t = cls(dtype, shape)
        t._loader = loader
        return t

    @classmethod
    def elided(cls, dtype: DType, shape: tuple[int, ...], key: str) -> "Tensor":
        t = cls(dtype, shape)
        t._elided_key = key
        return t

    # -- queries -----------------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return (self.size * self.dtype.bits + 7) // 8

    @property
    def is_elided(self) -> bool:
        return self._elided_key is not None

    @property
    def is_loaded(self) -> bool:
        return self._array is not None

    @property
    def external_location(self) -> str | None:
        """The external-data file of an undecoded ONNX tensor, else None."""
        if self._proto is not None and self._proto.data_location == TensorProto.EXTERNAL:
            return {e.key: e.value for e in self._proto.external_data}.get("location")
        return None

    def numpy(self) -> np.ndarray:
        """The data as an array (bf16/float8/int4 via ml_dtypes); loads it on first use."""
        if self._array is None:
            if self._elided_key is not None:
                raise QCError(
                    f"the data of tensor '{self._elided_key}' was elided when the IR was printed",
                    hint="reload the .qir with its weights sidecar beside it, or print with elide_above=None",
                )
            if self._loader is not None:
                array = self._loader()
            else:
                assert self._proto is not None
                array = numpy_helper.to_array(self._proto, self._base_dir or "")
            self._array = np.asarray(array).reshape(self.shape)
            self._proto = None
            self._loader = None
        return self._array

    def raw_bytes(self) -> bytes:
        """Little-endian storage bytes as in ``TensorProto.raw_data`` (int4 packed 2 per byte)."""
        if self.dtype is DType.str:
            raise QCError("string tensors have no raw byte form")
        p = self._proto
        if p is not None and p.data_location != TensorProto.EXTERNAL and p.HasField("raw_data"):
            return p.raw_data
        return numpy_helper.from_array(self.numpy()).raw_data

    def sha256(self) -> str:
        return hashlib.sha256(self.raw_bytes()).hexdigest()

    def to_proto(self, name: str = "") -> TensorProto:
        """An ONNX TensorProto with the data inline."""
        p = self._proto
        if p is not None and p.data_location != TensorProto.EXTERNAL:
            if p.name == name:
                return p
            out = TensorProto()
            out.CopyFrom(p)
            out.name = name
            return out
        out = numpy_helper.from_array(self.numpy(), name)
        if self.dtype is not DType.str and out.data_type != self.dtype:
            out.data_type = self.dtype
        return out

    def __repr__(self) -> str:
        return f"Tensor({self.dtype}{list(self.shape)})"


class SparseTensor:
    """A COO sparse constant: ``values`` [NNZ], ``indices`` [NNZ, rank] or [NNZ], dense ``shape``."""

    __slots__ = ("values", "indices", "shape")

    def __init__(self, values: Tensor, indices: Tensor, shape: tuple[int, ...]):
        self.values, self.indices, self.shape = values, indices, tuple(int(d) for d in shape)

    @property
    def dtype(self) -> DType:
        return self.values.dtype

    @property
    def size(self) -> int:
        return self.values.size + self.indices.size

    def __repr__(self) -> str:
        return f"SparseTensor({self.dtype}{list(self.shape)}, nnz={self.values.size})"
