"""The ONNX twin of a lowered TFLite model: qc's QDQ ONNX with the two roundings TFLite adds.

    Conv(DQ x, DQ w, b: float)  ->  Conv(DQ x, DQ w, DQ(int32 round(b / (s_x * s_w)), s_x * s_w))
    float X (no QuantizeLinear reads it; the TFLite tensor is int8)  ->  DQ(Q(X)) with that range
    Div(a, Sqrt(v)) (a LayerNorm; TFLite's RSQRT)  ->  Mul(a, DQ(Q(Reciprocal(Sqrt(v)))))

Everything else is the same graph, so onnxruntime running the twin computes what the int8 TFLite
kernels compute up to the rounding of ties; LiteRT against the twin checks the lowering, LiteRT
against qc's ONNX measures what the TFLite model changes (tests/test_tflite.py reports both).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .lower import Lowering


def onnx_twin(model: onnx.ModelProto, lowering: Lowering) -> onnx.ModelProto:
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    g = twin.graph
    inits = []
    for node_name, (bias, q, s) in sorted(lowering.biases.items()):
        for n in g.node:
            # Conv / Gemm(x, w, b), or the Add(MatMul, b) that FULLY_CONNECTED took in as its bias
            if n.output[0] != node_name or bias not in n.input:
                continue
            if n.op_type != "Add" and list(n.input).index(bias) != 2:
                continue
            qn, sn, dq = f"{bias}.{node_name}.i32", f"{bias}.{node_name}.scale", f"{bias}.{node_name}.dq"
            inits += [numpy_helper.from_array(q, qn), numpy_helper.from_array(s, sn)]
            g.node.append(helper.make_node("DequantizeLinear", [qn, sn], [dq], axis=0, name=f"{node_name}.bias_dq"))
            n.input[list(n.input).index(bias)] = dq
    outputs = {o.name for o in g.output}
    for x, (scale, zp) in sorted(lowering.requantized.items()):
        if x in outputs:  # a float output: compared within its int8 step
            continue
        sn, zn = f"{x}.twin_scale", f"{x}.twin_zp"
        inits += [numpy_helper.from_array(np.array(scale, np.float32), sn),
                  numpy_helper.from_array(np.array(zp, np.int8), zn)]
        for n in g.node:
            for i, name in enumerate(n.input):
                if name == x:
                    n.input[i] = f"{x}.twin_dq"
        g.node.append(helper.make_node("QuantizeLinear", [x, sn, zn], [f"{x}.twin_q"]))
        g.node.append(helper.make_node("DequantizeLinear", [f"{x}.twin_q", sn, zn], [f"{x}.twin_dq"]))
    for kind, x, y, scale, zp in lowering.rewrites:
        assert kind == "rsqrt"
        # Div(a, Sqrt(v)) -> Mul(a, DQ(Q(1 / Sqrt(v)))): TFLite's RSQRT and MUL
        sn, zn = f"{y}.twin_scale", f"{y}.twin_zp"
        inits += [numpy_helper.from_array(np.array(scale, np.float32), sn),
                  numpy_helper.from_array(np.array(zp, np.int8), zn)]
        g.node.append(helper.make_node("Reciprocal", [x], [y]))
        g.node.append(helper.make_node("QuantizeLinear", [y, sn, zn], [f"{y}.twin_q"]))
        g.node.append(helper.make_node("DequantizeLinear", [f"{y}.twin_q", sn, zn], [f"{y}.twin_dq"]))
        for n in g.node:
            if n.op_type == "Div" and n.input[1] == x:
                n.op_type = "Mul"
                n.input[1] = f"{y}.twin_dq"
    g.initializer.extend(inits)
    return _toposort(twin)


def _toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    g = model.graph
    ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    nodes, done = list(g.node), []
    while nodes:
        rest = []
        for n in nodes:
            if all(i in ready for i in n.input):
                done.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(nodes):
            raise ValueError("cycle in the twin graph")
        nodes = rest
    del g.node[:]
    g.node.extend(done)
    return model
