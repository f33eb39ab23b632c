"""The fused int8 GEMM call (runtime/qc_kernels.h qc_gemm_s8_f32 / qc_gemm_s8_q8) shared by the
MatMul / Gemm units (lower_quant) and the Conv unit (lower_conv_s8).

The epilogue is passed as a C99 compound literal with designated initializers,
``&(const struct qc_epilogue){.bias = ..., .scale = ...}``, so fields that later versions add to
the struct (activations, a residual input) default to off in code generated before them.
"""
from __future__ import annotations

import numpy as np

from qc.ir import Op

from .lowering import Buffer, Call, Lowering, Ptr, Raw, node_name


def gemm_s8(lw: Lowering, op: Op, M: int, N: int, K: int, a: Ptr, lda: int, packed: Buffer, out: Ptr,
            ldo: int, bias: np.ndarray, *, scale: np.ndarray | None = None, fbias: Buffer | None = None,
            mult: np.ndarray | None = None, shift: np.ndarray | None = None, out_zp: int = 0,
            qmin: int = -128, qmax: int = 127, label: str = "") -> None:
    """One call: with *scale*, float32 out[m][n] = (acc + bias[n]) * scale (+ fbias[n]); with
    *mult* / *shift*, int8 out = clamp(out_zp + MBQM(acc + bias[n]), qmin, qmax). Per channel when
    the scale (or multiplier) array has more than one element."""
    per_channel = int((scale if scale is not None else mult).size > 1)
    fields: dict[str, object] = {"bias": Ptr(lw.weight(np.asarray(bias, np.int32))), "per_channel": per_channel}
    if scale is not None:
        fields.update(scale=Ptr(lw.weight(np.asarray(scale, np.float32))),
                      fbias=Ptr(fbias) if fbias is not None else Raw("NULL"))
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
