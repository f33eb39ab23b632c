"""How qc's foundation scales with graph size: import, export, print and parse of synthetic
ONNX graphs of 1k, 10k and 100k nodes.

    python benchmarks/scale.py                       # sizes 1000,10000,100000
    python benchmarks/scale.py --sizes 1000,10000 --repeat 3

The graphs are transformer-MLP-like chains built with ``onnx.helper``: per block a
MatMul + Add (small f32 weights, 16x16) + Relu, a LayerNormalization written out as its
primitive ops (ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div, Mul, Add), and every fourth
block a side branch (Sigmoid gate) joined back with a residual Add. Every op has its own
consts, so consts grow with nodes, as in real models.

Phases (wall seconds, best of ``--repeat``):
  import  qc.import_onnx(path): read + decode the file, ONNX shape inference, build the IR
  export  qc.export_onnx(module) and SerializeToString: IR -> ONNX bytes
  print   qc.print_ir(module): text IR (tensors over 16 elements elided, as `qc show` prints)
  parse   qc.parse_ir(text): text IR -> IR (elided tensors become placeholders)

The last columns are the time ratio to the previous size; a ratio near the node-count ratio
(10 for 10x) means linear growth. Nothing here has an onnxruntime.quantization counterpart:
these are foundation costs only (see benchmarks/README.md).

``--compile`` adds a second table: ``qc compile --target x86-avx2`` run in this process (file
in, file out; no interpreter start-up) with the default pipeline and with ``--quant w8a8``
calibrated on 4 random samples, for the same graphs; and ``--layers 1,2,5,10,20,30`` does the
same for SmolLM2-135M cut to N transformer layers (``qc models build smollm2-135m --layers N``,
calibrated on 4 random 32-token windows). Compile times are CPU seconds of this process (all
threads), which other jobs on the machine do not inflate. The "us/node" columns are time per
node: flat when compile time grows linearly.

    python benchmarks/scale.py --compile --layers 1,2,5,10,20,30
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import qc

D = 16  # hidden width: 16x16 weights, small so that the graph structure dominates


def build_model(n_nodes: int, seed: int = 0) -> onnx.ModelProto:
    """A synthetic model with ``n_nodes`` nodes (exactly)."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    counter = [0]

    def const(shape, scale=0.1) -> str:
        name = f"c{len(inits)}"
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def node(op: str, inputs: list[str], **attrs) -> str:
        i = counter[0]
        counter[0] += 1
        out = f"t{i}"
        nodes.append(helper.make_node(op, inputs, [out], name=f"n{i}", **attrs))
        return out

    axes = "axes_last"  # one shared i64 const: the LayerNorm reduction axis
    inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), axes))

    def layer_norm(x: str) -> str:
        mean = node("ReduceMean", [x, axes], keepdims=1)
        centered = node("Sub", [x, mean])
        sq = node("Mul", [centered, centered])
        var = node("ReduceMean", [sq, axes], keepdims=1)
        var_eps = node("Add", [var, const([1], 0.0)])
        std = node("Sqrt", [var_eps])
        normed = node("Div", [centered, std])
        scaled = node("Mul", [normed, const([D])])
        return node("Add", [scaled, const([D])])

    x = "x"
    block = 0
    while True:
        # one block: 12 nodes, or 15 with the gated side branch (every fourth block)
        branch = block % 4 == 3
        size = 15 if branch else 12
        if counter[0] + size > n_nodes:
            break
        h = node("MatMul", [x, const([D, D])])
        h = node("Add", [h, const([D])])
        h = node("Relu", [h])
        if branch:
            gate = node("Sigmoid", [node("MatMul", [x, const([D, D])])])
            h = node("Mul", [h, gate])
        h = layer_norm(h)
        if branch:
            h = node("Add", [h, x])  # residual
        x = h
        block += 1
    while counter[0] < n_nodes:  # pad to the exact count
        x = node("Relu", [x])
    graph = helper.make_graph(
        nodes, f"scale{n_nodes}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", D])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", D])], inits)
    # opset 18: ReduceMean takes axes as an input from 18
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _best(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def measure(n_nodes: int, repeat: int, check: bool) -> dict:
    model = build_model(n_nodes)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(model, path)
        file_mb = os.path.getsize(path) / 1e6
        t_import, module = _best(lambda: qc.import_onnx(path), repeat)
    n_ops = sum(1 for _ in module.walk())
    assert n_ops == n_nodes, (n_ops, n_nodes)
    t_export, _ = _best(lambda: qc.export_onnx(module).SerializeToString(), repeat)
    t_print, text = _best(lambda: qc.print_ir(module), repeat)
    t_parse, parsed = _best(lambda: qc.parse_ir(text), repeat)
    if check:
        assert qc.print_ir(parsed) == text, "print(parse(print(m))) != print(m)"
    return {"nodes": n_nodes, "consts": len(module.graph.consts), "onnx_mb": file_mb,
            "text_mb": len(text) / 1e6, "import": t_import, "export": t_export, "print": t_print,
            "parse": t_parse, "total": t_import + t_export + t_print + t_parse}


PHASES = ("import", "export", "print", "parse", "total")


def table(rows: list[dict]) -> str:
    head = (f"| {'nodes':>7} | {'consts':>6} | {'onnx MB':>7} | {'text MB':>7} | "
            + " | ".join(f"{p + ' s':>8}" for p in PHASES) + " | " + " | ".join(f"{p} x" for p in PHASES) + " |")
    sep = "|" + "|".join("-" * len(c) for c in head.strip("|").split("|")) + "|"
    lines = [head, sep]
    prev = None
    for r in rows:
        cells = [f"{r['nodes']:>7}", f"{r['consts']:>6}", f"{r['onnx_mb']:>7.2f}", f"{r['text_mb']:>7.2f}"]
        cells += [f"{r[p]:>8.3f}" for p in PHASES]
        for p in PHASES:
            width = len(p) + 2
            if prev is None:
                cells.append("-".rjust(width))
            else:
                cells.append(f"{r[p] / prev[p]:>{width}.1f}")
        lines.append("| " + " | ".join(cells) + " |")
        prev = r
    return "\n".join(lines)


def compile_seconds(model: str, calib: str, quant: str | None = None) -> float:
    """CPU seconds (all threads of this process) of ``qc.compile(MODEL, target="x86-avx2"[, quant])``
    and writing its output, in this process: CPU time, unlike wall time, does not grow when other
    jobs share the machine."""
    import qc

    with tempfile.TemporaryDirectory() as tmp:
        gc.collect()
        start = time.process_time()
        result = qc.compile(model, target="x86-avx2", quant=quant, calibration=calib if quant else None)
        result.write(os.path.join(tmp, "out.onnx"))
        seconds = time.process_time() - start
    return seconds


def measure_compile(label: str, model: onnx.ModelProto | str, calib_inputs: dict[str, np.ndarray],
                    w8a8: bool = True) -> dict:
    """Default-pipeline and (unless ``w8a8`` is False) w8a8 compile times of ``model`` (a ModelProto or a path)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = model if isinstance(model, str) else os.path.join(tmp, "model.onnx")
        if not isinstance(model, str):
            onnx.save(model, path)
        nodes = len(onnx.load(path, load_external_data=False).graph.node)
        calib = os.path.join(tmp, "calib.npz")
        np.savez(calib, **calib_inputs)
        return {"label": label, "nodes": nodes, "default": compile_seconds(path, calib),
                "w8a8": compile_seconds(path, calib, "w8a8") if w8a8 else None}


def compile_table(rows: list[dict], what: str) -> str:
    lines = [f"| {what} | nodes | default CPU s | w8a8 CPU s | default us/node | w8a8 us/node |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        w8a8 = r["w8a8"]
        lines.append(f"| {r['label']} | {r['nodes']} | {r['default']:.2f} | "
                     + (f"{w8a8:.2f}" if w8a8 is not None else "-") + f" | {1e6 * r['default'] / r['nodes']:.0f} | "
                     + (f"{1e6 * w8a8 / r['nodes']:.0f}" if w8a8 is not None else "-") + " |")
    return "\n".join(lines)


def smollm2_rows(layers: list[int]) -> list[dict]:
    from qc.models import build

    rows = []
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 49152, size=(4, 1, 32), dtype=np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        for n in layers:
            path = os.path.join(tmp, f"smollm2-{n}.onnx")
            build("smollm2-135m", path, layers=n)
            inputs = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
            calib = {"input_ids": ids}
            if "attention_mask" in inputs:
                calib["attention_mask"] = np.ones_like(ids)
            rows.append(measure_compile(f"{n} layers", path, calib))
            r = rows[-1]
            print(f"  smollm2 {n} layers ({r['nodes']} nodes): default {r['default']:.2f}s, w8a8 {r['w8a8']:.2f}s "
                  "(CPU)", flush=True)
            os.unlink(path)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="comma-separated node counts (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per phase; the best is reported (default %(default)s)")
    ap.add_argument("--check", action="store_true", help="also assert print(parse(text)) == text")
    ap.add_argument("--compile", action="store_true", help="also time qc compile (default pipeline, w8a8)")
    ap.add_argument("--w8a8-max-nodes", type=int, default=100000, metavar="N",
                    help="time w8a8 only up to N nodes (default %(default)s)")
    ap.add_argument("--layers", default="", help="SmolLM2 layer counts to compile, e.g. 1,2,5,10,20,30")
    args = ap.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--sizes takes comma-separated integers, got '{args.sizes}'")
    if not sizes or min(sizes) < 20:
        ap.error("--sizes needs node counts of at least 20")
    print(f"qc {qc.__version__}, onnx {onnx.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs", flush=True)
    start = time.perf_counter()  # the LALR tables are built once per process: keep them out of the rows
    qc.parse_ir(qc.print_ir(qc.import_onnx(build_model(20))))
    print(f"warm-up (grammar tables, imports): {time.perf_counter() - start:.2f}s", flush=True)
    rows = []
    for n in sizes:
        rows.append(measure(n, args.repeat, args.check))
        r = rows[-1]
        print(f"  {n} nodes: " + ", ".join(f"{p} {r[p]:.3f}s" for p in PHASES), flush=True)
    print(table(rows))
    print(f"x = time / time of the previous size (linear growth: the size ratio). "
          f"Peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB.")
    if args.compile:
        calib = {"x": np.random.default_rng(0).standard_normal((4, 1, D)).astype(np.float32)}
        compile_rows = []
        for n in sizes:
            compile_rows.append(measure_compile(str(n), build_model(n), calib, w8a8=n <= args.w8a8_max_nodes))
            r = compile_rows[-1]
            print(f"  compile {n} nodes: default {r['default']:.2f}s, w8a8 {r['w8a8']}s (CPU)", flush=True)
        print(compile_table(compile_rows, "graph"))
    if args.layers:
        print(compile_table(smollm2_rows([int(n) for n in args.layers.split(",")]), "SmolLM2-135M"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
