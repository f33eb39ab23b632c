"""A quantized model whose every quantized unit can be switched back to float at run time.

The analysis (``qc analyze``) and the accuracy search (``qc compile --accuracy``) evaluate many
mixed-precision configurations of one model. Recompiling per configuration would cost a pipeline
run and a session each; instead the quantized module gets, per unit, two boolean graph inputs that
choose between the quantized operand and the float one it came from::

    %a = DQ(Q(%x))          %w = DQ(@W.q)              (quantized unit)
    %y = MatMul(%a, %w)
        ->  %a' = Where(%qc.act.N, %a, %x)             %w' = Where(%qc.weight.N, %w, @W)
            %y = MatMul(%a', %w')

``@W`` is the float weight the quantized one was made from (after smooth-quant / split-outliers),
kept by :class:`SnapshotWeights`. All switches off gives the float model the quantized one
approximates; all on gives the quantized model. onnxruntime computes both branches of a Where, so
a run costs about twice the model. :func:`freeze` turns a chosen configuration into a normal model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qc.ir.core import Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType
from qc.pm import Instrument

_QUANTIZE = ("QuantizeLinear", "DynamicQuantizeLinear")


class SnapshotWeights(Instrument):
    """Keeps the main graph's float consts as they are just before ``quantize-weights`` runs (the
    first time: a scheme may run it twice, e.g. MatMul weights then 7-bit Conv weights, and the
    second must not replace the float weights the first one quantized)."""

    def __init__(self) -> None:
        self.consts: dict[str, Tensor] = {}

    def before_pass(self, p, module: Module, index: int) -> None:
        if p.name == "quantize-weights":
            for name, v in module.graph.consts.items():
                if isinstance(v.const, Tensor) and v.const.dtype in (DType.f32, DType.f16):
                    self.consts.setdefault(name, v.const)


@dataclass
class Switch:
    """One quantized unit: its anchor op's name and the graph inputs that switch its parts."""
    name: str
    op_type: str
    act: str | None = None       # input name switching the activation (None: not quantized / no float source)
    weight: str | None = None    # input name switching the weight
    weight_name: str | None = None
    wheres: list[Op] = field(default_factory=list, repr=False)


def _dq(v: Value | None) -> Op | None:
    p = v.producer if v is not None else None
    return p if p is not None and p.op_type == "DequantizeLinear" and p.domain in ("", "ai.onnx") else None


def install(module: Module, float_consts: dict[str, Tensor]) -> list[Switch]:
    """Add the switches to every quantized MatMul / Gemm / Conv of the main graph (in place)."""
    g = module.graph
    switches: list[Switch] = []
    taken = {v.name for v in g.inputs} | set(g.consts) | {r.name for op in g.walk() for r in op.results if r}
    flag_type = TensorType(DType.bool, ())
    for op in list(g.ops):
        if op.op_type not in ("MatMul", "Gemm", "Conv") or op.domain not in ("", "ai.onnx") or len(op.operands) < 2:
            continue
        sw = Switch(op.name or op.results[0].name, op.op_type)
        n = len(switches)
        adq, wdq = _dq(op.operands[0]), _dq(op.operands[1])
        if adq is not None:
            q = adq.operands[0].producer
            if q is not None and q.op_type in _QUANTIZE:
                sw.act = f"qc.act.{n}"
                _switch_operand(g, op, 0, q.operands[0], sw.act, flag_type, taken, sw)
        if wdq is not None and wdq.operands[0] is not None and wdq.operands[0].const is not None:
            base = wdq.operands[0].name
            base = base[:-2] if base.endswith(".q") else base
            w = float_consts.get(base)
            if w is not None and tuple(w.shape) == tuple(getattr(op.operands[1].type, "shape", ()) or w.shape):
                fv = g.consts.get(base) or g.add_const(base, w)
                sw.weight, sw.weight_name = f"qc.weight.{n}", base
                _switch_operand(g, op, 1, fv, sw.weight, flag_type, taken, sw)
        if sw.act or sw.weight:
            switches.append(sw)
    return switches


def _switch_operand(g, op: Op, index: int, float_value: Value, flag: str, flag_type, taken: set, sw: Switch) -> None:
    quantized = op.operands[index]
    if float_value.type is not None and getattr(float_value.type, "dtype", None) not in (None, DType.f32):
        cast = Value(_fresh(f"{float_value.name}.f32", taken),
                     TensorType(DType.f32, getattr(float_value.type, "shape", None)))
        g.insert_before(op, Op("Cast", [float_value], results=[cast], attrs={"to": int(DType.f32)}))
        float_value = cast
    cond = Value(flag, flag_type)
    g.inputs.append(cond)
    out = Value(_fresh(f"{quantized.name}.switched", taken), quantized.type)
    where = Op("Where", [cond, quantized, float_value], results=[out], name=f"{sw.name}.switch{index}")
    g.insert_before(op, where)
    op.set_operand(index, out)
    sw.wheres.append(where)


def _fresh(base: str, taken: set) -> str:
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def flags(switches: list[Switch], act_on: set[str], weight_on: set[str]) -> dict[str, np.ndarray]:
    """Feeds for the switch inputs: the activation of units in ``act_on`` quantized, the weight of
    units in ``weight_on`` quantized, everything else float."""
    feeds = {}
    for sw in switches:
        if sw.act:
            feeds[sw.act] = np.array(sw.name in act_on)
        if sw.weight:
            feeds[sw.weight] = np.array(sw.name in weight_on)
    return feeds


def freeze(module: Module, switches: list[Switch], float_units: set[str], *, fp16: bool = True) -> None:
    """Make the switchboard a normal model: units in ``float_units`` take their float branch (weights
    stored as float16 with a Cast when ``fp16``), every other unit its quantized branch; then the
    switch inputs and the unused branches go."""
    from qc.pm import PassContext, PassManager, parse_pass

    g = module.graph
    for sw in switches:
        keep_float = sw.name in float_units
        for where in sw.wheres:
            chosen = where.operands[2] if keep_float else where.operands[1]
            if keep_float and fp16 and chosen.const is not None and chosen.const.dtype is DType.f32:
                chosen = _as_fp16(g, chosen)
            where.results[0].replace_all_uses_with(chosen)
            cond = where.operands[0]
            g.remove(where)
            g.inputs.remove(cond)
    PassManager([parse_pass("dce")], ctx=PassContext()).run(module)


def _as_fp16(g, v: Value) -> Value:
    """A float32 const read through ``Cast(f16 const)``: half the bytes, float16 rounding."""
    half = g.add_const(_fresh(f"{v.name}.f16", set(g.consts)), Tensor.from_array(v.const.numpy().astype(np.float16)))
    out = Value(f"{v.name}.from_f16", TensorType(DType.f32, tuple(v.const.shape)))
    first = g.ops[0] if g.ops else None
    cast = Op("Cast", [half], results=[out], attrs={"to": int(DType.f32)}, name=f"{v.name}.from_f16")
    if first is not None:
        g.insert_before(first, cast)
    else:
        g.append(cast)
    return out
