"""Element types: every ONNX tensor dtype, with a short text name and its numpy dtype."""
from __future__ import annotations

import builtins
import enum

import numpy as np
from onnx import TensorProto, helper


class DType(enum.IntEnum):
    """An ONNX tensor element type; the value is the ``TensorProto.DataType`` code."""

    f32 = TensorProto.FLOAT
    u8 = TensorProto.UINT8
    i8 = TensorProto.INT8
    u16 = TensorProto.UINT16
    i16 = TensorProto.INT16
    i32 = TensorProto.INT32
    i64 = TensorProto.INT64
    str = TensorProto.STRING
    bool = TensorProto.BOOL
    f16 = TensorProto.FLOAT16
    f64 = TensorProto.DOUBLE
    u32 = TensorProto.UINT32
    u64 = TensorProto.UINT64
    c64 = TensorProto.COMPLEX64
    c128 = TensorProto.COMPLEX128
    bf16 = TensorProto.BFLOAT16
    f8e4m3fn = TensorProto.FLOAT8E4M3FN
    f8e4m3fnuz = TensorProto.FLOAT8E4M3FNUZ
    f8e5m2 = TensorProto.FLOAT8E5M2
    f8e5m2fnuz = TensorProto.FLOAT8E5M2FNUZ
    u4 = TensorProto.UINT4
    i4 = TensorProto.INT4
    f4e2m1 = TensorProto.FLOAT4E2M1
    f8e8m0 = TensorProto.FLOAT8E8M0
    u2 = TensorProto.UINT2
    i2 = TensorProto.INT2
    f6e2m3 = TensorProto.FLOAT6E2M3
    f6e3m2 = TensorProto.FLOAT6E3M2

    @property
    def numpy(self) -> np.dtype:
        """The numpy (or ml_dtypes) dtype that holds one element."""
        return _NUMPY[self]

    @property
    def bits(self) -> int:
        """Storage bits per element (4 for int4, 8 * itemsize otherwise; 0 for strings)."""
        return _BITS[self]

    @property
    def is_float(self) -> builtins.bool:
        return self.name[0] == "f" or self is DType.bf16

    @property
    def is_integer(self) -> builtins.bool:
        return self.name[0] in "iu"

    @classmethod
    def parse(cls, name: builtins.str) -> DType:
        try:
            return cls[name]
        except KeyError:
            raise ValueError(f"unknown dtype '{name}'") from None

    @classmethod
    def from_numpy(cls, dtype: np.dtype) -> DType:
        return cls(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def __str__(self) -> builtins.str:
        return self.name


_NUMPY = {d: np.dtype(helper.tensor_dtype_to_np_dtype(d.value)) for d in DType}
_BITS = {d: 0 if d is DType.str else (4 if d in (DType.i4, DType.u4, DType.f4e2m1) else
         2 if d in (DType.i2, DType.u2) else 6 if d in (DType.f6e2m3, DType.f6e3m2) else
         8 * _NUMPY[d].itemsize) for d in DType}
