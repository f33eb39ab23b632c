"""LSTM and GRU (float32) -> one qc_lstm_f32 / qc_gru_f32 call per direction (runtime/qc_rnn.c).

    Y, Y_h, Y_c = LSTM(X, W, R, B, sequence_lens, initial_h, initial_c, P) {direction=bidirectional}
        -> qc_lstm_f32(forward: W[0], R[0], B[0], P[0], h0[0] ... -> Y[:, 0], Y_h[0], Y_c[0])
           qc_lstm_f32(reverse: W[1], R[1], ... -> Y[:, 1], Y_h[1], Y_c[1])

Both ``layout`` values are strides of the same call (layout 0: X [T, B, IN], Y [T, D, B, H],
states [D, B, H]; layout 1: X [B, T, IN], Y [B, T, D, H], states [B, D, H]). Absent or unused
outputs are not written. The gate products are qc_gemm_f32 calls inside the kernel.

Refused with a message: activations other than the defaults (Sigmoid, Tanh, Tanh), a
``sequence_lens`` that is not a constant equal to the sequence length (shorter sequences),
dtypes other than float32.
"""
from __future__ import annotations

import numpy as np

from qc.ir import DType, Op

from .lower_ops import str_attr
from .lowering import Lowering, Ptr, Raw, handler, unsupported

_DEFAULT_ACTIVATIONS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh")}
_GATES = {"LSTM": 4, "GRU": 3}


def _present(op: Op, i: int):
    return op.operands[i] if i < len(op.operands) and op.operands[i] is not None else None


def _wanted(op: Op, i: int):
    """Result i when the model reads it (or it is a graph output), else None."""
    r = op.results[i] if i < len(op.results) else None
    return r if r is not None and r.uses() else None


def _check(lw: Lowering, op: Op, T: int) -> None:
    for i, v in enumerate(op.operands):
        if v is not None and i != 4 and lw.dtype(v) != DType.f32:
            raise unsupported(op, f"input {i} of dtype {lw.dtype(v)}; only float32")
    acts = op.attr("activations")
    if acts:
        names = tuple((a.decode() if isinstance(a, bytes) else a).lower() for a in acts)
        default = _DEFAULT_ACTIVATIONS[op.op_type]
        if any(n != default[k % len(default)] for k, n in enumerate(names)):
            raise unsupported(op, f"activations {list(names)}; only the defaults {list(default)}")
    lens = _present(op, 4)
    if lens is not None:
        if lens.const is None:
            raise unsupported(op, "sequence_lens must be a constant")
        if not np.all(lens.const.numpy() == T):
            raise unsupported(op, f"sequence_lens {lens.const.numpy().tolist()} shorter than the sequence ({T})")


@handler("LSTM", "GRU")
def _rnn(lw: Lowering, op: Op) -> None:
    lstm = op.op_type == "LSTM"
    x = op.operands[0]
    layout = op.attr("layout", 0)
    xshape = lw.shape(x)
    T, B, IN = (xshape[1], xshape[0], xshape[2]) if layout else xshape
    _check(lw, op, T)
    H = int(op.attr("hidden_size", lw.shape(op.operands[2])[-1]))
    direction = str_attr(op, "direction", "forward")
    dirs = {"forward": [0], "reverse": [1], "bidirectional": [0, 1]}.get(direction)
    if dirs is None:
        raise unsupported(op, f"direction '{direction}'")
    D, G = len(dirs), _GATES[op.op_type] * H
    clip = float(op.attr("clip", 0.0))
    W, R = lw.buf(op.operands[1]), lw.buf(op.operands[2])
    bias = _present(op, 3)
    h0, c0 = _present(op, 5), _present(op, 6) if lstm else None
    peep = _present(op, 7) if lstm else None
    y, yh = _wanted(op, 0), _wanted(op, 1)
    yc = _wanted(op, 2) if lstm else None
    ybuf, yhbuf, ycbuf = (lw.out(op, i) if v is not None else None for i, v in enumerate((y, yh, yc)))
    xs_t, xs_b = (IN, T * IN) if layout else (B * IN, IN)
    ys_t, ys_b = (D * H, T * D * H) if layout else (D * B * H, H)
    hs_b = D * H if layout else H
    work = lw.scratch(DType.f32, (2 * B * G + 2 * B * H) if lstm else (2 * B * G + 3 * B * H))

    def ptr(v, buf, elems: int, const: bool = True):
        if v is None:
            return Raw("NULL")
        return Ptr(buf if buf is not None else lw.buf(v), elems, const=const)

    for d, rev in enumerate(dirs):
        state = d * H if layout else d * B * H  # offset of direction d in [D, B, H] / [B, D, H]
        args = [T, B, IN, H, rev, op.attr("input_forget", 0) if lstm else op.attr("linear_before_reset", 0), clip,
                Ptr(lw.buf(x)), xs_t, xs_b, Ptr(W, d * G * IN), Ptr(R, d * G * H), ptr(bias, None, d * 2 * G)]
        if lstm:
            args.append(ptr(peep, None, d * 3 * H))
        args.append(ptr(h0, None, state))
        if lstm:
            args.append(ptr(c0, None, state))
        args += [hs_b, ptr(y, ybuf, d * H if layout else d * B * H, False), ys_t, ys_b,
                 ptr(yh, yhbuf, state, False)]
        if lstm:
            args.append(ptr(yc, ycbuf, state, False))
        args.append(Ptr(work, const=False))
        lw.call(op, "qc_lstm_f32" if lstm else "qc_gru_f32", args,
                f"{op.op_type.lower()} f32 {'reverse' if rev else 'forward'}")
