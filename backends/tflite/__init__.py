"""The TFLite backend: qc's quantized IR -> an int8 TFLite model (the LiteRT flatbuffer schema).

    module (w8a8 QDQ) -> ONNX ModelProto -> lower (int8 TFLite graph, NHWC) -> model.tflite

The ONNX of the module is the oracle: LiteRT's interpreter running the ``.tflite`` matches
onnxruntime running it (tests/test_tflite.py). Float tensors no QuantizeLinear reads get their
int8 range from the calibration samples (``samples``), measured on that ONNX in onnxruntime.
``vela`` compiles the TFLite for an Ethos-U NPU with Arm's Vela and reads its summary.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from qc.errors import QCError
from qc.fileio import atomic_write
from qc.ir.core import Module

from .lower import Lowering, Unsupported, float_tensors_without_q, lower
from .oracle import onnx_twin
from .schema import TflGraph, serialize

__all__ = ["Lowering", "Unsupported", "emit_tflite", "lower", "onnx_twin", "serialize", "tensor_ranges", "tflite_bytes",
           "tflite_prepare_pipeline", "to_tflite", "vela_check"]


def tensor_ranges(model: onnx.ModelProto, names: Sequence[str],
                  samples: Sequence[dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """min / max of each named tensor over the samples, in onnxruntime (graph optimizations off)."""
    import onnxruntime as ort

    if not names or not samples:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {i.name for i in sess.get_inputs()}
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for s in samples:
        outs = sess.run(list(names), {k: v for k, v in s.items() if k in feeds})
        for name, v in zip(names, outs):
            if v.dtype != np.float32 or v.size == 0:
                continue
            lo[name] = min(lo.get(name, np.inf), float(v.min()))
            hi[name] = max(hi.get(name, -np.inf), float(v.max()))
    return {k: (lo[k], hi[k]) for k in lo}


def to_tflite(model: onnx.ModelProto, samples: Sequence[dict[str, np.ndarray]] = (), *,
              layernorm: str = "float") -> Lowering:
    """The lowering of ``model`` (``.out``: the TFLite graph; ``.requantized``, ``.biases``,
    ``.rewrites``: what :func:`onnx_twin` needs). ``layernorm``: ``"float"`` lowers a decomposed
    LayerNorm and the residual Add before it to float32 ops; ``"int8"`` to int8 MEAN, SUB, MUL,
    RSQRT and ADD (TFLite's converter; every op on the NPU, and a much coarser LayerNorm)."""
    ranges = tensor_ranges(model, float_tensors_without_q(model), samples)
    lowering = Lowering(model, ranges, layernorm=layernorm)
    lowering.run()
    return lowering


def tflite_bytes(model: onnx.ModelProto, samples: Sequence[dict[str, np.ndarray]] = ()) -> tuple[bytes, TflGraph]:
    graph = to_tflite(model, samples).out
    return serialize(graph), graph


def _is_nhwc(graph: TflGraph) -> bool:
    return any(o.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D") for o in graph.ops)


def emit_tflite(module: Module, path: str, *, samples: Sequence[dict[str, np.ndarray]] = (),
                source: str | None = None) -> dict[str, Any]:
    """Write the int8 TFLite of ``module`` to ``path`` atomically; returns a report (operators by
    type, tensors, inputs and outputs with their quantization). A QCError names the node that
    does not lower."""
    from qc.onnx.writer import export_onnx

    model = export_onnx(module)
    try:
        blob, graph = tflite_bytes(model, samples)
    except Unsupported as e:
        raise QCError(f"the TFLite backend cannot lower {e}", where=source,
                      hint="the TFLite backend takes int8 QDQ models (qc compile --quant w8a8 with "
                      "calibration data); --emit onnx or c runs this model") from None
    with atomic_write(os.fspath(path)) as f:
        f.write(blob)
    return graph_report(graph)


def graph_report(graph: TflGraph) -> dict[str, Any]:
    ops: dict[str, int] = {}
    for o in graph.ops:
        ops[o.op] = ops.get(o.op, 0) + 1

    def io(i: int) -> dict[str, Any]:
        t = graph.tensors[i]
        q = t.quant
        return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype,
                "scale": float(q.scale[0]) if q is not None else None,
                "zero_point": int(q.zero_point[0]) if q is not None else None}

    return {"operators": len(graph.ops), "by_type": dict(sorted(ops.items())), "tensors": len(graph.tensors),
            "nhwc": _is_nhwc(graph),
            "inputs": [io(i) for i in graph.inputs], "outputs": [io(i) for i in graph.outputs],
            "ops": [{"op": o.op, "node": o.source, "output": graph.tensors[o.outputs[0]].name} for o in graph.ops]}


def vela_check(module: Module, target: Any, samples: Sequence[dict[str, np.ndarray]], units: list[dict[str, Any]],
               *, source: str | None = None) -> dict[str, Any]:
    """``qc check`` for an Ethos-U target: lower the quantized module to TFLite, run Vela with
    the target's configuration (in a scratch directory) and compare its CPU / NPU split with
    qc's table (``units``: the placement report's units). Vela's split is the truth."""
    import tempfile

    from .vela import compare_placement, run_vela

    vc = target.vela
    with tempfile.TemporaryDirectory(prefix="qc-check-vela-") as tmp:
        path = os.path.join(tmp, "model.tflite")
        report = emit_tflite(module, path, samples=samples, source=source)
        v = run_vela(path, tmp, accelerator_config=vc.accelerator_config, system_config=vc.system_config,
                     memory_mode=vc.memory_mode)
    v["output"] = None
    v["units"] = len(units)
    v["disagreements"] = compare_placement(units, report["ops"], v)
    return v


def tflite_prepare_pipeline(shapes: Mapping[str, Sequence[int]]) -> str:
    """The passes that give the TFLite backend static shapes (TFLite tensors have fixed shapes):
    ``fix-shapes`` for the inputs and the shape arithmetic folded to a fixpoint, as for C, without
    the C backend's fusions (the lowering maps the ONNX ops one by one, so every TFLite tensor
    has its ONNX twin)."""
    from qc.backends.c.prepare import FOLD_ROUND, MAX_ROUNDS, fix_shapes_spec

    return f"{fix_shapes_spec(shapes)},fixpoint{{max-rounds={MAX_ROUNDS}}}({FOLD_ROUND})"
