"""Constant tensor payloads, loaded lazily.

A :class:`Tensor` holds one of: a numpy array, an ONNX ``TensorProto`` not yet decoded
(possibly with external data still on disk), a lazy reader into a weights sidecar, or an
*elided* placeholder from text IR printed without its weights, which fails loudly when read.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable

import numpy as np
from onnx import TensorProto, numpy_helper

from .dtypes import DType
from .errors import QCError


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
    def from_array(cls, array: np.ndarray, dtype: DType | None = None) -> Tensor:
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
    def from_proto(cls, proto: TensorProto, base_dir: str | None = None) -> Tensor:
        """Wrap a TensorProto without decoding it; external data stays on disk."""
        t = cls(DType(proto.data_type), tuple(proto.dims))
        t._proto = proto
        t._base_dir = base_dir
        return t

    @classmethod
    def lazy(cls, dtype: DType, shape: tuple[int, ...], loader: Callable[[], np.ndarray]) -> Tensor:
        t = cls(dtype, shape)
        t._loader = loader
        return t

    @classmethod
    def elided(cls, dtype: DType, shape: tuple[int, ...], key: str) -> Tensor:
        t = cls(dtype, shape)
        t._elided_key = key
        return t

    # -- queries -----------------------------------------------------------------------
    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return (self.size * self.dtype.bits + 7) // 8

    @property
    def is_elided(self) -> bool:
        return self._elided_key is not None

    @property
    def is_loaded(self) -> bool:
        """True when the data is in memory (file-backed data never is: it is read per use)."""
        return self._array is not None

    @property
    def external_location(self) -> str | None:
        """The external-data file of an undecoded ONNX tensor, else None."""
        if self._proto is not None and self._proto.data_location == TensorProto.EXTERNAL:
            return {e.key: e.value for e in self._proto.external_data}.get("location")
        return None

    def numpy(self) -> np.ndarray:
        """The data as an array (bf16/float8/int4 via ml_dtypes).

        Inline data is decoded on first use and kept. Data in a file (ONNX external data, a
        ``.qir`` weights sidecar) is read on every call and not kept, so that a pass walking
        over all weights holds one at a time, not all of them (models over 2 GB)."""
        if self._array is None:
            if self._elided_key is not None:
                raise QCError(
                    f"the data of tensor '{self._elided_key}' was elided when the IR was printed",
                    hint="reload the .qir with its weights sidecar beside it (-o FILE.qir writes both), "
                         "or print with --full",
                )
            if self._loader is not None:
                return np.asarray(self._loader()).reshape(self.shape)
            assert self._proto is not None
            if self._proto.data_location == TensorProto.EXTERNAL:
                return read_external(self._proto, self._base_dir).reshape(self.shape)
            self._array = np.asarray(numpy_helper.to_array(self._proto)).reshape(self.shape)
            self._proto = None
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


def check_proto(proto: TensorProto, base_dir: str | None) -> None:
    """Refuse a TensorProto whose data cannot be what its header says, without decoding
    large data: an unknown element type, negative dimensions, inline data of the wrong size,
    or external data that is missing, too short, or outside ``base_dir``."""
    name = f"tensor '{proto.name}'" if proto.name else "a tensor"
    try:
        dtype = DType(proto.data_type)
    except ValueError:
        raise QCError(f"{name} has unknown element type code {proto.data_type}",
                      hint="the model is corrupt, or needs a newer onnx than this qc knows") from None
    if any(d < 0 for d in proto.dims):
        raise QCError(f"{name} has a negative dimension {list(proto.dims)}")
    size = math.prod(proto.dims)
    nbytes = (size * dtype.bits + 7) // 8
    if proto.data_location == TensorProto.EXTERNAL:
        if dtype is DType.str:
            raise QCError(f"{name} is a string tensor stored as external data, which ONNX does not allow")
        external_file(proto, base_dir, nbytes)
    elif proto.HasField("raw_data"):
        if dtype is DType.str:
            raise QCError(f"{name} is a string tensor with raw_data, which ONNX does not allow")
        if len(proto.raw_data) != nbytes:
            raise QCError(f"{name} is {dtype}{list(proto.dims)} = {nbytes} bytes, but its raw_data has "
                          f"{len(proto.raw_data)}", hint="the model is corrupt (truncated or edited)")
    else:
        try:
            decoded = numpy_helper.to_array(proto)
        except Exception:  # numpy_helper raises ValueError, TypeError or KeyError on bad field contents
            decoded = None
        if decoded is None or decoded.size != size:
            raise QCError(f"{name} is {dtype}{list(proto.dims)} ({size} elements), but its data fields do not "
                          "hold that many values of that type", hint="the model is corrupt (truncated or edited)")


def external_file(proto: TensorProto, base_dir: str | None, nbytes: int) -> tuple[str, int]:
    """``(path, offset)`` of a tensor's external data, checked: the location is a relative path
    that stays inside ``base_dir`` (the model's directory) after resolving ``..`` and symlinks,
    names a regular file, and the file holds ``nbytes`` bytes from the offset."""
    name = f"tensor '{proto.name}'" if proto.name else "a tensor"
    info = {e.key: e.value for e in proto.external_data}
    location = info.get("location", "")
    if not location:
        raise QCError(f"{name} is marked as external data but names no file (no 'location' key)")
    base = os.path.realpath(base_dir if base_dir else os.getcwd())
    if "\0" in location or os.path.isabs(location) or location.startswith(("\\", "/")):
        raise QCError(f"{name} points to external data at the absolute path '{location}', which qc refuses",
                      hint="external data must be a relative path inside the model's directory")
    path = os.path.realpath(os.path.join(base, location))
    if os.path.commonpath([base, path]) != base:
        raise QCError(f"{name} points to external data '{location}' outside the model's directory, which qc refuses",
                      hint="external data must be a relative path inside the model's directory (no '..', no "
                           "symlink leading out)")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise QCError(f"{name} has a non-numeric external data offset or length "
                      f"({info.get('offset')!r}, {info.get('length')!r})") from None
    if offset < 0 or (length is not None and length < 0):
        raise QCError(f"{name} has a negative external data offset or length ({offset}, {length})")
    if not os.path.exists(path):
        raise QCError(f"{name} keeps its data in '{location}', which does not exist beside the model",
                      hint="copy the external data file next to the .onnx file")
    if not os.path.isfile(path):
        raise QCError(f"{name} keeps its data in '{location}', which is not a regular file")
    if length is not None and length != nbytes:
        raise QCError(f"{name} is {nbytes} bytes, but its external data length says {length}",
                      hint="the model is corrupt, or its data file belongs to another model")
    size = os.path.getsize(path)
    if offset + nbytes > size:
        raise QCError(f"{name} needs bytes {offset}..{offset + nbytes} of '{location}', which has only {size}",
                      hint="the external data file is truncated or belongs to another model")
    return path, offset


def read_external(proto: TensorProto, base_dir: str | None) -> np.ndarray:
    """A tensor's external data, checked as :func:`external_file` does and read with one copy."""
    dtype = DType(proto.data_type)
    shape = tuple(int(d) for d in proto.dims)
    nbytes = (math.prod(shape) * dtype.bits + 7) // 8
    path, offset = external_file(proto, base_dir, nbytes)
    with open(path, "rb") as f:
        f.seek(offset)
        raw = np.fromfile(f, dtype=np.uint8, count=nbytes)
    if dtype.bits % 8 == 0 and dtype.numpy.kind in "fiubc" and dtype.numpy.itemsize * 8 == dtype.bits:
        little: np.dtype = dtype.numpy.newbyteorder("<")  # numpy's stubs give Any here
        return raw.view(little).astype(dtype.numpy, copy=False).reshape(shape)
    return numpy_helper.to_array(TensorProto(data_type=int(dtype), dims=list(shape), raw_data=raw.tobytes()))


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
