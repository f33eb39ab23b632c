"""qc vs onnxruntime's quantizer on a real model, side by side, in one run.

    python benchmarks/vs_ort.py --model smollm2-135m --samples 32
    python benchmarks/vs_ort.py --model minilm-l6 --samples 64

Steps:
1. Build the float32 ONNX model with ``qc.models.build`` (cached as out/bench/MODEL-fp32.onnx).
2. Calibration data: token windows of ``--seq-len`` tokens from the default *calibration* text
   (licence texts; ``qc.data.text.default_calibration_text``), ``--samples`` of them, written to
   out/bench/MODEL-calib-SAMPLESxSEQ.npz (the ``--calib`` layout: arrays named after the model inputs, leading
   sample axis). For the encoder each window is ``[CLS] ... [SEP]`` and ``attention_mask`` is fed too.
3. Each quantization method runs in a fresh subprocess (this script with ``--worker``), so the wall
   time and the peak RSS (``os.wait4`` rusage of that child: the whole process, including Python
   and onnxruntime themselves) belong to that method alone.
4. Quality on the *evaluation* text (the Python Language Reference; never the calibration text):
   the decoder's perplexity over ``--eval-windows`` windows, the encoder's mean / min cosine of
   sentence embeddings against FP32 over ``--sentences`` sentences. Measured twice: with
   onnxruntime's graph optimizations off (the model's arithmetic as written; qc.metrics' default)
   and on (what a deployment runs, with onnxruntime's fused integer kernels).
5. Latency: ORT CPU (all graph optimizations, default threads) on one 128-token input, median of
   ``--runs`` runs (default 20) after 3 warm-up runs.

Methods (onnxruntime.quantization; only MatMul ops are quantized: quantizing the rest of a
transformer, e.g. the additive attention mask, breaks it; MinMax calibration):
  ort-dynamic             quantize_dynamic, int8 weights per tensor (MatMulInteger)
  ort-dynamic-channel     quantize_dynamic, int8 weights per channel
  ort-dynamic-channel-rr  the same with reduce_range (7-bit weights: onnxruntime's advice for CPUs
                          without VNNI, whose u8 x s8 kernels saturate int16 pair sums)
  ort-static-tensor       quantize_static QDQ, uint8 activations, int8 weights per tensor
  ort-static-channel      quantize_static QDQ, uint8 activations, int8 weights per channel
  ort-static-channel-rr   the same with reduce_range
  ort-static-s8s8         quantize_static QDQ, int8 activations, int8 weights per channel (not default)
  ort-int4-b32            MatMulNBitsQuantizer, int4 symmetric, block 32 (RTN, default accuracy level)
  ort-int4-b128           MatMulNBitsQuantizer, int4 symmetric, block 128
  qc-...                  `qc compile --target x86-avx2 --quant ...` with the same calibration file
                          (``--calib``, ``--holdout 0``); see METHODS for each row's flags

The int4 quantizer imports ``onnx_ir``, which onnxruntime does not declare: ``pip install onnx-ir``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODELS = ("smollm2-135m", "minilm-l6")

# name -> (description, worker kwargs)
METHODS = {
    "ort-dynamic": ("quantize_dynamic int8 (per-tensor weights)", {"kind": "dynamic", "per_channel": False}),
    "ort-dynamic-channel": ("quantize_dynamic int8 (per-channel weights)", {"kind": "dynamic", "per_channel": True}),
    "ort-dynamic-channel-rr": ("quantize_dynamic int8 (per-channel weights, reduce_range)",
                               {"kind": "dynamic", "per_channel": True, "reduce_range": True}),
    "ort-static-tensor": ("quantize_static QDQ u8/s8 per-tensor", {"kind": "static", "per_channel": False}),
    "ort-static-channel": ("quantize_static QDQ u8/s8 per-channel", {"kind": "static", "per_channel": True}),
    "ort-static-channel-rr": ("quantize_static QDQ u8/s8 per-channel reduce_range",
                              {"kind": "static", "per_channel": True, "reduce_range": True}),
    "ort-static-s8s8": ("quantize_static QDQ s8/s8 per-channel", {"kind": "static", "per_channel": True,
                                                                  "activation": "int8"}),
    "ort-int4-b32": ("MatMulNBits int4 sym block 32 (RTN)", {"kind": "int4", "block_size": 32}),
    "ort-int4-b128": ("MatMulNBits int4 sym block 128 (RTN)", {"kind": "int4", "block_size": 128}),
    "ort-int4-b32-asym": ("MatMulNBits int4 asymmetric block 32 (RTN, a zero point per block)",
                          {"kind": "int4", "block_size": 32, "symmetric": False}),
    "ort-int4-b32-a4": ("MatMulNBits int4 sym block 32 (RTN), accuracy_level 4 (int8 activations: W4A8)",
                        {"kind": "int4", "block_size": 32, "accuracy_level": 4}),
    "ort-int4-hqq": ("MatMulNBits int4 block 32, HQQ (HQQWeightOnlyQuantConfig; imports torch)",
                     {"kind": "int4", "block_size": 32, "algo": "hqq"}),
    "ort-int4-gptq": ("MatMulNBits int4 block 32, GPTQ with act-order (GPTQWeightOnlyQuantConfig; needs "
                      "neural_compressor and torch)", {"kind": "int4", "block_size": 32, "algo": "gptq"}),
    "qc-w8a8": ("qc compile --quant w8a8 --outliers none (static, per-channel weights)",
                {"kind": "qc", "quant": {"scheme": "w8a8", "outliers": "none"}}),
    "qc-w8a8-mse": ("qc --quant w8a8 --outliers none --calib-method mse",
                    {"kind": "qc", "quant": {"scheme": "w8a8", "outliers": "none", "calib_method": "mse"}}),
    "qc-w8a8-rr": ("qc --quant w8a8 --outliers none --reduce-range (7-bit int8 weights)", {"kind": "qc", "quant": {
        "scheme": "w8a8", "outliers": "none", "reduce_range": True}}),
    "qc-w8a8-rotate": ("qc --quant w8a8 --rotate --outliers none (residual stream rotated, no float16 columns)",
                       {"kind": "qc", "quant": {"scheme": "w8a8", "outliers": "none", "rotate": "down"}}),
    "qc-w8a8-rotate-all": ("qc --quant w8a8 --rotate all --outliers none (also an online Hadamard before every "
                           "other linear: post-norm encoders)",
                           {"kind": "qc", "quant": {"scheme": "w8a8", "outliers": "none", "rotate": "all"}}),
    "qc-dyn8": ("qc compile --quant dyn8", {"kind": "qc", "quant": {"scheme": "dyn8"}}),
    "qc-dyn8-rr": ("qc --quant dyn8 --reduce-range (7-bit int8 weights)", {"kind": "qc", "quant": {
        "scheme": "dyn8", "reduce_range": True}}),
    "qc-w4": ("qc --quant w4 with calibration data: the default (block 32; INT4_CALIBRATED in qc/quant/schemes.py)",
              {"kind": "qc", "quant": {"scheme": "w4"}}),
    "qc-w4a8": ("qc --quant w4a8 with calibration data: the default weights, int8 activations per block",
                {"kind": "qc", "quant": {"scheme": "w4a8"}}),
    "qc-w4-rtn-sym": ("qc --quant w4 --weight-algo rtn --symmetric (block 32, RTN: onnxruntime's int4 configuration)",
                      {"kind": "qc", "quant": {"scheme": "w4", "weight_algo": "rtn", "weight_symmetric": True}}),
    "qc-w4-rtn": ("qc --quant w4 --weight-algo rtn (block 32, asymmetric, RTN)",
                  {"kind": "qc", "quant": {"scheme": "w4", "weight_algo": "rtn"}}),
    "qc-w4-search": ("qc --quant w4 --weight-algo rtn --weight-search (asymmetric, clip search)",
                     {"kind": "qc", "quant": {"scheme": "w4", "weight_algo": "rtn", "weight_search": True}}),
    "qc-w4-search-sym": ("qc --quant w4 --weight-algo rtn --weight-search --symmetric (scale search)",
                         {"kind": "qc", "quant": {"scheme": "w4", "weight_algo": "rtn", "weight_search": True,
                                                  "weight_symmetric": True}}),
    "qc-w4-gptq-act": ("qc --quant w4 --weight-algo gptq --act-order (asymmetric)",
                       {"kind": "qc", "quant": {"scheme": "w4", "weight_algo": "gptq", "act_order": True}}),
    "qc-w4-gptq-search": ("qc --quant w4 --weight-algo gptq --weight-search (asymmetric)",
                          {"kind": "qc", "quant": {"scheme": "w4", "weight_algo": "gptq", "weight_search": True}}),
    "qc-w4-awq-gptq": ("qc --quant w4 --weight-algo awq+gptq (asymmetric)",
                       {"kind": "qc", "quant": {"scheme": "w4", "weight_algo": "awq+gptq"}}),
    "qc-w4-awq-search": ("qc --quant w4 --weight-algo awq --weight-search (asymmetric)",
                         {"kind": "qc", "quant": {"scheme": "w4", "weight_algo": "awq", "weight_search": True}}),
    "qc-w4-awq-gptq-search": ("qc --quant w4 --weight-algo awq+gptq --weight-search (asymmetric)",
                              {"kind": "qc", "quant": {"scheme": "w4", "weight_algo": "awq+gptq",
                                                       "weight_search": True}}),
    "qc-w4-awq-gptq-search-act": ("qc --quant w4 --weight-algo awq+gptq --weight-search --act-order (asymmetric)",
                                  {"kind": "qc", "quant": {"scheme": "w4", "weight_algo": "awq+gptq",
                                                           "weight_search": True, "act_order": True}}),
    "qc-w4-gptq-search-sym": ("qc --quant w4 --weight-algo gptq --weight-search --symmetric",
                              {"kind": "qc", "quant": {"scheme": "w4", "weight_algo": "gptq", "weight_search": True,
                                                       "weight_symmetric": True}}),
    "qc-w4-awq-gptq-search-sym": ("qc --quant w4 --weight-algo awq+gptq --weight-search --symmetric",
                                  {"kind": "qc", "quant": {"scheme": "w4", "weight_algo": "awq+gptq",
                                                           "weight_search": True, "weight_symmetric": True}}),
    "qc-w4-gptq": ("qc --quant w4 --weight-algo gptq (block 32, asymmetric)",
                   {"kind": "qc", "quant": {"scheme": "w4", "weight_algo": "gptq"}}),
    "qc-w4-awq": ("qc --quant w4 --weight-algo awq (block 32, asymmetric)",
                  {"kind": "qc", "quant": {"scheme": "w4", "weight_algo": "awq"}}),
}
DEFAULT_METHODS = ("ort-dynamic", "ort-dynamic-channel", "ort-dynamic-channel-rr", "ort-static-tensor",
                   "ort-static-channel", "ort-static-channel-rr", "ort-int4-b32", "ort-int4-b128",
                   "qc-w8a8", "qc-w8a8-mse", "qc-w8a8-rr", "qc-dyn8", "qc-dyn8-rr", "qc-w4-rtn-sym", "qc-w4-rtn",
                   "qc-w4-gptq", "qc-w4-awq")
# onnxruntime graph rewrites to switch off per model (none now: the tables in benchmarks/README.md
# were measured with GatherToSliceFusion off for MiniLM, before its builder emitted scalar Range bounds)
DISABLED: dict[str, list[str]] = {}


# -- the worker: one quantization in its own process ------------------------------------------------
def worker(spec: dict) -> None:
    kind = spec["kind"]
    src, dst = spec["fp32"], spec["output"]
    t0 = time.perf_counter()
    if kind == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], per_channel=spec["per_channel"],
                         reduce_range=spec.get("reduce_range", False), weight_type=QuantType.QInt8)
    elif kind == "static":
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        Reader = calibration_reader(spec["calib"])
        act = QuantType.QInt8 if spec.get("activation") == "int8" else QuantType.QUInt8
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                        per_channel=spec["per_channel"], reduce_range=spec.get("reduce_range", False),
                        activation_type=act, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    elif kind == "int4":
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        model = onnx.load(src)
        algo = spec.get("algo", "default")
        if algo == "hqq":
            from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig

            config = HQQWeightOnlyQuantConfig(block_size=spec["block_size"], bits=4)
        elif algo == "gptq":
            from onnxruntime.quantization.matmul_nbits_quantizer import GPTQWeightOnlyQuantConfig

            config = GPTQWeightOnlyQuantConfig(calibration_data_reader=calibration_reader(spec["calib"])(),
                                               block_size=spec["block_size"], actorder=True)
        else:
            config = DefaultWeightOnlyQuantConfig(block_size=spec["block_size"],
                                                  is_symmetric=spec.get("symmetric", True),
                                                  accuracy_level=spec.get("accuracy_level"))
        quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=spec["block_size"],
                                         is_symmetric=spec.get("symmetric", True),
                                         accuracy_level=spec.get("accuracy_level"), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(dst, use_external_data_format=False)
    elif kind == "qc":
        import qc
        from qc.quant import QuantOptions

        result = qc.compile(src, target="x86-avx2", quant=QuantOptions(**spec["quant"]), calibration=spec["calib"],
                            holdout=0)
        result.write(dst)
        if spec.get("report"):
            with open(spec["report"], "w") as f:
                json.dump(result.report, f, indent=2, sort_keys=True)
    else:
        raise SystemExit(f"unknown method kind {kind}")
    print(json.dumps({"quantize_s": time.perf_counter() - t0}))


def calibration_feeds(path: str) -> list[dict[str, np.ndarray]]:
    """The feeds of a calibration .npz: arrays named after the model inputs with a leading sample
    axis (one shape for all samples), or ``{i}/{input}`` arrays, one per sample (samples of
    different shapes: a KV-cache decoder's prefills and decode steps)."""
    data = dict(np.load(path))
    if all("/" in k for k in data):
        feeds: dict[int, dict[str, np.ndarray]] = {}
        for key, array in data.items():
            index, name = key.split("/", 1)
            feeds.setdefault(int(index), {})[name] = array
        return [feeds[i] for i in sorted(feeds)]
    count = len(next(iter(data.values())))
    return [{k: v[i:i + 1] for k, v in data.items()} for i in range(count)]


def calibration_reader(path: str):
    """An onnxruntime CalibrationDataReader class over the samples of a --calib .npz, one at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    feeds = calibration_feeds(path)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(feeds):
                return None
            self.i += 1
            return feeds[self.i - 1]

        def rewind(self):
            self.i = 0

    return Reader


def run_worker(spec: dict, timeout: float) -> dict:
    """Run one method in a child process; its wall time and peak RSS come from os.wait4 (per child,
    unlike RUSAGE_CHILDREN, which keeps the maximum over all children so far)."""
    import tempfile
    import threading

    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        timer.cancel()
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        err_file.seek(0)
        err = err_file.read()
    wall = time.perf_counter() - t0
    if code != 0:
        if wall >= timeout:
            return {"error": f"timed out after {timeout:.0f} s"}
        last = [line for line in err.strip().splitlines() if line.strip()][-1:] or ["(no message)"]
        return {"error": f"exit {code}: {last[0][:200]}"}
    result = json.loads(out.strip().splitlines()[-1])
    result["process_s"] = wall
    result["peak_rss_mb"] = usage.ru_maxrss * 1024 / 1e6
    return result


# -- data -------------------------------------------------------------------------------------------
def build_fp32(model: str, out_dir: str) -> str:
    import qc.models

    path = os.path.join(out_dir, f"{model}-fp32.onnx")
    if not os.path.isfile(path):
        print(f"building {path} ...", file=sys.stderr)
        qc.models.build(model, path)
    return path


def encoder_windows(path: str, tok, seq_len: int, samples: int | None) -> np.ndarray:
    """[CLS] + seq_len-2 tokens of running text + [SEP]."""
    from qc.data.text import token_windows

    body = token_windows(path, tok, seq_len - 2, samples=samples)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    n = len(body)
    return np.concatenate([np.full((n, 1), cls), body, np.full((n, 1), sep)], axis=1).astype(np.int64)


def calibration_data(model: str, tok, seq_len: int, samples: int, out_dir: str) -> tuple[str, dict]:
    from qc.data.text import default_calibration_text, to_npz, token_windows

    text = default_calibration_text()
    if model == "minilm-l6":
        ids = encoder_windows(text, tok, seq_len, samples)
        arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    else:
        arrays = {"input_ids": token_windows(text, tok, seq_len, samples=samples)}
    path = os.path.join(out_dir, f"{model}-calib-{samples}x{seq_len}.npz")
    to_npz(arrays, path)
    return path, arrays


# -- quality and latency ----------------------------------------------------------------------------
def model_size_mb(path: str) -> float:
    size = os.path.getsize(path)
    data = path + ".data"
    return (size + (os.path.getsize(data) if os.path.isfile(data) else 0)) / 1e6


def quality(model: str, path: str, ev: dict, optimize: bool, ref_emb=None) -> tuple[str, object]:
    from qc.tools import metrics

    disabled = DISABLED.get(model)
    if model == "smollm2-135m":
        ppl = metrics.perplexity(path, ev["windows"], optimize=optimize, disabled_optimizers=disabled)
        return f"ppl {ppl:.2f}", ppl
    emb = metrics.sentence_embeddings(path, ev["sentences"], optimize=optimize, disabled_optimizers=disabled)
    if ref_emb is None:
        return "-", emb
    mean, low = metrics.cosine_stats(emb, ref_emb)
    return f"cos {mean:.4f} / {low:.4f}", emb


def latency(model: str, path: str, feeds: dict, runs: int) -> float:
    from qc.tools import metrics

    return metrics.latency_ms(path, feeds, runs=runs, warmup=3, optimize=True, disabled_optimizers=DISABLED.get(model))


def print_table(header: tuple, rows: list[tuple]) -> None:
    """A Markdown table with columns padded to their widest cell."""
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for cells in [header, None, *rows]:
        if cells is None:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        else:
            print("| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |")


# -- main -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=MODELS)
    p.add_argument("--samples", type=int, default=32, help="calibration windows (default %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per window and latency input (default %(default)s)")
    p.add_argument("--eval-windows", type=int, default=32, help="decoder: evaluation windows (default %(default)s)")
    p.add_argument("--sentences", type=int, default=128, help="encoder: evaluation sentences (default %(default)s)")
    p.add_argument("--runs", type=int, default=20, help="latency runs, median (default %(default)s; >= 10)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma list from: " + ", ".join(METHODS) + " (default %(default)s)")
    p.add_argument("--out", default=os.path.join(REPO, "out", "bench"), help="work directory (default out/bench)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per quantization (default %(default)s)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if not args.model:
        p.error("--model is required")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    if args.runs < 10:
        p.error("--runs must be at least 10")

    import onnxruntime

    import qc.models
    from qc.data.text import default_evaluation_text, sentences, token_windows

    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    fp32 = build_fp32(args.model, args.out)
    tok = qc.models.tokenizer(args.model)
    calib, _ = calibration_data(args.model, tok, args.seq_len, args.samples, args.out)
    eval_text = default_evaluation_text()
    ev: dict = {}
    if args.model == "smollm2-135m":
        ev["windows"] = token_windows(eval_text, tok, args.seq_len, samples=args.eval_windows)
        lat_feeds = {"input_ids": ev["windows"][:1]}
        what = f"perplexity over {args.eval_windows} windows x {args.seq_len} tokens"
    else:
        ev["sentences"] = sentences(eval_text, args.sentences)
        ids = encoder_windows(eval_text, tok, args.seq_len, 1)
        lat_feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        what = f"mean / min cosine of sentence embeddings vs FP32 over {args.sentences} sentences"
    print(f"model {args.model}: {fp32}; calibration {calib} ({args.samples} x {args.seq_len} tokens from "
          f"the calibration text); evaluation text {eval_text}", file=sys.stderr)

    rows = []
    ref = None
    if args.model == "minilm-l6":  # the encoder's reference: FP32 embeddings, optimizations off
        _, ref = quality(args.model, fp32, ev, optimize=False)
    q_off, _ = quality(args.model, fp32, ev, optimize=False, ref_emb=ref)
    q_on, _ = quality(args.model, fp32, ev, optimize=True, ref_emb=ref)
    rows.append(("fp32", "-", "-", f"{model_size_mb(fp32):.1f}", q_off, q_on,
                 f"{latency(args.model, fp32, lat_feeds, args.runs):.1f}"))
    print(" | ".join(rows[-1]), file=sys.stderr)
    for name in methods:
        description, kwargs = METHODS[name]
        out_path = os.path.join(args.out, f"{args.model}-{name}.onnx")
        if os.path.exists(out_path):
            os.unlink(out_path)
        spec = dict(kwargs, fp32=fp32, output=out_path, calib=calib)
        print(f"{name}: {description} ...", file=sys.stderr)
        r = run_worker(spec, args.timeout)
        if "error" in r:
            rows.append((f"{name}", "failed", "-", "-", r["error"], "-", "-"))
        else:
            q_off, _ = quality(args.model, out_path, ev, optimize=False, ref_emb=ref)
            q_on, _ = quality(args.model, out_path, ev, optimize=True, ref_emb=ref)
            rows.append((name, f"{r['quantize_s']:.1f}", f"{r['peak_rss_mb']:.0f}", f"{model_size_mb(out_path):.1f}",
                         q_off, q_on, f"{latency(args.model, out_path, lat_feeds, args.runs):.1f}"))
        print(" | ".join(rows[-1]), file=sys.stderr)

    header = ("method", "quantize s", "peak RSS MB", "size MB", "quality (ORT opt off)", "quality (ORT opt on)",
              f"latency ms ({args.seq_len} tok)")
    print(f"vs_ort: {args.model}, {datetime.date.today().isoformat()}, onnxruntime {onnxruntime.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"calibration: {args.samples} windows x {args.seq_len} tokens of the licence texts; "
          f"quality: {what} of the Python Language Reference")
    print_table(header, rows)
    for name in methods:
        print(f"  {name}: {METHODS[name][0]}")
    print(f"Total {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
