"""The qc IR: types, tensors, values, ops, graphs, modules; text printer and parser; verifier."""
from .core import ATTR_KINDS, Attr, Function, Graph, Module, Op, Value
from .dtypes import DType
from .tensor import SparseTensor, Tensor
from .types import (
    Dim,
    MapType,
    NegativeDim,
    OptionalType,
    QuantParams,
    SequenceType,
    SparseTensorType,
    TensorType,
    Type,
    dim_kind,
)

__all__ = [
    "ATTR_KINDS", "Attr", "DType", "Dim", "Function", "Graph", "MapType", "Module", "NegativeDim", "Op",
    "OptionalType", "QuantParams", "SequenceType", "SparseTensor", "SparseTensorType", "Tensor",
    "TensorType", "Type", "Value", "dim_kind",
]
