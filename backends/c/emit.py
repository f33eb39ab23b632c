"""The emitter: prints the lowered calls, the weight blob and the build files. No decisions here."""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np

from qc.fileio import atomic_write

from . import emit_threads
from .emit_threads import TaskWriter
from .lowering import ALIGN, Buffer, Call, Ints, Lowered, Ptr, Raw
from .toolchain import FP_FLAGS

RUNTIME = Path(__file__).parent / "runtime"
OPS_SOURCES = ("qc_ops.c", "qc_ops_nn.c", "qc_ops_resize.c", "qc_rnn.c", "qc_sgemm.c", "qc_attention.c",
               "qc_ops_fused.c")
INCBIN_THRESHOLD = 8 << 20  # weight blobs above this go through .incbin (see docs/c-backend.md)


def ops_functions() -> set[str]:
    """The functions qc_ops.h declares (everything else comes from qc_kernels.h)."""
    return set(re.findall(r"^\w[\w ]*?\b(qc_\w+)\(", (RUNTIME / "qc_ops.h").read_text(), re.M))


def layout_weights(weights: list[Buffer]) -> bytes:
    """Place every weight in one blob (16-byte aligned, identical tensors stored once)."""
    seen: dict[bytes, int] = {}
    parts: list[bytes] = []
    size = 0
    for w in weights:
        data = w.data or b""
        if data in seen:
            w.offset = seen[data]
            continue
        pad = (-size) % ALIGN
        if pad:
            parts.append(b"\0" * pad)
            size += pad
        w.offset = size
        seen[data] = size
        parts.append(data)
        size += len(data)
    pad = (-size) % ALIGN
    parts.append(b"\0" * pad)
    return b"".join(parts)


def c_float(v: float) -> str:
    f = float(np.float32(v))
    if math.isnan(f):
        return "NAN"
    if math.isinf(f):
        return "HUGE_VALF" if f > 0 else "(-HUGE_VALF)"
    return repr(f) + "f"


class IntTables:
    """Int array arguments as file-scope `static const` tables (flash, not stack), each distinct
    array once, named in order of first use."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.names: dict[tuple, str] = {}

    def ref(self, a: Ints) -> str:
        key = (a.ctype, tuple(int(v) for v in a.values))
        if key not in self.names:
            self.names[key] = f"{self.prefix}_k{len(self.names)}"
        return self.names[key]

    def define(self, ctype: str, values: tuple[int, ...], name: str) -> None:
        """Declare the table *name* of *values* (for code that refers to it by name)."""
        self.names[(ctype, tuple(int(v) for v in values))] = name

    def declarations(self) -> str:
        return "".join(f"static const {ct} {name}[{len(vals)}] = {{{', '.join(map(str, vals))}}};\n"
                       for (ct, vals), name in self.names.items())


def render_arg(a, tables: IntTables) -> str:
    if isinstance(a, bool):
        return str(int(a))
    if isinstance(a, (int, np.integer)):
        return str(int(a))
    if isinstance(a, (float, np.floating)):
        return c_float(float(a))
    if isinstance(a, Raw):
        return a.text
    if isinstance(a, Ints):
        return tables.ref(a)
    if isinstance(a, Ptr):
        root = a.buf.root
        ct = a.ctype or a.buf.ctype
        q = "const " if a.const else ""
        if root.kind == "arena":
            base = f"({q}{ct} *)(qc_a + {root.offset})"
        elif root.kind == "weight":
            base = f"(const {ct} *)(qc_w + {root.offset})"
        else:
            base = f"({q}{ct} *){root.name}"
        return f"({base} + {a.elems})" if a.elems else base
    raise TypeError(f"cannot render {a!r}")


def render_call(c: Call, tables: IntTables, depth: int = 0, tasks: TaskWriter | None = None) -> str:
    node = c.node.replace("*/", "* /")
    pad = "    " * (1 + depth)
    if c.split is not None and tasks is not None:  # --threads: on the pool (emit_threads)
        return f"{pad}/* {node}: {c.kernel} (split) */\n{pad}{tasks.dispatch(c)}\n"
    args = [render_arg(a, tables) for a in c.args]
    code = c.text.format(*args) if c.text else f"{c.fn}({', '.join(args)});"
    return f"{pad}/* {node}: {c.kernel} */\n{pad}{code}\n"


def render_calls(calls: list[Call], tables: IntTables, tasks: TaskWriter | None = None) -> str:
    """The schedule's statements, indented by the C blocks (If branches, Loop bodies) around them;
    before each kernel call QC_PROF(index into report.json's "calls"), see PROFILE_HOOK."""
    out, depth = [], 0
    for i, c in enumerate(calls):
        if c.block < 0:
            depth += c.block
        if c.fn:  # a kernel call (control-flow statements have no fn)
            out.append(f"{'    ' * (1 + depth)}QC_PROF({i});\n")
        out.append(render_call(c, tables, depth, tasks))
        if c.block > 0:
            depth += c.block
    return "".join(out)


def signature(low: Lowered, prefix: str) -> str:
    params = [f"const {b.ctype} *{b.name}" for b in low.inputs]
    params += [f"{b.ctype} *{b.name}" for b in low.outputs]
    params.append("void *arena")
    if low.cache_slots:  # the decode runtime: the KV cache and how many tokens it holds
        params += ["float *kv_cache", "int past_len"]
    return f"int {prefix}_run({', '.join(params)})"


def cache_slot_offsets(low: Lowered) -> list[int]:
    """Float offsets of the KV-cache slots in ``kv_cache`` (each 16-byte aligned)."""
    offsets, at = [], 0
    for n in low.cache_slots:
        offsets.append(at)
        at += (n + 3) & ~3
    return offsets + [at]


def model_h(low: Lowered, prefix: str, arena: int, weight_bytes: int, threads: int | None = None) -> str:
    P = prefix.upper()
    lines = [f"/* Generated by qc (C backend). {prefix}_run() computes the model: no malloc, no I/O. */",
             f"#ifndef {P}_H", f"#define {P}_H", "", "#include <stdint.h>", "",
             f"#define {P}_ARENA_BYTES {arena}u  /* scratch RAM the caller passes as `arena` (16-byte aligned) */",
             f"#define {P}_WEIGHT_BYTES {weight_bytes}u  /* constant data (flash) */",
             f"#define {P}_NUM_INPUTS {len(low.inputs)}", f"#define {P}_NUM_OUTPUTS {len(low.outputs)}"]
    for kind, bufs in (("INPUT", low.inputs), ("OUTPUT", low.outputs)):
        for i, b in enumerate(bufs):
            lines.append(f"#define {P}_{kind}{i}_ELEMS {b.size}u  /* {b.name}: {b.ctype}"
                         f"[{', '.join(map(str, b.shape))}] */")
            lines.append(f"#define {P}_{kind}{i}_BYTES {b.nbytes}u")
    if low.cache_slots:
        offsets = cache_slot_offsets(low)
        lines += [f"#define {P}_KV_CACHE_BYTES {offsets[-1] * 4}u  /* the KV cache the caller passes as `kv_cache` "
                  "(16-byte aligned; its contents are the step's state) */",
                  f"#define {P}_KV_CACHE_SLOTS {len(low.cache_slots)}",
                  f"#define {P}_MAX_CONTEXT {low.max_context}u  /* past_len + new tokens never exceed this */",
                  f"#define {P}_STEP_TOKENS {low.step_tokens}u  /* tokens per {prefix}_run */"]
        lines += ["", f"/* Returns 0. Inputs and outputs are row-major arrays of the sizes above. The decode "
                  f"runtime: past_len tokens are in kv_cache; the call appends {P}_STEP_TOKENS more "
                  f"(past_len + {P}_STEP_TOKENS <= {P}_MAX_CONTEXT, else it returns 1 and computes nothing). */",
                  signature(low, prefix) + ";", ""]
    else:
        lines += ["", "/* Returns 0. Inputs and outputs are row-major arrays of the sizes above. */",
                  signature(low, prefix) + ";", ""]
    if threads is not None:
        lines += emit_threads.api_h(prefix, threads) + [""]
    lines += ["#endif", ""]
    return "\n".join(lines)


# -DQC_PROFILE (aarch64): QC_PROF(i) is benchmarks/arm/insn_count.c's marker syscall labelled i, a
# failing write(-1, 0, 0) with x3 = "qcMARK" (benchmarks/arm_speed.py --profile); otherwise nothing.
PROFILE_HOOK = """#if defined(QC_PROFILE) && defined(__aarch64__)
static void qc_prof(unsigned long label)
{
    register long x0 __asm__("x0") = -1;
    register long x1 __asm__("x1") = 0;
    register long x2 __asm__("x2") = 0;
    register unsigned long x3 __asm__("x3") = 0x71634d41524bul;
    register unsigned long x4 __asm__("x4") = label;
    register long x8 __asm__("x8") = 64;
    __asm__ volatile("svc #0" : "+r"(x0) : "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x8) : "memory");
}
#define QC_PROF(i) qc_prof(i)
#else
#define QC_PROF(i) ((void)0)
#endif
"""


def model_c(low: Lowered, prefix: str, headers: list[str], threads: int | None = None,
            weights: str | None = None) -> str:
    out = [f"/* Generated by qc (C backend): the straight-line schedule of {prefix}. */",
           f'#include "{prefix}.h"' if prefix != "model" else '#include "model.h"']
    if weights:
        out.append(f"/* its constants are {weights}'s: the same weights in the same layout */")
    out += [f'#include "{h}"' for h in headers]
    tables = IntTables(prefix)
    tasks = TaskWriter(prefix, lambda a: render_arg(a, tables)) if threads is not None else None
    body = render_calls(low.calls, tables, tasks)
    if low.cache_slots:
        offs = cache_slot_offsets(low)[:-1]
        tables.define("long", tuple(offs), f"{prefix}_cache_offsets")
    out += ["#include <math.h>", "#include <stddef.h>", "", PROFILE_HOOK,
            f"extern const uint64_t {weights or prefix}_weights[];", "",
            "/* shapes, strides and offsets of the calls below */",
            tables.declarations()]
    if low.cache_slots:
        out += [f"#define qc_cache_slot(cache, i) ((cache) + {prefix}_cache_offsets[i])", ""]
    if tasks is not None:
        out += [emit_threads.api_c(prefix)] + ([emit_threads.ctx_struct(low, prefix)] + tasks.functions
                                               if tasks.functions else [])
    out += [signature(low, prefix), "{",
            "    unsigned char *qc_a = (unsigned char *)arena;",
            f"    const unsigned char *qc_w = (const unsigned char *){weights or prefix}_weights;",
            "    (void)qc_a;", "    (void)qc_w;"]
    out += [f"    (void){b.name};" for b in low.inputs + low.outputs]
    if low.cache_slots:
        P = prefix.upper()
        out += [f"    if (past_len < 0 || past_len + {P}_STEP_TOKENS > {P}_MAX_CONTEXT) return 1;"]
    if tasks is not None and tasks.functions:
        out += emit_threads.ctx_init(low, prefix)
    return "\n".join(out) + "\n" + body + f"    QC_PROF({len(low.calls)});\n    return 0;\n}}\n"


def weights_c(blob: bytes, prefix: str, incbin: bool) -> str:
    head = f"/* Generated by qc (C backend): {len(blob)} bytes of constant data for {prefix}. */\n" \
           "#include <stdint.h>\n\n"
    if incbin:
        return head + (f"/* The bytes are in {prefix}_weights.bin, pulled in by the assembler: compile this file\n"
                       " * in the directory that holds it (or pass -Wa,-I<dir>). */\n"
                       "__asm__(\".section .rodata\\n\"\n"
                       "        \".balign 16\\n\"\n"
                       f"        \".global {prefix}_weights\\n\"\n"
                       f"        \"{prefix}_weights:\\n\"\n"
                       f"        \".incbin \\\"{prefix}_weights.bin\\\"\\n\"\n"
                       "        \".text\\n\");\n")
    words = np.frombuffer(blob, dtype="<u8") if blob else np.zeros(1, "<u8")
    text = ",\n".join(",".join(f"0x{w:x}u" for w in words[i:i + 8].tolist()) for i in range(0, len(words), 8))
    return head + f"const uint64_t {prefix}_weights[{len(words)}] = {{\n{text}\n}};\n"


def write_text(path: Path, text: str) -> None:
    with atomic_write(str(path), "w") as f:
        f.write(text)


def runtime_files(uses_kernels: bool, threads: bool = False) -> list[Path]:
    files = [RUNTIME / "qc_ops.h", RUNTIME / "qc_vmath.h"] + [RUNTIME / s for s in OPS_SOURCES]
    if uses_kernels:
        files += sorted(p for p in RUNTIME.glob("*.[ch]") if p.name.startswith("qc_") and p not in files
                        and p.name not in emit_threads.SOURCES)
    if threads:
        files += [RUNTIME / s for s in emit_threads.SOURCES]
    return files


def emit(low: Lowered, out_dir: Path, prefix: str, arena: int, *, incbin: bool | None = None,
         threads: int | None = None) -> dict:
    """Write the model's files into out_dir; returns {'files': [...], 'weight_bytes': n, 'incbin': bool}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    blob = layout_weights(low.weights)
    if incbin is None:
        incbin = len(blob) > INCBIN_THRESHOLD
    uses_kernels = any(c.fn not in ops_functions() for c in low.calls if c.fn)
    headers = ["qc_ops.h"] + (["qc_kernels.h"] if uses_kernels else [])
    headers += [emit_threads.HEADER] if threads is not None else []
    files = {f"{prefix}.h": model_h(low, prefix, arena, len(blob), threads),
             f"{prefix}.c": model_c(low, prefix, headers, threads),
             f"{prefix}_weights.c": weights_c(blob, prefix, incbin)}
    for name, text in files.items():
        write_text(out_dir / name, text)
    written = list(files)
    if incbin:
        with atomic_write(str(out_dir / f"{prefix}_weights.bin"), "wb") as f:
            f.write(blob)
        written.append(f"{prefix}_weights.bin")
    for src in runtime_files(uses_kernels, threads is not None):
        dst = out_dir / src.name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)
        written.append(src.name)
    return {"files": written, "weight_bytes": len(blob), "incbin": incbin, "uses_kernels": uses_kernels}


def makefile(prefix: str, sources: list[str], cc: str, flags: list[str], harness: bool,
             ldflags: list[str] = (), harness_extra: list[str] = ()) -> str:
    objs = " ".join(s[:-2] + ".o" for s in sources)
    lines = ["# Generated by qc (C backend). `make` builds lib" + prefix + ".a"
             + (" and the harness" if harness else "") + "; make CC=... CFLAGS=... for another toolchain.",
             f"CC = {cc}", f"CFLAGS = {' '.join(flags)}", f"LDFLAGS = {' '.join(ldflags)}",
             "QC_WARN = -std=c99 -Wall -Wextra -Werror " + " ".join(FP_FLAGS), "",
             f"all: lib{prefix}.a" + (" harness" if harness else ""), "",
             f"lib{prefix}.a: {objs}", "\t$(AR) rcs $@ $^", "",
             "%.o: %.c", "\t$(CC) $(QC_WARN) $(CFLAGS) -I. -c $< -o $@", ""]
    if harness:
        extra = " ".join(e[:-2] + ".o" for e in harness_extra)
        lines += [f"harness: harness.o {extra + ' ' if extra else ''}lib{prefix}.a",
                  "\t$(CC) $(CFLAGS) $^ $(LDFLAGS) -lm -o $@", ""]
    lines += ["clean:", f"\trm -f *.o lib{prefix}.a harness", "", ".PHONY: all clean", ""]
    return "\n".join(lines)


def cmake(prefix: str, sources: list[str], flags: list[str], threads: bool = False) -> str:
    defs = [f for f in flags if f.startswith("-D")]
    return "\n".join([
        "# Generated by qc (C backend): include() this from your CMakeLists.txt.",
        *(["find_package(Threads REQUIRED)"] if threads else []),
        f"add_library({prefix} STATIC " + " ".join("${CMAKE_CURRENT_LIST_DIR}/" + s for s in sources) + ")",
        f"target_include_directories({prefix} PUBLIC ${{CMAKE_CURRENT_LIST_DIR}})",
        f"set_property(TARGET {prefix} PROPERTY C_STANDARD 99)",
        f"target_compile_options({prefix} PRIVATE {' '.join(FP_FLAGS)})",
        (f"target_compile_definitions({prefix} PRIVATE {' '.join(d[2:] for d in defs)})" if defs else ""),
        f"target_link_libraries({prefix} PUBLIC m{' Threads::Threads' if threads else ''})", ""])


def source_files(files: list[str]) -> list[str]:
    return [f for f in files if f.endswith(".c") and f != "harness.c"]

