"""qc's quantized graph (QDQ ONNX, as ``qc compile --quant w8a8`` writes it) -> an int8 TFLite graph.

Every float activation X of the ONNX graph becomes one int8 TFLite tensor; its scale and zero
point are those of the QuantizeLinear that reads X, or (for a float tensor no QuantizeLinear
reads: a Conv output that w8a8 leaves in float before an Add, a Clip before a pooling) the
asymmetric int8 range observed on the calibration samples (``ranges``). The TFLite graph then
requantizes there, where onnxruntime computes in float: the one place the two may differ by more
than rounding.

    Q(x) -> DQ -> Conv(W: DQ(int8, per channel), b) [-> Relu | Clip(0, 6)] -> Q
        -> CONV_2D / DEPTHWISE_CONV_2D(int8 OHWI / 1HWO weights, int32 bias = b / (s_x * s_w),
           fused RELU / RELU6), output int8 with the Q's scale and zero point
    DQ -> Gemm / MatMul(const W) -> FULLY_CONNECTED      DQ -> MatMul(DQ) -> BATCH_MATMUL
    Add / Mul / Sub -> ADD / MUL / SUB (a float constant operand is quantized per tensor)
    MaxPool / AveragePool -> MAX_POOL_2D / AVERAGE_POOL_2D; GlobalAveragePool -> MEAN(H, W)
    Relu / Clip / Sigmoid / Tanh / HardSwish / Softmax -> RELU / RELU6 / LOGISTIC / TANH / ... (the
    fixed output scales TFLite requires for LOGISTIC, TANH and SOFTMAX, then a QUANTIZE to the Q's)
    Reshape / Flatten / Transpose / Concat / Pad -> RESHAPE / TRANSPOSE / CONCATENATION / PAD

Layout: 4-D activations are NHWC in TFLite, from the graph input on (the int8 input is NHWC); an
op whose meaning depends on the NCHW order (a Reshape or Flatten of a 4-D tensor with H*W > 1)
gets one TRANSPOSE back to NCHW, never a transpose pair per op. Inputs and outputs are int8
with their quantization parameters (TFLite's full-integer convention): a float ONNX output
becomes an int8 output whose parameters come from ``ranges``.

Anything else (a grouped convolution that is not depthwise, an op outside the list, an int64
tensor) is a :class:`Unsupported` naming the node and the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .schema import Quant, TflGraph, TflOp, TflTensor

QMIN, QMAX = -128, 127
NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)
_PASS_THROUGH = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "MaxPool", "Identity"}
_IMAGE_OPS = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "ConvTranspose"}


class Unsupported(Exception):
    def __init__(self, node: str, op: str, reason: str):
        super().__init__(f"node '{node}' ({op}): {reason}")
        self.node, self.op, self.reason = node, op, reason


@dataclass
class _Act:
    tensor: int
    nhwc: bool   # a 4-D tensor stored NHWC


def range_quant(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 parameters covering [lo, hi] (and 0), as TFLite's converter computes them."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(np.round(QMIN - lo / scale), QMIN, QMAX))
    return float(scale), zp


class Lowering:
    def __init__(self, model: onnx.ModelProto, ranges: dict[str, tuple[float, float]] | None = None,
                 layernorm: str = "float"):
        model = onnx.shape_inference.infer_shapes(model)
        self.layernorm = layernorm  # "float": a decomposed LayerNorm in float32 (CPU); "int8": MEAN, RSQRT, ...
        self.g = model.graph
        self.ranges = ranges or {}
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in self.g.initializer}
        for n in self.g.node:
            if n.op_type == "Constant":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.shapes: dict[str, tuple[int, ...]] = {}
        for vi in list(self.g.input) + list(self.g.value_info) + list(self.g.output):
            dims = vi.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                self.shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
            for o in n.output:
                self.producer[o] = n
        self.outputs = {o.name for o in self.g.output}
        # float tensor -> (scale, zp) of the QuantizeLinear reading it; q / dq outputs -> the float tensor
        self.qparams: dict[str, tuple[float, int]] = {}
        self.alias: dict[str, str] = {}
        for n in self.g.node:
            if n.op_type == "QuantizeLinear" and n.input[0] not in self.consts:
                s, zp = self._scalar_qparams(n)
                self.qparams.setdefault(n.input[0], (s, zp))
                self.alias[n.output[0]] = n.input[0]
        for n in self.g.node:
            if n.op_type == "DequantizeLinear" and n.input[0] not in self.consts:
                src = self.alias.get(n.input[0], n.input[0])
                self.alias[n.output[0]] = src
                if src == n.input[0]:  # an int8 graph input read by a DQ
                    self.qparams.setdefault(src, self._scalar_qparams(n))
        self.out = TflGraph()
        # a graph without convolutions or pooling (a transformer) keeps its 4-D tensors as they are
        self.plain = not any(n.op_type in _IMAGE_OPS for n in self.g.node)
        self.floats: dict[str, int] = {}  # float32 TFLite tensors (ops TFLite has no int8 kernel for)
        self.rewrites: list[tuple[str, str, str, float, int]] = []  # for onnx_twin: (kind, x, node output, s, zp)
        self.acts: dict[str, _Act] = {}
        self.fused: set[str] = set()
        self.current = ""
        self.requantized: dict[str, tuple[float, int]] = {}  # float tensors given an int8 range here
        self.biases: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}  # node output -> (bias, int32, scale)

    # ------------------------------------------------------------------ helpers
    def _scalar_qparams(self, n: onnx.NodeProto) -> tuple[float, int]:
        scale = self.consts.get(n.input[1])
        zp = self.consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else np.zeros((), np.int8)
        if scale is None or zp is None or scale.size != 1:
            raise Unsupported(n.name or n.output[0], n.op_type, "activation quantization must be per tensor, "
                              "with constant scale and zero point")
        if zp.dtype != np.int8:
            raise Unsupported(n.name or n.output[0], n.op_type, f"{zp.dtype} activations (TFLite int8 needs int8)")
        return float(scale.reshape(())), int(zp.reshape(()))

    def name(self, x: str) -> str:
        return self.alias.get(x, x)

    def quant_of(self, x: str, node: str = "", op: str = "") -> tuple[float, int]:
        x = self.name(x)
        if x in self.qparams:
            return self.qparams[x]
        for c in self.consumers.get(x, []):  # a Flatten / MaxPool before the Q keeps the parameters
            if c.op_type in _PASS_THROUGH and c.output[0] in self.qparams and c.input[0] == x:
                return self.qparams[c.output[0]]
        y = x  # a chain of them (Transpose -> Reshape -> Q after an attention's BatchMatMul)
        while len(self.consumers.get(y, [])) == 1 and y not in self.outputs:
            c = self.consumers[y][0]
            if c.op_type not in _PASS_THROUGH or c.input[0] != y:
                break
            y = c.output[0]
            if y in self.qparams:
                return self.qparams[y]
        if x in self.ranges:
            self.requantized[x] = range_quant(*self.ranges[x])
            return self.requantized[x]
        raise Unsupported(node or x, op or "?", f"float tensor '{x}' has no quantization parameters "
                          "(no QuantizeLinear reads it and no calibration range was given)")

    def shape(self, x: str) -> tuple[int, ...]:
        x0 = x
        if x0 not in self.shapes:
            x0 = self.name(x)
        if x0 not in self.shapes:
            raise Unsupported(x, "?", "shape unknown (give static input shapes)")
        return self.shapes[x0]

    def weight(self, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
        """(int8 data, scales, zero points, axis) of DQ(const), or None."""
        n = self.producer.get(x)
        if n is None or n.op_type != "DequantizeLinear" or n.input[0] not in self.consts:
            return None
        q = self.consts[n.input[0]]
        s = self.consts[n.input[1]].astype(np.float32).reshape(-1)
        zp = (self.consts[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros_like(s, np.int8)).reshape(-1)
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if q.dtype != np.int8:
            raise Unsupported(n.name or x, "DequantizeLinear", f"{q.dtype} weights (TFLite int8 needs int8)")
        return q, s, zp.astype(np.int64), axis

    def act_tensor(self, x: str, node: onnx.NodeProto, nhwc: bool | None = None) -> _Act:
        x = self.name(x)
        if x in self.acts:
            return self.acts[x]
        if x in self.consts:
            return self._const_act(x, node)
        if x in self.floats:  # back to int8 after float32 ops: the QUANTIZE belongs to x's producer
            out = self.new_act(x, self.shape(x), False, node=node)
            reader, p = self.current, self.producer.get(x)
            self.current = (p.name or p.output[0]) if p is not None else reader
            self.emit("QUANTIZE", [self.floats[x]], [out.tensor], None)
            self.current = reader
            return out
        raise Unsupported(node.name or node.output[0], node.op_type, f"input '{x}' is not produced by a lowered op")

    def float_tensor(self, x: str, node: onnx.NodeProto) -> int:
        """The float32 TFLite tensor of ``x`` (a DEQUANTIZE of its int8 tensor, or a constant)."""
        x = self.name(x)
        if x in self.floats:
            return self.floats[x]
        if x in self.consts:
            self.floats[x] = self.out.const(x + ".f32", self.consts[x].astype(np.float32))
            return self.floats[x]
        a = self.act_tensor(x, node)
        t = self.out.tensors[a.tensor]
        self.floats[x] = self.out.add(TflTensor(x + ".f32", t.shape, "float32"))
        self.emit("DEQUANTIZE", [a.tensor], [self.floats[x]], None)
        return self.floats[x]

    def new_float(self, x: str) -> int:
        self.floats[x] = self.out.add(TflTensor(x, self.shape(x), "float32"))
        return self.floats[x]

    def _const_act(self, x: str, node: onnx.NodeProto) -> _Act:
        """A float constant operand of an elementwise op: int8 per tensor over its own range."""
        c = self.consts[x].astype(np.float32)
        if c.ndim == 4 and not self.plain:
            c = c.transpose(NCHW_TO_NHWC)
        s, zp = range_quant(float(c.min()), float(c.max()))
        q = np.clip(np.round(c / s) + zp, QMIN, QMAX).astype(np.int8)
        t = self.out.const(x, q, Quant.tensor(s, zp))
        self.acts[x] = _Act(t, c.ndim == 4)
        return self.acts[x]

    def new_act(self, x: str, shape: tuple[int, ...], nhwc: bool, q: tuple[float, int] | None = None,
                node: onnx.NodeProto | None = None) -> _Act:
        s, zp = q if q is not None else self.quant_of(x, node.name if node else "", node.op_type if node else "")
        nhwc = nhwc and not self.plain
        stored = tuple(shape[i] for i in NCHW_TO_NHWC) if nhwc else tuple(shape)
        t = self.out.add(TflTensor(x, stored, "int8", quant=Quant.tensor(s, zp)))
        a = _Act(t, nhwc)
        self.acts[x] = a
        return a

    def emit(self, op: str, ins: list[int], outs: list[int], options: Any = None, source: str = "") -> None:
        # source: the node being lowered, named as qc's units name it (its name, else its first output)
        self.out.ops.append(TflOp(op, ins, outs, options, self.current))

    def to_nchw(self, a: _Act, x: str) -> int:
        t = self.out.tensors[a.tensor]
        perm = self.out.const(f"{x}.perm_nchw", np.array(NHWC_TO_NCHW, np.int32))
        shape = tuple(t.shape[i] for i in NHWC_TO_NCHW)
        o = self.out.add(TflTensor(f"{x}.nchw", shape, "int8", quant=t.quant))
        self.emit("TRANSPOSE", [a.tensor, perm], [o], ("TransposeOptions", {}), x)
        return o

    def fused_activation(self, y: str) -> tuple[str, int]:
        """(the tensor a Conv / Gemm / Add result ends in, TFLite fused activation) when its one
        reader is a Relu or a Clip(0, 6): the activation becomes part of the op."""
        readers = self.consumers.get(y, [])
        if y in self.outputs or len(readers) != 1:
            return y, 0
        r = readers[0]
        if r.op_type == "Relu":
            self.fused.add(r.output[0])
            return r.output[0], 1
        if r.op_type == "Clip":
            lo, hi = self._clip_bounds(r)
            if lo == 0.0 and hi == 6.0:
                self.fused.add(r.output[0])
                return r.output[0], 3
            if lo == 0.0 and hi == float("inf"):
                self.fused.add(r.output[0])
                return r.output[0], 1
        return y, 0

    def _clip_bounds(self, n: onnx.NodeProto) -> tuple[float, float]:
        lo, hi = -float("inf"), float("inf")
        if len(n.input) > 1 and n.input[1]:
            lo = float(self.consts[n.input[1]]) if n.input[1] in self.consts else lo
        if len(n.input) > 2 and n.input[2]:
            hi = float(self.consts[n.input[2]]) if n.input[2] in self.consts else hi
        for a in n.attribute:
            if a.name == "min":
                lo = a.f
            if a.name == "max":
                hi = a.f
        return lo, hi

    # ------------------------------------------------------------------ the graph
    def run(self) -> TflGraph:
        for inp in self.g.input:
            if inp.name in self.consts:
                continue
            readers = self.consumers.get(inp.name, [])
            elem = inp.type.tensor_type.elem_type
            if elem == onnx.TensorProto.FLOAT and not any(r.op_type == "QuantizeLinear" for r in readers):
                raise Unsupported(inp.name, "input", "a float input that is not quantized (TFLite int8 needs "
                                  "QuantizeLinear on every input: compile with --quant w8a8)")
            shape = self.shape(inp.name)
            if elem in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
                if readers and all(r.op_type == "Gather" and r.input[1] == inp.name for r in readers):
                    # token ids: an int32 input, the indices of GATHER
                    t = self.out.add(TflTensor(inp.name, shape, "int32"))
                    self.acts[inp.name] = _Act(t, False)
                    self.out.inputs.append(t)
                    continue
                # an attention mask (0 / 1): an int8 input with scale 1, the value itself
                self.qparams[inp.name] = (1.0, 0)
                a = self.new_act(inp.name, shape, False)
                self.out.inputs.append(a.tensor)
                continue
            if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT8):
                raise Unsupported(inp.name, "input", f"{onnx.TensorProto.DataType.Name(elem)} input "
                                  "(TFLite int8 models take int8 tensors)")
            a = self.new_act(inp.name, shape, len(shape) == 4)
            self.out.inputs.append(a.tensor)
        for n in self.g.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
                if n.op_type == "QuantizeLinear" and n.input[0] in self.consts:
                    raise Unsupported(n.name, n.op_type, "a quantized constant outside a DequantizeLinear")
                continue
            if n.output[0] in self.fused:
                continue
            if self.weight(n.output[0]) is not None:
                continue
            self.current = n.name or n.output[0]
            handler = getattr(self, f"_op_{n.op_type}", None)
            if handler is None:
                raise Unsupported(n.name or n.output[0], n.op_type, "no TFLite lowering for this op")
            try:
                handler(n)
            except Unsupported as e:
                if e.node:
                    raise
                raise Unsupported(self.current, e.op, e.reason) from None
        for o in self.g.output:
            x = self.name(o.name)
            if x in self.acts:
                t = self.acts[x].tensor
            elif x in self.floats:
                t = self.floats[x]
            else:
                raise Unsupported(o.name, "output", "the output is not produced by a lowered op")
            self.out.outputs.append(t)
            self.out.tensors[t].name = o.name
        return self.out

    # ------------------------------------------------------------------ operators
    def _pads(self, n: onnx.NodeProto, in_hw: tuple[int, int], k: tuple[int, int], s: tuple[int, int],
              d: tuple[int, int] = (1, 1)) -> tuple[int, list[int] | None]:
        """(TFLite padding: 0 SAME / 1 VALID, explicit pads to PAD first or None)."""
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER",):
            return 0, None
        if auto == "VALID":
            return 1, None
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if not any(pads):
            return 1, None
        same = []
        for i in range(2):
            eff = (k[i] - 1) * d[i] + 1
            out = -(-in_hw[i] // s[i])
            total = max((out - 1) * s[i] + eff - in_hw[i], 0)
            same += [total // 2, total - total // 2]
        if [pads[0], pads[2], pads[1], pads[3]] == same:
            return 0, None
        return 1, pads

    def _explicit_pad(self, a: _Act, x: str, pads: list[int], n: onnx.NodeProto) -> _Act:
        t = self.out.tensors[a.tensor]
        h0, w0, h1, w1 = pads
        paddings = np.array([[0, 0], [h0, h1], [w0, w1], [0, 0]], np.int32)
        shape = (t.shape[0], t.shape[1] + h0 + h1, t.shape[2] + w0 + w1, t.shape[3])
        o = self.out.add(TflTensor(f"{x}.pad", shape, "int8", quant=t.quant))
        self.emit("PAD", [a.tensor, self.out.const(f"{x}.paddings", paddings)], [o], ("PadOptions", {}), n.name)
        return _Act(o, True)

    def _bias(self, n: onnx.NodeProto, s_x: float, s_w: np.ndarray, cout: int) -> int:
        if len(n.input) > 2 and n.input[2]:
            b = self.consts.get(n.input[2])
            if b is None:
                raise Unsupported(n.name, n.op_type, "the bias is not a constant")
            b = b.astype(np.float64).reshape(-1)
        else:
            b = np.zeros(cout)
        s = (s_x * s_w.astype(np.float64)) * np.ones(cout)
        q = np.clip(np.round(b / s), -(2**31), 2**31 - 1).astype(np.int32)
        if len(n.input) > 2 and n.input[2]:
            self.biases[n.output[0]] = (n.input[2], q, s.astype(np.float32))
        return self.out.const(f"{n.name or n.output[0]}.bias", q, Quant(s.astype(np.float32), np.zeros(cout, np.int64)))

    def _op_Conv(self, n: onnx.NodeProto) -> None:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        w = self.weight(n.input[1])
        if w is None:
            raise Unsupported(n.name, "Conv", "the weight is not a quantized constant (DequantizeLinear of int8)")
        q, s_w, zp_w, axis = w
        if q.ndim != 4:
            raise Unsupported(n.name, "Conv", f"{q.ndim - 2}-D convolution (TFLite CONV_2D is 2-D)")
        if np.any(zp_w != 0) or (s_w.size > 1 and axis != 0):
            raise Unsupported(n.name, "Conv", "weights must be symmetric, per tensor or per output channel")
        x = self.act_tensor(n.input[0], n)
        in_shape = self.shape(n.input[0])
        cout, cin_g, kh, kw = q.shape
        group = int(attrs.get("group", 1))
        strides = tuple(attrs.get("strides", [1, 1]))
        dil = tuple(attrs.get("dilations", [1, 1]))
        padding, explicit = self._pads(n, (in_shape[2], in_shape[3]), (kh, kw), strides, dil)
        if explicit is not None:
            x = self._explicit_pad(x, n.input[0], explicit, n)
        s_x, _ = self.quant_of(n.input[0], n.name, "Conv")
        y, act = self.fused_activation(n.output[0])
        out = self.new_act(y, self.shape(n.output[0]), True, node=n)
        s_full = np.broadcast_to(s_w, (cout,)).astype(np.float32)
        bias = self._bias(n, s_x, s_full, cout)
        if group == 1:
            wt = self.out.const(f"{n.input[1]}", q.transpose(0, 2, 3, 1).copy(),
                                Quant(s_full, np.zeros(cout, np.int64), 0))
            opts = {"Padding": padding, "StrideW": strides[1], "StrideH": strides[0],
                    "FusedActivationFunction": act, "DilationWFactor": dil[1], "DilationHFactor": dil[0]}
            self.emit("CONV_2D", [x.tensor, wt, bias], [out.tensor], ("Conv2DOptions", opts), n.name)
        elif cin_g == 1 and group == in_shape[1]:
            wt = self.out.const(f"{n.input[1]}", q.transpose(1, 2, 3, 0).copy(),
                                Quant(s_full, np.zeros(cout, np.int64), 3))
            opts = {"Padding": padding, "StrideW": strides[1], "StrideH": strides[0],
                    "DepthMultiplier": cout // group, "FusedActivationFunction": act,
                    "DilationWFactor": dil[1], "DilationHFactor": dil[0]}
            self.emit("DEPTHWISE_CONV_2D", [x.tensor, wt, bias], [out.tensor], ("DepthwiseConv2DOptions", opts),
                      n.name)
        else:
            raise Unsupported(n.name, "Conv", f"grouped convolution (group {group}, not depthwise): TFLite has none")

    def _fc(self, n: onnx.NodeProto, a_name: str, q: np.ndarray, s_w: np.ndarray, bias_from: onnx.NodeProto) -> None:
        """q: int8 [N, K] (rows: outputs)."""
        a = self.act_tensor(a_name, n)
        if a.nhwc:
            sh = self.out.tensors[a.tensor].shape
            if sh[1] * sh[2] != 1:
                raise Unsupported(n.name, n.op_type, "a 4-D input with H*W > 1")
        s_x, _ = self.quant_of(a_name, n.name, n.op_type)
        y, act = self.fused_activation(n.output[0])
        out_shape = self.shape(y)
        cout = q.shape[0]
        s_full = np.broadcast_to(s_w, (cout,)).astype(np.float32)
        wt = self.out.const(n.name + ".weight", q.copy(), Quant(s_full, np.zeros(cout, np.int64), 0))
        opts = {"FusedActivationFunction": act, "KeepNumDims": len(out_shape) > 2}
        if self._wide_output(y):
            self._fc16(n, a, s_x, y, wt, s_full, bias_from, opts)
            return
        out = self.new_act(y, out_shape, False, node=n)
        bias = self._bias(bias_from, s_x, s_full, cout)
        self.emit("FULLY_CONNECTED", [a.tensor, wt, bias], [out.tensor], ("FullyConnectedOptions", opts), n.name)

    def _wide_output(self, y: str) -> bool:
        """A FULLY_CONNECTED output that only float32 ops read (the residual Add before a float32
        LayerNorm) is int16: int8 per tensor over the outlier features' range would lose the rest."""
        readers = self.consumers.get(y, [])

        def before_layernorm(r: onnx.NodeProto) -> bool:
            return r.op_type == "Add" and any(c.op_type == "ReduceMean" for c in self.consumers.get(r.output[0], []))

        return (self.layernorm == "float" and y in self.ranges and y not in self.outputs and bool(readers)
                and all(before_layernorm(r) for r in readers))

    def _fc16(self, n: onnx.NodeProto, a: _Act, s_x: float, y: str, wt: int, s_w: np.ndarray,
              bias_from: onnx.NodeProto, opts: dict[str, Any]) -> None:
        """TFLite's 16x8 FULLY_CONNECTED: the int8 input QUANTIZEd to int16 (scale s_x / 128, exact),
        int64 bias, an int16 output over the calibration range (zero points 0)."""
        t = self.out.tensors[a.tensor]
        s16 = s_x / 128.0
        x16 = self.out.add(TflTensor(t.name + ".int16", t.shape, "int16", quant=Quant.tensor(s16, 0)))
        self.emit("QUANTIZE", [a.tensor], [x16], None, n.name)
        lo, hi = self.ranges[y]
        s_y = max(abs(lo), abs(hi), 1e-30) / 32767.0
        out = self.out.add(TflTensor(y, self.shape(y), "int16", quant=Quant.tensor(s_y, 0)))
        self.acts[y] = _Act(out, False)
        cout = s_w.shape[0]
        b = self.consts.get(bias_from.input[2]) if len(bias_from.input) > 2 and bias_from.input[2] else None
        s_b = (s16 * s_w.astype(np.float64)) * np.ones(cout)
        qb = np.round((np.zeros(cout) if b is None else b.astype(np.float64).reshape(-1)) / s_b).astype(np.int64)
        bias = self.out.const(f"{n.name}.bias", qb, Quant(s_b.astype(np.float32), np.zeros(cout, np.int64)))
        self.emit("FULLY_CONNECTED", [x16, wt, bias], [out], ("FullyConnectedOptions", opts), n.name)

    def _op_Gemm(self, n: onnx.NodeProto) -> None:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise Unsupported(n.name, "Gemm", "transA, alpha or beta other than the defaults")
        w = self.weight(n.input[1])
        if w is None:
            raise Unsupported(n.name, "Gemm", "the weight is not a quantized constant")
        q, s_w, zp_w, axis = w
        if np.any(zp_w != 0):
            raise Unsupported(n.name, "Gemm", "asymmetric weights")
        if attrs.get("transB", 0):
            if s_w.size > 1 and axis != 0:
                raise Unsupported(n.name, "Gemm", "weights quantized along the reduced axis")
        else:
            if s_w.size > 1 and axis != 1:
                raise Unsupported(n.name, "Gemm", "weights quantized along the reduced axis")
            q = q.T
        self._fc(n, n.input[0], q, s_w, n)

    def _op_MatMul(self, n: onnx.NodeProto) -> None:
        w = self.weight(n.input[1])
        if w is not None:
            q, s_w, zp_w, axis = w
            if q.ndim != 2 or np.any(zp_w != 0) or (s_w.size > 1 and axis not in (1, -1)):
                raise Unsupported(n.name, "MatMul", "weights must be 2-D, symmetric, per tensor or per column")
            add = self._only_reader(n.output[0], "Add")
            bias = add and (add.input[1] if add.input[0] == n.output[0] else add.input[0])
            if add and bias in self.consts and self.consts[bias].shape == (q.shape[1],):
                # MatMul + Add(bias): one FULLY_CONNECTED with the int32 bias, as TFLite's converter writes it
                self.fused.add(add.output[0])
                n2 = onnx.helper.make_node("MatMul", [n.input[0], n.input[1], bias], [add.output[0]], name=n.name)
                self._fc(n2, n.input[0], q.T, s_w, n2)
                return
            self._fc(n, n.input[0], q.T, s_w, onnx.helper.make_node("MatMul", [], [n.output[0]], name=n.name))
            return
        a, b = self.act_tensor(n.input[0], n), self.act_tensor(n.input[1], n)
        y, _ = n.output[0], 0
        out = self.new_act(y, self.shape(y), False, node=n)
        self.emit("BATCH_MATMUL", [a.tensor, b.tensor], [out.tensor], ("BatchMatMulOptions", {}), n.name)

    def _is_float(self, x: str) -> bool:
        x = self.name(x)
        return x in self.floats and x not in self.acts

    def _float_binary(self, n: onnx.NodeProto, op: str, table: str) -> None:
        a, b = self.float_tensor(n.input[0], n), self.float_tensor(n.input[1], n)
        opts = (table, {"FusedActivationFunction": 0}) if table != "MaximumMinimumOptions" else None
        self.emit(op, [a, b], [self.new_float(n.output[0])], opts, n.name)

    def _binary(self, n: onnx.NodeProto, op: str, table: str) -> None:
        if self._is_float(n.input[0]) or self._is_float(n.input[1]):
            self._float_binary(n, op, table)
            return
        a, b = self.act_tensor(n.input[0], n), self.act_tensor(n.input[1], n)
        y, act = self.fused_activation(n.output[0])
        shape = self.shape(n.output[0])
        out = self.new_act(y, shape, len(shape) == 4, node=n)
        for side, name in ((a, n.input[0]), (b, n.input[1])):
            t = self.out.tensors[side.tensor]
            if self.plain:
                continue
            if len(shape) == 4 and len(t.shape) not in (0, 1, 4) or (len(t.shape) == 4 and not side.nhwc):
                raise Unsupported(n.name, n.op_type, f"broadcast of '{name}' {t.shape} against a 4-D NHWC tensor")
        self.emit(op, [a.tensor, b.tensor], [out.tensor], (table, {"FusedActivationFunction": act}), n.name)

    def _op_Add(self, n: onnx.NodeProto) -> None:
        if self.layernorm == "float" and any(r.op_type == "ReduceMean" for r in self.consumers.get(n.output[0], [])):
            # the residual stream before a LayerNorm: its outlier features leave int8 per tensor
            # too coarse for the rest, so the sum and the LayerNorm run in float32
            self._float_binary(n, "ADD", "AddOptions")
            return
        self._binary(n, "ADD", "AddOptions")

    def _op_Sub(self, n: onnx.NodeProto) -> None:
        self._binary(n, "SUB", "SubOptions")

    def _op_Mul(self, n: onnx.NodeProto) -> None:
        if self._mask_value(n):
            return
        self._binary(n, "MUL", "MulOptions")

    def _unary(self, n: onnx.NodeProto, op: str, fixed: tuple[float, int] | None = None,
               options: Any = None) -> None:
        a = self.act_tensor(n.input[0], n)
        shape = self.shape(n.output[0])
        want = self.quant_of(n.output[0], n.name, n.op_type)
        if fixed is None or fixed == want:
            out = self.new_act(n.output[0], shape, a.nhwc, node=n)
            self.emit(op, [a.tensor], [out.tensor], options, n.name)
            return
        # TFLite's int8 kernel has a fixed output scale: then one QUANTIZE to the scale qc chose
        stored = self.out.tensors[a.tensor].shape
        mid = self.out.add(TflTensor(n.output[0] + ".fixed", stored, "int8", quant=Quant.tensor(*fixed)))
        self.emit(op, [a.tensor], [mid], options, n.name)
        out = self.new_act(n.output[0], shape, a.nhwc, node=n)
        self.emit("QUANTIZE", [mid], [out.tensor], None, n.name)

    def _op_Relu(self, n: onnx.NodeProto) -> None:
        self._unary(n, "RELU")

    def _op_Clip(self, n: onnx.NodeProto) -> None:
        lo, hi = self._clip_bounds(n)
        if hi == float("inf") and lo > 0.0:  # max(x, eps): MAXIMUM (int8: with x's parameters)
            if self._is_float(n.input[0]):
                c = n.output[0] + ".lo"
                self.consts[c] = np.array(lo, np.float32)
                self.emit("MAXIMUM", [self.float_tensor(n.input[0], n), self.float_tensor(c, n)],
                          [self.new_float(n.output[0])], None, n.name)
                return
            a = self.act_tensor(n.input[0], n)
            q = self.quant_of(n.input[0], n.name, "Clip")
            self.qparams[n.output[0]] = q
            self.requantized[n.output[0]] = q
            code = np.array(np.clip(np.round(lo / q[0]) + q[1], QMIN, QMAX), np.int8)
            b = self.out.const(n.output[0] + ".lo", code, Quant.tensor(*q))
            out = self.new_act(n.output[0], self.shape(n.output[0]), False, q=q)
            self.emit("MAXIMUM", [a.tensor, b], [out.tensor], None, n.name)
            return
        if (lo, hi) == (0.0, 6.0):
            self._unary(n, "RELU6")
        elif (lo, hi) == (0.0, float("inf")):
            self._unary(n, "RELU")
        else:
            raise Unsupported(n.name, "Clip", f"Clip({lo}, {hi}): only Relu and Relu6 bounds lower")

    def _op_Sigmoid(self, n: onnx.NodeProto) -> None:
        self._unary(n, "LOGISTIC", fixed=(1.0 / 256, -128))

    def _op_Tanh(self, n: onnx.NodeProto) -> None:
        self._unary(n, "TANH", fixed=(1.0 / 128, 0))

    def _op_HardSwish(self, n: onnx.NodeProto) -> None:
        self._unary(n, "HARD_SWISH")

    def _op_Softmax(self, n: onnx.NodeProto) -> None:
        axis = next((a.i for a in n.attribute if a.name == "axis"), -1)
        if axis not in (-1, len(self.shape(n.input[0])) - 1) or self.acts[self.name(n.input[0])].nhwc:
            raise Unsupported(n.name, "Softmax", "softmax over an axis other than the last")
        self._unary(n, "SOFTMAX", fixed=(1.0 / 256, -128), options=("SoftmaxOptions", {"Beta": 1.0}))

    def _pool(self, n: onnx.NodeProto, op: str) -> None:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        k = tuple(attrs["kernel_shape"])
        s = tuple(attrs.get("strides", [1, 1]))
        if len(k) != 2 or any(d != 1 for d in attrs.get("dilations", [1, 1])) or attrs.get("ceil_mode", 0):
            raise Unsupported(n.name, n.op_type, "only 2-D pooling without dilation or ceil_mode lowers")
        in_shape = self.shape(n.input[0])
        padding, explicit = self._pads(n, (in_shape[2], in_shape[3]), k, s)
        a = self.act_tensor(n.input[0], n)
        if explicit is not None:
            # PAD writes the zero point: a max over it is right when that is the lowest code (x >= 0)
            if op != "MAX_POOL_2D" or self.quant_of(n.input[0])[1] != QMIN:
                raise Unsupported(n.name, n.op_type, f"pads {explicit} are neither SAME nor VALID")
            a = self._explicit_pad(a, n.input[0], explicit, n)
        if op == "AVERAGE_POOL_2D" and padding == 0 and not attrs.get("count_include_pad", 0) == 0:
            raise Unsupported(n.name, n.op_type, "count_include_pad with SAME padding")
        q = self.quant_of(n.input[0]) if op == "MAX_POOL_2D" else None
        out = self.new_act(n.output[0], self.shape(n.output[0]), True, q=q, node=n)
        opts = {"Padding": padding, "StrideW": s[1], "StrideH": s[0], "FilterWidth": k[1], "FilterHeight": k[0],
                "FusedActivationFunction": 0}
        self.emit(op, [a.tensor], [out.tensor], ("Pool2DOptions", opts), n.name)
        if q is not None and out.tensor is not None and n.output[0] in self.qparams and self.qparams[n.output[0]] != q:
            raise Unsupported(n.name, n.op_type, "max pooling with different input and output quantization")

    def _op_MaxPool(self, n: onnx.NodeProto) -> None:
        self._pool(n, "MAX_POOL_2D")

    def _op_AveragePool(self, n: onnx.NodeProto) -> None:
        self._pool(n, "AVERAGE_POOL_2D")

    def _op_GlobalAveragePool(self, n: onnx.NodeProto) -> None:
        a = self.act_tensor(n.input[0], n)
        axes = self.out.const(n.name + ".axes", np.array([1, 2], np.int32))
        out = self.new_act(n.output[0], self.shape(n.output[0]), True, node=n)
        self.emit("MEAN", [a.tensor, axes], [out.tensor], ("ReducerOptions", {"KeepDims": True}), n.name)

    def _reshape_to(self, n: onnx.NodeProto, new_shape: tuple[int, ...]) -> None:
        a = self.act_tensor(n.input[0], n)
        src = a.tensor
        nhwc_out = len(new_shape) == 4 and not self.plain
        if a.nhwc:
            sh = self.out.tensors[a.tensor].shape
            if sh[1] * sh[2] != 1 or nhwc_out:
                src = self.to_nchw(a, n.input[0])
        elif nhwc_out:
            raise Unsupported(n.name, n.op_type, "a reshape to 4-D from a plain tensor")
        q = self.quant_of(n.input[0], n.name, n.op_type)
        if nhwc_out:
            # back to NHWC after the reshape (NCHW order): one transpose at each side of the boundary
            mid = self.out.add(TflTensor(n.output[0] + ".nchw", tuple(new_shape), "int8", quant=Quant.tensor(*q)))
            shape_t = self.out.const(n.name + ".shape", np.array(new_shape, np.int32))
            self.emit("RESHAPE", [src, shape_t], [mid], ("ReshapeOptions", {"NewShape": list(new_shape)}), n.name)
            out = self.new_act(n.output[0], new_shape, True, q=q)
            perm = self.out.const(n.name + ".perm_nhwc", np.array(NCHW_TO_NHWC, np.int32))
            self.emit("TRANSPOSE", [mid, perm], [out.tensor], ("TransposeOptions", {}), n.name)
            return
        out = self.new_act(n.output[0], new_shape, False, q=q)
        shape_t = self.out.const(n.name + ".shape", np.array(new_shape, np.int32))
        self.emit("RESHAPE", [src, shape_t], [out.tensor], ("ReshapeOptions", {"NewShape": list(new_shape)}), n.name)

    def _op_Flatten(self, n: onnx.NodeProto) -> None:
        self._reshape_to(n, self.shape(n.output[0]))

    def _op_Reshape(self, n: onnx.NodeProto) -> None:
        self._reshape_to(n, self.shape(n.output[0]))

    def _op_Squeeze(self, n: onnx.NodeProto) -> None:
        self._reshape_to(n, self.shape(n.output[0]))

    def _op_Unsqueeze(self, n: onnx.NodeProto) -> None:
        self._reshape_to(n, self.shape(n.output[0]))

    def _op_Transpose(self, n: onnx.NodeProto) -> None:
        a = self.act_tensor(n.input[0], n)
        if a.nhwc:
            raise Unsupported(n.name, "Transpose", "a transpose of a 4-D activation")
        perm = next(list(at.ints) for at in n.attribute if at.name == "perm")
        q = self.quant_of(n.input[0], n.name, "Transpose")
        out = self.new_act(n.output[0], self.shape(n.output[0]), False, q=q)
        self.emit("TRANSPOSE", [a.tensor, self.out.const(n.name + ".perm", np.array(perm, np.int32))],
                  [out.tensor], ("TransposeOptions", {}), n.name)

    def _op_Concat(self, n: onnx.NodeProto) -> None:
        ins = [self.act_tensor(i, n) for i in n.input]
        axis = next(at.i for at in n.attribute if at.name == "axis")
        shape = self.shape(n.output[0])
        axis = axis % len(shape)
        nhwc = len(shape) == 4
        if nhwc:
            if not all(i.nhwc for i in ins):
                raise Unsupported(n.name, "Concat", "a 4-D concatenation of a non-NHWC input")
            axis = NCHW_TO_NHWC.index(axis)
        out = self.new_act(n.output[0], shape, nhwc, node=n)
        self.emit("CONCATENATION", [i.tensor for i in ins], [out.tensor],
                  ("ConcatenationOptions", {"Axis": axis, "FusedActivationFunction": 0}), n.name)

    # ------------------------------------------------------------------ transformer ops
    def _op_Gather(self, n: onnx.NodeProto) -> None:
        """An embedding lookup: GATHER of the int8 table (per tensor over its range) at int32 ids;
        with constant ids (positions, token types) the rows themselves, a constant."""
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        table = self.consts.get(n.input[0])
        if table is None or axis != 0:
            raise Unsupported(n.name, "Gather", "only a lookup in a constant table along axis 0 lowers")
        ids = self.name(n.input[1])
        if ids in self.consts:
            self.consts[n.output[0]] = np.take(table, self.consts[ids].astype(np.int64), axis=0)
            return
        q = range_quant(float(table.min()), float(table.max()))
        self.qparams[n.output[0]] = q
        self.requantized[n.output[0]] = q  # GATHER keeps the table's parameters
        qt = np.clip(np.round(table / q[0]) + q[1], QMIN, QMAX).astype(np.int8)
        t = self.out.const(n.input[0] + ".int8", qt, Quant.tensor(*q))
        out = self.new_act(n.output[0], self.shape(n.output[0]), False, q=q)
        self.emit("GATHER", [t, self.act_tensor(ids, n).tensor], [out.tensor],
                  ("GatherOptions", {"Axis": 0, "BatchDims": 0}), n.name)

    def _op_Cast(self, n: onnx.NodeProto) -> None:
        x = self.name(n.input[0])
        q = self.out.tensors[self.acts[x].tensor].quant if x in self.acts else None
        if q is None or (float(q.scale[0]), int(q.zero_point[0])) != (1.0, 0):
            raise Unsupported(n.name, "Cast", "only a cast of an integer mask input lowers")
        self.qparams[n.output[0]] = (1.0, 0)  # the int8 codes are the values
        self.acts[n.output[0]] = self.acts[x]

    def _axes(self, n: onnx.NodeProto) -> list[int]:
        rank = len(self.shape(n.input[0]))
        axes = next((list(a.ints) for a in n.attribute if a.name == "axes"), None)
        if axes is None and len(n.input) > 1 and n.input[1]:
            axes = [int(v) for v in self.consts[n.input[1]].reshape(-1)]
        if axes is None:
            axes = list(range(rank))
        return [a % rank for a in axes]

    def _reduce(self, n: onnx.NodeProto, op: str) -> None:
        keep = bool(next((a.i for a in n.attribute if a.name == "keepdims"), 1))
        axes = self.out.const(n.name + ".axes", np.array(self._axes(n), np.int32))
        opts = ("ReducerOptions", {"KeepDims": keep})
        if self._is_float(n.input[0]) or (op == "MEAN" and self.layernorm == "float"):
            self.emit(op, [self.float_tensor(n.input[0], n), axes], [self.new_float(n.output[0])], opts, n.name)
            return
        a = self.act_tensor(n.input[0], n)
        out = self.new_act(n.output[0], self.shape(n.output[0]), False, node=n)
        self.emit(op, [a.tensor, axes], [out.tensor], opts, n.name)

    def _op_ReduceMean(self, n: onnx.NodeProto) -> None:
        self._reduce(n, "MEAN")

    def _op_ReduceSum(self, n: onnx.NodeProto) -> None:
        self._reduce(n, "SUM")

    def _op_ReduceL2(self, n: onnx.NodeProto) -> None:
        """sqrt(sum(x^2)) in float32 (TFLite has no int8 reduction to an L2 norm)."""
        x = self.float_tensor(n.input[0], n)
        t = self.out.tensors[x]
        sq = self.out.add(TflTensor(n.output[0] + ".sq", t.shape, "float32"))
        self.emit("MUL", [x, x], [sq], ("MulOptions", {"FusedActivationFunction": 0}), n.name)
        shape = self.shape(n.output[0])
        ss = self.out.add(TflTensor(n.output[0] + ".sum", shape, "float32"))
        keep = bool(next((a.i for a in n.attribute if a.name == "keepdims"), 1))
        axes = self.out.const(n.name + ".axes", np.array(self._axes(n), np.int32))
        self.emit("SUM", [sq, axes], [ss], ("ReducerOptions", {"KeepDims": keep}), n.name)
        self.emit("SQRT", [ss], [self.new_float(n.output[0])], None, n.name)

    def _op_Pow(self, n: onnx.NodeProto) -> None:
        e = self.consts.get(n.input[1])
        if e is None or e.size != 1 or float(e.reshape(())) != 2.0:
            raise Unsupported(n.name, "Pow", "only x ** 2 lowers (as MUL x, x)")
        if self._is_float(n.input[0]):
            x = self.float_tensor(n.input[0], n)
            self.emit("MUL", [x, x], [self.new_float(n.output[0])], ("MulOptions", {"FusedActivationFunction": 0}),
                      n.name)
            return
        a = self.act_tensor(n.input[0], n)
        out = self.new_act(n.output[0], self.shape(n.output[0]), False, node=n)
        self.emit("MUL", [a.tensor, a.tensor], [out.tensor], ("MulOptions", {"FusedActivationFunction": 0}), n.name)

    def _op_Sqrt(self, n: onnx.NodeProto) -> None:
        """sqrt(v) read by Div(x, sqrt(v)) (a LayerNorm): RSQRT, and the Div a MUL (TFLite's int8
        LayerNorm); otherwise a float32 SQRT."""
        readers = self.consumers.get(n.output[0], [])
        divides = readers and all(r.op_type == "Div" and r.input[1] == n.output[0] != r.input[0] for r in readers)
        if not self._is_float(n.input[0]) and divides and n.input[0] in self.ranges:
            lo, hi = self.ranges[self.name(n.input[0])]
            lo = max(lo, 1e-12)
            q = range_quant(1.0 / np.sqrt(hi), 1.0 / np.sqrt(lo))
            a = self.act_tensor(n.input[0], n)
            out = self.new_act(n.output[0] + ".rsqrt", self.shape(n.output[0]), False, q=q)
            self.emit("RSQRT", [a.tensor], [out.tensor], None, n.name)
            self.rewrites.append(("rsqrt", n.output[0], n.output[0] + ".rsqrt", *q))
            return
        self.emit("SQRT", [self.float_tensor(n.input[0], n)], [self.new_float(n.output[0])], None, n.name)

    def _op_Div(self, n: onnx.NodeProto) -> None:
        d = self.name(n.input[1])
        if d + ".rsqrt" in self.acts:  # x / sqrt(v) = x * rsqrt(v)
            a = self.act_tensor(n.input[0], n)
            out = self.new_act(n.output[0], self.shape(n.output[0]), False, node=n)
            self.emit("MUL", [a.tensor, self.acts[d + ".rsqrt"].tensor], [out.tensor],
                      ("MulOptions", {"FusedActivationFunction": 0}), n.name)
            return
        if d in self.consts and not self._is_float(n.input[0]):
            if self._gelu(n):
                return
            inv = n.input[1] + ".reciprocal"
            self.consts[inv] = (1.0 / self.consts[d].astype(np.float64)).astype(np.float32)
            a, b = self.act_tensor(n.input[0], n), self._const_act(inv, n)
            out = self.new_act(n.output[0], self.shape(n.output[0]), False, node=n)
            self.emit("MUL", [a.tensor, b.tensor], [out.tensor], ("MulOptions", {"FusedActivationFunction": 0}),
                      n.name)
            return
        self._float_binary(n, "DIV", "DivOptions")  # int8 DIV: TFLite has none

    def _only_reader(self, x: str, op: str) -> onnx.NodeProto | None:
        readers = self.consumers.get(x, [])
        if len(readers) == 1 and readers[0].op_type == op and x not in self.outputs:
            return readers[0]
        return None

    def _const_value(self, x: str) -> float | None:
        c = self.consts.get(x)
        return float(c.reshape(())) if c is not None and c.size == 1 else None

    def _gelu(self, n: onnx.NodeProto) -> bool:
        """x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5 (exact GELU): one GELU op."""
        c = self._const_value(n.input[1])
        if c is None or abs(c - np.sqrt(2.0)) > 1e-4:
            return False
        x = n.input[0]
        erf = self._only_reader(n.output[0], "Erf")
        add = erf and self._only_reader(erf.output[0], "Add")
        if not add or self._const_value(add.input[1] if add.input[0] == erf.output[0] else add.input[0]) != 1.0:
            return False
        mul = self._only_reader(add.output[0], "Mul")
        if not mul or x not in mul.input:
            return False
        half = self._only_reader(mul.output[0], "Mul")
        if not half or self._const_value(half.input[1] if half.input[0] == mul.output[0] else half.input[0]) != 0.5:
            return False
        self.fused.update([erf.output[0], add.output[0], mul.output[0], half.output[0]])
        a = self.act_tensor(x, n)
        out = self.new_act(half.output[0], self.shape(half.output[0]), False, node=half)
        self.emit("GELU", [a.tensor], [out.tensor], ("GeluOptions", {"Approximate": False}), n.name)
        return True

    def _mask_value(self, n: onnx.NodeProto) -> bool:
        """The additive attention mask (1 - mask) * V with V about -3.4e38: int8 cannot hold V, and
        the Add it feeds saturates at its lowest code below its calibration range anyway, so V
        becomes -K (K: the span of the scores and the Add's range, plus one) and the product
        gets the range [-K, 0] (the twin quantizes onnxruntime's product with it, the same codes)."""
        for i, j in ((1, 0), (0, 1)):
            v = self._const_value(n.input[i])
            if v is not None and v < -1e4 and not self._is_float(n.input[j]):
                break
        else:
            return False
        k = 1.0
        for r in self.consumers.get(n.output[0], []):
            if r.op_type != "Add" or r.output[0] not in self.ranges:
                return False
            other = r.input[1] if r.input[0] == n.output[0] else r.input[0]
            lo, _ = self.ranges[r.output[0]]
            _, hi = self.ranges.get(self.name(other), self.ranges[r.output[0]])
            k = max(k, hi - lo + 1.0)
        clamped = n.input[i] + ".clamped"
        self.consts[clamped] = np.array(-k, np.float32)
        q = range_quant(-k, 0.0)
        self.qparams[n.output[0]] = q
        self.requantized[n.output[0]] = q
        a, b = self.act_tensor(n.input[j], n), self._const_act(clamped, n)
        out = self.new_act(n.output[0], self.shape(n.output[0]), False, q=q)
        self.emit("MUL", [a.tensor, b.tensor], [out.tensor], ("MulOptions", {"FusedActivationFunction": 0}), n.name)
        return True

    def _op_Identity(self, n: onnx.NodeProto) -> None:
        self.acts[n.output[0]] = self.act_tensor(n.input[0], n)


def lower(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]] | None = None) -> TflGraph:
    """The int8 TFLite graph of a QDQ model (see the module docstring); raises Unsupported."""
    return Lowering(model, ranges).run()


def float_tensors_without_q(model: onnx.ModelProto) -> list[str]:
    """The float activations no QuantizeLinear reads: they need a calibration range."""
    q_read = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    consts = {i.name for i in model.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model).graph
    floats = {vi.name for vi in list(inferred.value_info) + list(inferred.output)
              if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    names = []
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
            continue
        for o in n.output:
            if o not in q_read and o not in consts and o in floats:
                names.append(o)
    return names
