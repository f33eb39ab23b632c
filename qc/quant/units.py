"""Node units: the groups of nodes a target runs as one kernel, matched in one place.

``DQ(x_q) -> MatMul/Gemm/Conv <- DQ(W.q) [-> Q]`` is one int8 matmul, ``DQ(W.int4, block) ->
MatMul`` one weight-only matmul, a float MatMul / Gemm / Conv one float unit; lowered ops
(QLinearMatMul, MatMulInteger, MatMulNBits, ...) are units by themselves. Like onnxruntime's
NodeUnit. ``node_unit(op)`` returns the typed ``Unit`` anchored at an op: its activation and
weight DequantizeLinear, the compute op, the output QuantizeLinear, the dtypes, the weight's
granularity and zero-point kind, whether the weight is constant, the bias operand (and its
DequantizeLinear), and the DynamicQuantizeLinear a dynamically quantized activation comes from.

``node_unit(op, graph=g)`` matches for a pass that rewrites graph ``g``: only ops of ``g`` are
members (a rewrite of ``g`` cannot reach into an enclosing graph or a subgraph), a
DequantizeLinear needs its input and scale, each step from the result to the output
QuantizeLinear reads the value once as its first input, and an anchor whose dtypes are unknown
is still a unit (``act`` / ``weight`` ``"?"``) so that the pass can say why it leaves it alone.

Users: check-kernels and legalize (the kernel-table key of each unit), the C backend's lowering
(which of them become integer kernel calls), lower-qop (``graph=g``: which units become
onnxruntime's QLinearMatMul / MatMulInteger / MatMulNBits / QLinearConv). qc.quant sits below
the passes and the backends: this module imports only qc.ir, qc.errors and numpy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qc.ir.core import Graph, Op, Value
from qc.ir.tensor import Tensor
from qc.ir.types import is_static_dim

# ONNX TensorProto element type -> the dtype names of the target kernel tables.
DTYPE_NAMES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 6: "int32", 5: "int16",
                4: "uint16", 3: "int8", 2: "uint8", 22: "int4", 21: "uint4"}
FLOATS = ("float32", "float16", "bfloat16", "float64")
ANCHORS = ("MatMul", "Gemm", "Conv")


def const_array(v: Value | None) -> np.ndarray | None:
    """The data of a dense, non-elided, constant value, else None."""
    if v is None or v.const is None or not isinstance(v.const, Tensor) or v.const.is_elided:
        return None
    return v.const.numpy()


def dtype_name(v: Value | None) -> str | None:
    if v is None:
        return None
    t = v.const.dtype if v.const is not None else getattr(v.type, "dtype", None)
    return None if t is None else DTYPE_NAMES.get(int(t), str(t))


def producer(v: Value | None, op_type: str) -> Op | None:
    p = v.producer if v is not None else None
    return p if p is not None and p.domain in ("", "ai.onnx") and p.op_type == op_type else None


def _dequantize(v: Value | None, graph: Graph | None) -> Op | None:
    """The DequantizeLinear producing ``v``; with ``graph``, only one of that graph that has its
    input and scale."""
    dq = producer(v, "DequantizeLinear")
    if dq is None or graph is None:
        return dq
    if dq.graph is not graph or len(dq.operands) < 2 or dq.operands[0] is None or dq.operands[1] is None:
        return None
    return dq


def _dynamic_source(dq: Op | None, graph: Graph | None) -> Op | None:
    """The DynamicQuantizeLinear whose three results (codes, scale, zero point) ``dq`` reads, if any."""
    if dq is None or len(dq.operands) < 3:
        return None
    q, scale, zp = dq.operands[0], dq.operands[1], dq.operands[2]
    dyn = producer(q, "DynamicQuantizeLinear")
    if dyn is None or (graph is not None and dyn.graph is not graph):
        return None
    r = dyn.results
    return dyn if q.index == 0 and len(r) == 3 and scale is r[1] and zp is r[2] else None


def _size(v: Value | None) -> int | None:
    if v is None:
        return None
    if v.const is not None:
        return int(np.prod(v.const.shape)) if v.const.shape else 1
    shape = getattr(v.type, "shape", None)
    if shape is None or not all(is_static_dim(d) for d in shape):
        return None
    return int(np.prod(shape)) if shape else 1


def _zero_point(zp: Value | None) -> str:
    if zp is None:
        return "symmetric"
    a = const_array(zp)
    if a is None:
        return "any"
    return "symmetric" if not np.any(np.asarray(a).astype(np.int64)) else "asymmetric"


def _granularity(scale: Value | None, block_size: int) -> str:
    if block_size:
        return "block"
    n = _size(scale)
    return "any" if n is None else ("tensor" if n == 1 else "channel")


@dataclass
class Unit:
    """One node unit; the dtype fields use the kernel tables' names (``int8``, ``float32``, ...)."""

    op: Op                        # the compute op (the anchor)
    kind: str                     # table op: MatMul, Gemm, Conv, MatMulNBits
    act: str                      # activation dtype (the quantized one for a QDQ unit)
    weight: str                   # weight dtype (the quantized one for a QDQ unit)
    outs: tuple[str, ...]         # output dtypes a kernel may produce, preferred first
    granularity: str = "any"      # weight scale: tensor | channel | block | any (unknown)
    zero_point: str = "any"       # weight zero point: symmetric | asymmetric | any (unknown)
    const_weight: bool = True
    block: int = 0                # block size of a block-wise weight
    act_dq: Op | None = None      # DQ feeding the activation (QDQ units)
    weight_dq: Op | None = None   # DQ feeding the weight
    out_q: Op | None = None       # Q consuming the result (directly or through MaxPool, Reshape, ...)
    note: str = ""                # how the runtime rewrites the unit, when that matters
    act_dynamic: Op | None = None  # DynamicQuantizeLinear whose codes, scale and zero point act_dq reads
    bias_dq: Op | None = None     # DQ feeding the bias operand (Gemm's C, Conv's B)

    @property
    def bias(self) -> Value | None:
        """Gemm's C / Conv's B operand, if any (a constant, or a DequantizeLinear of one, or a value)."""
        if self.op.op_type in ("Gemm", "Conv") and len(self.op.operands) > 2:
            return self.op.operands[2]
        return None

    @property
    def act_value(self) -> Value | None:
        """The quantized activation (the activation DQ's input), for a QDQ unit."""
        return self.act_dq.operands[0] if self.act_dq is not None else None

    @property
    def act_scale(self) -> Value | None:
        """The activation DQ's scale, for a QDQ unit."""
        return self.act_dq.operands[1] if self.act_dq is not None and len(self.act_dq.operands) > 1 else None

    @property
    def act_zero_point(self) -> Value | None:
        """The activation DQ's zero point (None when it has none), for a QDQ unit."""
        return self.act_dq.operands[2] if self.act_dq is not None and len(self.act_dq.operands) > 2 else None

    @property
    def weight_value(self) -> Value | None:
        """The quantized weight (the weight DQ's input), for a QDQ unit."""
        return self.weight_dq.operands[0] if self.weight_dq is not None else None

    @property
    def weight_only(self) -> bool:
        return self.act in FLOATS and self.weight not in FLOATS

    def members(self) -> list[Op]:
        """The anchor and the Q/DQ nodes that run with it (the activation's Q too, when it has no other use)."""
        ops = [self.op]
        for dq in (self.act_dq, self.weight_dq):
            if dq is None:
                continue
            ops.append(dq)
            q = producer(dq.operands[0], "QuantizeLinear") or producer(dq.operands[0], "DynamicQuantizeLinear")
            if q is not None and all(u is dq for u in dq.operands[0].users()):
                ops.append(q)
        if self.out_q is not None:
            ops.append(self.out_q)
        return ops

    def describe(self) -> str:
        g = ""
        if self.weight not in FLOATS:
            g = f" (block {self.block})" if self.granularity == "block" and self.block else (
                f" ({self.granularity})" if self.granularity != "any" else "")
        return f"{self.kind} {self.act} x {self.weight}{g}" + (f" [{self.note}]" if self.note else "")


# Ops onnxruntime moves a QuantizeLinear across (QDQPropagationTransformer), so that the Q after
# them still closes the unit: Conv -> MaxPool -> Q runs as QLinearConv -> MaxPool(u8).
_Q_TRANSPARENT = ("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


def _lowest_code(q: Op) -> bool:
    """Does Q's zero point sit at the lowest code of its type (so a Relu before it changes nothing)?"""
    zp = q.operands[2] if len(q.operands) > 2 else None
    a = const_array(zp) if zp is not None else np.zeros((), np.uint8)
    if a is None or a.size != 1:
        return False
    return int(a.reshape(())) == (np.iinfo(a.dtype).min if np.issubdtype(a.dtype, np.integer) else 1)


def _clip_bounds(op: Op) -> tuple[float, float] | None:
    """(lo, hi) of a Clip with constant (or absent) bounds, else None."""
    if len(op.operands) == 1 and (op.attr("min", None) is not None or op.attr("max", None) is not None):
        return float(op.attr("min", -np.inf)), float(op.attr("max", np.inf))  # opset < 11
    bounds = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        v = op.operands[i] if len(op.operands) > i else None
        c = const_array(v) if v is not None else None
        if v is not None and (c is None or c.size != 1):
            return None
        bounds.append(default if c is None else float(np.asarray(c, np.float32).reshape(-1)[0]))
    return bounds[0], bounds[1]


def clip_exact(q: Op, lo: float, hi: float) -> bool:
    """Is ``Q(Clip(x, lo, hi)) == Q(x)`` for every x: lo quantizes to the lowest code and hi to the
    highest (Q is monotone), so that the QuantizeLinear's own clamp does the Clip's work?"""
    s = const_array(q.operands[1]) if len(q.operands) > 1 else None
    zp = q.operands[2] if len(q.operands) > 2 else None
    z = const_array(zp) if zp is not None else np.zeros((), np.uint8)
    if s is None or z is None or s.size != 1 or z.size != 1 or not np.issubdtype(z.dtype, np.integer):
        return False
    info = np.iinfo(z.dtype)
    s0, z0 = float(np.asarray(s, np.float32).reshape(())), int(z.reshape(()))
    if s0 <= 0:
        return False

    def code(x: float) -> float:
        return x if math.isinf(x) else float(np.rint(np.float32(x) / np.float32(s0))) + z0

    return code(lo) <= info.min and code(hi) >= info.max


def output_quantize(res: Value | None, graph: Graph | None = None) -> Op | None:
    """The QuantizeLinear that quantizes ``res``, directly or through ops that onnxruntime moves it
    across (MaxPool, Reshape, ...), or a Relu / constant Clip that it removes because the Clip's
    bounds quantize to the lowest and highest codes (a Relu's: the zero point is the lowest code).
    With ``graph``: only ops of that graph, each reading the value once, as its first input."""
    v, relu, clip = res, False, (-np.inf, np.inf)
    while v is not None:
        users = v.users()
        if (len(users) != 1 or users[0].domain not in ("", "ai.onnx")
                or [u for u, _ in v.uses() if not isinstance(u, Op)]):
            return None
        u = users[0]
        if graph is not None and (u.graph is not graph or v.uses() != ((u, 0),)):
            return None
        if u.op_type == "QuantizeLinear":
            if relu and not _lowest_code(u):
                return None
            return u if clip == (-np.inf, np.inf) or clip_exact(u, *clip) else None
        if u.op_type == "Relu":
            relu = True
        elif u.op_type == "Clip":
            b = _clip_bounds(u)
            if b is None:
                return None
            clip = (max(clip[0], b[0]), min(clip[1], b[1]))
        elif u.op_type not in _Q_TRANSPARENT:
            return None
        v = u.results[0] if u.results else None
    return None


def _rank(v: Value | None) -> int | None:
    shape = getattr(v.type, "shape", None) if v is not None else None
    return None if shape is None else len(shape)


def _becomes_gemm(op: Op) -> bool:
    """onnxruntime's MatMulAddFusion (basic level, before the QDQ fusions): a MatMul of two rank-2
    tensors whose only reader is an Add becomes a float Gemm."""
    res = op.results[0] if op.results else None
    if res is None or _rank(op.operands[0]) != 2 or _rank(op.operands[1]) != 2:
        return False
    users = res.users()
    if len(users) != 1 or users[0].op_type != "Add" or users[0].domain not in ("", "ai.onnx"):
        return False
    other = [v for v in users[0].operands if v is not res]
    return len(other) == 1 and _rank(other[0]) in (1, 2)


def node_unit(op: Op, *, ort_fusions: bool = False, graph: Graph | None = None) -> Unit | None:
    """The unit anchored at ``op``, or None. ``ort_fusions``: model onnxruntime's graph rewrites
    that change a unit before its QDQ fusions run (targets whose backend is onnxruntime).
    ``graph``: match for a pass rewriting that graph (see the module docstring)."""
    dom, t = op.domain, op.op_type
    ops = op.operands
    res = op.results[0] if op.results else None
    if dom in ("", "ai.onnx") and t in ANCHORS:
        if len(ops) < 2 or ops[0] is None or ops[1] is None:
            return None
        a, w = ops[0], ops[1]
        adq, wdq = _dequantize(a, graph), _dequantize(w, graph)
        act = dtype_name(adq.operands[0]) if adq is not None else dtype_name(a)
        if wdq is not None:
            wq = wdq.operands[0]
            block = int(wdq.attr("block_size", 0) or 0)
            weight, gran = dtype_name(wq), _granularity(wdq.operands[1] if len(wdq.operands) > 1 else None, block)
            zp = _zero_point(wdq.operands[2] if len(wdq.operands) > 2 else None)
            const_w = wq is not None and wq.const is not None
        else:
            weight, gran, zp, const_w, block = dtype_name(w), "any", "any", w.const is not None, 0
        if act is None or weight is None:
            if graph is None:
                return None
            act, weight = act or "?", weight or "?"
        q = output_quantize(res, graph) if act not in FLOATS else None
        out_float = dtype_name(res) or "float32"
        if q is not None and q.results and dtype_name(q.results[0]):
            outs = (dtype_name(q.results[0]), "int32")  # or an int32 kernel and a requantize
        elif act in FLOATS:
            outs = (out_float,)
        else:
            outs = (out_float, "int32")
        dyn = _dynamic_source(adq, graph)
        bias = ops[2] if t in ("Gemm", "Conv") and len(ops) > 2 else None
        bdq = _dequantize(bias, graph)
        if ort_fusions and t == "MatMul" and act not in FLOATS and _becomes_gemm(op):
            return Unit(op, "Gemm", act, weight, (out_float,), gran, zp, const_w, block, adq, wdq, None,
                        note="MatMul + Add -> float Gemm in onnxruntime", act_dynamic=dyn)
        return Unit(op, t, act, weight, outs, gran, zp, const_w, block, adq, wdq, q, act_dynamic=dyn, bias_dq=bdq)
    if dom in ("", "ai.onnx") and t in ("QLinearMatMul", "QLinearConv") and len(ops) >= 8:
        return Unit(op, t[len("QLinear"):], dtype_name(ops[0]) or "?", dtype_name(ops[3]) or "?",
                    (dtype_name(res) or "?",), _granularity(ops[4], 0), _zero_point(ops[5]), ops[3].const is not None)
    if dom in ("", "ai.onnx") and t == "MatMulInteger" and len(ops) >= 2:
        return Unit(op, "MatMul", dtype_name(ops[0]) or "?", dtype_name(ops[1]) or "?", ("int32",), "tensor",
                    _zero_point(ops[3] if len(ops) > 3 else None), ops[1].const is not None)
    if dom == "com.microsoft" and t == "MatMulNBits" and len(ops) >= 3:
        bits, block = int(op.attr("bits", 4) or 4), int(op.attr("block_size", 0) or 0)
        act = dtype_name(ops[0]) or "float32"
        return Unit(op, "MatMulNBits", act, "int4" if bits == 4 else f"int{bits}", (act,), "block",
                    "asymmetric" if len(ops) > 3 and ops[3] is not None else "symmetric",
                    ops[1].const is not None, block)
    if dom == "com.microsoft" and t == "DynamicQuantizeMatMul" and len(ops) >= 3:
        act = dtype_name(ops[0]) or "float32"
        return Unit(op, "MatMul", "uint8", dtype_name(ops[1]) or "?", (act, "int32"), _granularity(ops[2], 0),
                    _zero_point(ops[3] if len(ops) > 3 else None), ops[1].const is not None)
    return None




def _dims(v: Value | None) -> list[int] | None:
    """Shape with symbolic dimensions counted as 1 (costs are then per batch row / token)."""
    if v is None:
        return None
    if v.const is not None:
        return list(v.const.shape)
    shape = getattr(v.type, "shape", None)
    if shape is None:
        return None
    return [d if isinstance(d, int) and is_static_dim(d) else 1 for d in shape]


def macs(u: Unit) -> int | None:
    """Multiply-accumulates of a unit (symbolic dimensions count as 1), None if shapes are unknown."""
    op = u.op
    out = _dims(op.results[0]) if op.results else None
    if out is None:
        return None
    n_out = int(np.prod(out)) if out else 1
    if u.kind == "Conv":
        w = _dims(op.operands[3] if op.op_type == "QLinearConv" else op.operands[1])
        if u.weight_dq is not None:
            w = _dims(u.weight_dq.operands[0])
        return None if not w or len(w) < 2 else n_out * int(np.prod(w[1:]))
    if op.op_type == "MatMulNBits":
        return n_out * int(op.attr("K", 0) or 0) or None
    a = _dims(op.operands[0])
    if not a:
        return None
    k = a[-1]
    if op.op_type == "Gemm" and op.attr("transA", 0):
        k = a[0]
    return n_out * k
