"""The outlier half of split-outliers as one kernel call (runtime/qc_outliers.c).

``split-outliers`` leaves, for each MatMul it splits::

    %x.outliers = onnx.Gather(%x, @cols) {axis = -1}
    %x.outliers.f16 = onnx.Cast(%x.outliers) {to = 10}
    %y.outliers.f16 = onnx.MatMul(%x.outliers.f16, @w.outliers)      : f16 [ncols, N] constant
    %y.outliers = onnx.Cast(%y.outliers.f16) {to = 1}
    %y = onnx.Add(%y.rest, %y.outliers)

which lowers here to ``qc_outlier_acc_f16`` at the Add: it reads the outlier columns of x in
place, rounds them to float16, sums their products with the float16 weight rows in float32 (the
arithmetic of qc_matmul_f16; the rows are stored widened to float32, which is exact), rounds once
to float16 and adds into y.rest: the same bits as the five ops one by one. The MatMul and its Cast
are consumed; the Gather and the first Cast too when every reader of them is such an Add's chain
(q, k and v share them).

The model's own bias Add and GELU after the split MatMul (MiniLM's dense layers; the int8 GEMM's
epilogue cannot take them, the outlier Add sits in between) and a Mul by N constants after those
(smooth-quant's scale of the next MatMul's input) run in the same pass, in this order, each
optional and the only reader of the value before it (none a graph output)::

    %y = onnx.Add(%y.rest, %y.outliers)
    %yb = onnx.Add(%y, @b)                        ->  qc_outlier_acc_f16(..., b, QC_OUTL_GELU, s, %gs)
    %g = onnx.Gelu(%yb) {approximate = "none"}        : b, s [N] float32; Gelu erf or tanh (onnx or qc)
    %gs = onnx.Mul(%g, @s)

The kernel writes the last folded result, into y.rest's buffer when y.rest has no other reader.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from qc.ir import DType, Op, Value

from .lower_ops import str_attr
from .lowering import Buffer, Lowering, Ptr, Raw

_FLOAT16, _FLOAT = 10, 1


@dataclass(frozen=True)
class OutlierUnit:
    """One matched chain, anchored at its Add."""

    rest: Value        # y.rest, the Add's other operand
    x: Value           # the Gather's input
    cols: np.ndarray   # outlier columns of x's last axis
    weight: Value      # the float16 (or float32) constant [ncols, N]
    chain: tuple[Op, ...]  # Gather, Cast f16, MatMul, Cast f32 (float32 form: Gather, MatMul)
    bias_add: Op | None = None     # Add(y, b) after the chain's Add
    bias: Value | None = None      # b: N float32 values
    gelu: Op | None = None         # the Gelu after it (or after the chain's Add)
    act: str = "QC_OUTL_NONE"
    scale_mul: Op | None = None    # Mul(., s) last (smooth-quant's scale of the next layer's input)
    scale: Value | None = None     # s: N float32 values

    @property
    def half(self) -> bool:
        return len(self.chain) == 4

    @property
    def computed(self) -> tuple[Op, ...]:
        """the ops only this unit reads: MatMul (and its Cast back to float32)"""
        return self.chain[2:] if self.half else self.chain[1:]

    @property
    def prologue(self) -> tuple[Op, ...]:
        """the ops readers may share (q, k and v): Cast f16 then Gather, innermost first"""
        return self.chain[1::-1] if self.half else self.chain[:1]

    @property
    def tail(self) -> list[Op]:
        return [o for o in (self.bias_add, self.gelu, self.scale_mul) if o is not None]


def _producer(v: Value | None, op_type: str) -> Op | None:
    if v is None or v.const is not None or v.producer is None:
        return None
    p = v.producer
    return p if p.domain in ("", "ai.onnx") and p.op_type == op_type and p.results[0] is v else None


def _only_reader(v: Value, op: Op, outputs: set[int]) -> bool:
    return id(v) not in outputs and len(v.uses()) == 1 and v.users() == [op]


def _next(v: Value, outputs: set[int]) -> Op | None:
    """The only reader of v (reading it once), when v is not a graph output."""
    users = v.users()
    if id(v) in outputs or len(users) != 1 or sum(x is v for x in users[0].operands) != 1:
        return None
    return users[0]


_GELU = {"none": "QC_OUTL_GELU", "tanh": "QC_OUTL_GELU_TANH"}


def _vector_operand(lw: Lowering, op: Op, y: Value, n: int) -> Value | None:
    """op's other operand when it is a float32 constant of n values along the last axis of y."""
    b = op.operands[1] if op.operands[0] is y else op.operands[0]
    bs = tuple(b.const.shape) if b is not None and b.const is not None else ()
    shape = lw.shape(y)
    if bs and b.const.dtype == DType.f32 and math.prod(bs) == n and bs[-1] == n and len(bs) <= len(shape) \
            and lw.shape(op.results[0]) == shape:
        return b
    return None


def _is(op: Op | None, op_type: str, lw: Lowering) -> bool:
    return op is not None and op.domain in ("", "ai.onnx") and op.op_type == op_type and id(op) not in lw.consumed


def _with_tail(lw: Lowering, add: Op, unit: OutlierUnit, outputs: set[int]) -> OutlierUnit:
    """unit with the bias Add, the Gelu and the Mul (a float32 constant of N values along the last
    axis, e.g. smooth-quant's scale) that follow its Add, in this order, each optional and the
    only reader of the value before it."""
    y = add.results[0]
    shape, n = lw.shape(y), lw.shape(y)[-1]
    nxt = _next(y, outputs)
    fields: dict = {}
    if _is(nxt, "Add", lw) and nxt is not None:
        b = _vector_operand(lw, nxt, y, n)
        if b is not None:
            fields.update(bias_add=nxt, bias=b)
            y = nxt.results[0]
            nxt = _next(y, outputs)
    if nxt is not None and nxt.op_type == "Gelu" and nxt.domain in ("", "ai.onnx", "qc") \
            and str_attr(nxt, "approximate", "none") in _GELU and id(nxt) not in lw.consumed \
            and lw.shape(nxt.results[0]) == shape and lw.dtype(nxt.results[0]) == DType.f32:
        fields.update(gelu=nxt, act=_GELU[str_attr(nxt, "approximate", "none")])
        y = nxt.results[0]
        nxt = _next(y, outputs)
    if _is(nxt, "Mul", lw) and nxt is not None:
        s = _vector_operand(lw, nxt, y, n)
        if s is not None:
            fields.update(scale_mul=nxt, scale=s)
    return replace(unit, **fields)


def _match(lw: Lowering, add: Op, outputs: set[int]) -> OutlierUnit | None:
    if add.domain not in ("", "ai.onnx") or add.op_type != "Add" or len(add.operands) != 2:
        return None
    for side in (1, 0):
        unit = _chain(lw, add, add.operands[side], add.operands[1 - side], outputs)
        if unit is not None:
            return unit
    return None


def _chain(lw: Lowering, add: Op, yo: Value, rest: Value, outputs: set[int]) -> OutlierUnit | None:
    if not _only_reader(yo, add, outputs):
        return None
    back = _producer(yo, "Cast")
    if back is None:  # the float32 form: Gather, MatMul with a float32 @w.outliers
        mm = _producer(yo, "MatMul")
        if mm is None or mm.operands[1] is None or mm.operands[1].const is None \
                or mm.operands[1].const.dtype != DType.f32 or not mm.operands[1].name.endswith(".outliers"):
            return None
        to16, gather = None, _producer(mm.operands[0], "Gather")
    else:
        if back.attr("to", 0) != _FLOAT:
            return None
        mm = _producer(back.operands[0], "MatMul")
        if mm is None or not _only_reader(back.operands[0], back, outputs):
            return None
        if mm.operands[1] is None or mm.operands[1].const is None or mm.operands[1].const.dtype != DType.f16:
            return None
        to16 = _producer(mm.operands[0], "Cast")
        gather = _producer(to16.operands[0], "Gather") if to16 is not None and to16.attr("to", 0) == _FLOAT16 \
            else None
    w = mm.operands[1]
    if gather is None or w is None or w.const is None or len(w.const.shape) != 2:
        return None
    x, idx = gather.operands
    if idx is None or idx.const is None or lw.dtype(x) != DType.f32 or lw.dtype(rest) != DType.f32:
        return None
    xshape, cols = lw.shape(x), idx.const.numpy().astype(np.int64)
    if not xshape or gather.attr("axis", 0) % len(xshape) != len(xshape) - 1 or cols.ndim != 1:
        return None
    k = xshape[-1]
    cols = np.where(cols < 0, cols + k, cols)
    n = w.const.shape[1]
    out = lw.shape(add.results[0])
    if cols.size != w.const.shape[0] or cols.size == 0 or np.any((cols < 0) | (cols >= k)) \
            or lw.shape(rest) != out or lw.shape(yo) != out or out != (*xshape[:-1], n):
        return None
    chain = (gather, mm) if to16 is None or back is None else (gather, to16, mm, back)
    return OutlierUnit(rest, x, cols, w, chain)


def plan_outliers(lw: Lowering) -> None:
    """Find the chains of the main graph (``lw.outlier_units``, by Add) and consume their ops."""
    outputs = {id(v) for v in lw.module.graph.outputs}
    units: dict[int, OutlierUnit] = {}
    for op in lw.module.graph:
        if id(op) in lw.consumed:
            continue
        unit = _match(lw, op, outputs)
        if unit is not None:
            unit = _with_tail(lw, op, unit, outputs)
            units[id(op)] = unit
            lw.consumed.update(id(o) for o in (*unit.computed, *unit.tail))
    lw.outlier_units = units  # type: ignore[attr-defined]
    for unit in units.values():  # the Gather and Cast f16, when every reader is consumed
        for op in unit.prologue:
            r = op.results[0]
            if id(r) not in outputs and all(id(u) in lw.consumed for u in r.users()):
                lw.consumed.add(id(op))


def match_outliers(lw: Lowering, op: Op) -> bool:
    """Lower op when it is the Add of a planned chain."""
    unit = getattr(lw, "outlier_units", {}).get(id(op))
    if unit is None:
        return False
    _lower(lw, op, unit)
    return True


def _lower(lw: Lowering, add: Op, u: OutlierUnit) -> None:
    rest = lw.buf(u.rest)
    last = u.tail[-1] if u.tail else add
    r = last.results[0]
    if id(r) not in lw.bufs and rest.root.kind == "arena" and len(u.rest.uses()) == 1 \
            and id(u.rest) not in {id(v) for v in lw.module.graph.outputs}:
        dt, shape = lw.type_of(last, r)
        lw.bufs[id(r)] = Buffer(lw.fresh("a"), dt, shape, "alias", base=rest)  # in place: y.rest dies here
    y = lw.out(last)
    xshape = lw.shape(u.x)
    n = u.weight.const.shape[1]
    m = math.prod(xshape[:-1])
    cols = lw.weight(u.cols.astype(np.int32))
    w32 = lw.weight(u.weight.const.numpy().astype(np.float32))  # float16 widened exactly: no conversion per row
    scratch = lw.scratch(DType.f32, 4 * int(u.cols.size))
    bias = Ptr(lw.buf(u.bias)) if u.bias is not None else Raw("NULL")
    scale = Ptr(lw.buf(u.scale)) if u.scale is not None else Raw("NULL")
    kernel = "qc_outlier_acc_f16" if u.half else "qc_outlier_acc_f32"
    label = f"outlier acc {'f16' if u.half else 'f32'}" + (" + bias" if u.bias is not None else "") \
        + {"QC_OUTL_NONE": "", "QC_OUTL_GELU": " + gelu", "QC_OUTL_GELU_TANH": " + gelu_tanh"}[u.act] \
        + (" * scale" if u.scale is not None else "")
    lw.call(add, kernel, [m, n, int(u.cols.size), Ptr(lw.buf(u.x)), int(xshape[-1]), Ptr(cols),
                                        Ptr(w32), Ptr(rest), bias, Raw(u.act), scale,
                                        Ptr(y, const=False), Ptr(scratch, const=False)], label)
