"""The fused int8 GEMM call (runtime/qc_kernels.h qc_gemm_s8_f32 / qc_gemm_s8_q8) shared by the
MatMul / Gemm units (lower_quant) and the Conv unit (lower_conv_s8).

The epilogue is passed as a C99 compound literal with designated initializers,
``&(const struct qc_epilogue){.bias = ..., .scale = ...}``, so fields that later versions add to
the struct (activations, a residual input) default to off in code generated before them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qc.ir import DType, Op, Value

from .lower_ops import str_attr
from .lowering import Buffer, Call, Lowering, Ptr, Raw, node_name


@dataclass(frozen=True)
class Tail:
    """Float ops after a dequantizing GEMM that its epilogue computes instead: ``Add(y, b)`` of a
    constant b of N floats (``fbias``: the same float addition) and / or an erf-form Gelu
    (``QC_ACT_GELU``: qc_vmath.h's GELU on the same float as the standalone kernel). The GEMM
    writes the result of ``ops[-1]``."""

    add: Op | None
    fbias: np.ndarray | None
    gelu: Op | None

    @property
    def ops(self) -> list[Op]:
        return [o for o in (self.add, self.gelu) if o is not None]


def _only_reader(lw: Lowering, v: Value, outputs: set[int]) -> Op | None:
    users = v.users()
    if id(v) in outputs or len(users) != 1 or sum(x is v for x in users[0].operands) != 1:
        return None
    return users[0]


def _is_gelu(op: Op | None) -> bool:
    return op is not None and op.op_type == "Gelu" and op.domain in ("", "ai.onnx", "qc") \
        and str_attr(op, "approximate", "none") == "none"


def epilogue_tail(lw: Lowering, op: Op, N: int, *, may_add: bool = True) -> Tail | None:
    """The Add(bias) / Gelu after *op*'s float result that the epilogue can take over (each the
    only reader of the value before it, none of those values a graph output), or None."""
    outputs = {id(v) for v in lw.module.graph.outputs}
    y = op.results[0]
    shape = tuple(lw.shape(y))
    nxt = _only_reader(lw, y, outputs)
    add, fb = None, None
    if may_add and nxt is not None and nxt.op_type == "Add" and nxt.domain in ("", "ai.onnx"):
        b = nxt.operands[1] if nxt.operands[0] is y else nxt.operands[0]
        bs = tuple(lw.shape(b)) if b.const is not None else ()
        if b.const is not None and lw.dtype(b) == DType.f32 and math.prod(bs) == N and bs and bs[-1] == N \
                and tuple(lw.shape(nxt.results[0])) == shape:
            add, fb = nxt, b.const.numpy().reshape(-1).astype(np.float32)
            y = nxt.results[0]
            nxt = _only_reader(lw, y, outputs)
    gelu = nxt if _is_gelu(nxt) and nxt is not None and tuple(lw.shape(nxt.results[0])) == shape else None
    return Tail(add, fb, gelu) if add is not None or gelu is not None else None


def gemm_s8(lw: Lowering, op: Op, M: int, N: int, K: int, a: Ptr, lda: int, packed: Buffer, out: Ptr,
            ldo: int, bias: np.ndarray, *, scale: np.ndarray | None = None, fbias: Buffer | None = None,
            mult: np.ndarray | None = None, shift: np.ndarray | None = None, out_zp: int = 0,
            qmin: int = -128, qmax: int = 127, label: str = "", act: str | None = None) -> None:
    """One call: with *scale*, float32 out[m][n] = (acc + bias[n]) * scale (+ fbias[n]); with
    *mult* / *shift*, int8 out = clamp(out_zp + MBQM(acc + bias[n]), qmin, qmax). Per channel when
    the scale (or multiplier) array has more than one element. *act* (float32 only): an enum
    qc_act name applied last ("QC_ACT_GELU")."""
    per_channel = int((scale if scale is not None else mult).size > 1)
    fields: dict[str, object] = {"bias": Ptr(lw.weight(np.asarray(bias, np.int32))), "per_channel": per_channel}
    if scale is not None:
        fields.update(scale=Ptr(lw.weight(np.asarray(scale, np.float32))),
                      fbias=Ptr(fbias) if fbias is not None else Raw("NULL"))
        if act is not None:
            fields["act"] = Raw(act)
            label += " + " + act[len("QC_ACT_"):].lower()
        fn, kernel = "qc_gemm_s8_f32", f"gemm s8{label} ({lw.variant})"
    else:
        assert mult is not None and shift is not None
        fields.update(mult=Ptr(lw.weight(np.asarray(mult, np.int32))),
                      shift=Ptr(lw.weight(np.asarray(shift, np.int32))),
                      out_zp=int(out_zp), qmin=int(qmin), qmax=int(qmax))
        pc = " per-channel" if per_channel else ""
        fn, kernel = "qc_gemm_s8_q8", f"gemm s8 requant{pc}{label} ({lw.variant})"
    args = [M, N, K, a, lda, Ptr(packed), *fields.values(), out, ldo]
    ep = ", ".join(f".{name} = {{{6 + i}}}" for i, name in enumerate(fields))
    text = (f"{fn}({{0}}, {{1}}, {{2}}, {{3}}, {{4}}, {{5}}, &(const struct qc_epilogue){{{{{ep}}}}}, "
            f"{{{6 + len(fields)}}}, {{{7 + len(fields)}}});")
    lw.calls.append(Call(fn, args, f"{node_name(op)} ({op.op_type})", kernel, text=text))
    lw.kernels[kernel] = lw.kernels.get(kernel, 0) + 1
