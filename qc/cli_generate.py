"""``qc generate``: prefill a prompt, then decode token by token through the model's KV cache.

MODEL is a KV-cache ONNX decoder (run in onnxruntime) or a C output directory of one (its
decode runtime built with its Makefile and run natively or under the target's qemu). Text is
streamed to stdout as it is generated, the figures follow on stderr; ``--json`` prints one
object instead (``prompt_ids``, ``generated_ids``, ``prefill_tokens_per_s``,
``decode_tokens_per_s``, ``cache_bytes``, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .cli_common import _producer_model
from .errors import QCError


def add_generate_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    gen = sub.add_parser("generate", parents=[common], help="generate tokens with a KV-cache decoder "
                         "(an ONNX model in onnxruntime, or a C output directory)")
    gen.add_argument("model", help="KV-cache decoder: .onnx file, or a C output directory of one")
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", metavar="TEXT", help="prompt text (tokenized with --tokenizer)")
    prompt.add_argument("--prompt-ids", metavar="ID,ID,...", help="prompt as token ids")
    gen.add_argument("--chat", action="store_true", help="wrap --prompt in the model's chat template "
                     "(models qc builds)")
    gen.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="default %(default)s")
    sampling = gen.add_mutually_exclusive_group()
    sampling.add_argument("--greedy", action="store_true", help="pick the most likely token (the default)")
    sampling.add_argument("--temperature", type=float, metavar="T", help="sample at temperature T")
    gen.add_argument("--top-k", type=int, default=0, metavar="K", help="sample from the K most likely tokens")
    gen.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default %(default)s)")
    gen.add_argument("--tokenizer", metavar="NAME|tokenizer.json",
                     help="a `qc models` name or a tokenizer.json (default: the model's own when qc built it)")
    gen.add_argument("--eos", type=int, metavar="ID", help="stop at this token (default: the tokenizer's "
                     "end of sequence when known)")
    gen.add_argument("--kv-layout", default="", metavar="KEY=VALUE,...",
                     help="name the cache interface when it is not the Optimum one: ids=, mask=, positions=, "
                          "logits=, past=PATTERN, present=PATTERN ({i}: layer, {kv}: key|value)")
    gen.add_argument("--recompute", action="store_true",
                     help="no cache: run the whole sequence at every step (the reference the cache must equal)")
    gen.add_argument("--threads", type=int, metavar="N", help="onnxruntime intra-op threads")
    gen.add_argument("--json", action="store_true", help="print one JSON object, no streamed text")
    gen.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    from .onnx.kv_layout import parse_override
    from .tools.generate import OrtStepper, Sampler, generate

    override = parse_override(args.kv_layout) if args.kv_layout else None
    if args.max_new_tokens < 0:
        raise QCError(f"--max-new-tokens must be >= 0 (got {args.max_new_tokens})")
    sampler = Sampler(temperature=args.temperature or 0.0, top_k=args.top_k, seed=args.seed)
    stepper: Any
    if os.path.isdir(args.model):
        from .backends.c.decode import open_stepper

        if args.recompute or args.kv_layout or args.threads is not None:
            raise QCError("--recompute, --kv-layout and --threads are for ONNX models", where=args.model)
        stepper = open_stepper(args.model)
        onnx_path = os.path.join(args.model, "model.onnx")
    elif os.path.isfile(args.model):
        stepper = OrtStepper.load(args.model, override=override, threads=args.threads, recompute=args.recompute)
        onnx_path = args.model
    else:
        raise QCError("no such model file or C output directory", where=args.model)
    tokenizer, name = _tokenizer(args, onnx_path)
    prompt_ids = _prompt_ids(args, tokenizer, name)
    eos = args.eos if args.eos is not None else _eos(tokenizer, name)
    streamer = None if args.json or tokenizer is None else _Streamer(tokenizer)
    try:
        result = generate(stepper, prompt_ids, args.max_new_tokens, sampler, eos=eos,
                          on_token=streamer.add if streamer else None)
    finally:
        if hasattr(stepper, "close"):
            stepper.close()
    if args.json:
        sys.stdout.write(json.dumps({**result.as_json(), "cache_length": stepper.cache_length}) + "\n")
        return 0
    if streamer:
        streamer.finish()
    else:
        sys.stdout.write(",".join(map(str, result.generated_ids)) + "\n")
    sys.stderr.write(f"prefill: {len(prompt_ids)} tokens, {result.prefill_tokens_per_s:.1f} tokens/s; "
                     f"decode: {result.decode_steps} steps, {result.decode_tokens_per_s:.1f} tokens/s; "
                     f"KV cache: {result.cache_bytes / 1e6:.2f} MB at {stepper.cache_length} tokens"
                     + ("; stopped at end of sequence" if result.stopped_at_eos else "") + "\n")
    return 0


def _tokenizer(args, onnx_path: str | None) -> tuple[Any, str | None]:
    from .data.text import load_tokenizer
    from .models import MODELS

    spec = args.tokenizer or (_producer_model(onnx_path) if onnx_path else None)
    if spec is None:
        if args.prompt is not None:
            raise QCError("which tokenizer does the model use? give --tokenizer", where=args.model,
                          hint="a model name (" + ", ".join(MODELS) + ") or a tokenizer.json, or use --prompt-ids")
        return None, None
    return load_tokenizer(spec), spec if spec in MODELS else None


def _prompt_ids(args, tokenizer: Any, name: str | None) -> list[int]:
    if args.prompt_ids is not None:
        try:
            ids = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError:
            raise QCError(f"--prompt-ids must be comma-separated integers (got '{args.prompt_ids}')") from None
        if args.chat:
            raise QCError("--chat applies to --prompt text, not --prompt-ids")
        return ids
    text = args.prompt
    if args.chat:
        from .models import model_module

        template = getattr(model_module(name), "chat_prompt", None) if name else None
        if template is None:
            raise QCError("--chat needs a model whose chat template qc knows", where=args.model,
                          hint="wrap the prompt yourself and drop --chat")
        text = template(text)
    return list(tokenizer.encode(text).ids)


def _eos(tokenizer: Any, name: str | None) -> int | None:
    if name is not None:
        from .models import model_module

        special = getattr(model_module(name), "special_ids", None)
        if special is not None:
            return int(special()["eos"])
    for token in ("</s>", "<|endoftext|>", "<|im_end|>", "<eos>"):
        found = tokenizer.token_to_id(token) if tokenizer is not None else None
        if found is not None:
            return int(found)
    return None


class _Streamer:
    """Prints the text of the tokens so far as it grows (decoding the whole list each time, so
    that multi-byte characters split over tokens come out whole)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def add(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        sys.stdout.write(text[len(self.shown):])
        sys.stdout.flush()
        self.shown = text

    def finish(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        sys.stdout.write(text[len(self.shown):] + "\n")
