"""The models, inputs, calibration data and quantized variants of benchmarks/arm_speed.py's side-by-side
benchmark (see its docstring).

A ``Case`` is a model at one shape: the float ONNX, the counted input (real text for MiniLM and
SmolLM2, random for any other ONNX), the calibration set (16 windows of the evaluation shape from
the calibration text, or 8 random samples) and a few held-out inputs for accuracy on the host.
``variants(case)`` builds (cached in the case's work directory) onnxruntime's own int8 models and
qc's C (whose directory also holds qc's quantized ONNX).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

# onnxruntime 1.30 (the arm64 build) loads ONNX IR version <= 13; qc writes 14 (issue 17)
ORT_ARM_MAX_IR = 13
CALIB_WINDOWS = 16
CALIB_RANDOM = 8
HOLDOUT = {"minilm-l6": 16, "smollm2-135m": 8}


@dataclass
class Case:
    """One benchmark row group: a model at a shape."""

    name: str             # "minilm-l6 1x128", "model.onnx 1x3x224x224"
    kind: str             # "embedding" (MiniLM), "logits" (SmolLM2), "cnn" (any other ONNX)
    fp32: Path
    shapes: dict[str, list[int]]
    feeds: dict[str, np.ndarray]                      # the counted inference
    calib: Path                                       # .npz, leading sample axis
    holdout: list[dict[str, np.ndarray]] = field(default_factory=list)
    work: Path = Path(".")
    output: str = ""      # the output accuracy is measured on

    def shape_arg(self) -> str:
        return ",".join(f"{k}={'x'.join(map(str, v))}" for k, v in self.shapes.items())


def _text_case(model: str, seq: int, work_root: Path) -> Case:
    from vs_ort import encoder_windows

    import qc.models
    from qc.data.text import default_calibration_text, default_evaluation_text, to_npz, token_windows

    work = work_root / f"{model}-1x{seq}"
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work_root / f"{model}-fp32.onnx"
    if not fp32.exists():
        print(f"building {fp32}", file=sys.stderr, flush=True)
        qc.models.build(model, str(fp32))
    tok = qc.models.tokenizer(model)
    n = HOLDOUT[model] + 1
    if model == "minilm-l6":
        cal = encoder_windows(default_calibration_text(), tok, seq, CALIB_WINDOWS)
        ev = encoder_windows(default_evaluation_text(), tok, seq, n)
        arrays = {"input_ids": cal, "attention_mask": np.ones_like(cal)}
        inputs = [{"input_ids": ev[i:i + 1], "attention_mask": np.ones_like(ev[i:i + 1])} for i in range(n)]
        kind, output = "embedding", "sentence_embedding"
    else:
        arrays = {"input_ids": token_windows(default_calibration_text(), tok, seq, samples=CALIB_WINDOWS)}
        ev = token_windows(default_evaluation_text(), tok, seq, samples=n)
        inputs = [{"input_ids": ev[i:i + 1].astype(np.int64)} for i in range(n)]
        kind, output = "logits", "logits"
    calib = work / "calib.npz"
    if not calib.exists():
        to_npz(arrays, str(calib))
    return Case(f"{model} 1x{seq}", kind, fp32, {k: [1, seq] for k in inputs[0]}, inputs[0], calib, inputs[1:],
                work, output)


def _onnx_case(path: Path, shapes: dict[str, list[int]], work_root: Path) -> Case:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    rng = np.random.RandomState(0)
    _inputs, dtypes = [], {}
    from onnx.helper import tensor_dtype_to_np_dtype

    for i in m.graph.input:
        if i.name in init:
            continue
        dt = np.dtype(tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
        dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
        shape = shapes.get(i.name) or dims
        if not all(d > 0 for d in shape):
            raise SystemExit(f"{path}: give --shape {i.name}=... (its shape is {dims})")
        shapes[i.name] = list(shape)
        dtypes[i.name] = dt

    def sample() -> dict[str, np.ndarray]:
        return {k: (rng.rand(*shapes[k]).astype(dt) if dt.kind == "f" else np.zeros(shapes[k], dt))
                for k, dt in dtypes.items()}

    tag = "x".join(map(str, next(iter(shapes.values()))))
    work = work_root / f"{path.stem}-{tag}"
    work.mkdir(parents=True, exist_ok=True)
    cal = [sample() for _ in range(CALIB_RANDOM)]
    calib = work / "calib.npz"
    np.savez(calib, **{k: np.stack([c[k] for c in cal]) for k in dtypes})
    held = [sample() for _ in range(8)]
    return Case(f"{path.name} {tag}", "cnn", path, shapes, held[0], calib, held[1:], work,
                [o.name for o in m.graph.output][0])


def case(model: str, seq_or_shapes, work_root: Path) -> Case:
    """MODEL: "minilm-l6", "smollm2-135m" (SEQ tokens) or a path to an ONNX (SHAPES: {name: dims})."""
    if model in HOLDOUT:
        return _text_case(model, int(seq_or_shapes), work_root)
    return _onnx_case(Path(model), dict(seq_or_shapes or {}), work_root)


def for_arm(path: Path) -> tuple[Path, bool]:
    """PATH, or a copy of it with ir_version lowered to 13 for the arm64 onnxruntime 1.30 (returns
    (path, lowered)). The copy patches the leading ir_version field (ModelProto field 1) when the
    file starts with it, else goes through onnx."""
    head = path.read_bytes()[:2] if path.stat().st_size else b""
    if len(head) == 2 and head[0] == 0x08 and head[1] <= ORT_ARM_MAX_IR:
        return path, False
    out = path.with_name(path.stem + f".ir{ORT_ARM_MAX_IR}.onnx")
    if out.exists() and out.stat().st_mtime >= path.stat().st_mtime:
        return out, True
    data = path.read_bytes()
    if data[0] == 0x08 and 0 < data[1] < 0x80:
        out.write_bytes(bytes([0x08, ORT_ARM_MAX_IR]) + data[2:])
    else:
        import onnx

        m = onnx.load(str(path))
        m.ir_version = min(m.ir_version, ORT_ARM_MAX_IR)
        onnx.save(m, str(out))
    return out, True


# -- the variants ------------------------------------------------------------------------------

ORT_VARIANTS = {
    "ort-dynamic": "quantize_dynamic QInt8 (all ops it quantizes)",
    "ort-dynamic-matmul": "quantize_dynamic QInt8, op_types_to_quantize=['MatMul']",
    "ort-static-s8s8": "quantize_static QDQ s8s8 per-channel (all ops it quantizes)",
    "ort-static-s8s8-matmul": "quantize_static QDQ s8s8 per-channel, op_types_to_quantize=['MatMul']",
}


def _calib_reader(path: Path, ranks: dict[str, int]):
    """Samples of the .npz one at a time: a stacked sample (rank + 1 dims: [N, 1, 3, H, W]) is
    taken whole, a leading axis of the input's own rank ([N, seq] for [1, seq]) is sliced."""
    from onnxruntime.quantization import CalibrationDataReader

    data = dict(np.load(path))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0
            self.n = len(next(iter(data.values())))

        def get_next(self):
            if self.i >= self.n:
                return None
            self.i += 1
            return {k: (v[self.i - 1] if v.ndim == ranks.get(k, v.ndim) + 1 else v[self.i - 1:self.i])
                    for k, v in data.items()}

        def rewind(self) -> None:
            self.i = 0

    return Reader()


def _pre_processed(c: Case) -> Path:
    """onnxruntime's recommended step before quantize_static (quant_pre_process: shape inference
    and its graph optimizations, BatchNorm folded into Conv; opset raised to 13 for per-channel
    QDQ). Without it onnxruntime's own int8 MobileNet-v2 keeps BatchNorm in float (21.4 M
    instructions instead of 10.8 M), so a CNN is pre-processed first."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = c.work / "fp32-pre.onnx"
    if pre.exists():
        return pre
    src = c.fp32
    model = onnx.load(str(src))
    if max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
        src = c.work / "fp32-opset13.onnx"
        onnx.save(version_converter.convert_version(model, 13), str(src))
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    return pre


def ort_quantized(c: Case, name: str) -> Path:
    """onnxruntime's quantizer on the float model (cached as WORK/NAME.onnx)."""
    out = c.work / f"{name}.onnx"
    if out.exists():
        return out
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    ops = ["MatMul"] if name.endswith("-matmul") else None
    tmp = c.work / f"{name}.part.onnx"
    print(f"{c.name}: {name} ({ORT_VARIANTS[name]})", file=sys.stderr, flush=True)
    if name.startswith("ort-dynamic"):
        quantize_dynamic(str(c.fp32), str(tmp), op_types_to_quantize=ops, weight_type=QuantType.QInt8)
    else:
        src = _pre_processed(c) if c.kind == "cnn" else c.fp32
        ranks = {k: len(v) for k, v in c.shapes.items()}
        quantize_static(str(src), str(tmp), _calib_reader(c.calib, ranks), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=ops, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    tmp.rename(out)
    return out


def qc_c(c: Case, target: str = "cortex-a76") -> Path:
    """`qc compile --quant w8a8 --target TARGET --emit c --emit-harness` (cached in WORK/qc-c; the
    directory's model.onnx is qc's quantized ONNX)."""
    out = c.work / "qc-c"
    if (out / "report.json").exists() and (out / "model.onnx").exists():
        return out
    cmd = [sys.executable, "-c", "import sys; from qc.cli import main; sys.exit(main())", "compile", str(c.fp32),
           "--target", target, "--quant", "w8a8", "--calib", str(c.calib), "--holdout", "0",
           "--shape", c.shape_arg(), "--emit", "c", "--emit-harness", "-o", str(out), "--quiet"]
    print(f"{c.name}: " + " ".join(["qc", *cmd[3:]]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    return out


def qc_command(c: Case, target: str = "cortex-a76") -> str:
    return (f"qc compile {c.fp32.name} --target {target} --quant w8a8 --calib calib.npz --holdout 0 "
            f"--shape {c.shape_arg()} --emit c --emit-harness")


# -- work counts -----------------------------------------------------------------------------

def macs(path: Path, shapes: dict[str, list[int]]) -> dict[str, int]:
    """MACs of the MatMul / Gemm / Conv nodes at SHAPES: "weights" (one operand an initializer)
    and "all"; from onnx shape inference on the float model."""
    import onnx

    m = onnx.load(str(path))
    for i in m.graph.input:
        if i.name in shapes:
            dims = i.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[i.name]):
                d.ClearField("dim_param")
                d.dim_value = v
    m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    known: dict[str, list[int]] = {}
    for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            known[v.name] = dims
    init = {i.name: list(i.dims) for i in m.graph.initializer}
    known.update(init)
    tot = {"weights": 0, "all": 0}
    for n in m.graph.node:
        if n.op_type not in ("MatMul", "Gemm", "Conv") or n.output[0] not in known:
            continue
        out = known[n.output[0]]
        if n.op_type == "Conv":
            w = known.get(n.input[1])
            if w is None:
                continue
            k = int(np.prod(w[1:]))
        else:
            a = known.get(n.input[0])
            if a is None:
                continue
            trans = any(at.name == "transA" and at.i for at in n.attribute)
            k = a[-2] if trans else a[-1]
        mac = int(np.prod(out)) * k
        tot["all"] += mac
        if any(i in init for i in n.input[:2]):
            tot["weights"] += mac
    return tot


def describe(c: Case) -> dict:
    return {"name": c.name, "kind": c.kind, "fp32": str(c.fp32), "shapes": c.shapes, "calib": str(c.calib),
            "output": c.output, "holdout": len(c.holdout)}


if __name__ == "__main__":
    print(json.dumps(describe(case(sys.argv[1], sys.argv[2], ROOT / "out" / "armbench")), indent=1))
