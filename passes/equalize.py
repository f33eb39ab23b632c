"""The ``equalize`` pass: cross-layer equalization of consecutive Convs (Nagel et al. 2019)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qc.ir.core import Module, Op, Value
from qc.ir.tensor import Tensor
from qc.pm import Pass, PassContext, register_pass

from ._util import const_array, is_any_output, is_default_domain


@register_pass("equalize")
@dataclass(frozen=True)
class Equalize(Pass):
    """equalize: rescale the channels between two consecutive Convs so that each channel's weight
    range is the same in both (cross-layer equalization, Nagel et al., "Data-Free Quantization
    Through Weight Equalization and Bias Correction", 2019). For ``y = W2 * relu(W1 * x + b1)``
    and any ``s > 0`` per channel, ``relu(s * z) = s * relu(z)``, so::

        %h = onnx.Conv(%x, @W1, @b1)            %h = onnx.Conv(%x, @W1', @b1')     W1'[i] = W1[i] / s[i]
        %r = onnx.Relu(%h)                  ->  %r = onnx.Relu(%h)                 b1'[i] = b1[i] / s[i]
        %y = onnx.Conv(%r, @W2, @b2)            %y = onnx.Conv(%r, @W2', @b2)      W2'[:, i] = W2[:, i] * s[i]

    with ``s[i] = sqrt(r1[i] / r2[i])`` (``r1[i] = max |W1[i]|``, ``r2[i] = max |W2[:, i]|``): both
    ranges become ``sqrt(r1 r2)``. That matters most for depthwise-separable nets, whose depthwise
    channels have ranges far apart (one scale for a whole activation tensor then fits none of them).
    The model computes the same function (float rounding aside). Pairs are a Conv whose only reader
    is a Relu (or nothing) whose only reader is a Conv of group 1 or depthwise (group = channels);
    the first Conv has group 1 or is depthwise too. With ``relu6 = true`` a ``Clip(0, hi)`` between
    them counts as a Relu (as the paper does for MobileNet-v2's ReLU6): no longer exact where an
    activation exceeds ``hi / s``. ``rounds`` passes over the graph (a chain's scales settle).
    Constant weights read by one op only; Convs in subgraphs are left alone.
    """

    rounds: int = 3
    """passes over the graph"""
    relu6: bool = False
    """also equalize across Clip(0, hi) (not exact where activations pass hi / s)"""

    def run(self, module: Module, ctx: PassContext) -> bool:
        graph = module.graph
        pairs = [p for p in (self._pair(op) for op in graph.ops) if p is not None]
        if not pairs:
            return False
        for _ in range(max(self.rounds, 1)):
            for a, b in pairs:
                self._equalize(module, a, b)
        ctx.remark(None, f"equalized {len(pairs)} Conv pairs")
        return True

    def _pair(self, a: Op) -> tuple[Op, Op] | None:
        if not _conv(a) or not (_group(a) == 1 or _depthwise(a)):
            return None
        v: Value = a.results[0]
        for _ in range(2):
            users = v.users()
            if len(users) != 1 or is_any_output(v) or users[0].graph is not a.graph:
                return None
            u = users[0]
            if _conv(u) and u.operands[0] is v and (_group(u) == 1 or _depthwise(u)):
                return a, u
            if not (self._homogeneous(u) and u.operands[0] is v):
                return None
            v = u.results[0]
        return None

    def _homogeneous(self, op: Op) -> bool:
        if not is_default_domain(op):
            return False
        if op.op_type == "Relu":
            return True
        if op.op_type == "Clip" and self.relu6 and len(op.operands) >= 2:
            lo = const_array(op.operands[1]) if op.operands[1] is not None else None
            return lo is not None and lo.size == 1 and float(lo.reshape(())) == 0.0
        return False

    @staticmethod
    def _equalize(module: Module, a: Op, b: Op) -> None:
        w1, w2 = const_array(a.operands[1]), const_array(b.operands[1])
        if w1 is None or w2 is None:
            return
        c = w1.shape[0]
        r1 = np.abs(w1.reshape(c, -1)).max(axis=1).astype(np.float64)
        if _depthwise(b):
            if w2.shape[0] != c:
                return
            r2 = np.abs(w2.reshape(c, -1)).max(axis=1).astype(np.float64)
        else:
            if w2.shape[1] != c:
                return
            r2 = np.abs(np.moveaxis(w2, 1, 0).reshape(c, -1)).max(axis=1).astype(np.float64)
        ok = (r1 > 0) & (r2 > 0)
        s = np.where(ok, np.sqrt(np.where(ok, r1, 1) / np.where(ok, r2, 1)), 1.0)
        shape1 = (c,) + (1,) * (w1.ndim - 1)
        new_w1 = (w1 / s.reshape(shape1)).astype(w1.dtype)
        if _depthwise(b):
            new_w2 = (w2 * s.reshape((c,) + (1,) * (w2.ndim - 1))).astype(w2.dtype)
        else:
            new_w2 = (w2 * s.reshape((1, c) + (1,) * (w2.ndim - 2))).astype(w2.dtype)
        _set_const(module, a, 1, new_w1)
        _set_const(module, b, 1, new_w2)
        if len(a.operands) > 2 and a.operands[2] is not None:
            b1 = const_array(a.operands[2])
            if b1 is not None:
                _set_const(module, a, 2, (b1 / s).astype(b1.dtype))


def _conv(op: Op) -> bool:
    return (op.op_type == "Conv" and is_default_domain(op) and len(op.operands) >= 2
            and all(v is not None and v.const is not None and len(v.users()) == 1 for v in op.operands[1:])
            and not (len(op.operands) > 2 and op.operands[2] is not None and const_array(op.operands[2]) is None)
            and const_array(op.operands[1]) is not None)


def _group(op: Op) -> int:
    return int(op.attr("group", 1) or 1)


def _depthwise(op: Op) -> bool:
    w = const_array(op.operands[1])
    return w is not None and w.ndim >= 2 and w.shape[1] == 1 and _group(op) == w.shape[0] and _group(op) > 1


def _set_const(module: Module, op: Op, i: int, data: np.ndarray) -> None:
    """New data for a constant that only ``op`` reads (checked by ``_conv``): same value, same name."""
    op.operands[i].const = Tensor.from_array(np.ascontiguousarray(data))
