"""The ``quantize-kv-cache`` pass; its docstring (``qc passes quantize-kv-cache``) lists the rewrite."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qc.errors import QCError
from qc.ir.core import Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType
from qc.onnx.kv_layout import CachePair, module_cache_pairs
from qc.pm import Pass, PassContext, register_pass

from ._scaling import NameTable

_INT8_MAX = 127.0
_ONNX_INT8, _ONNX_FLOAT = 3, 1


@register_pass("quantize-kv-cache")
@dataclass(frozen=True)
class QuantizeKVCache(Pass):
    """quantize-kv-cache: an int8 key/value cache with float32 scales per token and head (one per
    ``group`` features, default 0: the whole head)::

        %present.i.key = onnx.Concat(%past_key_values.i.key, %k_new) {axis = 2}      f32 cache
        (readers of %present.i.key)
            ->
        %s   = Div(Max(ReduceMax(Abs(%k_new), axis -1), 1e-8), 127)       [b, heads, new, 1]
        %q   = Cast<int8>(Clip(Round(Div(%k_new, %s)), -127, 127))
        %present.i.key       = onnx.Concat(%past_key_values.i.key, %q) {axis = 2}            int8
        %present.i.key_scale = onnx.Concat(%past_key_values.i.key_scale, %s) {axis = 2}      f32
        (readers of Mul(Cast<f32>(%present.i.key), %present.i.key_scale))

    The same for values. With ``group=G`` below the head size D, each token's head splits into
    D / G groups of its own scale (the features of one group share a rotary frequency band, so a
    large-magnitude band no longer sets the step of the others)::

        %kg  = Reshape(%k_new, [0, 0, 0, D/G, G])
        %s   = Div(Max(ReduceMax(Abs(%kg), axis -1), 1e-8), 127)            [b, heads, new, D/G, 1]
        %q   = Reshape(Cast<int8>(Clip(Round(Div(%kg, %s)), -127, 127)), [0, 0, 0, D])
        %present.i.key_scale = onnx.Concat(%past_key_values.i.key_scale, Reshape(%s, [0, 0, 0, D/G]))
        (readers of Reshape(Mul(Reshape(Cast<f32>(%present.i.key), [0, 0, 0, D/G, G]),
                                Reshape(%present.i.key_scale, [0, 0, 0, D/G, 1])), [0, 0, 0, D]))

    The cache takes 1/4 of float32's bytes plus 4 bytes per token, head, kind and group
    (head_dim 64, one group: 0.27x; groups of 32: 0.28x; of 16: 0.31x). Per token, so a step
    quantizes only its new rows and never requantizes the cache; the scales are a cache pair of
    their own (``past_key_values.i.key_scale`` -> ``present.i.key_scale``), fed back like the
    cache. Needs the Optimum layout (each present a Concat of its past and the new rows along the
    sequence axis); anything else is an error naming the output.
    """

    group: int = 0
    """features per scale within a head (0: the whole head); must divide the head size"""

    def validate(self) -> None:
        if self.group < 0:
            raise QCError(f"quantize-kv-cache: group must be >= 0 (got {self.group})",
                          hint="0 for one scale per token and head, or a divisor of the head size")

    def run(self, module: Module, ctx: PassContext) -> bool:
        every = module_cache_pairs(module, where=module.graph.name)
        if not every:
            raise QCError("quantize-kv-cache: the model has no key/value cache (past_key_values.* inputs "
                          "with present.* outputs)", hint="build a decoder with --kv-cache")
        if any(p.kind.endswith("_scale") for p in every):
            return False  # already int8
        pairs = [p for p in every if p.kind in ("key", "value")]
        names = NameTable(module.graph)
        opset = module.opset_imports.get("", 17)
        for pair in pairs:
            _quantize_pair(module, pair, names, opset, self.group)
        return True


def _quantize_pair(module: Module, pair: CachePair, names: NameTable, opset: int, group: int) -> None:
    g = module.graph
    past = next(v for v in g.inputs if v.name == pair.past.name)
    present = next(v for v in g.outputs if v.name == pair.present.name)
    concat = present.producer
    if concat is None or concat.op_type != "Concat" or concat.domain or concat.operands[0] is not past \
            or len(concat.operands) != 2 or concat.attr("axis") not in (pair.seq_axis, pair.seq_axis - 4):
        raise QCError(f"quantize-kv-cache: '{present.name}' is not Concat({past.name}, new rows) along the "
                      f"sequence axis", hint="only caches written as the Optimum layout's Concat are quantized")
    if any(u is not concat for u in past.users()):
        raise QCError(f"quantize-kv-cache: the cache input '{past.name}' is read by more than its Concat")
    new = concat.operands[1]
    assert new is not None
    base = present.name

    def const(suffix: str, value: np.ndarray) -> Value:
        return g.add_const(names.fresh(f"{base}.{suffix}"), Tensor.from_array(value))

    def op(op_type: str, operands: list[Value], suffix: str, **attrs: object) -> Value:
        result = Value(names.fresh(f"{base}.{suffix}"))
        g.insert_before(concat, Op(op_type, operands, results=[result], attrs=dict(attrs), name=result.name))
        return result

    shape = past.type.shape if isinstance(past.type, TensorType) else None
    head = shape[-1] if shape else None
    groups = 1
    if group and group != head:
        if not isinstance(head, int) or head % group:
            raise QCError(f"quantize-kv-cache: group={group} does not divide the head size of '{past.name}' "
                          f"({head})", hint="give a divisor of the head size, or 0 for one scale per head")
        groups = head // group
    keep = [0] * (len(shape) - 1) if shape else [0, 0, 0]

    def shape_const(suffix: str, dims: list[int]) -> Value:
        return const(f"{suffix}.shape", np.array(dims, np.int64))

    def reshape(x: Value, dims: list[int], suffix: str) -> Value:
        return op("Reshape", [x, shape_const(suffix, dims)], suffix)

    grouped = new if groups == 1 else reshape(new, keep + [groups, group], "grouped")
    magnitude = op("Abs", [grouped], "abs")
    if opset >= 18:
        peak = op("ReduceMax", [magnitude, const("axes", np.array([-1], np.int64))], "absmax", keepdims=1)
    else:
        peak = op("ReduceMax", [magnitude], "absmax", axes=[-1], keepdims=1)
    floor = op("Max", [peak, const("eps", np.float32(1e-8))], "absmax_floor")
    qmax = const("qmax", np.float32(_INT8_MAX))
    scale = op("Div", [floor, qmax], "scale")
    rounded = op("Round", [op("Div", [grouped, scale], "scaled")], "round")
    clipped = op("Clip", [rounded, const("qmin", np.float32(-_INT8_MAX)), qmax], "clip")
    codes = op("Cast", [clipped], "codes", to=_ONNX_INT8)
    if groups > 1:
        codes = reshape(codes, keep + [head], "codes_flat")
        scale = reshape(scale, keep + [groups], "scale_flat")
    concat.set_operand(1, codes)

    out_shape = present.type.shape if isinstance(present.type, TensorType) else None
    past.type = TensorType(DType.i8, shape)
    present.type = TensorType(DType.i8, out_shape)
    scale_shape = None if shape is None else (*shape[:-1], groups)
    past_scale = Value(names.fresh(f"{past.name}_scale"), TensorType(DType.f32, scale_shape))
    g.inputs.append(past_scale)
    present_scale = Value(names.fresh(f"{present.name}_scale"),
                          TensorType(DType.f32, None if out_shape is None else (*out_shape[:-1], groups)))
    readers = [(u, i) for u in present.users() for i, v in enumerate(u.operands) if v is present]

    def fresh(suffix: str) -> Value:
        return Value(names.fresh(f"{base}.{suffix}"))

    dequant_cast = fresh("dequantized_codes")
    after = [Op("Concat", [past_scale, scale], results=[present_scale], attrs={"axis": concat.attr("axis")},
                name=present_scale.name),
             Op("Cast", [present], results=[dequant_cast], attrs={"to": _ONNX_FLOAT}, name=dequant_cast.name)]
    if groups == 1:
        dequantized = fresh("dequantized")
        after.append(Op("Mul", [dequant_cast, present_scale], results=[dequantized], name=dequantized.name))
    else:
        codes_g, scale_g, product, dequantized = (fresh(n) for n in ("dequantized_grouped", "scale_grouped",
                                                                      "dequantized_product", "dequantized"))
        after += [Op("Reshape", [dequant_cast, shape_const("dequantized_grouped", keep + [groups, group])],
                     results=[codes_g], name=codes_g.name),
                  Op("Reshape", [present_scale, shape_const("scale_grouped", keep + [groups, 1])],
                     results=[scale_g], name=scale_g.name),
                  Op("Mul", [codes_g, scale_g], results=[product], name=product.name),
                  Op("Reshape", [product, shape_const("dequantized", keep + [head])], results=[dequantized],
                     name=dequantized.name)]
    anchor = concat
    for new_op in after:
        g.insert_after(anchor, new_op)
        anchor = new_op
    for user, index in readers:
        user.set_operand(index, dequantized)
    g.add_output(present_scale)
