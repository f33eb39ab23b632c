"""The ``to-fp16`` pass; its docstring (``qc passes to-fp16``) lists every rewrite."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np
import onnx.defs

from qc.ir.core import Graph, Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType
from qc.pm import Pass, PassContext, register_pass

from ._util import (
    can_hold_consts,
    compile_regex,
    const_array,
    constant_consts,
    graphs,
    is_any_output,
    is_default_domain,
    opsets_for,
)

F16_MAX = 65504.0
F16_TINY = 2.0**-24  # the smallest positive float16 (subnormal)

DEFAULT_BLOCKLIST = ("NonMaxSuppression", "TopK", "RoiAlign", "Range", "CumSum", "Min", "Max", "Upsample",
                     "RandomUniformLike", "RandomNormalLike", "RandomUniform", "RandomNormal", "Multinomial",
                     "Bernoulli", "EyeLike")
"""Op types kept in float32 by default: the default-domain entries of onnxruntime's
``transformers/float16.py`` DEFAULT_OP_BLOCK_LIST (index/ordering results that float16 ties would
change, accumulations, shape arithmetic) plus the ops whose output dtype is an attribute."""

WEIGHT_OPERANDS = {"MatMul": (0, 1), "Gemm": (0, 1), "Conv": (1,), "ConvTranspose": (1,), "LSTM": (1, 2),
                   "GRU": (1, 2), "RNN": (1, 2)}


@register_pass("to-fp16")
@dataclass(frozen=True)
class ToFP16(Pass):
    """to-fp16: store weights, or run the whole float32 computation, in float16.

    ``weights-only=true`` (float32 constants read by MatMul / Gemm as A or B, Conv / ConvTranspose
    as W, LSTM / GRU / RNN as W and R; all graphs that may hold consts)::

        const @W : f32[K, N]
        %y = onnx.MatMul(%x, @W)
            ->  const @W : f16[K, N]
                %W.f32 = onnx.Cast(@W) {to = float}       (at the top of the graph; every user of @W
                %y = onnx.MatMul(%x, %W.f32)                reads the Cast, so the bytes halve)

    Full mode (main graph; in If / Loop / Scan bodies the weights-only rewrite above, so a model
    whose compute sits in branches still stores its weights in float16): every float32 op whose
    ONNX schema accepts float16 in each of its float32 slots runs in float16; float32 consts read
    only by such ops become float16 consts; a Cast is inserted wherever a float16 value meets a
    float32 reader and the other way round::

        %x: f32                                  %x: f32
        %h = onnx.MatMul(%x, @W)        ->       %x.f16 = onnx.Cast(%x) {to = float16}
        %t = onnx.TopK(%h, @k)                   %h = onnx.MatMul(%x.f16, @W') : f16   (@W': f16)
        return %h                                %h.f32 = onnx.Cast(%h) {to = float}
                                                 %t = onnx.TopK(%h.f32, @k)            (blocklist)
                                                 return %h.f32 (named h)                (keep-io)

    Stay float32: ops in ``blocklist``; ops whose name matches ``exclude``; ops outside the default
    domain; ops with subgraphs (If/Loop/Scan, and values their bodies read are Cast back); ops whose
    schema has no float16 for a float32 slot; ops with a ``dtype`` attribute or with float32 tensor
    attributes other than Constant/ConstantOfShape ``value`` (converted); ops whose operand or
    result dtypes are unknown. Inputs the schema fixes to float32 (Resize ``scales``) keep float32
    operands. With ``ort-cpu-kernels=true`` also every op the installed onnxruntime's CPU provider
    has no float16 kernel for: on x86 builds most arithmetic (MatMul, Conv, Add, ...) has none and
    onnxruntime would insert those Casts itself at session creation (its InsertCastTransformer),
    so that option gives a model with the Casts placed once and explicitly.

    ``keep-io=true`` keeps the graph's inputs and outputs float32 (Casts at the boundary; outputs
    keep their names); ``keep-io=false`` makes float32 inputs and outputs float16.

    Float32 constants outside float16's range are clamped to +-65504 (e.g. -1e9 attention masks),
    and nonzero magnitudes below 2**-24 become +-2**-24 rather than 0 (epsilons stay nonzero); a
    remark counts them. Results differ from the float32 model by float16 rounding (relative
    2**-11 per op, more through long reductions) and by activations that overflow float16.
    """

    weights_only: bool = False
    """only store MatMul/Gemm/Conv weights as float16, Cast back to float32 at run time"""
    keep_io: bool = True
    """keep float32 graph inputs and outputs (Casts at the boundary)"""
    exclude: str = ""
    """regex on op names: matching ops stay float32"""
    blocklist: tuple[str, ...] = DEFAULT_BLOCKLIST
    """op types that stay float32"""
    ort_cpu_kernels: bool = False
    """also keep float32 every op the installed onnxruntime CPU provider has no float16 kernel for"""

    def validate(self) -> None:
        compile_regex("to-fp16", "exclude", self.exclude)

    def run(self, module: Module, ctx: PassContext) -> bool:
        excluded = compile_regex("to-fp16", "exclude", self.exclude)
        if self.weights_only:
            return _WeightsOnly(module, ctx, excluded).run()
        changed = _FullF16(module, ctx, self, excluded).run()
        return _WeightsOnly(module, ctx, excluded, subgraphs_only=True).run() or changed


def to_f16_array(a: np.ndarray) -> tuple[np.ndarray, int]:
    """float32 -> float16 with clamping (see the pass docstring); returns (array, values clamped)."""
    a = np.asarray(a, np.float32)
    mag = np.abs(a)
    big = np.isfinite(a) & (mag > F16_MAX)
    tiny = (mag > 0) & (mag < F16_TINY)
    out = np.where(big, np.sign(a) * F16_MAX, np.where(tiny, np.sign(a) * F16_TINY, a)).astype(np.float16)
    return out, int(big.sum() + tiny.sum())


def _dtype(v: Value | None) -> DType | None:
    t = v.type if v is not None else None
    return t.dtype if isinstance(t, TensorType) else None


def _retyped(v: Value, dtype: DType) -> TensorType:
    t = v.type if isinstance(v.type, TensorType) else TensorType(None, None)
    return TensorType(dtype, t.shape)


def _excluded(op: Op, excluded: re.Pattern | None) -> bool:
    return excluded is not None and bool(op.name) and excluded.search(op.name) is not None


def _clamp_remark(ctx: PassContext, clamped: int) -> None:
    if clamped:
        ctx.remark(None, f"{clamped} float32 constant value(s) outside float16's range were clamped "
                         f"(to +-{F16_MAX:g}, or +-2**-24 for tiny nonzero values)")


# -- weights only ---------------------------------------------------------------------------------
class _WeightsOnly:
    def __init__(self, module: Module, ctx: PassContext, excluded: re.Pattern | None, subgraphs_only: bool = False):
        self.module, self.ctx, self.excluded = module, ctx, excluded
        self.subgraphs_only = subgraphs_only
        self.constants = constant_consts(module)

    def run(self) -> bool:
        changed, clamped, saved = False, 0, 0
        holder = {id(v): g for g, _ in graphs(self.module) for v in g.consts.values()}
        for g, fn in list(graphs(self.module)):
            if not can_hold_consts(self.module, g, fn) or (self.subgraphs_only and (g is self.module.graph or fn)):
                continue
            targets: dict[int, Value] = {}
            for op in g:
                if is_default_domain(op) and op.op_type in WEIGHT_OPERANDS and not _excluded(op, self.excluded):
                    for i in WEIGHT_OPERANDS[op.op_type]:
                        v = op.operands[i] if i < len(op.operands) else None
                        if v is None or not self._convertible(v):
                            continue
                        if g.consts.get(v.name) is v or (self.subgraphs_only and id(v) in holder
                                                         and self._only_weight_uses(v)):
                            targets[id(v)] = v
            for v in targets.values():
                before = v.const.nbytes
                clamped += self._convert(holder.get(id(v), g), v)
                saved += before - v.const.nbytes
                changed = True
        _clamp_remark(self.ctx, clamped)
        if changed:
            where = " in If/Loop/Scan bodies" if self.subgraphs_only else ""
            self.ctx.remark(None, f"weights{where} stored as float16: {saved} bytes saved")
        return changed

    def _only_weight_uses(self, v: Value) -> bool:
        """Every reader of an outer-scope weight is a weight slot of an op in a body (full mode left
        it float32 for them)."""
        return all(is_default_domain(u) and u.graph is not self.module.graph
                   and i in WEIGHT_OPERANDS.get(u.op_type, ()) and not _excluded(u, self.excluded)
                   for u, i in v.uses())

    def _convertible(self, v: Value) -> bool:
        return (id(v) in self.constants and v.const.dtype is DType.f32 and not is_any_output(v)
                and const_array(v, self.constants) is not None)

    def _convert(self, g: Graph, v: Value) -> int:
        """@W becomes float16 in place (it keeps its name, and its graph-input listing in IR < 4
        models); its users read ``%W.f32 = Cast(@W)``."""
        half, clamped = to_f16_array(v.const.numpy())
        users = list(v.uses())
        v.const = Tensor.from_array(half, DType.f16)
        v.type = TensorType(DType.f16, half.shape)
        cast = Op("Cast", [v], results=0, attrs={"to": int(DType.f32)}, name=v.name + ".cast")
        first = next(iter(g), None)
        if first is None:
            g.append(cast)
        else:
            g.insert_before(first, cast)
        out = cast.add_result(Value(v.name + ".f32", TensorType(DType.f32, half.shape)))
        for user, index in users:
            user.set_operand(index, out)
        return clamped


# -- full float16 ---------------------------------------------------------------------------------
@functools.cache
def _schema(op_type: str, version: int):
    try:
        return onnx.defs.get_schema(op_type, max_inclusive_version=version, domain="")
    except onnx.defs.SchemaError:
        return None


_CONVERT, _KEEP = "convert", "keep"


def _slot_plan(op: Op, version: int) -> tuple[list[str | None], list[str | None]] | None:
    """Per operand and per result: 'convert' (a float32 slot that may be float16), 'keep' (a float32
    slot the schema fixes to float32) or None (not a float32 slot). None when the op cannot run in
    float16 at all."""
    schema = _schema(op.op_type, version)
    if schema is None:
        return None
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def plan(formals, values) -> list[str | None] | None:
        out: list[str | None] = []
        for i, v in enumerate(values):
            if v is None:
                out.append(None)
                continue
            dt = _dtype(v)
            if dt is None:
                return None  # unknown dtype: cannot tell whether it is a float32 slot
            if dt is not DType.f32:
                out.append(None)
                continue
            if not formals:
                return None
            param = formals[min(i, len(formals) - 1)].type_str
            if param in allowed:
                if "tensor(float16)" not in allowed[param]:
                    return None
                out.append(_CONVERT)
            elif param == "tensor(float)":
                out.append(_KEEP)
            else:
                return None
        return out

    operands = plan(schema.inputs, op.operands)
    results = plan(schema.outputs, op.results)
    if operands is None or results is None:
        return None
    if _CONVERT not in operands and _CONVERT not in results:
        return None
    return operands, results


class _FullF16:
    def __init__(self, module: Module, ctx: PassContext, options: ToFP16, excluded: re.Pattern | None):
        self.module, self.ctx, self.options, self.excluded = module, ctx, options, excluded
        self.g = module.graph
        self.opsets = opsets_for(module, None)
        self.constants = constant_consts(module)
        self.blocked = set(options.blocklist)
        self.to16: dict[int, Value] = {}
        self.to32: dict[int, Value] = {}
        self.clamped = 0

    def _plan(self, op: Op):
        if not is_default_domain(op) or op.op_type in self.blocked or _excluded(op, self.excluded):
            return None
        if any(True for _ in op.subgraphs()) or "dtype" in op.attrs:
            return None
        for name, a in op.attrs.items():
            if a.kind in ("tensor", "tensors", "sparse", "sparses") and not (
                    op.op_type in ("Constant", "ConstantOfShape") and name == "value"):
                return None
        if op.op_type == "Constant" and "value" not in op.attrs:
            return None
        plan = _slot_plan(op, self.opsets.get("", 0))
        if plan is None:
            return None
        if self.options.ort_cpu_kernels:
            from .fold_constants import _ort_has_f16_kernel

            if not _ort_has_f16_kernel(op.domain, op.op_type, self.opsets):
                return None
        return plan

    def run(self) -> bool:
        g = self.g
        plans = {id(op): p for op in g if (p := self._plan(op)) is not None}
        if not plans and self.options.keep_io:
            return False
        uses16: dict[int, int] = {}  # const id -> float16-slot uses
        for op in g:
            p = plans.get(id(op))
            if p is not None:
                for v, slot in zip(op.operands, p[0]):
                    if slot == _CONVERT and v is not None and v.const is not None:
                        uses16[id(v)] = uses16.get(id(v), 0) + 1
        half: set[int] = set()  # values that are float16 after the rewrite
        for v in list(g.consts.values()):
            if (uses16.get(id(v)) and uses16[id(v)] == len(v._uses) and id(v) in self.constants
                    and const_array(v, self.constants) is not None):
                data, n = to_f16_array(v.const.numpy())
                self.clamped += n
                v.const = Tensor.from_array(data, DType.f16)
                v.type = TensorType(DType.f16, v.type.shape if isinstance(v.type, TensorType) else data.shape)
                half.add(id(v))
        if not self.options.keep_io:
            for v in g.inputs:
                if _dtype(v) is DType.f32 and v.const is None:
                    v.type = _retyped(v, DType.f16)
                    half.add(id(v))
        converted = 0
        for op in g.ops:
            p = plans.get(id(op))
            for i, v in enumerate(op.operands):
                if v is None:
                    continue
                want16 = p is not None and p[0][i] == _CONVERT
                if want16 and id(v) not in half:
                    op.set_operand(i, self._cast(v, DType.f16))
                elif not want16 and id(v) in half:
                    op.set_operand(i, self._cast(v, DType.f32))
            for sub in op.subgraphs():  # bodies read outer values as float32
                self._cast_outer_uses(sub, half)
            if p is not None:
                converted += 1
                self._convert_op(op, p[1], half)
        self._outputs(half)
        _clamp_remark(self.ctx, self.clamped)
        self.ctx.remark(None, f"{converted} ops run in float16, {len(self.to16) + len(self.to32)} Casts inserted")
        return bool(converted or half)

    def _convert_op(self, op: Op, result_slots: list[str | None], half: set[int]) -> None:
        for r, slot in zip(op.results, result_slots):
            if slot == _CONVERT:
                r.type = _retyped(r, DType.f16)
                half.add(id(r))
        if op.op_type == "Cast" and op.attr("to") == int(DType.f32):
            op.set_attr("to", int(DType.f16))
        if op.op_type == "ConstantOfShape" and "value" not in op.attrs:  # the default is float32 zeros
            op.set_attr("value", Tensor.from_array(np.zeros(1, np.float16), DType.f16))
        if op.op_type in ("Constant", "ConstantOfShape") and "value" in op.attrs:
            t = op.attrs["value"].value
            if isinstance(t, Tensor) and t.dtype is DType.f32:
                data, n = to_f16_array(t.numpy())
                self.clamped += n
                op.set_attr("value", Tensor.from_array(data, DType.f16))

    def _cast_outer_uses(self, sub: Graph, half: set[int]) -> None:
        for inner in sub.walk():
            for i, v in enumerate(inner.operands):
                if v is not None and id(v) in half and (v.producer is None or v.producer.graph is self.g):
                    inner.set_operand(i, self._cast(v, DType.f32))
        for i, v in enumerate(sub.outputs):
            if id(v) in half:
                sub.set_output(i, self._cast(v, DType.f32))

    def _cast(self, v: Value, dtype: DType) -> Value:
        cache = self.to16 if dtype is DType.f16 else self.to32
        hit = cache.get(id(v))
        if hit is not None:
            return hit
        suffix = ".f16" if dtype is DType.f16 else ".f32"
        cast = Op("Cast", [v], results=0, attrs={"to": int(dtype)}, name=(v.name + suffix + ".cast") if v.name else "")
        if v.producer is not None and v.producer.graph is self.g:
            self.g.insert_after(v.producer, cast)
        else:
            first = next(iter(self.g), None)
            if first is None:
                self.g.append(cast)
            else:
                self.g.insert_before(first, cast)
        out = cast.add_result(Value(v.name + suffix, _retyped(v, dtype)))
        cache[id(v)] = out
        return out

    def _outputs(self, half: set[int]) -> None:
        g = self.g
        for i, v in enumerate(g.outputs):
            if id(v) not in half or not self.options.keep_io:
                continue
            out = self._cast(v, DType.f32)
            if (v.producer is not None and v.producer.graph is g
                    and not sum(1 for u, _ in v.uses() if not isinstance(u, Op)) > 1):
                name = v.name
                v.name, out.name = name + ".f16", name
            g.set_output(i, out)
