"""The compile report of a quantized model: sizes, what was quantized and how, accuracy.

``qc compile --quant`` prints :func:`format_report` and writes :func:`build_report`'s dict as
JSON with ``--report-json``.
"""
from __future__ import annotations

import collections
import os
from typing import Any

from qc.ir.core import Module, Op
from qc.ir.types import TensorType

_COMPUTE = ("MatMul", "Gemm", "Conv")


def model_bytes(path: str) -> int:
    """Bytes on disk of an ONNX model: the file plus the external data files it references."""
    import onnx

    total = os.path.getsize(path)
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:
        return total
    base = os.path.dirname(os.path.abspath(path))
    files = set()
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                files.add(os.path.normpath(os.path.join(base, entry.value)))
    return total + sum(os.path.getsize(f) for f in files if os.path.isfile(f))


def _weight_form(dq: Op) -> str:
    """'i8 per-channel', 'u4 block 32', ... for a DequantizeLinear of a constant."""
    q = dq.operands[0]
    dtype = q.type.dtype if isinstance(q.type, TensorType) else "?"
    block = dq.attr("block_size", 0)
    scale = dq.operands[1]
    per_tensor = isinstance(scale.type, TensorType) and scale.type.shape in ((), (1,))
    return f"{dtype} " + (f"block {block}" if block else "per-tensor" if per_tensor else "per-channel")


def _operand_form(v) -> str:
    p = v.producer if v is not None else None
    if v is None:
        return "-"
    if v.const is not None or p is None or p.op_type != "DequantizeLinear":
        return str(v.type.dtype) if isinstance(v.type, TensorType) and v.type.dtype is not None else "float"
    src = p.operands[0]
    if src.const is not None:
        return _weight_form(p)
    qp = src.producer
    kind = "dynamic" if qp is not None and qp.op_type == "DynamicQuantizeLinear" else "static"
    dtype = src.type.dtype if isinstance(src.type, TensorType) else "?"
    return f"{dtype} {kind}"


def quantized_ops(module: Module) -> dict[str, int]:
    """How each compute op ended up, counted: ``'MatMul: a u8 static, w u8 per-channel' -> 168``."""
    forms: collections.Counter[str] = collections.Counter()
    for op in module.graph:
        if op.domain in ("", "ai.onnx") and op.op_type in _COMPUTE:
            a = _operand_form(op.operands[0])
            w = _operand_form(op.operands[1]) if len(op.operands) > 1 else "-"
            forms[f"{op.op_type}: a {a}, w {w}"] += 1
        elif op.domain == "com.microsoft" and op.op_type == "MatMulNBits":
            level = op.attr("accuracy_level", 0)
            forms[f"MatMulNBits: w {op.attr('bits', 4)}-bit block {op.attr('block_size')}"
                  + (f", a int8 dynamic (accuracy level {level})" if level == 4 else ", a float")] += 1
        elif op.domain == "com.microsoft" and op.op_type in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
            forms[f"{op.op_type}: a u8 dynamic, w {op.operands[1].type.dtype} "
                  + ("per-channel" if op.operands[2].type.shape not in ((), (1,)) else "per-tensor")] += 1
        elif op.op_type in ("QLinearMatMul", "MatMulInteger", "QLinearConv", "ConvInteger"):
            forms[f"{op.op_type}"] += 1
    return dict(sorted(forms.items(), key=lambda kv: (-kv[1], kv[0])))


def outlier_report(splits: list, candidate_columns: int = 0) -> dict[str, Any] | None:
    """Per activation: how many columns went to float16 (float32) and why (from split-outliers);
    ``candidate_columns``: all columns of the activations split-outliers looked at."""
    if not splits:
        return None
    layers = [{"activation": sp.activation, "ops": sp.ops, "float_columns": len(sp.columns), "features": sp.features,
               "columns": sp.columns, "mode": sp.mode, "reason": sp.reason,
               "smallest_outlier_absmax": sp.outlier_absmax, "rest_absmax": sp.rest_absmax} for sp in splits]
    kept = sum(len(sp.columns) for sp in splits)
    total = max(candidate_columns, sum(sp.features for sp in splits))
    dtypes = sorted({sp.dtype for sp in splits})
    return {"float_columns": kept, "dtype": "/".join(dtypes), "columns": total,
            "fraction": kept / total if total else 0.0, "layers": layers}


def build_report(*, scheme: str, pipeline: str, input_path: str, output_path: str, module: Module,
                 calibration: dict[str, Any] | None, accuracy: dict[str, Any] | None,
                 seconds: dict[str, float], outliers: dict[str, Any] | None = None,
                 warnings: list[dict[str, str]] | None = None) -> dict[str, Any]:
    before, after = model_bytes(input_path), model_bytes(output_path)
    return {
        "input": input_path, "output": output_path, "scheme": scheme, "pipeline": pipeline,
        "size_bytes": {"before": before, "after": after, "ratio": round(after / before, 4) if before else None},
        "ops": quantized_ops(module),
        "calibration": calibration,
        "outliers": outliers,
        "accuracy": accuracy,
        "warnings": warnings or [],     # qc.quant.guardrails
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


def format_accuracy(a: dict[str, Any]) -> list[str]:
    """The held-aside SQNR lines (qc.tools.holdout): all samples with their spread, then each group."""
    def dbs(values: dict[str, Any]) -> str:
        return ", ".join(f"{name} {float(db):.2f} dB" for name, db in values.items())

    held, gen = a.get("held_aside", a["samples"]), a.get("generated", 0)
    where = (f"{held} held-aside" if not gen else f"{held} held-aside + {gen} generated like the "
             f"{a['generated_from']} real ones")
    spread = ", ".join(f"{name} {float(a['sqnr_db_min'][name]):.2f} / {float(a['sqnr_db_median'][name]):.2f} dB"
                       for name in a["sqnr_db"]) if "sqnr_db_min" in a else ""
    if not a["samples"]:
        return [f"  output SQNR: not measured (inputs generated like the calibration data failed: "
                f"{a.get('generated_failed')})"]
    count = f"{a['samples']} sample" + ("s" if a["samples"] != 1 else "")
    lines = [f"  output SQNR vs the float model on {count} ({where}): {dbs(a['sqnr_db'])}"]
    if a.get("generated_failed"):
        lines.append(f"    (no generated samples: {a['generated_failed']})")
    if spread:
        lines.append(f"    per sample min / median: {spread}")
    if "held_aside_sqnr_db" in a:
        lines.append(f"    held-aside alone: {dbs(a['held_aside_sqnr_db'])}; generated alone: "
                     f"{dbs(a['generated_sqnr_db'])}")
    return lines


def format_report(r: dict[str, Any], per_layer: bool = False) -> str:
    size = r["size_bytes"]
    lines = [f"quantization: {r['scheme']}",
             f"  size: {size['before'] / 1e6:.1f} MB -> {size['after'] / 1e6:.1f} MB"
             + (f" ({100 * size['ratio']:.1f}%)" if size["ratio"] is not None else "")]
    if r["ops"]:
        lines.append("  compute ops:")
        lines.extend(f"    {n:5d} x {form}" for form, n in r["ops"].items())
    c = r.get("calibration")
    if c:
        lines.append(f"  calibration: {c['method']} over {c['samples']} samples, {c['tensors']} tensors"
                     + (f" (from cache {c['cache']})" if c.get("cached") else ""))
    o = r.get("outliers")
    if o:
        lines.append(f"  outliers: {o['float_columns']} of {o['columns']} activation columns in {o['dtype']} "
                     f"({100 * o['fraction']:.2f}%), in {len(o['layers'])} activations"
                     + ("" if per_layer else " (--report lists them)"))
        if per_layer:
            for layer in o["layers"]:
                lines.append(f"    %{layer['activation']} -> {', '.join(layer['ops'])}: {layer['float_columns']} of "
                             f"{layer['features']} ({layer['reason']}); int8 part max |x| {layer['rest_absmax']:.4g}")
    a = r.get("accuracy")
    if a:
        lines.extend(format_accuracy(a))
    elif c is None:
        lines.append("  output SQNR: not measured (no calibration data given; --calib or --calib-text adds it)")
    from .guardrails import format_warnings

    lines.extend(format_warnings(r.get("warnings") or [], per_layer))
    if r.get("seconds"):
        lines.append("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in r["seconds"].items()))
    return "\n".join(lines) + "\n"
