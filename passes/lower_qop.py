"""The ``lower-qop`` pass; its docstring (``qc passes lower-qop``) lists every rewrite.

The units (``DQ -> MatMul/Gemm/Conv <- DQ [-> Q]``) come from the shared matcher,
``qc.quant.units.node_unit(op, graph=g)``; this module only checks, on the typed ``Unit``, what
onnxruntime's QOperator ops accept, and builds them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from qc.ir.core import Graph, Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType
from qc.pm import Pass, PassContext, register_pass
from qc.quant.units import ANCHORS, Unit, node_unit

from ._util import (
    can_hold_consts,
    const_array,
    constant_consts,
    drop_removed_quant_refs,
    erase_op,
    graphs,
    is_default_domain,
    replace_value,
)

CONTRIB = "com.microsoft"
LOWERINGS = ("static", "dynamic", "nbits", "conv")

# (activation, weight, output) dtypes onnxruntime's CPU provider has a QLinearMatMul kernel for
# (every other combination fails with NOT_IMPLEMENTED at session creation); MatMulInteger has
# kernels for all four u8/i8 input pairs, QLinearConv for (u8, u8), (u8, i8) and (i8, i8).
QLINEAR_MATMUL_TYPES = {(DType.u8, DType.u8, DType.u8), (DType.u8, DType.i8, DType.u8), (DType.i8, DType.i8, DType.i8)}
QLINEAR_CONV_TYPES = {(DType.u8, DType.u8), (DType.u8, DType.i8), (DType.i8, DType.i8)}
_NBITS_STORAGE = {DType.u2: (2, 0), DType.i2: (2, 2), DType.u4: (4, 0), DType.i4: (4, 8),
                  DType.u8: (8, 0), DType.i8: (8, 128)}
"""block-wise weight dtype -> (MatMulNBits bits, offset that maps its codes to unsigned)"""


@register_pass("lower-qop")
@dataclass(frozen=True)
class LowerQOp(Pass):
    """lower-qop: rewrite the QDQ form into onnxruntime's integer operators.

    Weights are constant ``DequantizeLinear(@W.q, @W.scale, @W.zp)`` (8-bit per-tensor or
    per-channel along N, or 2/4/8-bit block-wise along K); ``%x.q`` is any u8/i8 value (a
    ``QuantizeLinear`` result or an input) dequantized with a scalar scale and zero point.

    static (``%x.dq = DequantizeLinear(%x.q, %xs, %xz)``)::

        %y = onnx.MatMul(%x.dq, %W.dq)
        %y.q = onnx.QuantizeLinear(%y, @ys, @yz)
            ->  %y.q = onnx.QLinearMatMul(%x.q, %xs, %xz, @W.q, @W.scale, @W.zp, @ys, @yz)

        %y = onnx.MatMul(%x.dq, %W.dq)               (no QuantizeLinear after, or a dtype
                                                       combination QLinearMatMul lacks)
            ->  %acc = onnx.MatMulInteger(%x.q, @W.q, %xz, @W.zp)       : i32
                %accf = onnx.Cast(%acc) {to = float}
                %y = onnx.Mul(%accf, @xw.scale)      (xs * W.scale folded into one const, [] or [N];
                                                      with a non-const %xs: Mul(%xs, @W.scale) first)

    dynamic (``%x.q, %xs, %xz = DynamicQuantizeLinear(%x)``, ``%x.dq = DequantizeLinear(%x.q, %xs, %xz)``)::

        %y = onnx.MatMul(%x.dq, %W.dq)
            ->  %y = com.microsoft.DynamicQuantizeMatMul(%x, @W.q, @W.scale, @W.zp)   (form=contrib)
            ->  MatMulInteger(%x.q, @W.q, %xz, @W.zp) -> Cast -> Mul(Mul(%xs, @W.scale))  (form=standard)

    Gemm (static and dynamic, ``transA = 0``, ``alpha = 1``; ``transB = 1`` transposes ``@W.q``)::

        %y = onnx.Gemm(%x.dq, %W.dq, @C) {beta}
            ->  (the MatMul rewrite above without a QuantizeLinear) then %y = onnx.Add(%mm, @C')
                (C' = beta * C; DynamicQuantizeMatMul takes C' as its bias input when it is [N])

    nbits (``@W.q: u4/i4/u2/i2/u8/i8[K, N]``, ``{axis = 0, block_size = bs}``, scales ``[K/bs, N]``)::

        %y = onnx.MatMul(%x, %W.dq)
            ->  %y = com.microsoft.MatMulNBits(%x, @B, @scales, @zero_points)
                    {K, N, bits, block_size = bs, accuracy_level}
                @B: u8[N, ceil(K/bs), bs*bits/8]   codes along K, low bits first (pad: the zero point)
                @scales: [N, ceil(K/bs)]           (the scale's dtype, which is also %x's)
                @zero_points: u8[N, ceil(ceil(K/bs)*bits/8)], packed like @B; left out when every
                zero point is 2^(bits-1), onnxruntime's default
            Signed codes q (i4) become q + 8 with zero point zp + 8 (i2: +2, i8: +128): same values.
            When %x is itself ``DequantizeLinear(DynamicQuantizeLinear(%a))`` (w4a8), the dynamic
            quantization is dropped and %a feeds MatMulNBits with accuracy_level = 4, which
            quantizes %a to int8 per block inside the kernel (finer than the per-tensor original).

    conv (weights per-tensor or per-channel along axis 0; a Relu between the Conv and the
    QuantizeLinear is folded in when ``@yz`` is the bottom of the range, 0 for u8 or -128 for i8,
    where the QuantizeLinear's clamp does the Relu's work exactly; so is a Clip with constant
    bounds that quantize to the lowest and highest codes, ReLU6 at a scale of 6/255)::

        %y = onnx.Conv(%x.dq, %W.dq, @B) {...}
        %y.q = onnx.QuantizeLinear(%y, @ys, @yz)
            ->  %y.q = onnx.QLinearConv(%x.q, %xs, %xz, @W.q, @W.scale, @W.zp, @ys, @yz, @B.q) {...}
                @B.q: i32 = round(B / (xs * W.scale))   (needs a const %xs; a bias that is already
                ``DequantizeLinear(@b: i32, xs * W.scale, 0)`` is used as it is)

    ``accuracy_level`` of MatMulNBits: 0 = unset (the kernel decides; on CPU, A stays float32),
    1 = fp32, 2 = fp16, 3 = bf16, 4 = int8 (A is quantized per block to int8 and the product runs
    on integer dot products: fastest on Arm, with A's quantization error added).

    Left alone, with a remark saying why: weights that are not constant (or overridable graph
    inputs), per-channel weights along K, block-wise 8-bit weights without ``nbits``, scales that
    are not float32 (integer paths) or not scalars for the activation, a block size that is not a
    power of two >= 16, ranks or shapes that are unknown when they matter, dtype combinations
    onnxruntime's CPU provider has no kernel for, Conv without a QuantizeLinear after it. Ops in
    function bodies and patterns whose pieces live in different graphs are not touched. Shared
    ``DequantizeLinear`` / ``QuantizeLinear`` ops stay while any user remains; the ones the rewrite
    leaves unused are removed, with the consts only they read.

    Numerics: integer paths compute the exact int32 product; they differ from the QDQ model's
    float32 accumulation by float rounding only, and QLinearMatMul / QLinearConv by at most one
    output step (requantization through a float multiplier). onnxruntime's x86 AVX2 kernel (no
    VNNI) sums pairs of u8 x i8 products in int16 and can saturate when i8 weights use more than
    7 bits; a remark flags such weights (exact on Arm64 and on x86 with VNNI).
    """

    ops: tuple[str, ...] = LOWERINGS
    """which rewrites to apply: static, dynamic, nbits, conv"""
    form: Literal["contrib", "standard"] = "contrib"
    """dynamic MatMul: com.microsoft DynamicQuantizeMatMul (contrib) or MatMulInteger (standard)"""
    accuracy_level: int = 0
    """MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8"""

    def run(self, module: Module, ctx: PassContext) -> bool:
        from qc.errors import QCError

        unknown = [k for k in self.ops if k not in LOWERINGS]
        if unknown:
            raise QCError(f"lower-qop: unknown rewrite '{unknown[0]}' in ops", hint="valid: " + ", ".join(LOWERINGS))
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise QCError(f"lower-qop: accuracy-level must be 0..4, got {self.accuracy_level}")
        lowerer = _Lowerer(module, ctx, self)
        changed = False
        for g, fn in list(graphs(module)):
            if not can_hold_consts(module, g, fn):
                continue
            for op in g.ops:
                if op.graph is g and is_default_domain(op) and lowerer.lower(g, op):
                    changed = True
        if lowerer.used_contrib:
            module.opset_imports.setdefault(CONTRIB, 1)
        if changed:
            drop_removed_quant_refs(module)
        return changed


@dataclass
class _Weight:
    """A constant DequantizeLinear weight, oriented [K, N] (Gemm transB undone)."""

    dq: Op
    codes: np.ndarray          # [K, N], the storage dtype's integers as int32
    dtype: DType               # storage dtype of the codes
    scale: np.ndarray          # [] or [N] (per-tensor / per-channel) or [K/bs, N] (block-wise)
    zero_point: np.ndarray     # same shape as scale, int32
    block_size: int            # 0 unless block-wise
    per_channel: bool
    scale_dtype: DType
    q_value: Value             # the original @W.q (reused when no transposition was needed)
    scale_value: Value
    zp_value: Value | None
    transposed: bool


class _Lowerer:
    def __init__(self, module: Module, ctx: PassContext, options: LowerQOp):
        self.module = module
        self.ctx = ctx
        self.kinds = set(options.ops)
        self.form = options.form
        self.accuracy_level = options.accuracy_level
        self.constants = constant_consts(module)
        self.used_contrib = False

    # -- dispatch -------------------------------------------------------------------------------
    def lower(self, g: Graph, op: Op) -> bool:
        if op.op_type not in ANCHORS or (op.op_type == "Conv" and "conv" not in self.kinds):
            return False
        if not op.results or op.results[0] is None or any(r is not None for r in op.results[1:]):
            return False
        u = node_unit(op, graph=g)
        if u is None or u.weight_dq is None:
            return False
        return self._conv(g, u) if op.op_type == "Conv" else self._matmul(g, u)

    def _skip(self, op: Op, why: str) -> bool:
        self.ctx.remark(op, f"left in QDQ form: {why}")
        return False

    # -- QOperator conditions on a unit ---------------------------------------------------------
    def _activation(self, u: Unit) -> str | None:
        """Why the unit's quantized activation cannot feed a QOperator op (None: it can)."""
        if u.act not in ("uint8", "int8"):
            return "the activation is not u8/i8"
        for v in (u.act_scale, u.act_zero_point):
            if v is not None and not _is_scalar(v):
                return "the activation scale / zero point is not a known scalar"
        if _dtype(u.act_scale) is not DType.f32:
            return "the activation scale is not float32"
        return None

    def _output_q(self, u: Unit, *, relu: bool) -> tuple[Op | None, Op | None]:
        """(QuantizeLinear, Relu or None): the unit's output QuantizeLinear when a QLinear op can take
        its place, reading the result directly, or (``relu``) through a Relu whose work its clamp does
        exactly because the zero point is the bottom of the range (0 for u8, -128 for i8; as a QAT
        export of a fused Conv + ReLU has it); the output scale and zero point are float32 / u8 or i8
        scalars."""
        q, y = u.out_q, u.op.results[0]
        if q is None:
            return None, None
        between = None
        if q.operands[0] is not y:
            between = q.operands[0].producer
            if (not relu or between is None or between.op_type not in ("Relu", "Clip")
                    or between.operands[0] is not y):
                return None, None  # (a Clip there is exact: node_unit checked its bounds against Q's codes)
        if (len(q.operands) < 3 or q.operands[2] is None or q.attr("block_size", 0)
                or q.attr("saturate", 1) != 1 or len(q.results) != 1 or q.results[0] is None):
            return None, None
        if not _is_scalar(q.operands[1]) or not _is_scalar(q.operands[2]) or _dtype(q.operands[1]) is not DType.f32:
            return None, None
        if _dtype(q.results[0]) not in (DType.u8, DType.i8):
            return None, None
        if between is not None and between.op_type == "Relu":
            zp = const_array(q.operands[2], self.constants)
            bottom = {DType.u8: 0, DType.i8: -128}[_dtype(q.results[0])]
            if zp is None or int(np.asarray(zp).reshape(-1)[0]) != bottom:
                return None, None
        return q, between

    def _weight(self, u: Unit, transposed: bool) -> _Weight | str:
        dq = u.weight_dq
        q, scale = dq.operands[0], dq.operands[1]
        zp = dq.operands[2] if len(dq.operands) > 2 else None
        codes = const_array(q, self.constants)
        s = const_array(scale, self.constants)
        z = const_array(zp, self.constants) if zp is not None else None
        if codes is None or s is None or (zp is not None and z is None):
            return "the weight (or its scale / zero point) is not a constant"
        dtype = q.const.dtype
        if dtype not in _NBITS_STORAGE:
            return f"the weight is {dtype}, not u8/i8/u4/i4/u2/i2"
        if codes.ndim != 2:
            return f"the weight has rank {codes.ndim}, not 2"
        block = int(dq.attr("block_size", 0) or 0)
        axis = int(dq.attr("axis", 1))
        axis = axis + 2 if axis < 0 else axis
        codes = codes.astype(np.int32)
        s = np.asarray(s)
        z = np.zeros(s.shape, np.int32) if z is None else np.asarray(z).astype(np.int32)
        if z.shape != s.shape:
            return "the weight's zero point and scale differ in shape"
        if transposed:
            codes, s, z, axis = codes.T, s.T, z.T, 1 - axis
        k, n = codes.shape
        per_channel = False
        if block:
            if axis != 0 or s.shape != (-(-k // block), n):
                return "the weight is block-wise along N, not K"
        elif s.size == 1:
            s, z = s.reshape(()), z.reshape(())
        elif s.ndim == 1 and axis == 1 and s.shape == (n,):
            per_channel = True
        else:
            return "the weight is quantized per channel along K (zero points per row of B are not supported)"
        return _Weight(dq, codes, dtype, s, z, block, per_channel, scale.const.dtype, q, scale, zp, transposed)

    # -- MatMul / Gemm --------------------------------------------------------------------------
    def _matmul(self, g: Graph, u: Unit) -> bool:
        op = u.op
        gemm = op.op_type == "Gemm"
        bias = None
        if gemm:
            if op.attr("transA", 0) != 0 or float(op.attr("alpha", 1.0)) != 1.0:
                return self._skip(op, "Gemm with transA or alpha != 1")
            if len(op.operands) > 2 and op.operands[2] is not None:
                bias = const_array(op.operands[2], self.constants)
                if bias is None:
                    return self._skip(op, "the Gemm bias is not a constant")
                bias = np.asarray(bias, np.float32) * np.float32(op.attr("beta", 1.0))
        w = self._weight(u, transposed=gemm and op.attr("transB", 0) == 1)
        if isinstance(w, str):
            return self._skip(op, w)
        if bias is not None and bias.ndim == 2 and bias.shape[0] == 1:
            bias = bias.reshape(-1)
        if bias is not None and not (bias.ndim <= 1 and bias.size in (1, w.codes.shape[1])):
            return self._skip(op, "the Gemm bias is not a scalar or [N]")
        if w.block_size:
            return "nbits" in self.kinds and self._nbits(g, u, w, bias)
        if u.act_dq is None:
            return False  # weight-only 8-bit per-channel: nothing to lower to on CPU
        why = self._activation(u)
        if why is not None:
            return self._skip(op, why)
        if w.scale_dtype is not DType.f32:
            return self._skip(op, "the weight scale is not float32")
        if w.dtype not in (DType.u8, DType.i8):
            return self._skip(op, f"{w.dtype} weights need the block-wise (nbits) form")
        kind = "dynamic" if u.act_dynamic is not None else "static"
        if kind not in self.kinds:
            return False
        xdt = _dtype(u.act_value)
        if u.act_dynamic is not None and self.form == "contrib":
            done = self._dynamic_contrib(g, u, w, bias)
        else:
            quant = None if gemm else self._output_q(u, relu=False)[0]
            if quant is not None and (xdt, w.dtype, quant.results[0].type.dtype) in QLINEAR_MATMUL_TYPES:
                done = self._qlinear_matmul(g, u, w, quant)
            else:
                if quant is not None:
                    self.ctx.remark(op, "onnxruntime's CPU provider has no QLinearMatMul for "
                                        f"({xdt}, {w.dtype}, {quant.results[0].type.dtype}): "
                                        "MatMulInteger form, QuantizeLinear kept")
                done = self._integer_matmul(g, u, w, bias)
        if done:
            self._saturation_remark(op, xdt, w)
            self._cleanup(g, [u.act_dq, u.weight_dq, u.act_dynamic], [w.q_value, w.scale_value, w.zp_value])
        return done

    def _qlinear_matmul(self, g: Graph, u: Unit, w: _Weight, quant: Op) -> bool:
        wq, ws, wz = self._weight_consts(g, w)
        xz = u.act_zero_point or self._zero(g, u.act_value)
        new = Op("QLinearMatMul", [u.act_value, _scalar(g, u.act_scale), _scalar(g, xz), wq, ws, wz,
                                   _scalar(g, quant.operands[1]), _scalar(g, quant.operands[2])],
                 results=0, name=u.op.name)
        return self._replace(g, quant, new, quant.results[0], "QLinearMatMul")

    def _integer_matmul(self, g: Graph, u: Unit, w: _Weight, bias: np.ndarray | None) -> bool:
        op = u.op
        y = op.results[0]
        wq, ws, wz = self._weight_consts(g, w)
        xz = u.act_zero_point or self._zero(g, u.act_value)
        mmi = Op("MatMulInteger", [u.act_value, wq, xz, wz], results=0, name=op.name)
        g.insert_before(op, mmi)
        acc = mmi.add_result(Value(y.name + ".acc", _like(y, DType.i32)))
        cast = Op("Cast", [acc], results=0, attrs={"to": int(DType.f32)}, name=_suffix(op.name, "cast"))
        g.insert_before(op, cast)
        accf = cast.add_result(Value(y.name + ".accf", _like(y, DType.f32)))
        xs = const_array(u.act_scale, self.constants)
        if xs is not None:
            combined = np.float32(np.asarray(xs, np.float32).reshape(())) * w.scale.astype(np.float32)
            scale_v = g.add_const(w.scale_value.name + ".xw", Tensor.from_array(np.asarray(combined, np.float32)))
        else:
            smul = Op("Mul", [u.act_scale, ws], results=0, name=_suffix(op.name, "scale"))
            g.insert_before(op, smul)
            scale_v = smul.add_result(Value(y.name + ".scale", TensorType(DType.f32, tuple(w.scale.shape))))
        mul = Op("Mul", [accf, scale_v], results=0, name=_suffix(op.name, "rescale"))
        g.insert_before(op, mul)
        out = mul.add_result(Value(y.name + ".mm", _like(y, DType.f32)))
        if bias is not None:
            b = g.add_const(y.name + ".bias", Tensor.from_array(bias.astype(np.float32)))
            add = Op("Add", [out, b], results=0, name=_suffix(op.name, "bias"))
            g.insert_before(op, add)
            out = add.add_result(Value(y.name + ".biased", _like(y, DType.f32)))
        return self._finish(g, op, out, "MatMulInteger + Cast + Mul")

    def _dynamic_contrib(self, g: Graph, u: Unit, w: _Weight, bias: np.ndarray | None) -> bool:
        op = u.op
        y = op.results[0]
        x = u.act_dynamic.operands[0]
        if x is None or _dtype(x) is not DType.f32:
            return self._skip(op, "the dynamically quantized input is not float32")
        wq, ws, wz = self._weight_consts(g, w)
        operands = [x, wq, ws, wz]
        if bias is not None:
            operands.append(g.add_const(y.name + ".bias", Tensor.from_array(
                np.broadcast_to(bias.reshape(-1), (w.codes.shape[1],)).astype(np.float32))))
        new = Op("DynamicQuantizeMatMul", operands, domain=CONTRIB, results=0, name=op.name)
        self.used_contrib = True
        return self._replace(g, op, new, y, "com.microsoft.DynamicQuantizeMatMul")

    # -- MatMulNBits ----------------------------------------------------------------------------
    def _nbits(self, g: Graph, u: Unit, w: _Weight, bias: np.ndarray | None) -> bool:
        op, a = u.op, u.op.operands[0]
        bits, offset = _NBITS_STORAGE[w.dtype]
        k, n = w.codes.shape
        bs = w.block_size
        if bs < 16 or bs & (bs - 1):
            return self._skip(op, f"MatMulNBits needs a block size that is a power of two >= 16, not {bs}")
        accuracy = self.accuracy_level
        if u.act_dq is not None:
            if self._activation(u) is not None or u.act_dynamic is None:
                return self._skip(op, "a statically quantized activation cannot feed MatMulNBits")
            a = u.act_dynamic.operands[0]
            accuracy = 4
        at = a.type if a is not None else None
        if not isinstance(at, TensorType) or at.rank is None or at.rank < 2:
            return self._skip(op, "MatMulNBits needs an input of known rank >= 2")
        if isinstance(at.shape[-1], int) and at.shape[-1] != k:
            return False
        if at.dtype is not w.scale_dtype or at.dtype not in (DType.f32, DType.f16):
            return self._skip(op, "MatMulNBits needs the input and the scales in the same float32/float16 dtype")
        blocks = -(-k // bs)
        codes = w.codes + offset
        zp = w.zero_point + offset
        padded = np.repeat(zp, bs, axis=0)                       # [blocks*bs, N]: pad with the zero point
        padded[:k] = codes
        b_packed = _pack(padded.T.reshape(n, blocks, bs), bits)  # [N, blocks, bs*bits/8]
        scales = np.ascontiguousarray(w.scale.T)                 # [N, blocks]
        y = op.results[0]
        base = w.q_value.name
        operands = [a, g.add_const(base + ".nbits", Tensor.from_array(b_packed, DType.u8)),
                    g.add_const(base + ".nbits_scales", Tensor.from_array(scales, w.scale_dtype))]
        if np.any(zp != 1 << (bits - 1)):
            operands.append(g.add_const(base + ".nbits_zp", Tensor.from_array(_pack(zp.T, bits), DType.u8)))
        if bias is not None:
            operands += [None] * (5 - len(operands))
            operands.append(g.add_const(y.name + ".bias", Tensor.from_array(
                np.broadcast_to(bias.reshape(-1), (n,)).astype(w.scale_dtype.numpy))))
        new = Op("MatMulNBits", operands, domain=CONTRIB, results=0, name=op.name,
                 attrs={"K": k, "N": n, "bits": bits, "block_size": bs, "accuracy_level": accuracy})
        self.used_contrib = True
        what = f"com.microsoft.MatMulNBits ({bits}-bit, block {bs}, accuracy_level {accuracy})"
        if not self._replace(g, op, new, y, what):
            return False
        if u.act_dq is not None:
            self.ctx.remark(new, "w4a8: DynamicQuantizeLinear dropped; accuracy_level 4 quantizes the input to "
                            "int8 in onnxruntime (per block; per row on arm64 for weights without zero points: "
                            "guard-int8-rows)")
        self._cleanup(g, [w.dq, u.act_dq, u.act_dynamic], [w.q_value, w.scale_value, w.zp_value])
        return True

    # -- Conv -----------------------------------------------------------------------------------
    def _conv(self, g: Graph, u: Unit) -> bool:
        op, wdq = u.op, u.weight_dq
        if u.act_dq is None:
            return False
        why = self._activation(u)
        if why is not None:
            return self._skip(op, why)
        if u.act_dynamic is not None:
            return self._skip(op, "a dynamically quantized Conv input has no QLinearConv form")
        quant, relu = self._output_q(u, relu=True)
        if quant is None:
            return self._skip(op, "no QuantizeLinear after the Conv (QLinearConv needs an output scale)")
        wq, ws = wdq.operands[0], wdq.operands[1]
        wz = wdq.operands[2] if len(wdq.operands) > 2 else None
        codes, scale = const_array(wq, self.constants), const_array(ws, self.constants)
        zero = const_array(wz, self.constants) if wz is not None else None
        if codes is None or scale is None or (wz is not None and zero is None):
            return self._skip(op, "the weight (or its scale / zero point) is not a constant")
        xdt, wdt, ydt = _dtype(u.act_value), wq.const.dtype, _dtype(quant.results[0])
        if (xdt, wdt) not in QLINEAR_CONV_TYPES or ydt is not xdt:
            return self._skip(op, f"onnxruntime's CPU provider has no QLinearConv for ({xdt}, {wdt}) -> {ydt}")
        out_channels = codes.shape[0]
        axis = int(wdq.attr("axis", 1))
        if wdq.attr("block_size", 0):
            return self._skip(op, "block-wise Conv weights")
        if scale.size != 1 and not (scale.shape == (out_channels,) and axis in (0, -codes.ndim)):
            return self._skip(op, "the Conv weight is not quantized per tensor or per output channel")
        if _dtype(ws) is not DType.f32:
            return self._skip(op, "the weight scale is not float32")
        bias_q = None
        if u.bias is not None:
            bias_q = self._conv_bias(g, u, scale, out_channels)
            if isinstance(bias_q, str):
                return self._skip(op, bias_q)
        operands = [u.act_value, _scalar(g, u.act_scale), _scalar(g, u.act_zero_point or self._zero(g, u.act_value)),
                    wq, _flat(g, ws), _flat(g, wz) if wz is not None else self._zero_like(g, wq, scale.shape),
                    _scalar(g, quant.operands[1]), _scalar(g, quant.operands[2])]
        if bias_q is not None:
            operands.append(bias_q)
        new = Op("QLinearConv", operands, results=0, name=op.name, attrs=dict(op.attrs))
        what = "QLinearConv" + (f" (the {relu.op_type} folded in)" if relu else "")
        if not self._replace(g, quant, new, quant.results[0], what):
            return False
        if relu is not None and op.graph is g and not op.results[0]._uses:
            erase_op(op)
        self._saturation_remark(new, xdt, None, codes if wdt is DType.i8 else None)
        self._cleanup(g, [u.act_dq, wdq, u.bias_dq], [wq, ws, wz])
        return True

    def _conv_bias(self, g: Graph, u: Unit, wscale: np.ndarray, channels: int) -> Value | str:
        b = u.bias
        xs = const_array(u.act_scale, self.constants)
        if xs is None:
            return "QLinearConv's int32 bias needs a constant input scale"
        per_channel = np.broadcast_to(np.asarray(wscale, np.float32).reshape(-1), (channels,))
        bias_scale = np.float32(np.asarray(xs).reshape(())) * per_channel
        bdq = u.bias_dq
        if bdq is not None:
            bq = const_array(bdq.operands[0], self.constants)
            bs = const_array(bdq.operands[1], self.constants)
            has_zp = len(bdq.operands) > 2 and bdq.operands[2] is not None
            bz = const_array(bdq.operands[2], self.constants) if has_zp else 0
            if (bq is None or bs is None or bdq.operands[0].const.dtype is not DType.i32 or np.any(np.asarray(bz) != 0)
                    or not np.allclose(np.broadcast_to(bs, (channels,)), bias_scale, rtol=1e-6, atol=0)):
                return "the dequantized bias is not int32 with scale x_scale * w_scale and zero point 0"
            if bq.shape == (channels,):
                return bdq.operands[0]
            return g.add_const(b.name + ".q", Tensor.from_array(bq.reshape(-1)))
        bias = const_array(b, self.constants)
        if bias is None or bias.size != channels:
            return "the Conv bias is not a constant [C_out]"
        q = np.round(np.asarray(bias, np.float64).reshape(-1) / bias_scale.astype(np.float64))
        if np.any(np.abs(q) > 2**31 - 1):
            return "the bias does not fit int32 at scale x_scale * w_scale"
        return g.add_const(b.name + ".q", Tensor.from_array(q.astype(np.int32)))

    # -- building -------------------------------------------------------------------------------
    def _weight_consts(self, g: Graph, w: _Weight) -> tuple[Value, Value, Value]:
        """@W.q [K, N], scale [] / [N], zero point [] / [N] (new consts when reshaped or transposed)."""
        if w.transposed:
            wq = g.add_const(w.q_value.name + ".t", Tensor.from_array(w.codes.astype(w.dtype.numpy), w.dtype))
        else:
            wq = w.q_value
        if w.scale_value.const.shape == w.scale.shape:
            ws = w.scale_value
        else:
            ws = g.add_const(w.scale_value.name + ".v", Tensor.from_array(w.scale.astype(np.float32)))
        if w.zp_value is not None and w.zp_value.const.shape == w.zero_point.shape:
            wz = w.zp_value
        else:
            wz = g.add_const((w.zp_value.name if w.zp_value is not None else w.q_value.name + ".zp") + ".v",
                             Tensor.from_array(w.zero_point.astype(w.dtype.numpy), w.dtype))
        return wq, ws, wz

    def _zero(self, g: Graph, q: Value) -> Value:
        return g.add_const(q.name + ".zp0", Tensor.from_array(np.zeros((), q.type.dtype.numpy), q.type.dtype))

    def _zero_like(self, g: Graph, q: Value, shape: tuple) -> Value:
        return g.add_const(q.name + ".zp0", Tensor.from_array(np.zeros(shape, q.const.dtype.numpy), q.const.dtype))

    def _replace(self, g: Graph, anchor: Op, new: Op, old: Value, what: str) -> bool:
        g.insert_before(anchor, new)
        out = new.add_result(Value(old.name + ".lowered", old.type))
        return self._finish(g, anchor, out, what, new)

    def _finish(self, g: Graph, anchor: Op, out: Value, what: str, new: Op | None = None) -> bool:
        old = anchor.results[0]
        if not replace_value(old, out):
            # old cannot hand its name over (an output of another graph too): undo
            self._undo(g, out)
            return self._skip(anchor, "its result is an output the rewrite cannot rename")
        quantized = anchor.operands[0] if anchor.op_type == "QuantizeLinear" else None
        erase_op(anchor)
        if quantized is not None and quantized.producer is not None and quantized.producer.graph is g \
                and not any(r is not None and r._uses for r in quantized.producer.results):
            erase_op(quantized.producer)
        self.ctx.remark(new or out.producer, f"lowered to {what}")
        return True

    def _undo(self, g: Graph, out: Value) -> None:
        stack = [out.producer]
        while stack:
            op = stack.pop()
            if op is None or op.graph is not g or any(r is not None and r._uses for r in op.results):
                continue
            operands = [v for v in op.operands if v is not None]
            erase_op(op)
            for v in operands:
                if v.producer is not None and not v._uses:
                    stack.append(v.producer)

    def _cleanup(self, g: Graph, ops: list[Op | None], consts: list[Value | None]) -> None:
        """Erase the given ops once nothing reads them, then the consts only they read."""
        for op in ops:
            if op is not None and op.graph is g and not any(r is not None and r._uses for r in op.results):
                erase_op(op)
        for v in consts:
            if v is not None and v.const is not None and not v._uses and g.consts.get(v.name) is v:
                g.remove_const(v)

    def _saturation_remark(self, op: Op, act_dtype: DType, w: _Weight | None, codes: np.ndarray | None = None) -> None:
        if act_dtype is not DType.u8:
            return
        if w is not None:
            if w.dtype is not DType.i8:
                return
            codes = w.codes
        if codes is None or codes.size == 0:
            return
        peak = int(np.max(np.abs(codes.astype(np.int32))))
        if peak > 64:
            self.ctx.remark(op, f"u8 x i8 with i8 weights up to |{peak}| (> 64): onnxruntime's x86 AVX2 kernel "
                                "(no VNNI) can saturate; exact on Arm64 and VNNI (quantize weights to 7 bits for AVX2)")


# -- small helpers ---------------------------------------------------------------------------------
def _dtype(v: Value | None) -> DType | None:
    t = v.type if v is not None else None
    return t.dtype if isinstance(t, TensorType) else None


def _is_scalar(v: Value) -> bool:
    if v.const is not None:
        return v.const.size == 1 and len(v.const.shape) <= 1
    t = v.type
    return isinstance(t, TensorType) and t.shape is not None and (t.shape == () or t.shape == (1,))


def _scalar(g: Graph, v: Value) -> Value:
    """``v`` as a rank-0 value: a [1] const gets a rank-0 copy (QLinear* take scalars)."""
    if v.const is not None and v.const.shape != ():
        return g.add_const(v.name + ".scalar", Tensor.from_array(v.const.numpy().reshape(()), v.const.dtype))
    return v


def _flat(g: Graph, v: Value) -> Value:
    if v.const is not None and v.const.size == 1 and v.const.shape != ():
        return _scalar(g, v)
    return v


def _like(v: Value, dtype: DType) -> TensorType:
    t = v.type
    return TensorType(dtype, t.shape if isinstance(t, TensorType) else None)


def _suffix(name: str, suffix: str) -> str:
    return f"{name}_{suffix}" if name else ""


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``bits``-bit codes packed along the last axis into bytes, the first in the low bits."""
    per_byte = 8 // bits
    length = codes.shape[-1]
    pad = -length % per_byte
    c = codes.astype(np.uint8)
    if pad:
        c = np.concatenate([c, np.zeros(c.shape[:-1] + (pad,), np.uint8)], axis=-1)
    c = c.reshape(c.shape[:-1] + (-1, per_byte))
    out = np.zeros(c.shape[:-1], np.uint8)
    for j in range(per_byte):
        out |= (c[..., j] << (bits * j)).astype(np.uint8)
    return out
