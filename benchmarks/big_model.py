"""A model over 2 GB: a synthetic decoder whose float32 weights live in external data,
compiled by `qc compile` (plain, whose output is also over 2 GB), `--quant dyn8` and `--quant w4`
with peak RSS measured.

    python benchmarks/big_model.py                     # 11 layers of width 2048: 2.4 GB of weights
    python benchmarks/big_model.py --layers 2 --keep   # a quick run; keep out/bench/big/

The weights are written tensor by tensor in 16 MB chunks to out/bench/big/decoder.onnx.data
(never all in memory). Each compile runs as a subprocess; its peak RSS comes from
``os.wait4`` (ru_maxrss). The output is checked with ``onnx.checker`` (by path, as a > 2 GB
model needs) and run once in onnxruntime against the float model on the same input.

Per layer: RMSNorm-like scaling, q/k/v/o projections with single-head attention, a SwiGLU MLP
(gate, up, down), residual adds; then a final norm and an untied LM head.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "out", "bench", "big")
CHUNK = 4 << 20  # float32 elements per write: 16 MB


class WeightWriter:
    """Appends random float32 tensors to one external-data file, streaming."""

    def __init__(self, path: str, seed: int = 0):
        self.file = open(path, "wb")
        self.location = os.path.basename(path)
        self.offset = 0
        self.rng = np.random.default_rng(seed)

    def add(self, name: str, shape: tuple[int, ...], scale: float) -> TensorProto:
        count = int(np.prod(shape))
        for start in range(0, count, CHUNK):
            n = min(CHUNK, count - start)
            self.file.write((self.rng.standard_normal(n, dtype=np.float32) * np.float32(scale)).tobytes())
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape), data_location=TensorProto.EXTERNAL)
        for k, v in (("location", self.location), ("offset", str(self.offset)), ("length", str(4 * count))):
            t.external_data.add(key=k, value=v)
        self.offset += 4 * count
        return t

    def close(self) -> None:
        self.file.close()


def build(path: str, layers: int, d: int, ffn: int, vocab: int) -> int:
    """Write the decoder to ``path`` (+ ``path``.data); returns the weight bytes."""
    writer = WeightWriter(path + ".data")
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def w(name, shape, scale=None):
        inits.append(writer.add(name, shape, scale if scale is not None else 1.0 / np.sqrt(shape[0])))
        return name

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def norm(x, prefix):
        sq = node("Mul", [x, x], f"{prefix}.sq")
        mean = node("ReduceMean", [sq], f"{prefix}.mean", axes=[-1], keepdims=1)
        eps = node("Add", [mean, "eps"], f"{prefix}.eps")
        inv = node("Reciprocal", [node("Sqrt", [eps], f"{prefix}.sqrt")], f"{prefix}.inv")
        return node("Mul", [x, inv], f"{prefix}.out")

    small = [helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-5]),
             helper.make_tensor("attn_scale", TensorProto.FLOAT, [], [1.0 / np.sqrt(d)])]
    x = node("Gather", [w("embed", (vocab, d), 1.0), "input_ids"], "embedded", axis=0)
    for i in range(layers):
        p = f"layer{i}"
        h = norm(x, f"{p}.attn_norm")
        q = node("MatMul", [h, w(f"{p}.q", (d, d))], f"{p}.q_proj")
        k = node("MatMul", [h, w(f"{p}.k", (d, d))], f"{p}.k_proj")
        v = node("MatMul", [h, w(f"{p}.v", (d, d))], f"{p}.v_proj")
        kt = node("Transpose", [k], f"{p}.kt", perm=[0, 2, 1])
        scores = node("Mul", [node("MatMul", [q, kt], f"{p}.scores_raw"), "attn_scale"], f"{p}.scores")
        probs = node("Softmax", [scores], f"{p}.probs", axis=-1)
        ctx = node("MatMul", [probs, v], f"{p}.context")
        x = node("Add", [x, node("MatMul", [ctx, w(f"{p}.o", (d, d))], f"{p}.o_proj")], f"{p}.attn_residual")
        h = norm(x, f"{p}.mlp_norm")
        gate = node("MatMul", [h, w(f"{p}.gate", (d, ffn))], f"{p}.gate_proj")
        up = node("MatMul", [h, w(f"{p}.up", (d, ffn))], f"{p}.up_proj")
        act = node("Mul", [node("Mul", [gate, node("Sigmoid", [gate], f"{p}.sig")], f"{p}.silu"), up], f"{p}.swiglu")
        x = node("Add", [x, node("MatMul", [act, w(f"{p}.down", (ffn, d))], f"{p}.down_proj")], f"{p}.mlp_residual")
    logits = node("MatMul", [norm(x, "final_norm"), w("lm_head", (d, vocab))], "logits")
    writer.close()
    graph = helper.make_graph(nodes, "big_decoder",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"])],
                              [helper.make_tensor_value_info(logits, TensorProto.FLOAT, [1, "seq", vocab])],
                              small + inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qc-big-model")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return writer.offset


def run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, output) of a subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{out}")
    return wall, usage.ru_maxrss * 1024, out


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + ".data") if os.path.exists(p))


def check_output(path: str, reference: str, vocab: int) -> str:
    """onnx.checker by path, then one onnxruntime run vs the float model: max |diff| / max |ref|."""
    onnx.checker.check_model(path)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ids = np.random.default_rng(1).integers(0, vocab, size=(1, 4), dtype=np.int64)
    got = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    ref = ort.InferenceSession(reference, opts, providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    noise = float(np.mean((got - ref).astype(np.float64) ** 2))
    ref_power = float(np.mean(ref.astype(np.float64) ** 2))
    sqnr = "exact" if noise == 0 else f"SQNR {10 * np.log10(ref_power / noise):.1f} dB"
    return f"checker ok; onnxruntime logits {list(got.shape)}, max |diff| / max |ref| = {rel:.4f}, {sqnr}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=11)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--ffn", type=int, default=5632)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--schemes", default="plain,dyn8,w4", help="plain: the default pipeline, no quantization "
                   "(the output is over 2 GB, so its weights go to external data)")
    p.add_argument("--keep", action="store_true", help="keep out/bench/big/ afterwards")
    p.add_argument("--no-ort", action="store_true", help="skip the onnxruntime run of the outputs")
    args = p.parse_args(argv)
    free = shutil.disk_usage(os.path.dirname(OUT) if os.path.isdir(os.path.dirname(OUT)) else REPO).free
    os.makedirs(OUT, exist_ok=True)
    model = os.path.join(OUT, "decoder.onnx")
    t0 = time.perf_counter()
    weights = build(model, args.layers, args.width, args.ffn, args.vocab)
    print(f"model: {args.layers} layers, width {args.width}, ffn {args.ffn}, vocab {args.vocab}: "
          f"{weights / 2**30:.2f} GiB of float32 weights in {os.path.relpath(model + '.data', REPO)} "
          f"(written in {time.perf_counter() - t0:.1f} s; {free / 2**30:.0f} GiB were free)", flush=True)
    if weights * 2.2 > free:
        print("warning: the outputs may not fit on the disk", flush=True)
    rows = []
    try:
        for scheme in args.schemes.split(","):
            out = os.path.join(OUT, f"decoder-{scheme}.onnx")
            quant = None if scheme == "plain" else scheme
            cmd = [sys.executable, "-c", "import sys, qc; qc.compile(sys.argv[1], target='x86-avx2', "
                   f"quant={quant!r}).write(sys.argv[2])", model, out]
            wall, rss, _ = run_measured(cmd)
            check = "skipped" if args.no_ort else check_output(out, model, args.vocab)
            rows.append((scheme, wall, rss, disk_bytes(out), check))
            print(f"qc compile ({scheme}): {wall:.1f} s, peak RSS {rss / 2**30:.2f} GiB = "
                  f"{rss / weights:.2f}x the weights, output {disk_bytes(out) / 2**30:.2f} GiB; {check}", flush=True)
            for path in (out, out + ".data"):
                if os.path.exists(path):
                    os.unlink(path)
    finally:
        if not args.keep:
            shutil.rmtree(OUT, ignore_errors=True)
    print()
    print("| scheme | weights | wall | peak RSS | RSS / weights | output |")
    print("|---|---|---|---|---|---|")
    for scheme, wall, rss, size, _ in rows:
        print(f"| {scheme} | {weights / 2**30:.2f} GiB | {wall:.0f} s | {rss / 2**30:.2f} GiB | {rss / weights:.2f}x "
              f"| {size / 2**30:.2f} GiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
