"""Value types: tensors with symbolic shapes, sequences, optionals, maps, sparse tensors.

Text forms (see docs/ir.md): ``f32[1, N, ?]`` (``N`` symbolic, ``?`` unknown), ``f32[*]``
(unknown rank), ``f32[]`` (scalar), ``seq<T>``, ``opt<T>``, ``map<i64, T>``, ``sparse<T>``,
``?`` (nothing known). A tensor type may carry quantization parameters: ``i8[64] q(scale = 0.5, zp = 0)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .dtypes import DType


class QuantRef(Protocol):
    """What quantization parameters refer to: a ``qc.ir.Value`` (a const or an op's result). A
    protocol, so that this module needs nothing of ``core`` (which imports it)."""

    name: str
    const: Any
    type: Any

Dim = int | str | None
"""A dimension: a size, a symbolic name, or None when unknown."""


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
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

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
