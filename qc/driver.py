"""The one compile path: load a model, run one pipeline for a target, write what the target runs.

``qc.compile`` is the library form of ``qc compile``; the CLI only turns flags into these
arguments and prints the result::

    result = qc.compile("model.onnx", target="cortex-a76", quant="w8a8", calibration="calib.npz")
    result.write("out/")                # C sources (the target's backend), or "model.onnx" for ONNX
    print(result.pipeline)              # every pass that ran, legalize and check-kernels included

Everything the compile does to the IR is a pass of that one pipeline, so every instrument
(``--timing``, ``--print-ir-after-all``, ``--dump-ir-dir``) sees all of it: the optimization or
quantization passes, then ``legalize`` and ``check-kernels`` for the target, then for C output
``fix-shapes`` and the shape-folding ``fixpoint(...)`` group.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from onnx import ModelProto

from qc.calib.data import CalibrationData, from_npz
from qc.errors import QCError
from qc.ir.core import Module
from qc.pm import Executor, Instrument, Pass, PassContext, PassManager, named_pipelines, pass_names, split_top
from qc.quant import schemes
from qc.quant.schemes import QuantOptions
from qc.targets import Target, load_target

ModelSource = str | os.PathLike | ModelProto | Module
CalibrationSource = CalibrationData | str | os.PathLike | Callable[[Module], "CalibrationData | None"] | None
Emit = Literal["onnx", "c", "tflite"]


# -- models in and out -------------------------------------------------------------------------
def load_model(source: ModelSource, *, upgrade_opset: int | None = None, infer_shapes: bool = True) -> Module:
    """An .onnx or .qir file, a ModelProto or a Module (used as it is) -> Module."""
    if isinstance(source, Module):
        return source
    if isinstance(source, ModelProto):
        from qc.onnx.reader import import_model

        return import_model(source, upgrade_opset=upgrade_opset, infer_shapes=infer_shapes)
    path = os.fspath(source)
    if path.endswith(".qir"):
        from qc.ir.parser import parse_ir

        if not os.path.isfile(path):
            raise QCError("no such file", where=path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            raise QCError("not a text IR file (it is not UTF-8 text)", where=path) from None
        return parse_ir(text, filename=path)
    from qc.frontend.onnx import import_onnx

    return import_onnx(path, upgrade_opset=upgrade_opset, infer_shapes=infer_shapes)


def save_module(module: Module, path: str, *, elide_above: int | None = 16, external: bool | None = None,
                inputs: Sequence[str] = (), target: Target | None = None) -> None:
    """Write by extension, atomically: ``.onnx`` (external data over 2 GB, or as ``external`` says)
    or ``.qir`` (text IR, tensors over ``elide_above`` elements in a ``.weights`` sidecar, so the
    file reloads completely). Refuses to overwrite any of ``inputs``. ``target``: the ONNX declares
    versions its runtime loads, or the write fails (``qc.backends.onnx.versions``)."""
    refuse_overwrite(path, inputs)
    if path.endswith(".qir"):
        write_qir(module, path, elide_above)
    elif path.endswith(".onnx"):
        from qc.backends.onnx import save_onnx

        save_onnx(module, path, external=external, target=target)
    else:
        raise QCError("unknown output kind", where=path, hint="use a .onnx or .qir file name")


def write_qir(module: Module, path: str, elide_above: int | None) -> None:
    """Text IR with a weights sidecar (``PATH.weights``) for the tensors it does not print."""
    from qc.ir.fileio import atomic_write
    from qc.ir.printer import print_ir
    from qc.ir.weights import SidecarWriter

    sidecar = SidecarWriter(os.path.basename(path) + ".weights")
    text = print_ir(module, elide_above=elide_above, sidecar=sidecar)
    if sidecar.chunks:
        sidecar.write(path + ".weights")
    else:
        text = text.replace(f'weights "{sidecar.reference}"\n', "", 1)
    with atomic_write(path, "w") as f:
        f.write(text)


def refuse_overwrite(out: str, inputs: Sequence[str]) -> None:
    out_real = os.path.realpath(out)
    for i in inputs:
        if os.path.realpath(i) == out_real:
            raise QCError("the output would overwrite the input", where=out, hint="choose another -o path")


def output_kind(path: str, target: Target, emit: Emit | None = None) -> Emit:
    """What ``path`` will hold: ONNX for ``.onnx`` (and ``.qir``), C for a directory or a name
    without a suffix. An explicit ``emit`` that contradicts the path is an error, never a surprise."""
    by_path: Emit | None
    if path.endswith((".onnx", ".qir")):
        by_path = "onnx"
    elif path.endswith(".tflite"):
        by_path = "tflite"
    elif os.path.isdir(path) or path.endswith("/") or not os.path.splitext(os.path.basename(path))[1]:
        by_path = "c"
    elif emit == "c":
        by_path = "c"  # a directory name with a dot in it, and the user said C
    else:
        raise QCError("cannot tell the output kind from the file name", where=path,
                      hint="use NAME.onnx for ONNX, or a directory (no suffix) for C sources")
    if emit is not None and by_path is not None and emit != by_path:
        wants = {"onnx": "a .onnx file", "c": "a directory", "tflite": "a .tflite file"}[emit]
        kind = {"c": "C", "onnx": "ONNX", "tflite": "TFLite"}[by_path]
        example = {"onnx": "model.onnx", "c": "out_dir", "tflite": "model.tflite"}[emit]
        raise QCError(f"--emit {emit} writes {wants}, and this path is for {kind}",
                      where=path, hint=f"use -o {example} or --emit {by_path}")
    if emit is None and by_path == "c" and target.backend != "c":
        suffix = "tflite" if target.backend == "tflite" else "onnx"
        raise QCError(f"target {target.name} emits {'TFLite' if suffix == 'tflite' else 'ONNX'} (its backend), "
                      f"so the output must be a .{suffix} file",
                      where=path, hint=f"use -o NAME.{suffix}, or a C target such as cortex-a76")
    return emit or by_path


def check_output_path(path: str, kind: Emit) -> None:
    """Fail at once, before any work, when the output cannot be written there."""
    if os.path.realpath(path) == os.path.realpath(os.devnull) or (os.path.exists(path) and not os.path.isdir(path)
                                                                   and not os.path.isfile(path)):
        raise QCError("not a regular file or directory to write", where=path, hint="give -o a file or directory path")
    if kind == "c" and os.path.isfile(path):
        raise QCError("C output is a directory, and this is a file", where=path, hint="give -o a directory")
    if kind in ("onnx", "tflite") and os.path.isdir(path):
        raise QCError(f"is a directory, expected a .{kind} file name", where=path)
    parent = path.rstrip("/") if kind == "c" else os.path.dirname(os.path.abspath(path))
    parent = os.path.dirname(os.path.abspath(parent)) if kind == "c" and not os.path.isdir(parent) else parent
    if not os.path.isdir(parent):
        raise QCError(f"the directory {parent} does not exist", where=path, hint="create it, or choose another -o path")
    if not os.access(parent, os.W_OK):
        raise QCError(f"the directory {parent} is not writable", where=path, hint="choose another -o path")


def stored_tensors(module: Module) -> list:
    """Every tensor the model stores: the consts of every graph (subgraphs included) and the
    ``value`` of each Constant op (exporters such as torch.onnx store weights that way)."""
    out = []
    for op in module.walk():
        a = op.attrs.get("value") if op.op_type == "Constant" and op.domain in ("", "ai.onnx") else None
        if a is not None and a.kind == "tensor" and a.ref is None:
            out.append(a.value)
    stack = [module.graph] + [f.body for f in module.functions]
    while stack:
        g = stack.pop()
        out.extend(v.const for v in g.consts.values())
        for op in g:
            stack.extend(op.subgraphs())
    return out


def summarize(module: Module) -> str:
    """Op counts by type, constants and their bytes: a few lines for a terminal."""
    counts = collections.Counter(op.qualified_type for op in module.walk())
    consts = stored_tensors(module)
    nbytes = sum(getattr(t, "nbytes", 0) for t in consts)
    inputs = len([v for v in module.graph.inputs if v.const is None])
    lines = [f"ops: {sum(counts.values())} ({len(counts)} kinds), consts: {len(consts)} ({nbytes / 1e6:.2f} MB), "
             f"inputs: {inputs}, outputs: {len(module.graph.outputs)}"]
    top = counts.most_common()
    lines.append("  " + ", ".join(f"{k} x{n}" for k, n in top[:12]) + (", ..." if len(top) > 12 else ""))
    return "\n".join(lines) + "\n"


# -- the pipeline ------------------------------------------------------------------------------
def quant_options(quant: QuantOptions | str | None, target: Target) -> QuantOptions | None:
    """A scheme name or QuantOptions, with the target's features filled in."""
    if quant is None:
        return None
    opts = QuantOptions(quant) if isinstance(quant, str) else quant
    if opts.scheme not in schemes.SCHEMES:
        raise QCError(f"unknown quantization scheme '{opts.scheme}'", hint="one of " + ", ".join(schemes.SCHEMES))
    if not opts.target_features:
        opts = dataclasses.replace(opts, target_features=tuple(target.features))
    return opts


def target_passes(fallback: str, emit: Emit, shapes: Mapping[str, Sequence[int]] | None,
                  max_context: int | None = None) -> list[str]:
    """The passes every compile ends with: legalize and check-kernels for the target, then for C
    the static shapes the C backend needs (*max_context*: a KV-cache decoder's step for the C
    decode runtime, ``c_decode_pipeline``)."""
    tail = ["legalize", f"check-kernels{{fallback={fallback}}}"]
    if emit == "c":
        from qc.backends.c import c_prepare_pipeline
        from qc.backends.c.prepare import c_decode_pipeline

        tail.append(c_decode_pipeline(max_context) if max_context else c_prepare_pipeline(shapes or {}))
    elif emit == "tflite":
        from qc.backends.tflite import tflite_prepare_pipeline

        tail.append(tflite_prepare_pipeline(shapes or {}))
    return tail


DEFAULT_MAX_CONTEXT = 2048
DEFAULT_PREFILL_CHUNK = 16
"""Prompt tokens per prefill_run of the C decode runtime (a chunk: one GEMM of 16 rows per weight)."""
"""The C decode runtime's cache length when neither --max-context nor the model says otherwise."""


def decoder_context(module: Module, max_context: int | None) -> int | None:
    """The cache length of the C decode runtime for *module*: None for a model without a KV cache
    (and no *max_context*), else *max_context* or ``DEFAULT_MAX_CONTEXT``."""
    from qc.onnx.kv_layout import recognize_module

    if recognize_module(module) is None:
        if max_context is not None:
            raise QCError("--max-context is for KV-cache decoders; this model has no past_key_values inputs")
        return None
    if max_context is not None:
        if max_context < 2:
            raise QCError(f"--max-context must be at least 2 (got {max_context})")
        return max_context
    return DEFAULT_MAX_CONTEXT


def compile_pipeline(spec: str, tail: Iterable[str]) -> str:
    return ",".join([p for p in split_top(spec) if p.strip()] + list(tail)) if spec.strip() else ",".join(tail)


@dataclass
class CompileResult:
    """What ``qc.compile`` returns: the compiled module, its reports and a writer for the outputs.

    ``placement``: the placement report (units per device, fallbacks, cost); ``report``: the
    quantization report (``None`` without ``quant``); ``pipeline``: every pass that ran, as a
    pipeline string; ``before`` / ``after``: op summaries; ``seconds``: time per phase."""

    module: Module
    target: Target
    emit: Emit
    pipeline: str
    placement: dict[str, Any]
    context: PassContext
    report: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    before: str = ""
    after: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    holdout: list[dict[str, Any]] = field(default_factory=list)
    source: str | None = None
    c_report: dict[str, Any] | None = None
    tflite_report: dict[str, Any] | None = None
    vela: dict[str, Any] | None = None
    quant: QuantOptions | None = None
    source_ops: dict[str, int] = field(default_factory=dict)
    imitated: CalibrationData | None = None
    budget: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    holdout_requested: int | None = None
    decode_context: int | None = None  # the C decode runtime's --max-context (a KV-cache decoder)
    prefill_chunk: int = 1
    _oracle: str | None = None

    @property
    def remarks(self) -> list[str]:
        return self.context.remarks

    def write(self, path: str | os.PathLike, *, external: bool | None = None, harness: bool = False,
              elide_above: int | None = 16, measure: bool = True, threads: int | None = None) -> str:
        """Write the output where ``path`` says: a ``.onnx`` / ``.qir`` file, or for C a directory
        with the sources, ``model.onnx`` (the same model for onnxruntime, the oracle) and
        ``report.json`` (*threads*: the C code's worker pool, ``qc compile --threads``). A quantized
        compile then has its ``report`` (sizes, warnings and, with ``measure``, the end-to-end SQNR
        on the held-aside samples). Returns the ONNX path.

        The report runs onnxruntime on the written file, so it comes after the write; when it (or
        the write) fails, the files this call wrote are removed and a previous output at ``path``
        is put back: a failed compile leaves no output that looks like a finished one."""
        path = os.fspath(path)
        kind = output_kind(path, self.target, self.emit)
        check_output_path(path, kind)
        rollback = _Rollback(path, kind)
        try:
            onnx_path = self._write(path, kind, external=external, harness=harness, elide_above=elide_above,
                                    measure=measure, threads=threads)
        except BaseException:
            rollback.restore()
            raise
        rollback.discard()
        return onnx_path

    def _write(self, path: str, kind: Emit, *, external: bool | None, harness: bool, elide_above: int | None,
               measure: bool, threads: int | None = None) -> str:
        inputs = [self.source] if self.source else []
        t0 = time.perf_counter()
        if kind == "onnx":
            save_module(self.module, path, elide_above=elide_above, external=external, inputs=inputs,
                        target=self.target)
            onnx_path = path
        elif kind == "tflite":
            onnx_path = self._write_tflite(path, inputs)
        else:
            from qc.backends.c import emit_c
            from qc.ir.fileio import atomic_write

            os.makedirs(path, exist_ok=True)
            onnx_path = os.path.join(path, "model.onnx")
            refuse_overwrite(onnx_path, inputs)
            assert self._oracle is not None, "a C compile saves its oracle before the C preparation"
            snapshot = os.path.dirname(self._oracle)
            for name in sorted(os.listdir(snapshot), reverse=True):  # model.onnx.data (over 2 GB) first
                with open(os.path.join(snapshot, name), "rb") as src, atomic_write(os.path.join(path, name)) as dst:
                    shutil.copyfileobj(src, dst, 1 << 24)
            prefill = None
            if self.decode_context and self.prefill_chunk > 1:
                from qc.backends.c.prepare import c_decode_pipeline

                prefill = load_model(self._oracle)
                PassManager.parse(c_decode_pipeline(self.decode_context, self.prefill_chunk)).run(prefill)
            self.c_report = emit_c(self.module, path, self.target, harness=harness, threads=threads, prefill=prefill)
        self.seconds["export"] = time.perf_counter() - t0
        if self.quant is not None:
            self.report = _quant_report(self, onnx_path, measure)
        return onnx_path

    def _write_tflite(self, path: str, inputs: list[str]) -> str:
        """NAME.tflite, its oracle NAME.qdq.onnx (the same model for onnxruntime) and, for an
        Ethos-U target, Vela's NAME_vela.tflite; the placement then says what Vela placed."""
        from qc.backends.onnx import save_onnx
        from qc.backends.tflite import emit_tflite

        onnx_path = tflite_oracle_path(path)
        refuse_overwrite(onnx_path, inputs)
        save_onnx(self.module, onnx_path, target=self.target)
        data = self.context.calibration_data
        self.tflite_report = emit_tflite(self.module, path, samples=list(data.feeds(self.module)) if data else (),
                                         source=self.source)
        vc = self.target.vela
        if vc is not None:
            from qc.backends.tflite.vela import run_vela

            self.vela = run_vela(path, os.path.dirname(os.path.abspath(path)),
                                 accelerator_config=vc.accelerator_config, system_config=vc.system_config,
                                 memory_mode=vc.memory_mode)
            from qc.backends.tflite.vela import compare_placement

            units = self.placement.get("placement", [])
            self.vela["units"] = len(units)
            self.vela["disagreements"] = compare_placement(units, self.tflite_report["ops"], self.vela)
            self.placement["vela"] = self.vela
        return onnx_path

    def close(self) -> None:
        if self._oracle is not None:
            shutil.rmtree(os.path.dirname(self._oracle), ignore_errors=True)
            self._oracle = None

    def __del__(self) -> None:
        self.close()


def tflite_oracle_path(path: str) -> str:
    """NAME.qdq.onnx beside NAME.tflite: the ONNX the TFLite model is checked against."""
    return os.path.splitext(path)[0] + ".qdq.onnx"


def _output_files(path: str, kind: Emit) -> list[str] | None:
    """The files an output at ``path`` consists of now (``NAME.onnx`` and its ``NAME.onnx.data`` /
    ``NAME.qir.weights`` sidecar; every file of a C directory); None for a C directory that does
    not exist."""
    if kind == "c":
        if not os.path.isdir(path):
            return None
        names = [os.path.join(path, n) for n in sorted(os.listdir(path))]
    elif kind == "tflite":
        stem = os.path.splitext(path)[0]
        names = [path, tflite_oracle_path(path), stem + "_vela.tflite"]
    else:
        names = [path, path + ".data", path + ".weights"]
    return [n for n in names if os.path.isfile(n)]


class _Rollback:
    """Hard links to the files of a previous output, so that a write that fails after replacing
    them can put them back (the atomic writes rename over the names; the links keep the old
    files): ``restore`` removes what the write left and brings the previous output back,
    ``discard`` drops the links. Without hard links (a file system that has none) a failed write
    still removes its own files."""

    def __init__(self, path: str, kind: Emit):
        self.path, self.kind = path, kind
        self.before = _output_files(path, kind)
        self.kept: dict[str, str] = {}
        for name in self.before or ():
            keep = os.path.join(os.path.dirname(name), f".qc-keep-{os.getpid()}-{os.path.basename(name)}")
            with contextlib.suppress(OSError):
                if os.path.lexists(keep):
                    os.remove(keep)
                os.link(name, keep)
                self.kept[name] = keep

    def restore(self) -> None:
        if self.kind == "c" and self.before is None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for name in _output_files(self.path, self.kind) or ():
            with contextlib.suppress(OSError):
                os.remove(name)
        for name, keep in self.kept.items():
            with contextlib.suppress(OSError):
                os.replace(keep, name)

    def discard(self) -> None:
        for keep in self.kept.values():
            with contextlib.suppress(OSError):
                os.remove(keep)


class _OracleSnapshot(Instrument):
    """Saves the module as ONNX once the target passes are done and before the C preparation:
    the C output directory holds it as ``model.onnx`` (onnxruntime runs it; the oracle)."""

    def __init__(self, before_index: int, external: bool | None, target: Target | None = None):
        self.before_index = before_index
        self.external = external
        self.target = target
        self.path: str | None = None

    def before_pass(self, p: Pass, module: Module, index: int) -> None:
        if index == self.before_index and self.path is None:
            from qc.backends.onnx import save_onnx

            self.path = os.path.join(tempfile.mkdtemp(prefix="qc-oracle-"), "model.onnx")
            save_onnx(module, self.path, external=self.external, target=self.target)


def compile(model: ModelSource, *, target: str | Target = "x86-avx2", quant: QuantOptions | str | None = None,
            pipeline: str | None = None, calibration: CalibrationSource = None,
            calibration_cache: str | os.PathLike | None = None, holdout: int | None = None, jobs: int = 1,
            emit: Emit | None = None, shapes: Mapping[str, Sequence[int]] | None = None,
            bind: Mapping[str, Any] | None = None, fallback: Literal["allow", "warn", "error"] = "allow",
            instruments: Sequence[Instrument] = (),
            verify_each: bool = True, upgrade_opset: int | None = None, infer_shapes: bool = True,
            external: bool | None = None, quiet: bool = True, max_context: int | None = None,
            prefill_chunk: int | None = None,
            search: Callable[..., tuple[PassManager, dict[str, Any]]] | None = None,
            executor: Executor | None = None) -> CompileResult:
    """Compile ``model`` for ``target``: the default pipeline (or ``pipeline``, or the ``quant``
    scheme's), then ``legalize`` and ``check-kernels``, then for C output the static-shape
    passes. Options are checked and the pipeline parsed before the model is read.

    ``calibration``: a CalibrationData, an .npz path, or a callable that builds the data from the
    loaded module (token windows need its input names); ``holdout``: samples kept aside for the
    report's end-to-end SQNR (default: 1/8 of them, 1..4, none under 8). ``emit``: ``"onnx"`` or
    ``"c"`` (default: the target's backend). ``shapes``: static input shapes for C. ``bind``:
    inputs that become constants, ``{"sr": 16000}`` (``bind-inputs``, first in the pipeline). ``search``:
    replaces running the passes (``qc compile --accuracy``); it gets ``(make_pass_manager,
    spec, module, context, holdout)`` and returns ``(pass manager, report)``. ``executor``: where
    calibration runs its shares of the samples (a :class:`qc.pm.Executor`, e.g.
    ``qc.tools.cluster.RayExecutor``; in ``context.executor`` for ``search`` too).
    """
    t_start = time.perf_counter()
    tgt = target if isinstance(target, Target) else load_target(target)
    emit = emit or tgt.backend  # type: ignore[assignment]
    if emit not in ("onnx", "c", "tflite"):
        raise QCError(f"unknown output kind '{emit}'", hint="emit onnx, c or tflite")
    if emit == "c" and tgt.cc is None and tgt.backend == "tflite":
        raise QCError(f"target {tgt.name} has no C compiler ([compiler] table): the C backend does not "
                      "write code for it", hint=f"--emit {tgt.backend}")
    if emit == "tflite":
        from qc.backends.tflite.vela import MISSING, have_vela

        if not have_vela():  # the TFLite schema and the Ethos-U compiler both come with Vela
            raise QCError(MISSING[0], hint=MISSING[1])
        if quant is None:
            raise QCError("--emit tflite writes an int8 TFLite model, from a quantized one",
                          hint="add --quant w8a8 and calibration data (--calib DATA.npz)")
    if emit not in ("c", "tflite") and shapes:
        raise QCError("static input shapes describe C or TFLite output", hint="add --emit c")
    opts = quant_options(quant, tgt)
    if emit == "tflite" and opts is not None and opts.outliers is None:
        opts = dataclasses.replace(opts, outliers="none")  # int8 throughout: no float16 columns, no smoothing Mul
    if opts is None and calibration is not None:
        raise QCError("calibration data is only used with --quant", hint="add --quant w8a8 (or another scheme)")
    if opts is not None and calibration is not None:
        opts = schemes.with_calibration(opts)
    if opts is not None:
        if pipeline is not None:
            raise QCError("give either --quant or -p, not both", hint="--quant runs the scheme's pipeline; "
                          "`qc passes` shows it, and -p runs an edited copy")
        spec = schemes.pipeline(opts)
        if emit != "c" and "lower-qop" in spec and getattr(tgt.onnx, "nbits_int8_rows", "none") != "none":
            spec += ",guard-int8-rows"      # the runtime's per-row int8 A: float A where rows would coarsen
        upgrade_opset = max(upgrade_opset or 0, schemes.needs_opset(opts))
    else:
        spec = named_pipelines()["default"][0] if pipeline is None else pipeline
    if bind:
        from qc.passes.bind_inputs import bind_spec

        spec = compile_pipeline(bind_spec(bind), [p for p in split_top(spec) if p.strip()])
    ctx = PassContext(target=tgt, calibration_cache=calibration_cache, jobs=jobs, quiet=quiet, executor=executor)
    full_spec = compile_pipeline(spec, target_passes(fallback, emit, shapes))
    snapshot = None
    extra: list[Instrument] = []
    pm_all = PassManager.parse(full_spec, verify_each=verify_each, ctx=ctx)
    if emit == "c":
        snapshot = _OracleSnapshot(len(pass_names(PassManager.parse(compile_pipeline(
            spec, target_passes(fallback, "onnx", None))).passes)), external, tgt)
        extra.append(snapshot)
    pm_all.instruments = list(instruments) + extra
    pm_all.check_instruments()

    source = None if isinstance(model, (Module, ModelProto)) else os.fspath(model)
    module = load_model(model, upgrade_opset=upgrade_opset, infer_shapes=infer_shapes)
    seconds = {"import": time.perf_counter() - t_start}
    for inst in instruments:
        if hasattr(inst, "add"):
            inst.add("(import)", seconds["import"])  # the Timing table's first row
    decode_context = decoder_context(module, max_context) if emit == "c" and not shapes else None
    if decode_context is None and max_context is not None:
        raise QCError("--max-context is for the C decode runtime of a KV-cache decoder",
                      hint="add --emit c (and no --shape)")
    if prefill_chunk is not None and decode_context is None:
        raise QCError("--prefill-chunk is for the C decode runtime of a KV-cache decoder", hint="add --emit c")
    chunk = DEFAULT_PREFILL_CHUNK if prefill_chunk is None else prefill_chunk
    if decode_context is not None and not 1 <= chunk < decode_context:
        raise QCError(f"--prefill-chunk must be 1 .. {decode_context - 1} (--max-context - 1), got {chunk}")
    if decode_context is not None:
        full_spec = compile_pipeline(spec, target_passes(fallback, emit, shapes, decode_context))
        pm_all = PassManager.parse(full_spec, verify_each=verify_each, ctx=ctx)
        pm_all.instruments = list(instruments) + extra
    before = summarize(module)
    source_ops = collections.Counter(op.qualified_type for op in module.walk())
    held: list[dict[str, Any]] = []
    imitated: CalibrationData | None = None
    if opts is not None:
        data = _calibration_data(calibration, module)
        if bind and data is not None:
            _check_bound_samples(data, module, bind)
        if data is None and schemes.needs_calibration(opts):
            raise QCError(f"--quant {opts.scheme}"
                          + (f" with --weight-algo {opts.weight_algo}" if opts.weight_algo else "")
                          + (" with --weight-search" if opts.weight_search and not opts.weight_algo else "")
                          + " needs calibration data", where=source,
                          hint="give --calib DATA.npz or --calib-text FILE --tokenizer T")
        if data is not None:
            from qc.calib.data import split_holdout

            data, held = split_holdout(data, holdout, module)
            imitated = data  # what the report's generated inputs imitate: the model as read
            ctx.calibration_data = data.without(bind or ())
            if emit == "tflite" and shapes:
                _check_sample_shapes(module, ctx.calibration_data, shapes)
            if emit == "tflite" and not shapes:
                sample_shapes = _dynamic_input_shapes(module, ctx.calibration_data)
                if sample_shapes:  # TFLite is static: the calibration samples' shapes (--shape sets others)
                    shapes = sample_shapes
                    full_spec = compile_pipeline(spec, target_passes(fallback, emit, shapes, decode_context))
                    pm_all = PassManager.parse(full_spec, verify_each=verify_each, ctx=ctx)
                    pm_all.instruments = list(instruments) + extra
    t0 = time.perf_counter()
    accuracy = None
    if search is not None:
        def make_pm(s: str) -> PassManager:
            return PassManager.parse(s, instruments=pm_all.instruments, verify_each=verify_each, ctx=ctx)

        _, accuracy = search(make_pm, spec, module, ctx, held)
        make_pm(",".join(target_passes(fallback, emit, shapes, decode_context))).run(module)
    else:
        pm_all.run(module)
    seconds["passes"] = time.perf_counter() - t0
    from qc.targets.report import placement_report

    assert ctx.placement is not None
    result = CompileResult(module=module, target=tgt, emit=emit, pipeline=str(pm_all),
                           placement=placement_report(tgt, ctx.placement, ctx.legalized), context=ctx,
                           accuracy=accuracy, before=before, seconds=seconds, holdout=held, source=source,
                           source_ops=dict(source_ops), imitated=imitated,
                           _oracle=snapshot.path if snapshot else None)
    result.after = summarize(module)
    result.decode_context = decode_context
    result.prefill_chunk = chunk if decode_context is not None else 1
    from qc.targets.report import realized

    result.placement["realized"] = realized(tgt, emit)
    result.quant = opts
    result.holdout_requested = holdout
    if emit == "c" and tgt.memory is not None and tgt.memory.enforce:
        _check_budget(result, fallback, shapes)
    return result


def _dynamic_input_shapes(module: Module, data: CalibrationData) -> dict[str, tuple[int, ...]]:
    """The shapes of the first calibration sample for the inputs whose shapes are not static."""
    from qc.ir.types import TensorType, is_static_dim

    sample = next(iter(data.feeds(module)), None)
    if sample is None:
        return {}
    out = {}
    for v in module.graph.inputs:
        t = v.type
        if v.const is None and isinstance(t, TensorType) and v.name in sample \
                and not all(is_static_dim(d) for d in t.shape):
            out[v.name] = tuple(int(d) for d in sample[v.name].shape)
    return out


def _check_sample_shapes(module: Module, data: CalibrationData, shapes: Mapping[str, Sequence[int]]) -> None:
    """TFLite output: the static shapes (--shape) must be those of the calibration samples, which
    the TFLite backend runs through the fixed-shape model for its ranges."""
    have = _dynamic_input_shapes(module, data)
    for name, dims in shapes.items():
        if name in have and tuple(have[name]) != tuple(int(d) for d in dims):
            given = "x".join(map(str, dims))
            raise QCError(f"--shape {name}={given} differs from the calibration samples' "
                          f"{'x'.join(map(str, have[name]))}",
                          hint=f"calibrate with samples of that shape (--seq-len {dims[-1]} with --calib-text), "
                          "or leave out --shape: the TFLite model then takes the samples' shape")


def _check_budget(result: CompileResult, fallback: str, shapes: Mapping[str, Sequence[int]] | None) -> None:
    """The arena and weights of the C code against the target's RAM and flash (qc.tools.budget):
    a warning in ``result.warnings``, or with ``fallback="error"`` a QCError before anything is written."""
    from qc.backends.c import memory_plan
    from qc.tools.budget import check

    report = check(result.target, memory_plan(result.module, result.target), quantized=result.quant is not None,
                   shapes=shapes)
    result.budget = report.as_dict()
    if report.fits:
        return
    if fallback == "error":
        result.close()
        raise report.error(result.source)
    result.warnings.append(report.message())


def _check_bound_samples(data: CalibrationData, module: Module, bind: Mapping[str, Any]) -> None:
    """Calibration samples may hold arrays for bound inputs (they were made for the model as it
    is read); each must equal the bound value, or the statistics would describe another branch.
    The passes feed the bound module only the inputs it still has."""
    from qc.passes.bind_inputs import bind_texts, bound_array

    inputs = {v.name: v for v in module.graph.inputs}
    wanted = bind_texts(bind)
    for index, sample in enumerate(data.feeds(module)):
        for name, texts in wanted.items():
            if name in sample and name in inputs:
                value = bound_array(inputs[name], texts)
                if sample[name].shape != value.shape or not np.array_equal(sample[name], value):
                    got = np.asarray(sample[name]).reshape(-1)[:4].tolist()
                    raise QCError(f"calibration sample {index} gives input '{name}' {got}, but --bind sets it to "
                                  f"{value.reshape(-1)[:4].tolist()}", where=data.where(index),
                                  hint=f"calibrate with samples made for {name}={','.join(texts)}, or drop the "
                                       f"'{name}' arrays from the data")


def _calibration_data(calibration: CalibrationSource, module: Module) -> CalibrationData | None:
    if calibration is None:
        return None
    if isinstance(calibration, CalibrationData):
        data = calibration
    elif isinstance(calibration, (str, os.PathLike)):
        data = from_npz(calibration)
    else:
        data = calibration(module)
        if data is None:
            return None
    from qc.calib.data import check_against

    check_against(data, module)
    return data


def _first_samples(data: CalibrationData | None, module: Module, count: int) -> list[dict[str, Any]]:
    """Up to ``count`` calibration samples shaped for ``module`` (what generated inputs imitate)."""
    if not isinstance(data, CalibrationData):
        return []
    from qc.calib.data import conform

    inputs = {v.name: v for v in module.graph.inputs}
    return [conform(data.sample(i), inputs) for i in range(min(count, len(data)))]


def _quant_report(result: CompileResult, onnx_path: str, measure: bool) -> dict[str, Any]:
    """The quantization report of a written compile: sizes, compute ops by form, calibration,
    outlier columns, guardrail warnings, the held-aside SQNR (``measure``) and the placement."""
    from qc.tools import guardrails
    from qc.tools.holdout import output_sqnr
    from qc.tools.report import build_report, outlier_report

    ctx, opts = result.context, result.quant
    assert opts is not None
    calib = ctx.calibration
    calibration = None
    if calib is not None:
        calibration = {"method": getattr(calib, "method", None) or opts.calib_method or "minmax",
                       "samples": int(calib.samples), "tensors": len(calib.tensors),
                       "cache": None if ctx.calibration_cache is None else os.fspath(ctx.calibration_cache),
                       "cached": bool(ctx.calibration_from_cache)}
    accuracy = None
    wanted = result.holdout or (ctx.calibration_data is not None and result.holdout_requested != 0)
    if wanted and measure and result.source is not None:
        t0 = time.perf_counter()
        accuracy = output_sqnr(onnx_path, result.source, result.holdout,
                               calibration=_first_samples(result.imitated, result.module, 16))
        result.seconds["sqnr check"] = time.perf_counter() - t0
    warnings = [w.as_dict() for w in guardrails.check(result.module, opts, calib, result.target,
                                                            source_ops=result.source_ops)]
    report = build_report(scheme=opts.scheme, pipeline=result.pipeline, input_path=result.source or "<model>",
                          output_path=onnx_path, module=result.module, calibration=calibration, accuracy=accuracy,
                          seconds=result.seconds,
                          outliers=outlier_report(ctx.outlier_splits, ctx.outlier_candidate_columns),
                          warnings=warnings)
    report["placement"] = result.placement
    if result.accuracy is not None:
        report["accuracy_search"] = result.accuracy
    return report
