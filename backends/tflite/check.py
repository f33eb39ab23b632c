"""LiteRT's interpreter on qc's TFLite against onnxruntime on qc's ONNX (the numerics check).

Two comparisons, both in integer steps (LSB) of the TFLite tensor:

- ``end_to_end``: the whole TFLite model against the whole ONNX model on the same inputs. In a deep
  int8 network the two runtimes' roundings (TFLite's fixed-point requantization rounds twice;
  onnxruntime's QuantizeLinear rounds a float32 product once; TFLite's int32 bias) differ on a few
  elements per layer, and each such 1-LSB difference is amplified by the layers after it.
- ``per_op``: each TFLite operator alone, fed onnxruntime's int8 values of its inputs (those of
  :func:`onnx_twin`, which adds TFLite's int32 bias and requantization points to qc's ONNX):
  the lowering of each operator, without the amplification.

An int8 tensor is compared as integers; a float ONNX output against the dequantized TFLite output.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from .lower import NCHW_TO_NHWC, Lowering
from .oracle import onnx_twin
from .schema import TflGraph, serialize


@dataclass
class Mismatch:
    name: str
    op: str
    elements: int
    over_one: float      # fraction of elements more than 1 LSB apart
    differ: float        # fraction of elements that differ at all
    max_lsb: float

    def row(self) -> str:
        return (f"{self.name:<28} {self.op:<18} {self.elements:>8}  >1 LSB {100 * self.over_one:6.2f}%  "
                f"!= {100 * self.differ:6.2f}%  max {self.max_lsb:.1f} LSB")


def interpreter(blob: bytes) -> Any:
    """LiteRT's interpreter with the builtin kernels and no delegate (XNNPACK rounds its own way)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=blob, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def quantize_input(x: np.ndarray, scale: float, zp: int, nhwc: bool) -> np.ndarray:
    q = np.clip(np.round(x / scale) + zp, -128, 127).astype(np.int8)
    return q.transpose(NCHW_TO_NHWC) if nhwc and q.ndim == 4 else q


def _ort(model: onnx.ModelProto, outputs: Sequence[tuple[str, int]]) -> Any:
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name, elem in outputs:
        if name not in have:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _compare(name: str, op: str, got: np.ndarray, ref: np.ndarray) -> Mismatch:
    d = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    return Mismatch(name, op, int(d.size), float((d > 1 + 1e-6).mean()), float((d > 1e-6).mean()), float(d.max()))


def _to_tflite_layout(ref: np.ndarray, shape: tuple[int, ...], nhwc: bool = True) -> np.ndarray:
    """An ONNX activation in the TFLite tensor's layout: every 4-D activation is NHWC there
    (``nhwc``: not in a graph without convolutions, Lowering.plain)."""
    if nhwc and ref.ndim == 4 and len(shape) == 4:
        return ref.transpose(NCHW_TO_NHWC)
    return ref.reshape(shape)


def run_tflite(lowering: Lowering, sample: dict[str, np.ndarray]) -> Any:
    """LiteRT's interpreter of the lowered TFLite, invoked on *sample* (quantized to its inputs)."""
    g = lowering.out
    it = interpreter(serialize(g))
    for d, i in zip(it.get_input_details(), g.inputs):
        t = g.tensors[i]
        s, zp = d["quantization"]
        if t.dtype == "int32":  # token ids
            it.set_tensor(d["index"], sample[t.name].reshape(t.shape).astype(np.int32))
            continue
        it.set_tensor(d["index"], quantize_input(sample[t.name], s, zp, len(t.shape) == 4 and not lowering.plain))
    it.invoke()
    return it


def end_to_end(model: onnx.ModelProto, lowering: Lowering, sample: dict[str, np.ndarray]) -> list[Mismatch]:
    """Each output of the TFLite model against qc's ONNX (int8 outputs as integers, float
    outputs in steps of the TFLite output's scale)."""
    g = lowering.out
    nhwc = not lowering.plain
    it = run_tflite(lowering, sample)
    sess = _ort(model, [])
    feeds = {i.name for i in sess.get_inputs()}
    refs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {k: v for k, v in sample.items()
                                                                           if k in feeds})))
    out = []
    for d, i in zip(it.get_output_details(), g.outputs):
        t = g.tensors[i]
        got = it.get_tensor(d["index"]).astype(np.float64)
        ref = _to_tflite_layout(refs[t.name], t.shape, nhwc)
        if ref.dtype == np.float32:
            s, zp = d["quantization"]
            if t.dtype == "float32":  # a float32 TFLite output: in steps of int8 over its range
                s, zp = max(float(np.abs(ref).max()), 1e-30) / 127.0, 0
                got = got / s
            got, ref = got - zp, ref.astype(np.float64) / s
        out.append(_compare(t.name, "output", got, ref))
    return out


def per_op(model: onnx.ModelProto, lowering: Lowering, sample: dict[str, np.ndarray]) -> list[Mismatch]:
    """Every TFLite operator run alone in LiteRT on onnxruntime's int8 inputs (the twin's),
    its output against onnxruntime's (see the module docstring)."""
    g = lowering.out
    nhwc = not lowering.plain
    twin = onnx_twin(model, lowering)
    q_of = {n.input[0]: n.output[0] for n in twin.graph.node if n.op_type == "QuantizeLinear"}
    wanted = {t.name: q_of[t.name] for t in g.tensors if t.data is None and t.name in q_of and t.dtype == "int8"}
    outputs = {o.name for o in model.graph.output}
    sess = _ort(twin, [(q, onnx.TensorProto.INT8) for q in wanted.values()]
                + [(o, onnx.TensorProto.FLOAT) for o in outputs])
    feeds = {i.name for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    ort_vals = dict(zip(names, sess.run(None, {k: v for k, v in sample.items() if k in feeds})))
    values: dict[int, np.ndarray] = {}
    for i in g.inputs:
        t = g.tensors[i]
        if t.name in wanted:
            values[i] = _to_tflite_layout(ort_vals[wanted[t.name]], t.shape, nhwc)
        else:  # token ids, a mask: the values themselves
            values[i] = sample[t.name].reshape(t.shape).astype(t.dtype)
    result = []
    for op in g.ops:
        sub = TflGraph()
        index: dict[int, int] = {}
        for i in op.inputs + op.outputs:
            if i not in index:
                index[i] = sub.add(g.tensors[i])
        sub.ops.append(type(op)(op.op, [index[i] for i in op.inputs], [index[i] for i in op.outputs], op.options))
        sub.inputs = [index[i] for i in op.inputs if g.tensors[i].data is None]
        sub.outputs = [index[i] for i in op.outputs]
        it = interpreter(serialize(sub))
        for d, i in zip(it.get_input_details(), [i for i in op.inputs if g.tensors[i].data is None]):
            t = g.tensors[i]
            ref = ort_vals.get(wanted.get(t.name, "")) if t.dtype == "int8" else None
            it.set_tensor(d["index"], _to_tflite_layout(ref, t.shape, nhwc) if ref is not None else values[i])
        it.invoke()
        for d, i in zip(it.get_output_details(), op.outputs):
            t = g.tensors[i]
            values[i] = it.get_tensor(d["index"])
            if t.name in wanted and t.dtype == "int8":
                ref = _to_tflite_layout(ort_vals[wanted[t.name]], t.shape, nhwc)
                result.append(_compare(t.name, op.op, values[i], ref))
            elif t.name in outputs:
                got = values[i].astype(np.float64)
                if t.quant is None:  # a float32 output: in steps of int8 over its range
                    s, zp = max(float(np.abs(ort_vals[t.name]).max()), 1e-30) / 127.0, 0
                    got = got / s
                else:
                    s, zp = float(t.quant.scale[0]), int(t.quant.zero_point[0])
                ref = _to_tflite_layout(ort_vals[t.name], t.shape, nhwc).astype(np.float64) / s
                result.append(_compare(t.name, op.op, got - zp, ref))
    return result
