"""``qc analyze``, ``qc compile --accuracy`` and ``qc eval`` of any model against a reference: the command-line
side of qc.tools.analyze / mixed / evaluate."""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

from .errors import QCError


def add_parallel_options(p) -> None:
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="evaluate configurations in N local worker processes (default 1: in this process)")
    p.add_argument("--ray", metavar="ADDRESS", help="evaluate and calibrate on a Ray cluster ('auto', 'local' or "
                   "host:port; needs `pip install qc[ray]`): the model and samples travel through Ray's object "
                   "store, so the machines need share no files; --jobs N is the CPUs of 'local'")
    p.add_argument("--ray-retries", type=int, default=3, metavar="N", help="submit a failed Ray task again up to N "
                   "times (a worker died, or the task raised), each retry reported (default %(default)s)")


def make_executor(args):
    """The RayExecutor of --ray, or None."""
    if not getattr(args, "ray", None):
        return None
    from .tools.cluster import RayExecutor

    if args.ray_retries < 0:
        raise QCError(f"--ray-retries must be 0 or more, not {args.ray_retries}")
    return RayExecutor(args.ray, jobs=args.jobs, retries=args.ray_retries, quiet=getattr(args, "quiet", False))


def add_analyze_parser(sub, common, add_quant_options, add_other_options) -> None:
    an = sub.add_parser("analyze", parents=[common], help="per-layer quantization sensitivity, ranges and outliers, "
                        "and how the error splits between weights and activations")
    an.add_argument("model", help=".onnx or .qir file")
    an.add_argument("--target", default="x86-avx2",
                    help="target whose defaults the scheme follows (default %(default)s)")
    an.add_argument("--metric", choices=("sqnr", "cosine", "ppl"), default="sqnr",
                    help="score of a configuration against the float model: SQNR of the first output (default), "
                         "mean cosine of its rows (encoders), or perplexity (language models)")
    an.add_argument("--exact", action="store_true", help="also each layer's weights alone, activations alone, and "
                    "all layers but it (3 more evaluations per layer)")
    an.add_argument("--top", type=int, default=20, metavar="N",
                    help="layers listed on the terminal (default %(default)s)")
    an.add_argument("--html", metavar="FILE", help="write the report with plots to this HTML file")
    an.add_argument("--json", metavar="FILE", help="write the scores as JSON")
    add_parallel_options(an)
    add_quant_options(an)
    add_other_options(an)
    an.set_defaults(func=cmd_analyze)


def add_accuracy_options(comp) -> None:
    g = comp.add_argument_group("accuracy-driven mixed precision (docs/quantization.md)")
    g.add_argument("--accuracy", metavar="CRITERION", help="keep the fewest most sensitive layers in float16 until "
                   "CRITERION holds: 'cosine>=0.995', 'sqnr>=30' or 'ppl<=+2%%'")
    g.add_argument("--eval-text", metavar="FILE", help="text for the criterion (token windows; a built-in source "
                   "or a file); default: the held-aside calibration samples")
    g.add_argument("--eval-data", metavar="NPZ", help="inputs for the criterion, as for --calib")
    g.add_argument("--eval-samples", type=int, default=8, metavar="N", help="windows / samples for the criterion "
                   "(default %(default)s)")
    add_parallel_options(g)


def _feeds_from(data, module) -> list[dict]:
    from .calib.data import conform

    inputs = {v.name: v for v in module.graph.inputs}
    return [conform(data.sample(i), inputs) for i in range(len(data))]


def _eval_feeds(args, module, holdout: list, tokenizer_for) -> list[dict]:
    from .calib.data import load_inputs

    data = load_inputs(module, lambda: tokenizer_for(args)[0], npz=args.eval_data, text=args.eval_text,
                       samples=args.eval_samples, seq_len=args.seq_len, flags=("--eval-data", "--eval-text"))
    if data is None:
        if not holdout:
            raise QCError("--accuracy needs evaluation data", hint="give --eval-text / --eval-data, or calibration "
                          "data with held-aside samples (--holdout N)")
        return holdout
    return _feeds_from(data, module)


def quantize_for_analysis(spec: str, module, make_pm) -> tuple[Any, list, dict, str]:
    """Run the scheme's pipeline up to the QDQ model with the float weights kept, install the
    switchboard; returns (the pass manager, switches, float consts, the rest of the pipeline)."""
    from .tools.mixed import quantize_with_switches, split_tail

    head, tail = split_tail(spec)
    pm = make_pm(head)
    switches, consts = quantize_with_switches(pm, module)
    return pm, switches, consts, tail


def _runner(args, module, switches, feeds, metric, executor=None):
    from .tools.analyze import Runner

    if args.jobs < 1:
        raise QCError(f"--jobs must be at least 1, not {args.jobs}")
    return Runner(module, switches, feeds, metric=metric, jobs=args.jobs, ray_address=args.ray, executor=executor,
                  workdir=os.path.dirname(os.path.abspath(getattr(args, "output", None) or args.model)))


def run_accuracy(args, spec: str, module, ctx, make_pm, holdout: list, tokenizer_for) -> tuple[Any, dict]:
    """``--accuracy``: rank the layers (SQNR on the held-aside samples), search the float16 set on the
    evaluation data, freeze the switchboard, run the rest of the pipeline. Returns (pm, report)."""
    from .tools.analyze import analyze
    from .tools.mixed import Criterion, search
    from .tools.switchboard import freeze

    criterion = Criterion.parse(args.accuracy)
    t0 = time.perf_counter()
    eval_feeds = _eval_feeds(args, module, holdout, tokenizer_for)  # read against the model's own inputs
    pm, switches, _, tail = quantize_for_analysis(spec, module, make_pm)
    rank_feeds = holdout[:4] if holdout else None
    ranker = _runner(args, module, switches, rank_feeds or eval_feeds[:2], "sqnr", ctx.executor)
    evaluator = _runner(args, module, switches, eval_feeds, criterion.metric, ctx.executor)
    try:
        ranking = analyze(ranker)
        order = [r.name for r in ranking.ranking()]
        result = search(evaluator, order, criterion)
        reference = evaluator.reference_and_scorer()
    finally:
        ranker.close()
        evaluator.close()
    freeze(module, switches, set(result.float_units), fp16=True)
    if tail:
        make_pm(tail).run(module)
    final = _final_score(module, reference, eval_feeds, criterion.metric)
    report = {
        "criterion": str(criterion), "met": criterion.holds(final, result.float_score), "score": final,
        "search_score": result.score,
        "threshold": criterion.threshold(result.float_score), "float_score": result.float_score,
        "layers": len(switches), "float16_layers": result.float_units,
        "ranking_evaluations": ranker.evaluations, "search_evaluations": result.evaluations,
        "tried": [{"float16_layers": k, "score": s} for k, s in result.tried],
        "seconds": time.perf_counter() - t0,
    }
    if ctx.executor is not None and hasattr(ctx.executor, "retried"):
        report["ray_retries"] = list(ctx.executor.retried)
        report["ray_tasks"] = ctx.executor.completed
    return pm, report


def _final_score(module, reference, feeds: list[dict], metric: str) -> float:
    """The criterion on the model as written (float16 weights for the kept layers), against the
    same float reference the search used."""
    from .onnx.evaluator import module_session
    from .tools.analyze import score_of

    sess = module_session(module)
    name = reference.output
    outputs = [sess.run([name], f)[0] for f in feeds]
    return score_of(metric, reference.reference, outputs, reference.input_ids)


def format_accuracy(r: dict) -> str:
    status = "met" if r["met"] else "NOT met (best configuration found written)"
    lines = [f"accuracy: {r['criterion']} {status}: {r['score']:.6g} for the written model (threshold "
             f"{r['threshold']:.6g}; float model {r['float_score']:.6g}; in the search {r['search_score']:.6g})",
             f"  {len(r['float16_layers'])} of {r['layers']} layers kept in float16, the rest quantized; "
             f"{r['ranking_evaluations']} cheap evaluations to rank the layers + {r['search_evaluations']} "
             f"evaluations of the criterion ({r['seconds']:.1f} s)"]
    if r["float16_layers"]:
        shown = ", ".join(r["float16_layers"][:8]) + (" ..." if len(r["float16_layers"]) > 8 else "")
        lines.append(f"  float16: {shown}")
    lines.append("  tried: " + ", ".join(f"{t['float16_layers']} float16 -> {t['score']:.6g}" for t in r["tried"]))
    if r.get("ray_retries"):
        lines.append(f"  ray: {len(r['ray_retries'])} task(s) retried after a failure; every task completed")
    return "\n".join(lines) + "\n"


def cmd_analyze(args: argparse.Namespace) -> int:
    import json

    from . import cli_common
    from .calib.data import split_holdout
    from .pm import PassContext
    from .quant import schemes
    from .targets import load_target
    from .tools.analyze import analyze
    from .tools.analyze_report import activation_ranges, analysis_html, format_analysis, weight_ranges
    from .tools.mixed import layer_inputs

    for path in (args.html, args.json):
        if path:
            cli_common._refuse_overwrite(path, [args.model])
    target = load_target(args.target)
    quant = cli_common._quant_options(args, target)
    if not quant.scheme:
        raise QCError("qc analyze needs --quant SCHEME")
    quant = schemes.with_calibration(quant)   # analyze always has calibration data (checked below)
    spec = schemes.pipeline(quant)
    args.upgrade_opset = max(args.upgrade_opset or 0, schemes.needs_opset(quant))
    ctx = PassContext(target=target)
    module = cli_common.load_module(args.model, args)
    data = cli_common._calibration_from_flags(args, module)
    if data is None:
        raise QCError("qc analyze needs calibration data", where=args.model,
                      hint="give --calib DATA.npz or --calib-text FILE --tokenizer T")
    data, holdout = split_holdout(data, args.holdout, module)
    ctx.calibration_data, ctx.calibration_cache, ctx.quiet, ctx.jobs = data, args.calib_cache, True, args.jobs
    executor = ctx.executor = make_executor(args)
    try:
        pm, switches, consts, _ = quantize_for_analysis(
            spec, module, lambda s: cli_common.build_pass_manager(s, args, ctx)[0])
        runner = _runner(args, module, switches, holdout, args.metric, executor)
        try:
            result = analyze(runner, exact=args.exact)
        finally:
            runner.close()
    finally:
        if executor is not None:
            executor.close()
    stats = ctx.calibration
    inputs = layer_inputs(module, switches, stats)
    acts = activation_ranges(stats, inputs)
    weights = weight_ranges(consts, {s.name: s.weight_name for s in switches if s.weight_name})
    text = format_analysis(result, top=args.top, acts=acts, weights=weights)
    where = f"ray {args.ray}" if args.ray else f"{args.jobs} jobs"
    sys.stdout.write(f"qc analyze: {args.model}, --quant {quant.scheme}, {len(switches)} quantized layers ({where})\n")
    sys.stdout.write(text)
    if executor is not None:
        sys.stdout.write(executor.summary())
    if args.json:
        from .fileio import atomic_write

        with atomic_write(args.json, "w") as f:
            json.dump({"metric": result.metric, "samples": result.samples,
                       "all_quantized": result.all_quantized, "weights_only": result.weights_only,
                       "activations_only": result.activations_only, "evaluations": result.evaluations,
                       "ranking": [vars(r) for r in result.ranking()], "activations": acts, "weights": weights},
                      f, indent=2, default=float)
            f.write("\n")
    if args.html:
        from .fileio import atomic_write

        with atomic_write(args.html, "w") as f:
            f.write(analysis_html(f"qc analyze: {os.path.basename(args.model)} --quant {quant.scheme}",
                                  result, text, stats, inputs))
        sys.stdout.write(f"report: {args.html}\n")
    return 0


# -- qc eval for any model ------------------------------------------------------------------------
def cmd_eval_any(args: argparse.Namespace) -> int:
    """``qc eval MODEL --reference REF`` for any model: per output SQNR, cosine, max error and top-1
    (qc.tools.evaluate) on inputs from ``--inputs`` or generated from the reference's signature."""
    import json

    import numpy as np

    from .calib.data import check_against, conform, from_npz
    from .driver import load_model
    from .tools import evaluate

    if not args.ref:
        from .tools.metrics import session

        sess = session(args.model)
        names_in = ", ".join(i.name for i in sess.get_inputs())
        names_out = ", ".join(o.name for o in sess.get_outputs())
        raise QCError(f"qc eval compares this model (inputs {names_in}; outputs {names_out}) with a reference "
                      "model", where=args.model, hint="give --reference FP32.onnx (perplexity and sentence "
                      "cosine need a language model, input_ids -> logits, or an encoder, -> sentence_embedding)")
    if args.inputs and args.shape:
        raise QCError("--shape sizes generated inputs; --inputs gives the inputs themselves",
                      hint="drop --shape (or --inputs)")
    module = load_model(args.ref)
    if args.inputs:
        data = from_npz(args.inputs)
        check_against(data, module)
        count = len(data) if args.samples is None else min(args.samples, len(data))
        inputs = {v.name: v for v in module.graph.inputs}
        feeds = [{k: np.asarray(a) for k, a in conform(data.sample(i), inputs).items()} for i in range(count)]
        source: dict[str, Any] = {"from": args.inputs, "samples": count}
        described = f"{count} samples from {args.inputs}"
    else:
        from .backends.c import parse_shapes

        specs = evaluate.signature(module, parse_shapes(args.shape), where=args.ref)
        count = args.samples or 16
        feeds = evaluate.generate(specs, count, args.seed)
        source = {"from": "signature", "samples": count, "seed": args.seed,
                  "generators": [s.describe() for s in specs]}
        described = f"{count} inputs generated from the signature (seed {args.seed}; " \
                    + "; ".join(s.describe() for s in specs) + ")"
    try:
        results = evaluate.compare(args.model, args.ref, feeds, progress=not args.json)
    except QCError as e:
        if args.inputs or "onnxruntime failed" not in e.bare_message:
            raise
        raise QCError(e.bare_message, where=e.where, hint=(f"{e.hint}; " if e.hint else "") + "the inputs were "
                      "generated from the signature; give real ones with --inputs X.npz") from None
    if args.json:
        json.dump({"model": args.model, "reference": args.ref, "inputs": source,
                   "outputs": {k: {m: _json_number(v) for m, v in r.items()} for k, r in results.items()}},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(f"qc eval: {args.model} vs {args.ref}, {described}\n" + format_eval(results))
    return 0


def _json_number(v: Any) -> Any:
    """inf / -inf as the strings "inf" / "-inf" (JSON has no infinities)."""
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


def format_eval(results: dict[str, dict[str, Any]]) -> str:
    """One line per output: SQNR (dB, and its per-sample min / median), cosine, max |error|, top-1."""
    def db(v: float) -> str:
        return "inf" if v == math.inf else f"{v:.2f}"

    rows = [("output", "sqnr dB", "min/median", "cosine", "max |err|", "top-1")]
    for name, r in results.items():
        top1 = (f"{100 * r['top1']:.1f}% of {r['top1_rows']}" if r.get("top1") is not None else "-")
        rows.append((name, db(r["sqnr_db"]), f"{db(r['sqnr_db_min'])}/{db(r['sqnr_db_median'])}",
                     f"{r['cosine']:.6f}", f"{r['max_abs_error']:.4g}", top1))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + "\n" + "top-1: rows whose arg-max over the last axis agrees (outputs that are float " \
        "with a last axis > 1); min/median: of the per-sample SQNR\n"
