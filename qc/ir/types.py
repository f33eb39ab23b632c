"""Value types: tensors with symbolic shapes, sequences, optionals, maps, sparse tensors.

Text forms (see docs/ir.md): ``f32[1, N, ?]`` (``N`` symbolic, ``?`` unknown, ``-1`` a negative
``dim_value`` kept as written: dynamic), ``f32[*]``
(unknown rank), ``f32[]`` (scalar), ``seq<T>``, ``opt<T>``, ``map<i64, T>``, ``sparse<T>``,
``?`` (nothing known). A tensor type may carry quantization parameters: ``i8[64] q(scale = 0.5, zp = 0)``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .dtypes import DType


class QuantRef(Protocol):
    """What quantization parameters refer to: a ``qc.ir.Value`` (a const or an op's result). A
    protocol, so that this module needs nothing of ``core`` (which imports it)."""

    name: str
    const: Any
    type: Any

@dataclass(frozen=True)
class NegativeDim:
    """A negative ``dim_value`` (``-1``, as some exporters write a dynamic batch): onnxruntime
    treats it as dynamic, and so does qc (``dim_kind`` says ``anonymous``). Kept, not turned into
    None, so that an ONNX -> IR -> ONNX round trip writes back the ``-1`` it read."""

    value: int = -1

    def __str__(self) -> str:
        return str(self.value)


Dim = int | str | NegativeDim | None
"""A dimension: a size, a symbolic name, a negative ``dim_value`` (dynamic), or None when unknown."""

DimKind = Literal["static", "symbol", "anonymous"]

_ANONYMOUS_NAME = re.compile(r"\?*\Z|unk__\d+\Z")


def dim_kind(d: Dim) -> DimKind:
    """What a dimension says about its size, for every check that compares sizes:

    - ``static``: a size (an int >= 0);
    - ``symbol``: a ``dim_param`` naming a size that every dimension with that name shares
      (``batch``, ``seq_len``);
    - ``anonymous``: dynamic and independent of every other dimension: None, a negative
      ``dim_value`` (``-1``), and the ``dim_param``s that name nothing (``""``, ``?`` as some
      exporters write for every unknown dimension, ``unk__3`` as onnx shape inference invents).
    """
    if isinstance(d, int) and not isinstance(d, bool):
        return "static" if d >= 0 else "anonymous"
    if isinstance(d, str):
        return "anonymous" if _ANONYMOUS_NAME.match(d) else "symbol"
    return "anonymous"


def is_static_dim(d: Dim) -> bool:
    """``d`` is a size (``dim_kind(d) == "static"``)."""
    return dim_kind(d) == "static"


def shared_symbol(d: Dim) -> str | None:
    """The name ``d`` shares its size under, or None (a size, or an anonymous dimension)."""
    return d if isinstance(d, str) and dim_kind(d) == "symbol" else None


def dim_from_int(n: int) -> Dim:
    """An ONNX ``dim_value`` as a Dim: negative ones become :class:`NegativeDim`."""
    return n if n >= 0 else NegativeDim(n)


def static_size(shape: tuple[Dim, ...] | None, unknown: int | None = None) -> int | None:
    """Elements of a shape; dimensions that are not static count as ``unknown`` (None: the size is
    unknown)."""
    if shape is None:
        return None
    size = 1
    for d in shape:
        if isinstance(d, int) and is_static_dim(d):
            size *= d
        elif unknown is None:
            return None
        else:
            size *= unknown
    return size


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of a tensor: real = (q - zero_point) * scale.

    ``scale`` / ``zero_point`` are numbers (per-tensor) or the Values holding them: consts with
    one element per channel (``axis``) or per block (``axis`` + ``block_size``), or the results
    of the op computing them (``DynamicQuantizeLinear``). Values compare by identity, and the
    verifier checks that they are defined and fit the quantized tensor.
    """

    scale: float | QuantRef
    zero_point: int | QuantRef = 0
    axis: int | None = None
    block_size: int | None = None

    def values(self) -> tuple[QuantRef, ...]:
        """The Values among scale and zero point (none for numeric per-tensor parameters)."""
        return tuple(x for x in (self.scale, self.zero_point) if not isinstance(x, (int, float)))


@dataclass(frozen=True)
class TensorType:
    dtype: DType | None
    shape: tuple[Dim, ...] | None = None
    quant: QuantParams | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(is_static_dim(d) for d in self.shape)

    def with_shape(self, shape: tuple[Dim, ...] | None) -> TensorType:
        return TensorType(self.dtype, shape, self.quant)


@dataclass(frozen=True)
class SparseTensorType:
    dtype: DType | None
    shape: tuple[Dim, ...] | None = None


@dataclass(frozen=True)
class SequenceType:
    elem: Type


@dataclass(frozen=True)
class OptionalType:
    elem: Type


@dataclass(frozen=True)
class MapType:
    key: DType
    value: Type


Type = TensorType | SparseTensorType | SequenceType | OptionalType | MapType | None
"""A value's type; None means nothing is known."""
