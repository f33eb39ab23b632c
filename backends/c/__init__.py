"""The C backend: dependency-free C99 for Arm Cortex-A and Cortex-M (see docs/c-backend.md).

``prepare(module, shapes)`` runs the preparation pipeline (``c_prepare_pipeline``: static input
shapes, folded shape arithmetic); ``emit_c(module, out_dir, target, harness=...)`` then checks that
every input has a static shape, lowers every op (or quantized node unit) to a kernel call (one
error names every node it cannot lower), plans
the arena and writes model.h / model.c / model_weights.c, the runtime sources, a Makefile and a
CMake snippet. It returns the compile report (arena and weight bytes, kernels per node).
"""
from __future__ import annotations

import json
from pathlib import Path

from qc.errors import QCError
from qc.ir import Module, TensorType

from .prepare import c_prepare_pipeline, parse_shapes, prepare

__all__ = ["c_prepare_pipeline", "check_static_shapes", "check_threads", "emit_c", "format_report", "memory_plan",
           "parse_shapes",
           "prepare"]


def memory_plan(module: Module, target, *, variant: str | None = None, top: int = 3) -> dict:
    """What the C code of *module* (prepared) would need, without writing it: ``arena_bytes``
    (RAM), ``weight_bytes`` (flash) and the ``top`` largest arena buffers, each
    ``{"name", "bytes", "node", "kernel", "dtype", "shape"}`` (the value; the node, as
    ``name (OpType)``, and the kernel that write it first). The same lowering and plan as
    ``emit_c``, so the numbers are the ones it reports."""
    from .emit import layout_weights
    from .kernels import gemm_variant
    from .lower import Lowering, lower
    from .memplan import plan

    check_static_shapes(module)
    table = tuple(getattr(target, "kernels", {}).get("cpu", ()))
    lw = Lowering(module, tuple(getattr(target, "features", ()) or ()), variant or gemm_variant(target), table)
    low = lower(lw)
    arena = plan(low.calls, low.arena_buffers)
    names: dict[int, str] = {}
    for op in module.graph:
        for r in op.results:
            b = lw.bufs.get(id(r)) if r is not None else None
            if b is not None:
                names.setdefault(id(b.root), r.name)
    writer: dict[int, tuple[str, str]] = {}
    for c in low.calls:
        for b, written in c.buffers():
            if written:
                writer.setdefault(id(b.root), (c.node, c.kernel))
    roots = sorted((b for b in low.arena_buffers if b.base is None and b.nbytes > 0),
                   key=lambda b: (-b.nbytes, b.name))
    largest = []
    for b in roots[:top]:
        node, kernel = writer.get(id(b), ("?", "?"))
        largest.append({"name": names.get(id(b), b.name), "bytes": b.nbytes, "node": node, "kernel": kernel,
                        "dtype": str(b.dtype), "shape": list(b.shape)})
    plan_ = {"arena_bytes": arena, "weight_bytes": len(layout_weights(low.weights)), "largest": largest}
    if low.cache_slots:
        from .emit import cache_slot_offsets

        plan_["kv_cache_bytes"] = cache_slot_offsets(low)[-1] * 4
    return plan_


def emit_c(module: Module, out_dir: str | Path, target, *, harness: bool = False, prefix: str = "model",
           incbin: bool | None = None, variant: str | None = None, threads: int | None = None,
           prefill: Module | None = None) -> dict:
    """Compile *module* (prepared: every value has a static shape, see ``prepare``) to C in
    *out_dir*; return the report.

    *variant* overrides the kernel variant the target's kernel table chooses (kernels.gemm_variant),
    e.g. "portable" to run an Arm target's code on the host; *incbin* forces (True) or forbids
    (False) pulling the weights in with .incbin (default: above 8 MB). *threads* (``--threads``,
    not for Cortex-M: see ``check_threads``) adds the worker pool with that default thread count
    and splits the big calls (``split.plan``); None writes the single-threaded code. *prefill*:
    for the C decode runtime, the same decoder prepared for a chunk of tokens per step
    (``c_decode_pipeline(N, chunk)``), written as ``prefill_run`` beside ``model_run`` with the
    same weights and cache, then rewritten in place by ``last_rows.slice_last_row`` and written as
    ``prefill_last_run`` (the chunk's last row's logits only; docs/c-backend.md, "KV-cache decoders")."""
    from . import emit as E
    from .harness import harness_c
    from .lower import Lowering, lower
    from .memplan import plan

    features = tuple(getattr(target, "features", ()) or ())
    check_threads(target, threads)
    check_static_shapes(module)
    if threads is not None and any(op.op_type == "CachedAttention" for op in module.graph):
        raise QCError("--threads is not available for the C decode runtime yet", hint="drop --threads")
    from .kernels import gemm_variant

    table = tuple(getattr(target, "kernels", {}).get("cpu", ()))
    lw = Lowering(module, features, variant or gemm_variant(target), table)
    lw.threads = threads is not None
    low = lower(lw)
    arena = plan(low.calls, low.arena_buffers)
    if threads is not None:
        from .split import plan as split_plan

        split_plan(low.calls)
    out = Path(out_dir)
    info = E.emit(low, out, prefix, arena, incbin=incbin, threads=threads)
    files = list(info["files"])
    chunk, chunk_arena, last, last_arena = None, 0, None, 0
    if prefill is not None:
        from .last_rows import slice_last_row

        chunk, chunk_arena = _prefill_program(prefill, low, out, prefix, target, features, lw.variant, table)
        files += ["prefill.h", "prefill.c"]
        tail = slice_last_row(prefill, chunk.step_tokens)  # in place: prefill_run is written
        if tail:
            last, last_arena = _prefill_program(prefill, low, out, prefix, target, features, lw.variant, table,
                                                "prefill_last", tail)
            files += ["prefill_last.h", "prefill_last.c"]
    if harness:
        if low.cache_slots:
            from .decode import decode_harness_c, decode_roles

            text = decode_harness_c(low, prefix, decode_roles(module.metadata), chunk, last,
                                    firmware=bare_metal(target))
        else:
            text = harness_c(low, prefix, threads)
        E.write_text(out / "harness.c", text)
        files.append("harness.c")
    cc = getattr(target, "cc", None) or "cc"
    flags = list(getattr(target, "cflags", ()) or ("-O2",))
    macros = []
    if info["uses_kernels"]:
        from .packing import variant_macros

        macros = variant_macros(lw.variant)
    if threads is not None:
        macros = macros + [THREADS_MACRO]
    sources = E.source_files(files)
    ldflags, extra = _cortex_m_harness(target, out, bool(low.cache_slots)) if harness else ([], [])
    files += extra
    pthread = ["-pthread"] if threads is not None else []
    E.write_text(out / "Makefile", E.makefile(prefix, sources, cc, flags + macros + pthread, harness, ldflags,
                                              [f for f in extra if f.endswith(".c")]))
    E.write_text(out / f"{prefix}.cmake", E.cmake(prefix, sources, macros, threads is not None))
    files += ["Makefile", f"{prefix}.cmake", "report.json"]
    report = {"prefix": prefix, "target": getattr(target, "name", ""), "cc": cc,
              "qemu": list(getattr(target, "qemu", ()) or ()),
              "arena_bytes": arena, "weight_bytes": info["weight_bytes"],
            "incbin": info["incbin"], "variant": lw.variant, "macros": macros, "sources": sources, "files": files,
            "inputs": [(n, str(b.dtype), b.shape) for n, b in zip(low.input_names, low.inputs)],
            "outputs": [(n, str(b.dtype), b.shape) for n, b in zip(low.output_names, low.outputs)],
            "calls": [(c.node, c.kernel) for c in low.calls], "kernels": dict(sorted(low.kernels.items()))}
    if low.cache_slots:
        report["decode"] = {"max_context": low.max_context, "step_tokens": low.step_tokens,
                            "kv_cache_bytes": E.cache_slot_offsets(low)[-1] * 4,
                            "vocab": low.outputs[0].size // low.step_tokens,
                            "ram_bytes": max(arena, chunk_arena, last_arena) + E.cache_slot_offsets(low)[-1] * 4,
                            "prefill_chunk": chunk.step_tokens if chunk else 1, "prefill_arena_bytes": chunk_arena,
                            "prefill_last_row": last is not None, "prefill_last_arena_bytes": last_arena}
    if threads is not None:
        report["threads"] = threads
        report["split_calls"] = sum(c.split is not None for c in low.calls)
    E.write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    return {"out_dir": str(out), **report}


THREADS_MACRO = "-DQC_THREADS=1"


def _prefill_program(module: Module, step, out: Path, prefix: str, target, features, variant, table,
                     name: str = "prefill", tail: set[str] | None = None):
    """Lower *module* (the decoder prepared for a chunk of tokens) and write NAME.h / NAME.c
    (``NAME_run``), reading *step*'s weights (the same bytes at the step's offsets) and cache; the
    calls of *tail* (``last_rows.slice_last_row``'s ops) skipped when logits is NULL (``guard_tail``)."""
    from . import emit as E
    from .lower import Lowering, lower
    from .memplan import plan

    check_static_shapes(module)
    low = lower(Lowering(module, features, variant, table))
    if tail:
        from .last_rows import guard_tail

        guard_tail(low, tail)
    arena = plan(low.calls, low.arena_buffers)
    at = {w.data: w.offset for w in step.weights}  # the step's blob, laid out by E.emit
    missing = [w for w in low.weights if w.data not in at]
    if missing:
        raise QCError(f"the {name} program's constants differ from the decode step's (first: "
                      f"'{missing[0].name}'): they cannot share one weight blob", hint="compile with --prefill-chunk 1")
    if low.cache_slots != step.cache_slots or low.max_context != step.max_context:
        raise QCError(f"the {name} program's KV cache differs from the decode step's")
    for w in low.weights:  # the same bytes at the same offsets as in the step's blob
        w.offset = at[w.data]
    headers = ["qc_ops.h"] + (["qc_kernels.h"] if any(c.fn not in E.ops_functions() for c in low.calls if c.fn) else [])
    E.write_text(out / f"{name}.h", E.model_h(low, name, arena, 0))
    E.write_text(out / f"{name}.c", E.model_c(low, name, headers, weights=prefix))
    return low, arena


def check_threads(target, threads: int | None) -> None:
    """A QCError unless *threads* is None or a thread count >= 1 for a target with an OS (pthreads):
    Cortex-M targets (a bare-metal compiler or -mcpu=cortex-m*) stay single-threaded."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise QCError(f"--threads must be a whole number >= 1 (got {threads!r})")
    name = getattr(target, "name", "")
    if bare_metal(target):
        raise QCError(f"--threads is for Cortex-A targets: '{name}' is a Cortex-M target (bare metal, no "
                      "threads), whose C code is single-threaded", hint="drop --threads for this target")


def bare_metal(target) -> bool:
    """Whether *target* is a Cortex-M one (a bare-metal compiler or -mcpu=cortex-m*): no OS, no
    threads, no stdin."""
    from .toolchain import CORTEX_M_CPUS

    cc = getattr(target, "cc", None) or ""
    flags = tuple(getattr(target, "cflags", ()) or ())
    return (getattr(target, "name", "") in CORTEX_M_CPUS or "none-eabi" in cc
            or any(f.startswith("-mcpu=cortex-m") for f in flags))


def check_static_shapes(module: Module) -> None:
    """A QCError naming the first model input without a static shape (what ``--shape`` fixes).
    Op results without one are reported by the lowering, with every other node it cannot lower
    and the reason (data-dependent shape, control flow)."""
    g = module.graph
    for v in g.inputs:
        t = v.type
        if v.const is None and (not isinstance(t, TensorType) or not t.is_static):
            inputs = [i.name for i in g.inputs if i.const is None]
            raise QCError(f"'{v.name}' has no static shape ({t})", where=f"value '{v.name}'",
                          hint="give the model inputs static shapes with --shape NAME=AxB (inputs: "
                               + ", ".join(inputs) + "), which runs the C preparation pipeline "
                               "(qc.backends.c.prepare) that folds the shape arithmetic")


def format_report(report: dict) -> str:
    """The C part of qc compile's summary: memory, variant, kernels."""
    lines = [f"C: {report['out_dir']} (kernels: {report['variant']}"
             + (f", {' '.join(report['macros'])}" if report["macros"] else "") + ")",
             f"  arena (RAM): {report['arena_bytes']} bytes, weights (flash): {report['weight_bytes']} bytes"
             + (" (.incbin model_weights.bin)" if report["incbin"] else ""),
             *([f"  decode runtime: KV cache {report['decode']['kv_cache_bytes']} bytes for "
                f"{report['decode']['max_context']} tokens (--max-context), RAM = arena + cache = "
                f"{report['decode']['ram_bytes']} bytes; {report['decode']['step_tokens']} token per "
                f"{report['prefix']}_run"] if "decode" in report else []),
             f"  schedule: {len(report['calls'])} kernel calls; per node in {report['out_dir']}/report.json",
             *([f"  threads: {report['threads']} by default ({report['split_calls']} calls split across them; "
                "-t N or QC_THREADS=N at run time)"] if "threads" in report else []),
             "  kernels: " + ", ".join(f"{k} x{n}"
                                      for k, n in sorted(report["kernels"].items(), key=lambda kv: -kv[1]))]
    return "\n".join(lines) + "\n"


def _cortex_m_harness(target, out: Path, decode: bool = False) -> tuple[list[str], list[str]]:
    """For a Cortex-M target: the startup and linker script that boot the harness on its qemu
    machine with semihosting (copied next to it), and the link flags. Else nothing. *decode*: the
    C decode runtime's firmware, linked with the machine's device layout (weights in flash) where
    it has one (``MachineM.script``)."""
    import shutil

    from .toolchain import CORTEX_M, CORTEX_M_CPUS

    m = CORTEX_M_CPUS.get(getattr(target, "name", ""))
    if m is None:
        return [], []
    script = m.script(decode)
    for name in ("startup.c", script):
        shutil.copyfile(CORTEX_M / name, out / name)
    return (["--specs=nano.specs", "--specs=rdimon.specs", "-nostartfiles", "-Wl,--gc-sections",
             "-Wl,--no-warn-rwx-segments", "-T", script], ["startup.c", script])
