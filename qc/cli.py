"""The ``qc`` command line: show, opt, passes, compile, targets, eval, generate, models.

User errors print one line ``qc: error: ...`` and exit with code 2; ``--debug`` shows the
traceback instead. Outputs are written atomically; inputs are never modified.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from collections.abc import Sequence

from . import __version__
from .cli_common import (  # noqa: F401  (also qc.cli's names: write_qir, load_module, ...)
    _calibration_from_flags,
    _elide,
    _eval_tokenizer,
    _existing_onnx,
    _indent,
    _names,
    _pipeline_spec,
    _producer_model,
    _quant_options,
    _refuse_overwrite,
    _write_json,
    build_instruments,
    build_pass_manager,
    load_module,
    summarize,
    write_module,
    write_qir,
)
from .errors import QCError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    args.debug = getattr(args, "debug", False)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    try:
        return args.func(args) or 0
    except QCError as e:
        if args.debug:
            raise
        if getattr(e, "internal", False):
            _error(f"internal error: {e}")
            return EXIT_INTERNAL_ERROR
        _error(str(e))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _error("interrupted; no output was written")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug in qc: say so, briefly
        if args.debug:
            raise
        _error(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)")
        return EXIT_INTERNAL_ERROR


def _error(message: str) -> None:
    sys.stderr.write("qc: error: " + " ".join(message.split("\n")) + "\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage errors: one line, exit 2
        self.exit(EXIT_USER_ERROR, f"qc: error: {message} (see `{self.prog} --help`)\n")


def _build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before or after the command; SUPPRESS keeps a subcommand from resetting it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show Python tracebacks for errors")
    p = _Parser(prog="qc", description="qc: a quantizing compiler for ONNX models aimed at Arm edge devices",
                parents=[common])
    p.add_argument("--version", action="version", version=f"qc {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    show = sub.add_parser("show", parents=[common], help="print a model as text IR")
    show.add_argument("model", help=".onnx or .qir file")
    show.add_argument("-o", "--output", help="write text IR to this .qir file (weights to FILE.weights)")
    _add_print_options(show)
    _add_import_options(show)
    show.add_argument("--summary", action="store_true", help="print op counts and sizes instead of the IR")
    show.set_defaults(func=cmd_show)

    opt = sub.add_parser("opt", parents=[common], help="run a pass pipeline")
    opt.add_argument("input", help=".onnx or .qir file")
    opt.add_argument("-p", "--passes", dest="pipeline", default=None,
                     help="pipeline, e.g. 'fold-constants,cse,dce' ('' runs no pass)")
    opt.add_argument("--pipeline", dest="named_pipeline", help="a named pipeline (see `qc passes`)")
    opt.add_argument("-o", "--output", help="output .onnx or .qir (default: text IR on stdout)")
    opt.add_argument("--remarks", action="store_true", help="list every pass remark (why something was or was "
                     "not done); on stderr when the IR goes to stdout")
    _add_calib_options(opt.add_argument_group("calibration data, for the calibrate pass (see docs/quantization.md)"))
    _add_pm_options(opt)
    _add_print_options(opt)
    _add_import_options(opt)
    opt.set_defaults(func=cmd_opt)

    passes = sub.add_parser("passes", parents=[common], help="list passes with their options")
    passes.add_argument("name", nargs="?", help="show one pass")
    passes.add_argument("--load-pass", action="append", default=[], metavar="FILE.py")
    passes.set_defaults(func=cmd_passes)

    comp = sub.add_parser("compile", parents=[common], help="optimize a model for a target and emit it")
    comp.add_argument("model", help=".onnx or .qir file")
    comp.add_argument("--target", required=True, help="target name (see `qc targets`) or a .toml file")
    comp.add_argument("-o", "--output", required=True,
                      help="output: NAME.onnx (any target), a directory (C, for the C targets) or NAME.tflite "
                           "(int8 TFLite; Ethos-U targets then run Vela)")
    comp.add_argument("--emit", choices=("c", "onnx", "tflite"), default=None,
                      help="write C sources (docs/c-backend.md), ONNX or int8 TFLite (docs/targets.md) (default: "
                           "what -o names: NAME.onnx is ONNX, NAME.tflite TFLite, a directory C)")
    comp.add_argument("--shape", default="", metavar="NAME=AxB,...",
                      help="--emit c: static shapes of the model inputs that have symbolic dimensions")
    comp.add_argument("--max-context", type=int, metavar="N",
                      help="--emit c of a KV-cache decoder: the cache length of the C decode runtime (prompt + "
                           f"generated tokens; default {2048}; docs/c-backend.md, 'KV-cache decoders')")
    comp.add_argument("--prefill-chunk", type=int, metavar="C",
                      help="the C decode runtime: prompt tokens per prefill_run (default 16; 1: token by token)")
    _add_bind_option(comp)
    comp.add_argument("--emit-harness", action="store_true",
                      help="--emit c: also write harness.c, a main() that reads inputs from files and writes outputs")
    comp.add_argument("--threads", type=int, metavar="N",
                      help="--emit c, Cortex-A targets: a pthread worker pool that splits the big GEMMs, attention "
                           "heads and element-wise calls; N threads by default (-t N or QC_THREADS=N at run time; "
                           "results identical for any N; docs/c-backend.md). Default: no pool")
    comp.add_argument("--pipeline", dest="named_pipeline", default="default",
                      help="named pipeline to run (default: %(default)s)")
    comp.add_argument("-p", "--passes", dest="pipeline", default=None, help="explicit pipeline instead")
    comp.add_argument("--external-data", choices=("auto", "always", "never"), default="auto",
                      help="write weights to OUTPUT.data (auto: only when over 2 GB)")
    _add_pm_options(comp)
    _add_import_options(comp)
    comp.add_argument("--fallback", choices=("allow", "warn", "error"), default="warn",
                      help="node units that still have no kernel on the target's preferred device after "
                           "legalize: keep them (allow), keep them with a remark each (warn, the default), "
                           "or stop with the list (error)")
    comp.add_argument("--quiet", action="store_true", help="print no summary")
    comp.add_argument("--remarks", action="store_true",
                      help="list every pass remark (why something was or was not done)")
    comp.add_argument("--report-json", metavar="FILE", help="write the compile report as JSON")
    comp.add_argument("--report", action="store_true", help="with --quant: list per layer what was done "
                      "(e.g. how many columns went to float16 and why)")
    _add_quant_options(comp)
    from .cli_accuracy import add_accuracy_options, add_analyze_parser

    add_accuracy_options(comp)
    comp.set_defaults(func=cmd_compile)

    rep = sub.add_parser("report", parents=[common], help="where the activation outliers are: per-feature "
                         "ranges from calibration and the columns split-outliers would keep in float16")
    rep.add_argument("model", help=".onnx or .qir file")
    rep.add_argument("--html", metavar="FILE", help="write one chart per activation to this HTML file")
    rep.add_argument("--outlier-mode", choices=("threshold", "budget", "error"), default="budget")
    rep.add_argument("--outlier-threshold", type=float, default=6.0, metavar="X")
    rep.add_argument("--outlier-fraction", type=float, default=0.01, metavar="F")
    rep.add_argument("--top", type=int, default=10, metavar="N", help="activations listed on the terminal "
                     "(largest max |x| first; default %(default)s)")
    _add_calib_options(rep.add_argument_group("calibration data (see docs/quantization.md)"))
    _add_import_options(rep)
    rep.set_defaults(func=cmd_report)

    add_analyze_parser(sub, common, _add_quant_options, lambda an: (_add_import_options(an), _add_pm_options(an)))

    targets = sub.add_parser("targets", parents=[common], help="list targets, or show one target's kernel table")
    targets.add_argument("name", nargs="?")
    targets.set_defaults(func=cmd_targets)

    chk = sub.add_parser("check", parents=[common],
                         help="which device each node unit runs on for a target, and the CPU fallbacks")
    chk.add_argument("model")
    chk.add_argument("--target", required=True, help="built-in target name or a .toml file")
    _add_bind_option(chk)
    chk.add_argument("--json", action="store_true", help="print the report as JSON (fallbacks, placement, "
                     "copies, cost)")
    chk.add_argument("--report-json", metavar="FILE", help="also write the JSON report to FILE")
    chk.add_argument("--brief", action="store_true", help="a summary: unit counts per device, and "
                     "more than 8 fallbacks grouped by reason with a few examples each")
    chk.add_argument("--shape", default="", metavar="NAME=AxB,...",
                     help="shapes of the model inputs for the MAC and copy estimates (as qc compile --shape); "
                          "without it each dynamic dimension counts as 1, and the report lists them")
    chk.add_argument("--calib", metavar="DATA.npz", help="samples of the model inputs: on Ethos-U targets, for a "
                     "quantized model, the ranges of the float tensors the TFLite requantizes (Vela then checks "
                     "the placement); where the runtime quantizes MatMulNBits' A per row, its rows are checked "
                     "for outlier features (the int8-rows-outliers guardrail)")
    chk.set_defaults(func=cmd_check)

    ev = sub.add_parser("eval", parents=[common], help="measure a model: perplexity, SQNR and cosine vs a reference")
    ev.add_argument("model", help=".onnx model: any model against --reference (per output SQNR, cosine, max error, "
                                  "top-1), or a language model (input_ids -> logits: perplexity) or a sentence "
                                  "encoder (input_ids, attention_mask -> sentence_embedding) on text")
    ev.add_argument("--ref", "--reference", dest="ref", metavar="FP32.onnx",
                    help="reference model to compare against (SQNR per output; cosine of sentence embeddings "
                         "for an encoder)")
    ev.add_argument("--inputs", metavar="X.npz", help="any model: inputs as for --calib (an array per input, "
                    "leading sample axis; or a directory of .npz); default: generated from the model's signature")
    ev.add_argument("--shape", metavar="NAME=AxB,...", default="", help="sizes of the symbolic dimensions for "
                    "generated inputs (x=1x3x224x224)")
    ev.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the generated inputs (default 0)")
    ev.add_argument("--json", action="store_true", help="any model: print the metrics as JSON")
    ev.add_argument("--text", metavar="FILE", help="evaluation text: a file, or a built-in source "
                                                   "(python-reference, the default; licenses is the calibration text)")
    ev.add_argument("--tokenizer", metavar="NAME|tokenizer.json",
                    help="a model name from `qc models` or a tokenizer.json (default: from the model's producer)")
    ev.add_argument("--seq-len", type=int, default=128, metavar="N", help="tokens per window (default %(default)s)")
    ev.add_argument("--samples", type=int, metavar="N",
                    help="windows (language model) or sentences (encoder) spread over the text (default 64), or "
                         "generated inputs (default 16; with --inputs: the first N samples)")
    ev.add_argument("--sentences", metavar="FILE", help="encoder: one sentence per line instead of sentences "
                                                        "taken from the text")
    ev.add_argument("--batch-size", type=int, default=1, metavar="N", help="windows per run (default %(default)s)")
    ev.add_argument("--decode", action="store_true", help="KV-cache decoders: perplexity also through the decode "
                    "path (one token per step through the cache); with --ref also greedy agreement")
    ev.add_argument("--prompts", type=int, default=8, metavar="N",
                    help="--decode --ref: prompts (the first 16 tokens of N windows) for greedy agreement "
                         "(default %(default)s)")
    ev.add_argument("--new-tokens", type=int, default=32, metavar="N",
                    help="--decode --ref: greedy tokens per prompt (default %(default)s)")
    ev.set_defaults(func=cmd_eval)

    from .cli_generate import add_generate_parser

    add_generate_parser(sub, common)
    models = sub.add_parser("models", parents=[common], help="list the real models qc can build, or build one")
    models_sub = models.add_subparsers(dest="models_command", parser_class=_Parser)
    build = models_sub.add_parser("build", parents=[common], help="write a model as ONNX from its installed package")
    build.add_argument("name", help="model name (see `qc models`)")
    build.add_argument("-o", "--output", required=True, help="output .onnx file")
    build.add_argument("--layers", type=int, metavar="N", help="keep only the first N transformer layers")
    build.add_argument("--kv-cache", action="store_true",
                       help="decoders: add the key/value cache as past_key_values.* inputs and present.* outputs "
                            "(the Hugging Face Optimum layout), for qc generate")
    models.set_defaults(func=cmd_models)
    return p


def _add_bind_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bind", default="", metavar="NAME=VALUE,...",
                   help="turn model inputs into constants of these values (a comma list for a tensor), e.g. "
                        "sr=16000: the pass bind-inputs, first in the pipeline")


def _bind(args) -> dict | None:
    from .passes.bind_inputs import parse_bind

    return parse_bind(args.bind) if args.bind else None


def _add_print_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--elide-above", type=int, default=16, metavar="N",
                   help="print tensors of more than N elements as blob references (default %(default)s)")
    p.add_argument("--full", action="store_true", help="print every tensor in full")


def _add_import_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--upgrade-opset", type=int, metavar="N", help="convert an older model to opset N first")
    p.add_argument("--no-infer-shapes", action="store_true", help="do not run ONNX shape inference on import")


def _add_quant_options(p: argparse.ArgumentParser) -> None:
    from .quant.schemes import SCHEMES

    q = p.add_argument_group("quantization (see docs/quantization.md)")
    q.add_argument("--quant", metavar="SCHEME", choices=list(SCHEMES),
                   help="quantize: " + ", ".join(SCHEMES) + " (runs the scheme's pipeline instead of --pipeline)")
    q.add_argument("--weights", choices=("tensor", "channel", "block"), help="weight granularity (scheme default)")
    q.add_argument("--block-size", type=int, metavar="N", help="weights per block for --weights block (default 32)")
    q.add_argument("--weight-algo", choices=("rtn", "gptq", "awq", "awq+gptq"),
                   help="weight rounding: round-to-nearest, GPTQ (Hessian error compensation), AWQ "
                        "(activation-aware scales) or AWQ then GPTQ; default rtn, for int4 with calibration "
                        "data awq+gptq with --weight-search and --act-order (the best measured)")
    q.add_argument("--weight-search", action=argparse.BooleanOptionalAction, default=None,
                   help="search each block's scale / clip for the least error weighted by the input's "
                        "mean x^2 (needs calibration data)")
    q.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                   help="GPTQ: quantize inputs in order of decreasing mean x^2 (block scales stay in place)")
    sym = q.add_mutually_exclusive_group()
    sym.add_argument("--symmetric", dest="weight_symmetric", action="store_const", const=True,
                     help="symmetric weights (zero point 0; default for 8-bit)")
    sym.add_argument("--asymmetric", dest="weight_symmetric", action="store_const", const=False,
                     help="asymmetric weights (a zero point per channel / block; default for 4-bit)")
    q.add_argument("--activations", choices=("int8", "uint8", "int16", "uint16", "int4", "uint4"),
                   help="activation type of static schemes (default: the target's preferred 8-bit type)")
    q.add_argument("--calib-method", choices=("minmax", "percentile", "entropy", "mse"),
                   help="how calibrated ranges are chosen (default minmax)")
    q.add_argument("--quant-ops", metavar="OPS", help="op types to quantize (default MatMul,Gemm,Conv)")
    q.add_argument("--exclude", metavar="REGEX", default="", help="ops whose name matches stay float")
    q.add_argument("--activation-pairs", action="store_true", help="also quantize MatMuls of two activations "
                   "(attention scores and context); by default they stay float")
    q.add_argument("--outliers", choices=("none", "split", "smooth", "both"),
                   help="static schemes: float16 outlier columns (split-outliers), SmoothQuant, or both "
                        "(default both); dyn8: split (the default when calibration data is given) or none")
    q.add_argument("--outlier-mode", choices=("threshold", "budget", "error"), default="budget",
                   help="how split-outliers picks columns (default %(default)s)")
    q.add_argument("--outlier-threshold", type=float, default=6.0, metavar="X",
                   help="threshold mode: columns whose max |x| reaches X (default %(default)s, LLM.int8's)")
    q.add_argument("--outlier-fraction", type=float, default=0.01, metavar="F",
                   help="budget / error modes: at most this fraction of columns in float16 (default %(default)s)")
    q.add_argument("--outlier-dtype", choices=("float16", "float32"),
                   help="the float type of split-outliers' outlier part (default: float32 on x86 targets, whose "
                        "onnxruntime CPU provider has no float16 GEMM; float16 elsewhere)")
    q.add_argument("--smooth-alpha", type=float, default=0.5, metavar="A",
                   help="SmoothQuant migration strength (default %(default)s)")
    q.add_argument("--rotate", nargs="?", const="down", choices=("down", "all", "none"), metavar="ONLINE",
                   help="rotate the residual stream of pre-norm decoders by a randomized Hadamard matrix first "
                   "(QuaRot; the rotate pass), so that activations lose their outliers, e.g. with --outliers none; "
                   "ONLINE: where online Hadamards go, 'down' (the MLP down projection, the default), 'all' (also "
                   "every other linear whose input is not rotated: post-norm encoders) or 'none'")
    q.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="8-bit weights with 7-bit codes, for onnxruntime's fast u8 x s8 kernels on x86 without VNNI "
                        "(the static schemes' default there; --no-reduce-range: uint8 weights, all 8 bits, "
                        "about FP32's speed)")
    q.add_argument("--act-granularity", choices=("token", "tensor", "block"), default=None,
                   help="dyn8: one activation scale per token (default) or per tensor; w4a8: per block of 32 "
                        "(default; onnxruntime's accuracy_level 4) or per token with integer block scales "
                        "(w4a8-per-token; the C kernel sums in int32 across K)")
    q.add_argument("--kv-cache-dtype", choices=("float32", "int8"), default="float32",
                   help="KV-cache decoders: the cache's element type; int8 keeps a float32 scale per token "
                        "and head beside it (quantize-kv-cache)")
    q.add_argument("--format", choices=("qdq", "qop"), default="qdq",
                   help="QDQ pairs (default) or onnxruntime's QOperator / contrib ops")
    _add_calib_options(q)
    q.add_argument("--holdout", type=int, metavar="N", help="calibration samples kept aside for the report's "
                   "output SQNR (default: 1/8 of them, 1 to 4; none under 8 samples)")


def _add_calib_options(q) -> None:
    q.add_argument("--calib", metavar="DATA", help="calibration data: an .npz with one array per model input "
                   "(leading sample axis) or a directory of .npz files, one sample each")
    q.add_argument("--calib-text", metavar="FILE", help="calibration text, tokenized into --samples windows of "
                   "--seq-len tokens (a file, or a built-in source: licenses)")
    q.add_argument("--tokenizer", metavar="NAME|tokenizer.json", help="tokenizer for --calib-text (a `qc models` "
                   "name or a tokenizer.json; default: the model's own when qc built it)")
    q.add_argument("--seq-len", type=int, default=128, metavar="N",
                   help="tokens per calibration window (default %(default)s)")
    q.add_argument("--samples", type=int, default=32, metavar="N", help="calibration windows (default %(default)s)")
    q.add_argument("--calib-cache", metavar="FILE", help="reuse calibration statistics from FILE when they match "
                   "the model and data (written after calibrating)")


def _add_pm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--load-pass", action="append", default=[], metavar="FILE.py",
                   help="import passes from a Python file (repeatable)")
    p.add_argument("--print-ir-before", action="append", default=[], metavar="PASS",
                   help="print the IR before these passes (comma list, repeatable)")
    p.add_argument("--print-ir-after", action="append", default=[], metavar="PASS")
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass")
    p.add_argument("--dump-ir-dir", metavar="DIR", help="write the IR before and after every pass into DIR")
    p.add_argument("--timing", action="store_true", help="print time per pass")
    p.add_argument("--no-verify-each", action="store_true", help="do not run the verifier after each pass")


# -- helpers ---------------------------------------------------------------------------------
# -- commands --------------------------------------------------------------------------------
def cmd_show(args) -> int:
    module = load_module(args.model, args)
    if args.summary:
        sys.stdout.write(summarize(module))
        return 0
    if args.output:
        write_module(module, args.output, args, [args.model])
        return 0
    from .ir.printer import print_ir

    sys.stdout.write(print_ir(module, elide_above=_elide(args)))
    return 0


def cmd_opt(args) -> int:
    from .pm import PassContext

    spec = _pipeline_spec(args)
    ctx = PassContext()
    pm, _ = build_pass_manager(spec, args, ctx)
    module = load_module(args.input, args)
    if args.samples < 1 or args.seq_len < 2:
        raise QCError(f"--samples must be >= 1 and --seq-len >= 2 (got {args.samples} and {args.seq_len})")
    data = _calibration_from_flags(args, module, model=args.input)
    if data is not None:
        ctx.calibration_data, ctx.calibration_cache, ctx.quiet = data, args.calib_cache, True
    pm.run(module)
    if args.output:
        write_module(module, args.output, args, [args.input])
    else:
        from .ir.printer import print_ir

        sys.stdout.write(print_ir(module, elide_above=_elide(args)))
    write_remarks(ctx.remarks, listing=args.remarks, stream=sys.stdout if args.output else sys.stderr)
    return 0


def write_remarks(remarks: Sequence[str], *, listing: bool, stream) -> None:
    """``remark: ...`` lines (--remarks), else one line counting them per pass (nothing without remarks)."""
    if listing:
        stream.writelines(f"remark: {remark}\n" for remark in remarks)
    elif remarks:
        per_pass = collections.Counter(r[1:r.index("]")] for r in remarks)
        stream.write("remarks: " + ", ".join(f"{n} from {p}" for p, n in per_pass.items())
                     + " (--remarks lists them)\n")


def cmd_passes(args) -> int:
    import dataclasses
    import inspect
    import typing

    from .pm import all_passes, get_pass, load_pass_file, named_pipelines

    for path in args.load_pass:
        load_pass_file(path)
    selected = {args.name: get_pass(args.name)} if args.name else all_passes()
    out = []
    for name, cls in selected.items():
        hints = typing.get_type_hints(cls)
        out.append(name)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            tname = getattr(hints.get(f.name), "__name__", None) or str(hints.get(f.name)).replace("typing.", "")
            out.append(f"  {f.name.replace('_', '-')}: {tname} = {default!r}")
        doc = inspect.getdoc(cls) or "(no description)"
        out.extend("    " + line if line else "" for line in doc.splitlines())
        out.append("")
    if not args.name:
        out.append("named pipelines:")
        for name, (spec, description) in named_pipelines().items():
            out.append(f"  {name}: {spec}" + (f"  ({description})" if description else ""))
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def cmd_compile(args) -> int:
    from . import driver
    from .targets import load_target

    target = load_target(args.target)  # an unknown target or a bad option fails before the model is read
    kind = driver.output_kind(args.output, target, args.emit)
    driver.check_output_path(args.output, kind)
    if kind != "c" and (args.emit_harness or args.max_context is not None or (args.shape and kind != "tflite")):
        raise QCError("--shape, --max-context and --emit-harness describe C output",
                      hint="add --emit c (or -o a directory)")
    if args.shape and args.max_context is not None:
        raise QCError("give --shape (a fixed-shape forward pass) or --max-context (the C decode runtime "
                      "of a KV-cache decoder), not both")
    if args.threads is not None:
        if kind != "c":
            raise QCError("--threads describes C output", hint="add --emit c (or -o a directory)")
        from .backends.c import check_threads

        check_threads(target, args.threads)
    if args.quant is None and (args.calib or args.calib_text):
        raise QCError("calibration data is only used with --quant", hint="add --quant w8a8 (or another scheme)")
    if args.quant is None and args.report:
        raise QCError("--report describes a quantized model", hint="add --quant SCHEME")
    if args.accuracy and args.quant is None:
        raise QCError("--accuracy needs --quant SCHEME")
    if getattr(args, "rotate", None) and args.quant is None:
        raise QCError("--rotate is a step of quantization", hint="add --quant SCHEME, or rotate the float "
                      "model with `qc opt MODEL -p rotate -o OUT.onnx`")
    quant = _quant_options(args, target) if args.quant else None
    pipeline = None if quant is not None else _pipeline_spec(args)
    if quant is not None and args.pipeline is not None:
        raise QCError("give either --quant or -p, not both", hint="--quant runs the scheme's pipeline; "
                      "`qc passes` shows it, and -p runs an edited copy")
    instruments, _ = build_instruments(args)
    search = None
    if args.accuracy:
        from .cli_accuracy import run_accuracy

        def search(make_pm, spec, module, ctx, holdout):
            return run_accuracy(args, spec, module, ctx, make_pm, holdout, lambda a: _eval_tokenizer(a, encoder=False))

    shapes = None
    if kind in ("c", "tflite"):
        from .backends.c import parse_shapes

        shapes = parse_shapes(args.shape)
    from .cli_accuracy import make_executor

    executor = make_executor(args) if args.accuracy else None
    external = _EXTERNAL[args.external_data]
    try:
        result = driver.compile(
            args.model, target=target, quant=quant, pipeline=pipeline,
            calibration=((lambda module: _calibration_from_flags(args, module))
                         if quant is not None and (args.calib or args.calib_text) else None),
            calibration_cache=args.calib_cache, holdout=args.holdout, jobs=args.jobs, emit=kind, shapes=shapes,
            bind=_bind(args), fallback=args.fallback, instruments=instruments, verify_each=not args.no_verify_each,
            upgrade_opset=args.upgrade_opset, infer_shapes=not args.no_infer_shapes, external=external,
            quiet=args.quiet, search=search, executor=executor, max_context=args.max_context,
            prefill_chunk=args.prefill_chunk)
    finally:
        if executor is not None:
            executor.close()
    try:
        onnx_path = result.write(args.output, external=external, harness=args.emit_harness, threads=args.threads)
        if args.report_json:
            _write_json(args.report_json, result.report if result.report is not None
                        else {"placement": result.placement}, [args.model, args.output])
        if not args.quiet:
            _print_compile(args, result, onnx_path)
        sys.stdout.flush()
        for warning in result.warnings:
            sys.stderr.write(f"qc: warning: {warning}\n")
    finally:
        result.close()
    return 0


_EXTERNAL = {"auto": None, "always": True, "never": False}


def _print_compile(args, result, onnx_path: str) -> None:
    out = sys.stdout
    out.write(f"qc compile: {args.model} -> {args.output} (target {result.target.name})\n")
    out.write(f"pipeline: {result.pipeline}\n")
    out.write("before:\n" + _indent(result.before) + "after:\n" + _indent(result.after))
    out.write(f"export: {1e3 * result.seconds['export']:.1f} ms\n")
    if result.c_report is not None:
        from .backends.c import format_report as format_c_report

        out.write(format_c_report(result.c_report))
    if result.tflite_report is not None:
        r = result.tflite_report
        out.write(f"tflite: {r['operators']} operators ("
                  + ", ".join(f"{n} x {k}" for k, n in r["by_type"].items()) + "), "
                  + ("int8 NHWC inputs " if r.get("nhwc", True) else "inputs ")
                  + ", ".join(f"{i['name']} {'x'.join(map(str, i['shape']))}"
                              + ("" if i["dtype"] == "int8" else f" {i['dtype']}") for i in r["inputs"]) + "\n")
    if result.vela is not None:
        from .backends.tflite.vela import format_vela

        out.write(format_vela(result.vela))
    if result.report is not None:
        from .tools.report import format_report

        out.write(format_report(result.report, per_layer=args.report))
        if result.accuracy is not None:
            from .cli_accuracy import format_accuracy

            out.write(format_accuracy(result.accuracy))
    from .targets.report import format_placement

    out.write("placement: " + format_placement(result.placement, units=False))
    write_remarks(result.remarks, listing=args.remarks, stream=out)


def cmd_report(args) -> int:
    from .passes.split_outliers import SplitOutliers
    from .pm import PassContext, PassManager, named_pipelines
    from .tools.plot import Chart, outlier_html

    if args.html:
        _refuse_overwrite(args.html, [args.model])
    module = load_module(args.model, args)
    data = _calibration_from_flags(args, module)
    if data is None:
        raise QCError("qc report needs calibration data", where=args.model,
                      hint="give --calib DATA.npz or --calib-text FILE --tokenizer T")
    ctx = PassContext(calibration_data=data, calibration_cache=args.calib_cache, quiet=True)
    PassManager.parse(named_pipelines()["default"][0] + ",calibrate{ops=MatMul,activation-pairs=false}",
                      ctx=ctx).run(module)
    splitter = SplitOutliers(mode=args.outlier_mode, threshold=args.outlier_threshold,
                             max_fraction=args.outlier_fraction)
    plans = splitter.plan(module, ctx.calibration, keep_empty=True)
    charts = [Chart(p.x.name, [op.name or op.results[0].name for op in p.ops], p.stats.channel_absmax,
                    [int(c) for c in p.columns], p.reason) for p in plans]
    kept, total = sum(len(c.columns) for c in charts), sum(c.absmax.size for c in charts)
    summary = (f"{len(charts)} activations read by MatMuls with constant weights; split-outliers "
               f"(mode {args.outlier_mode}) keeps {kept} of {total} columns in float16 "
               f"({100 * kept / max(total, 1):.2f}%); calibration: {len(data)} samples")
    out = sys.stdout
    out.write(f"qc report: {args.model}\n{summary}\n")
    width = max([len(c.activation) for c in charts] + [10])
    out.write(f"{'activation':<{width}}  {'max |x|':>10}  {'>= ' + format(args.outlier_threshold, 'g'):>8}  float16\n")
    for c in sorted(charts, key=lambda c: -float(c.absmax.max()))[:args.top]:
        over = int((c.absmax >= args.outlier_threshold).sum())
        out.write(f"{c.activation:<{width}}  {float(c.absmax.max()):>10.4g}  {over:>8}  "
                  f"{len(c.columns)} of {c.absmax.size}\n")
    if args.html:
        from .fileio import atomic_write

        with atomic_write(args.html, "w") as f:
            f.write(outlier_html(f"qc report: {os.path.basename(args.model)}", charts, args.outlier_threshold, summary))
        out.write(f"charts: {args.html}\n")
    return 0


def cmd_targets(args) -> int:
    from .targets import builtin_targets, load_target

    if not args.name:
        rows = [load_target(name) for name in builtin_targets()]
        w = max(len(t.name) for t in rows)
        for t in rows:
            devices = ",".join(d + ("*" if d == t.preferred_device and len(t.devices) > 1 else "")
                               for d in t.devices)
            sys.stdout.write(f"{t.name:<{w}}  {t.backend:<6}  {devices:<12}  {t.description}\n")
        sys.stdout.write("(* = preferred device; `qc targets NAME` shows a target's kernel table)\n")
        return 0
    t = load_target(args.name)
    sys.stdout.write(f"{t.name}: {t.description}\n")
    sys.stdout.write(f"  features: {', '.join(t.features) or '-'}\n"
                     f"  devices: {', '.join(t.devices)} (preferred: {t.preferred_device})\n"
                     f"  backend: {t.backend}\n")
    if t.cc:
        sys.stdout.write(f"  compiler: {t.cc} {' '.join(t.cflags)}\n")
    if t.qemu:
        note = f"  ({t.qemu_note})" if t.qemu_note else ""
        sys.stdout.write(f"  qemu: {' '.join(t.qemu)}{note}\n")
    if t.memory:
        from .tools.budget import fmt_bytes as b

        m = t.memory
        sys.stdout.write(f"  memory: RAM {b(m.ram)} ({b(m.ram_range[0])} to {b(m.ram_range[1])}), flash {b(m.flash)} "
                         f"({b(m.flash_range[0])} to {b(m.flash_range[1])}), "
                         f"{'checked' if m.enforce else 'not checked'}  -- {m.source}\n")
    for dev in t.devices:
        table = t.kernels.get(dev, [])
        sys.stdout.write(f"  kernels on {dev} ({len(table)}):\n")
        for k in table:
            sys.stdout.write(f"    {k.describe()}  -- {k.source}\n")
    return 0


def cmd_check(args) -> int:
    import json

    from .backends.c import parse_shapes
    from .passes.bind_inputs import bind_spec
    from .passes.fix_shapes import FixShapes, assumed_shapes
    from .pm import PassContext, PassManager, parse_pass
    from .targets import load_target
    from .targets.report import format_placement, placement_report

    target = load_target(args.target)  # an unknown target fails here, before the model is read
    given = parse_shapes(args.shape)  # qc compile --shape's syntax
    bind = _bind(args)
    module = load_module(args.model, args)
    ctx = PassContext(target=target)
    if bind:
        PassManager([parse_pass(bind_spec(bind))], ctx=ctx).run(module)
    shapes, assumed = assumed_shapes(module, given)
    items = tuple(f"{name}:{'x'.join(map(str, dims))}" for name, dims in {**given, **shapes}.items())
    FixShapes(shapes=items, partial=True).run(module, ctx)  # its errors name the --shape item, not a pipeline
    PassManager([parse_pass("propagate-shapes"), parse_pass("check-kernels")], ctx=ctx).run(module)
    assert ctx.placement is not None
    report = placement_report(target, ctx.placement, shapes={"inputs": {k: list(v) for k, v in shapes.items()},
                                                             "given": sorted(given), "assumed": assumed})
    from .tools.budget import estimate

    memory = estimate(target, module, assumed_dims=bool(assumed))
    if memory is not None:
        report["memory"] = memory
    from .quant.outliers import int8_row_ops
    from .tools import guardrails

    row_ops = int8_row_ops(module, target)
    if row_ops:
        report["int8_rows"] = _int8_rows_check(args, module, target, row_ops)
    if target.vela is not None and any(op.qualified_type == "onnx.QuantizeLinear" for op in module.walk()):
        report["vela"] = _vela_check(args, module, target, report)
    elif target.vela is not None:
        report["vela"] = {"not_run": "the model is not quantized, and Vela compiles int8 TFLite (qc compile "
                                     "--quant w8a8 writes it; qc check of its NAME.qdq.onnx with --calib runs Vela)"}
    if args.report_json:
        from .fileio import atomic_write

        with atomic_write(args.report_json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_placement(report, units=not args.brief))
        sys.stdout.writelines(f"{line}\n" for line in (memory or {}).get("lines", ()))
        rows = report.get("int8_rows")
        if rows and "not_run" in rows:
            sys.stdout.write(f"int8 rows: not checked: {rows['not_run']}\n")
        elif rows:
            sys.stdout.write(f"int8 rows: {len(rows['ops'])} MatMulNBits with A quantized per row on this target's "
                             f"runtime, checked on {rows['samples']} samples: {len(rows['warnings'])} warned\n")
            sys.stdout.writelines(f"{line}\n" for line in guardrails.format_warnings(rows["warnings"], True))
        if "vela" in report and "not_run" in report["vela"]:
            sys.stdout.write(f"vela: not run: {report['vela']['not_run']}\n")
        elif "vela" in report:
            from .backends.tflite.vela import format_vela

            sys.stdout.write(format_vela(report["vela"]))
    return 0


def _calib_feeds(args, module) -> list:
    """The ``--calib`` samples as feeds of the module ([] without --calib)."""
    if not args.calib:
        return []
    from .calib.data import load_inputs

    data = load_inputs(module, lambda: None, npz=args.calib, text=None, samples=None, seq_len=0,
                       flags=("--calib", "--calib-text"))
    return list(data.feeds(module)) if data is not None else []


def _int8_rows_check(args, module, target, row_ops) -> dict:
    """The ``int8-rows-outliers`` guardrail on a compiled model: its MatMulNBits inputs observed
    in onnxruntime on the --calib samples (up to 512 rows each)."""
    from types import SimpleNamespace

    import numpy as np

    from .onnx.evaluator import module_session
    from .tools import guardrails

    names = [op.name or op.results[0].name for op in row_ops]
    feeds = _calib_feeds(args, module)
    if not feeds:
        return {"ops": names, "not_run": f"{len(names)} MatMulNBits run with A quantized to int8 per row on "
                                         f"{target.onnx.runtime}; give --calib DATA.npz to check their rows "
                                         "for outlier features"}
    values = list({op.operands[0].name: op.operands[0] for op in row_ops}.values())
    session = module_session(module, extra_outputs=values)
    rows: dict[str, list] = {v.name: [] for v in values}
    for feed in feeds:
        for v, x in zip(values, session.run([v.name for v in values], feed)):
            if sum(len(r) for r in rows[v.name]) < 512:
                rows[v.name].append(np.asarray(x, np.float32).reshape(-1, x.shape[-1]))
    stats = {name: SimpleNamespace(row_sample=np.concatenate(r)[:512]) for name, r in rows.items()}
    warnings = [w.as_dict() for w in guardrails.int8_rows(module, stats, target)]
    return {"ops": names, "samples": len(feeds), "warnings": warnings}


def _vela_check(args, module, target, report) -> dict:
    """Vela's placement of the quantized model (the truth) beside qc's table (backends/tflite)."""
    from .backends.tflite import vela_check

    samples = _calib_feeds(args, module)
    try:
        return vela_check(module, target, samples, report["placement"], source=args.model)
    except QCError as e:
        if args.calib or "no calibration range" not in str(e):
            raise
        why = str(e).split("; the TFLite backend")[0].replace(f"{args.model}: ", "", 1)
        return {"not_run": f"{why}; give --calib DATA.npz (the samples qc compile was calibrated with)"}


def _fmt_db(value: float) -> str:
    return "inf (identical)" if value == float("inf") else f"{value:.2f} dB"


def cmd_eval(args) -> int:
    import numpy as np

    from qc.tools import metrics

    from .data import text as textdata

    _existing_onnx(args.model)
    if args.ref:
        _existing_onnx(args.ref)
        _refuse_same(args.model, args.ref)
    if args.seq_len < 2:
        raise QCError(f"--seq-len must be at least 2 (got {args.seq_len})")
    if args.samples is not None and args.samples < 1:
        raise QCError(f"--samples must be at least 1 (got {args.samples})")
    if args.batch_size < 1:
        raise QCError(f"--batch-size must be at least 1 (got {args.batch_size})")
    sess = metrics.session(args.model)
    ref = metrics.session(args.ref) if args.ref else None
    text_model = metrics.is_language_model(sess) or metrics.is_encoder(sess)
    if args.inputs or args.shape or args.json or not text_model:
        from .cli_accuracy import cmd_eval_any

        return cmd_eval_any(args)
    args.samples = args.samples or 64
    out = sys.stdout
    if metrics.is_language_model(sess):
        if ref is not None and not metrics.is_language_model(ref):
            raise QCError("the reference is not a language model (no input_ids -> logits)", where=args.ref)
        tok, tok_name = _eval_tokenizer(args, encoder=False)
        path = textdata.resolve_text(args.text)
        windows = textdata.token_windows(path, tok, args.seq_len, samples=args.samples)
        out.write(f"qc eval: {args.model} (language model), tokenizer {tok_name}\n"
                  f"text: {path}: {len(windows)} windows x {args.seq_len} tokens\n")
        ppl = metrics.perplexity(sess, windows, batch_size=args.batch_size)
        if args.decode:
            return _eval_decode(args, out, windows, ppl, tok_name)
        if ref is not None:
            ref_ppl = metrics.perplexity(ref, windows, batch_size=args.batch_size)
            out.write(f"perplexity: {ppl:.3f} (ref {ref_ppl:.3f}, {100 * (ppl / ref_ppl - 1):+.2f}%)\n")
            count = min(len(windows), 16)
            feeds = [metrics.token_feeds(sess, windows[i:i + 1], where=args.model) for i in range(count)]
            _write_sqnr(out, metrics.compare_outputs(sess, ref, feeds, progress=True), f"{count} windows")
        else:
            out.write(f"perplexity: {ppl:.3f}\n")
        return 0
    if metrics.is_encoder(sess):
        if ref is None:
            raise QCError("an encoder is measured against a reference; give --ref FP32.onnx", where=args.model)
        if not metrics.is_encoder(ref):
            raise QCError("the reference is not a sentence encoder (no input_ids -> sentence_embedding)",
                          where=args.ref)
        encode, tok_name = _eval_tokenizer(args, encoder=True)
        if args.sentences:
            texts = textdata.read_sentences(args.sentences)[:args.samples]
            source = args.sentences
        else:
            source = textdata.resolve_text(args.text)
            texts = textdata.sentences(source, min(args.samples, len(textdata.sentences(source))))
        out.write(f"qc eval: {args.model} (sentence encoder), tokenizer {tok_name}\n"
                  f"sentences: {len(texts)} from {source}\n")
        got = metrics.sentence_embeddings(sess, texts, encode, max_length=args.seq_len)
        want = metrics.sentence_embeddings(ref, texts, encode, max_length=args.seq_len)
        mean, low = metrics.cosine_stats(got, want)
        out.write(f"cosine vs ref: mean {mean:.6f}, min {low:.6f}\n")
        feeds = []
        for start in range(0, len(texts), 16):
            batch = texts[start:start + 16]
            if callable(encode) and not hasattr(encode, "encode"):
                ids, mask = encode(batch, max_length=args.seq_len)
            else:
                ids, mask = textdata.pad_batch(encode, batch, args.seq_len)
            feeds.append(metrics.token_feeds(sess, np.asarray(ids), np.asarray(mask), where=args.model))
        _write_sqnr(out, metrics.compare_outputs(sess, ref, feeds, progress=True), f"{len(texts)} sentences")
        return 0
    raise AssertionError("unreachable: other models go to cmd_eval_any")


def _write_sqnr(out, values: dict, over: str) -> None:
    out.write(f"sqnr vs ref ({over}): " + ", ".join(f"{k} {_fmt_db(v)}" for k, v in values.items()) + "\n")


def _refuse_same(model: str, ref: str) -> None:
    if os.path.realpath(model) == os.path.realpath(ref):
        raise QCError("--ref is the model itself", where=ref, hint="give the float32 model the quantized one came from")


def _eval_decode(args, out, windows, ppl: float, tok_name: str) -> int:
    """qc eval --decode: perplexity through the KV cache beside the one-pass figure, and with
    --ref the same for the reference and greedy agreement over --prompts prompts."""
    from .tools import metrics

    decode = metrics.decode_perplexity(args.model, windows)
    out.write(f"perplexity: {ppl:.3f} in one pass, {decode:.3f} through the decode path "
              f"({100 * (decode / ppl - 1):+.2f}%)\n")
    if args.ref is None:
        return 0
    ref_decode = metrics.decode_perplexity(args.ref, windows)
    out.write(f"reference: {ref_decode:.3f} through the decode path; model vs reference "
              f"{100 * (decode / ref_decode - 1):+.2f}%\n")
    prompts = [list(map(int, w[:16])) for w in windows[:args.prompts]]
    agree = metrics.greedy_agreement(args.model, args.ref, prompts, args.new_tokens)
    out.write(f"greedy agreement over {len(prompts)} prompts x {args.new_tokens} tokens: "
              f"{100 * agree['same_tokens']:.1f}% of tokens, first difference at token "
              f"{agree['first_divergence']:.1f} on average, {100 * agree['identical']:.0f}% identical\n")
    return 0


def cmd_models(args) -> int:
    from .models import MODELS, build, model_module

    if getattr(args, "models_command", None) == "build":
        if args.name not in MODELS:
            raise QCError(f"unknown model '{args.name}'", hint="known models: " + ", ".join(MODELS))
        if args.layers is not None and args.layers < 1:
            raise QCError(f"--layers must be at least 1 (got {args.layers})")
        if not args.output.endswith(".onnx"):
            raise QCError("unknown output kind", where=args.output, hint="use a .onnx file name")
        model_module(args.name)
        t0 = time.perf_counter()
        build(args.name, args.output, layers=args.layers, kv_cache=args.kv_cache)
        size = os.path.getsize(args.output)
        layers = (f", {args.layers} layers" if args.layers else "") + (", KV cache" if args.kv_cache else "")
        sys.stdout.write(f"qc models build: {args.name}{layers} -> {args.output} "
                         f"({size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)\n")
        return 0
    width = max(map(len, MODELS))
    for name, (_, description) in MODELS.items():
        sys.stdout.write(f"{name:<{width}}  {description}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
