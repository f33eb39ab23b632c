"""The ONNX backend node test cases for the ops the C backend claims, batched into one binary.

Each case is compiled with its own symbol prefix (case0_run, ...) into one directory; a
generated driver reads every case's inputs from files, runs it and writes its outputs, so one
compiler invocation and one process cover all cases.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from qc.errors import QCError


def claimed_ops() -> set[str]:
    from qc.backends.c.lower import HANDLERS  # importing lower registers every lowering module

    return set(HANDLERS) | {"QuantizeLinear", "DequantizeLinear"}


def node_cases(ops: set[str]):
    """(name, ModelProto, [inputs], [expected outputs], rtol, atol) for every case of
    onnx.backend.test.case.node.collect_testcases() whose nodes are all in *ops* (first data set)."""
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    out = []
    for c in cases:
        m = c.model
        if not m.graph.node or not c.data_sets:
            continue
        if any(n.op_type not in ops or n.domain not in ("", "ai.onnx") for n in m.graph.node):
            continue
        ins, outs = c.data_sets[0]
        try:
            arrays = [_array(a) for a in ins], [_array(a) for a in outs]
        except ValueError:  # sequences (If / Loop cases that return lists): not tensors
            continue
        out.append((c.name, m, *arrays, c.rtol, c.atol))
    return sorted(out, key=lambda t: t[0])


def _array(a) -> np.ndarray:
    from onnx import TensorProto, numpy_helper

    return numpy_helper.to_array(a) if isinstance(a, TensorProto) else np.asarray(a)


# Inputs the C backend needs as constants (they decide shapes); the node tests feed them as
# data, so bind_constants turns them into initializers with the test's values.
CONST_INPUTS = {"Reshape": {1}, "Slice": {1, 2, 3, 4}, "Split": {1}, "Squeeze": {1}, "Unsqueeze": {1},
                "Tile": {1}, "Pad": {1, 2, 3}, "Expand": {1}, "Clip": {1, 2}, "ConstantOfShape": {0},
                "ReduceSum": {1}, "ReduceMean": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceProd": {1},
                "ReduceL1": {1}, "ReduceL2": {1}, "ReduceSumSquare": {1}, "ReduceLogSum": {1},
                "ReduceLogSumExp": {1}, "QuantizeLinear": {1, 2}, "DequantizeLinear": {1, 2},
                "BatchNormalization": {1, 2, 3, 4}, "Dropout": {1, 2}, "Resize": {1, 2, 3}, "Upsample": {1},
                "LSTM": {4}, "GRU": {4}, "Loop": {0, 1}}


def bind_constants(model, ins):
    """A copy of *model* whose shape-deciding inputs are initializers; returns (model, remaining inputs)."""
    from onnx import numpy_helper

    m = type(model)()
    m.CopyFrom(model)
    names = [i.name for i in m.graph.input]
    bind = set()
    for n in m.graph.node:
        for pos in CONST_INPUTS.get(n.op_type, ()):
            if pos < len(n.input) and n.input[pos] in names:
                bind.add(n.input[pos])
    keep = []
    for vi, arr in zip(list(m.graph.input), ins):
        if vi.name in bind and np.asarray(arr).dtype != object:
            m.graph.initializer.append(numpy_helper.from_array(np.asarray(arr), vi.name))
            m.graph.input.remove(vi)
        else:
            keep.append(arr)
    return m, keep


def emit_cases(cases, out_dir: Path, target):
    """Emit every case; returns (emitted [(index, name, report, inputs, outputs)], failed {name: [message]})
    (one message per node the C backend cannot lower)."""
    from qc.backends.c import emit_c, prepare
    from qc.frontend.onnx import import_onnx

    emitted, failed = [], {}
    for i, (name, model, ins, outs, _, _) in enumerate(cases):
        try:
            model, ins = bind_constants(model, ins)
            module = import_onnx(model)
            shapes = {v.name: a.shape for v, a in zip([v for v in module.graph.inputs if v.const is None], ins)}
            prepare(module, shapes)
            report = emit_c(module, out_dir, target, prefix=f"case{i}")
        except QCError as e:
            failed[name] = [str(p) for p in getattr(e, "problems", [e])]
            continue
        emitted.append((i, name, report, ins, outs))  # ins: the inputs left after bind_constants
    return emitted, failed


def driver_c(emitted) -> str:
    """main(dir): for each case read DIR/caseI_inJ.bin, run, write DIR/caseI_outJ.bin.

    The driver #includes every case's model and weights source, so it is compiled with the
    runtime sources only."""
    lines = ["#include <stdint.h>", "#include <stdio.h>", "#include <string.h>"]
    # one translation unit: a thousand small files compile several times faster this way
    lines += [f'#include "case{i}{part}.c"' for i, *_ in emitted for part in ("", "_weights")]
    arena_words = max([r["arena_bytes"] for _, _, r, _, _ in emitted] + [8]) // 8 + 2
    io_bytes = sum(_io_bytes(r) for _, _, r, _, _ in emitted) + 64
    lines += [f"static uint64_t arena[{arena_words}];",
              f"static unsigned char io[{io_bytes}];",
              "static char path[4096];",
              "static int rd(const char *dir, const char *name, void *p, size_t n) {",
              "    FILE *f; size_t got; sprintf(path, \"%s/%s\", dir, name); f = fopen(path, \"rb\");",
              "    if (!f) return 0;", "    got = fread(p, 1, n, f); fclose(f); return got == n; }",
              "static int wr(const char *dir, const char *name, const void *p, size_t n) {",
              "    FILE *f; size_t put; sprintf(path, \"%s/%s\", dir, name); f = fopen(path, \"wb\");",
              "    if (!f) return 0;", "    put = fwrite(p, 1, n, f); return fclose(f) == 0 && put == n; }",
              "int main(int argc, char **argv) {", "    unsigned char *p = io;", "    const char *d;",
              "    if (argc != 2) return 2;", "    d = argv[1];"]
    for i, _, r, _, _ in emitted:
        P = f"CASE{i}"
        ptrs = []
        for j, _ in enumerate(r["inputs"]):
            lines.append(f"    if (!rd(d, \"case{i}_in{j}.bin\", p, {P}_INPUT{j}_BYTES)) return 3;")
            ptrs.append("(const void *)p")
            lines.append(f"    {{ const void *in{j} = p; p += ({P}_INPUT{j}_BYTES + 15u) / 16u * 16u;")
        outs = []
        for j, _ in enumerate(r["outputs"]):
            lines.append(f"    {{ void *out{j} = p; p += ({P}_OUTPUT{j}_BYTES + 15u) / 16u * 16u;")
            outs.append(f"out{j}")
        args = [f"in{j}" for j in range(len(r["inputs"]))] + outs + ["arena"]
        lines.append(f"    case{i}_run({', '.join(args)});")
        for j, _ in enumerate(r["outputs"]):
            lines.append(f"    if (!wr(d, \"case{i}_out{j}.bin\", out{j}, {P}_OUTPUT{j}_BYTES)) return 4;")
        lines.append("    " + "}" * (len(r["inputs"]) + len(r["outputs"])))
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


def _io_bytes(r) -> int:
    n = 0
    for _, dt, shape in r["inputs"] + r["outputs"]:
        from qc.ir import DType

        n += (int(np.prod(shape)) * np.dtype(DType.parse(dt).numpy).itemsize + 15) // 16 * 16
    return n


def build_and_run(emitted, tmp_path: Path, kind: str, cpu: str | None, extra_flags=("-O1",)) -> None:
    """Build the cases' one driver binary (``driver_c``) with the runtime files they use, write
    their inputs and run it (for ``kind``/``cpu``, under qemu where it is Arm): each case's
    outputs land in ``case{i}_out{j}.bin`` in ``tmp_path``."""
    from qc.backends.c import toolchain

    (tmp_path / "driver.c").write_text(driver_c(emitted))
    runtime = sorted({s for _, _, r, _, _ in emitted for s in r["sources"] if s.startswith("qc_")})
    exe = toolchain.build([tmp_path / "driver.c", *[tmp_path / s for s in runtime]], tmp_path / "driver", kind,
                          cpu, extra_flags=list(extra_flags), include_dirs=[tmp_path])
    for i, _, _, ins, _ in emitted:
        for j, a in enumerate(ins):
            (tmp_path / f"case{i}_in{j}.bin").write_bytes(np.ascontiguousarray(a).tobytes())
    proc = toolchain.run(exe, kind, cpu, [str(tmp_path)], timeout=120)
    assert proc.returncode == 0, proc.stderr
