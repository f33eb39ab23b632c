"""What the qc command's subcommands share: reading and writing models by file name, the
pass-manager flags, quantization and calibration flags -> library arguments, tokenizers.

Only the CLI modules (qc.cli, qc.cli_accuracy) import this; no argparse object goes below them.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .errors import QCError


def load_module(path: str, args: argparse.Namespace):
    """An .onnx or .qir file -> Module."""
    from .driver import load_model

    return load_model(path, upgrade_opset=getattr(args, "upgrade_opset", None),
                      infer_shapes=not getattr(args, "no_infer_shapes", False))


def _elide(args) -> int | None:
    return None if getattr(args, "full", False) else args.elide_above


def write_module(module, path: str, args: argparse.Namespace, inputs: Sequence[str], **save_kwargs) -> None:
    """Write by extension (.onnx or .qir), atomically, refusing to overwrite an input."""
    from .driver import save_module

    save_module(module, path, elide_above=_elide(args) if hasattr(args, "elide_above") else 16,
                inputs=inputs, **save_kwargs)


def write_qir(module, path: str, elide_above: int | None) -> None:
    from .driver import write_qir as _write_qir

    _write_qir(module, path, elide_above)


def _refuse_overwrite(out: str, inputs: Sequence[str]) -> None:
    from .driver import refuse_overwrite

    refuse_overwrite(out, inputs)


def _pipeline_spec(args) -> str:
    if args.pipeline is not None:
        return args.pipeline
    if getattr(args, "named_pipeline", None):
        from .pm import named_pipelines

        pipelines = named_pipelines()
        if args.named_pipeline not in pipelines:
            raise QCError(f"unknown pipeline '{args.named_pipeline}'", hint="known: " + ", ".join(pipelines))
        return pipelines[args.named_pipeline][0]
    raise QCError("no pipeline given", hint="use -p 'pass1,pass2' (or -p '' for none) or --pipeline NAME")


def _names(values: list[str]) -> frozenset[str]:
    return frozenset(n.strip() for v in values for n in v.split(",") if n.strip())


def build_instruments(args) -> tuple[list, object]:
    """The instruments the flags ask for (--print-ir-*, --dump-ir-dir, --timing), after loading
    --load-pass files; (instruments, the Timing instrument or None)."""
    from .pm import DumpIR, PrintIR, Timing, load_pass_file

    for path in args.load_pass:
        load_pass_file(path)
    instruments: list = []
    if args.print_ir_before or args.print_ir_after or args.print_ir_after_all:
        instruments.append(PrintIR(before=_names(args.print_ir_before), after=_names(args.print_ir_after),
                                   after_all=args.print_ir_after_all, stream=sys.stderr))
    if args.dump_ir_dir:
        instruments.append(DumpIR(args.dump_ir_dir, elide_above=_elide(args) if hasattr(args, "elide_above") else 16))
    timing = Timing(stream=sys.stderr) if args.timing else None
    if timing:
        instruments.append(timing)
    return instruments, timing


def build_pass_manager(spec: str, args, ctx=None):
    from .pm import PassManager

    instruments, timing = build_instruments(args)
    pm = PassManager.parse(spec, instruments=instruments, verify_each=not args.no_verify_each, ctx=ctx)
    pm.check_instruments()
    return pm, timing


def _calibration_from_flags(args, module, model: str | None = None):
    """The calibration set --calib / --calib-text name, read against the module's inputs (or None)."""
    from .calib.data import load_inputs

    return load_inputs(module, lambda: _eval_tokenizer(args, encoder=False, model=model)[0], npz=args.calib,
                       text=args.calib_text, samples=args.samples, seq_len=args.seq_len,
                       flags=("--calib", "--calib-text"))


def _write_json(path: str, data: dict, inputs: list[str]) -> None:
    import json

    from .fileio import atomic_write

    _refuse_overwrite(path, inputs)
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def _quant_options(args, target):
    from .quant.schemes import QuantOptions

    if args.block_size is not None and (args.block_size < 16 or args.block_size & (args.block_size - 1)):
        raise QCError(f"--block-size must be a power of two, at least 16 (got {args.block_size})")
    if args.samples < 1 or args.seq_len < 2:
        raise QCError(f"--samples must be >= 1 and --seq-len >= 2 (got {args.samples} and {args.seq_len})")
    return QuantOptions(scheme=args.quant, weights=args.weights, weight_symmetric=args.weight_symmetric,
                        weight_algo=args.weight_algo, weight_search=getattr(args, "weight_search", None),
                        act_order=getattr(args, "act_order", None), block_size=args.block_size,
                        activations=args.activations,
                        calib_method=args.calib_method, ops=args.quant_ops, exclude=args.exclude,
                        form=args.format, activation_pairs=args.activation_pairs,
                        reduce_range=args.reduce_range, outliers=args.outliers, outlier_mode=args.outlier_mode,
                        outlier_threshold=args.outlier_threshold, outlier_fraction=args.outlier_fraction,
                        outlier_dtype=getattr(args, "outlier_dtype", None),
                        smooth_alpha=args.smooth_alpha, rotate=getattr(args, "rotate", None) or "",
                        kv_cache_dtype=getattr(args, "kv_cache_dtype", "float32"),
                        act_granularity=getattr(args, "act_granularity", None),
                        target_features=tuple(target.features))


def _indent(text: str) -> str:
    return "".join("  " + line + "\n" for line in text.splitlines())


def _existing_onnx(path: str) -> str:
    if not os.path.isfile(path):
        raise QCError("no such file", where=path)
    return path


def _producer_model(path: str) -> str | None:
    """The `qc models` name of a model built by qc.models (from its producer_name), else None."""
    import onnx

    from .models import MODELS

    try:
        producer = onnx.load(path, load_external_data=False).producer_name
    except Exception:
        return None
    for name, (module, _) in MODELS.items():
        if producer == f"qc.models.{module}":
            return name
    return None


def _eval_tokenizer(args, *, encoder: bool, model: str | None = None):
    """(tokenizer object or encode callable, description) for --tokenizer or the producer of the
    model (``model``, else ``args.model``) or of ``args.ref``."""
    from .data.text import load_tokenizer
    from .models import MODELS, model_module

    spec = args.tokenizer
    ref = getattr(args, "ref", None)
    model = model or args.model
    built_as = _producer_model(model) or (_producer_model(ref) if ref else None)
    if spec is not None and spec in MODELS and built_as is not None and spec != built_as:
        raise QCError(f"the model was built as {built_as} but --tokenizer names {spec}", where=model,
                      hint=f"use --tokenizer {built_as}")
    if spec is None:
        spec = built_as
        if spec is None:
            raise QCError("which tokenizer does the model use? give --tokenizer",
                          where=model, hint="a model name (" + ", ".join(MODELS) + ") or a tokenizer.json file")
    if encoder and spec in MODELS and hasattr(model_module(spec), "encode_batch"):
        return model_module(spec).encode_batch, spec
    return load_tokenizer(spec), spec


def summarize(module) -> str:
    from .driver import summarize as _summarize

    return _summarize(module)
