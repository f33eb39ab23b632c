"""Quality metrics for a (quantized) model, run in onnxruntime's CPU provider.

- ``perplexity``: of a language model (input ``input_ids``, output ``logits``) on token windows:
  ``exp`` of the next-token negative log-likelihood averaged over every predicted token
  (``seq_len - 1`` per window), with the log-softmax computed in float64.
- ``sentence_embeddings`` and ``cosine_stats``: an encoder's ``sentence_embedding`` output and the
  mean / min cosine similarity of two sets of embeddings (quantized vs reference).
- ``sqnr_db`` and ``compare_outputs``: signal-to-quantization-noise ratio per output against a
  reference model, ``10 log10(sum ref^2 / sum (ref - test)^2)`` (inf when identical).
- ``latency_ms``: median wall time of ``session.run`` after warm-up.

Sessions are created with graph optimizations disabled unless ``optimize=True``, so that the
numbers describe the model as written rather than onnxruntime's rewrite of it.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from qc.data.feeds import token_feeds
from qc.errors import QCError
from qc.onnx.evaluator import ort_session

Feeds = Mapping[str, np.ndarray]
_LOGITS, _IDS, _EMBEDDING = "logits", "input_ids", "sentence_embedding"


# -- sessions -------------------------------------------------------------------------------------
def _where(model: Any) -> str | None:
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else None


def session(model: Any, *, optimize: bool = False, threads: int | None = None,
            disabled_optimizers: Sequence[str] | None = None):
    """An onnxruntime CPU session for a path, a ``ModelProto`` or an existing session (returned as is).
    ``disabled_optimizers`` names onnxruntime graph transformers to skip when ``optimize`` is on."""
    if isinstance(model, (str, os.PathLike)) and not os.path.isfile(model):
        raise QCError("no such file", where=os.fspath(model))
    try:
        return ort_session(model, optimize=optimize, threads=threads, disabled_optimizers=disabled_optimizers)
    except TypeError:
        raise
    except Exception as e:  # onnxruntime raises its own exception types for bad models
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QCError(f"onnxruntime cannot load the model: {first}", where=_where(model)) from None


def run(sess, names: Sequence[str] | None, feeds: Feeds, where: str | None = None) -> list[np.ndarray]:
    """``sess.run`` with onnxruntime's failures turned into a one-line QCError."""
    try:
        return sess.run(None if names is None else list(names), dict(feeds))
    except Exception as e:  # onnxruntime's own exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "is the tokenizer the model's own?" if "out of data bounds" in first or "indices" in first else None
        raise QCError(f"onnxruntime failed running the model: {first}", where=where, hint=hint) from None


def _progress(iterable: Iterable | None, *, total: int, desc: str, unit: str, enabled: bool):
    """A tqdm bar on stderr, shown only when ``enabled`` and stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False,
                disable=not (enabled and sys.stderr.isatty()), file=sys.stderr)


def _input_names(sess) -> list[str]:
    return [i.name for i in sess.get_inputs()]


def _output_names(sess) -> list[str]:
    return [o.name for o in sess.get_outputs()]


def is_language_model(sess) -> bool:
    return _IDS in _input_names(sess) and _LOGITS in _output_names(sess)


def is_encoder(sess) -> bool:
    return _IDS in _input_names(sess) and _EMBEDDING in _output_names(sess)


# -- perplexity -----------------------------------------------------------------------------------
def nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of ``targets`` [..., n] under ``logits`` [..., n, vocab], float64,
    via a max-shifted log-sum-exp."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(axis=-1)) + m[..., 0]
    picked = np.take_along_axis(x, np.asarray(targets, dtype=np.int64)[..., None], axis=-1)[..., 0]
    return lse - picked


def perplexity(model_path_or_proto: Any, windows: np.ndarray, batch_size: int = 1, progress: bool = True, *,
               optimize: bool = False, disabled_optimizers: Sequence[str] | None = None) -> float:
    """Perplexity of an ONNX language model over token windows int64 ``[n, seq_len]``.

    Each window is run as one sequence; the logits at positions ``0 .. seq_len-2`` predict the
    tokens at ``1 .. seq_len-1``; the result is ``exp(mean NLL)`` over all ``n * (seq_len-1)``
    predictions.
    """
    where = _where(model_path_or_proto)
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] < 2 or windows.shape[0] == 0:
        raise QCError(f"perplexity needs token windows [n >= 1, seq_len >= 2], got shape {list(windows.shape)}")
    sess = session(model_path_or_proto, optimize=optimize, disabled_optimizers=disabled_optimizers)
    if not is_language_model(sess):
        raise QCError("not a language model: perplexity needs an 'input_ids' input and a 'logits' output",
                      where=where, hint=f"inputs: {', '.join(_input_names(sess))}; "
                                        f"outputs: {', '.join(_output_names(sess))}")
    total, count = 0.0, 0
    bar = _progress(None, total=len(windows), desc="perplexity", unit="window", enabled=progress)
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        (logits,) = run(sess, [_LOGITS], token_feeds(sess, batch, where=where), where)
        if logits.ndim != 3 or logits.shape[:2] != batch.shape:
            raise QCError(f"'logits' has shape {list(logits.shape)}; expected [batch, seq, vocab] for input "
                          f"{list(batch.shape)}", where=where)
        if batch.max() >= logits.shape[-1]:
            raise QCError(f"token id {int(batch.max())} is outside the model's vocabulary of {logits.shape[-1]}",
                          where=where, hint="is the tokenizer the model's own?")
        values = nll(logits[:, :-1], batch[:, 1:])
        total += float(values.sum())
        count += values.size
        bar.update(len(batch))
    bar.close()
    return math.exp(total / count)


def decode_perplexity(model_path: str, windows: np.ndarray, *, prefill: int = 1, progress: bool = True,
                      optimize: bool = False) -> float:
    """Perplexity of a KV-cache decoder through its decode path: per window, the first
    ``prefill`` tokens in one step, then one token per step through the cache (what generation
    runs), each step's logits predicting the next token. Equals :func:`perplexity` over
    ``windows[:, prefill - 1:]``'s predictions when caching is exact; graph optimizations off
    by default, as there (onnxruntime's fused int8 kernels round otherwise than QDQ)."""
    from .generate import OrtStepper, decode_nll

    stepper = OrtStepper.load(model_path, optimize=optimize)
    total, count = 0.0, 0
    bar = _progress(None, total=len(windows), desc="decode perplexity", unit="window", enabled=progress)
    for window in np.asarray(windows):
        value, n = decode_nll(stepper, [int(t) for t in window], prefill)
        total, count = total + value, count + n
        bar.update(1)
    bar.close()
    return math.exp(total / count)


def greedy_agreement(model_path: str, ref_path: str, prompts: Sequence[Sequence[int]], new_tokens: int,
                     eos: int | None = None) -> dict[str, float]:
    """Greedy generation of ``model_path`` vs ``ref_path`` (both through their KV caches) from the same
    prompts: ``same_tokens`` (share of positions where the two generations agree, over the
    reference's length), ``first_divergence`` (mean position of the first difference, = length
    when none) and ``identical`` (share of prompts generated identically)."""
    from .generate import OrtStepper, generate

    got, want = OrtStepper.load(model_path), OrtStepper.load(ref_path)
    same = total = diverge = identical = 0
    for prompt in prompts:
        a = generate(got, prompt, new_tokens, eos=eos).generated_ids
        b = generate(want, prompt, new_tokens, eos=eos).generated_ids
        same += sum(x == y for x, y in zip(a, b))
        total += max(len(b), 1)
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        diverge += first
        identical += a == b
    n = max(len(prompts), 1)
    return {"same_tokens": same / total, "first_divergence": diverge / n, "identical": identical / n}


# -- embeddings -----------------------------------------------------------------------------------
def _encode(texts: Sequence[str], tokenizer: Any, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    if tokenizer is None:
        from qc.models.minilm import encode_batch

        ids, mask = encode_batch(list(texts), max_length=max_length)
        return np.asarray(ids, np.int64), np.asarray(mask, np.int64)
    if callable(tokenizer) and not hasattr(tokenizer, "encode"):
        ids, mask = tokenizer(list(texts), max_length=max_length)
        return np.asarray(ids, np.int64), np.asarray(mask, np.int64)
    from qc.data.text import pad_batch

    return pad_batch(tokenizer, texts, max_length)


def sentence_embeddings(model_path: Any, texts: Sequence[str], tokenizer: Any = None, *, max_length: int = 128,
                        batch_size: int = 16, progress: bool = True, optimize: bool = False,
                        disabled_optimizers: Sequence[str] | None = None) -> np.ndarray:
    """The ``sentence_embedding`` output of an encoder for each text: float32 ``[len(texts), dim]``.

    ``tokenizer``: a ``tokenizers.Tokenizer`` (sentences get its special tokens and are padded per
    batch), a callable ``(texts, max_length) -> (input_ids, attention_mask)``, or None for MiniLM's
    own ``qc.models.minilm.encode_batch``.
    """
    where = _where(model_path)
    if not texts:
        raise QCError("no sentences to embed")
    sess = session(model_path, optimize=optimize, disabled_optimizers=disabled_optimizers)
    if not is_encoder(sess):
        raise QCError("not a sentence encoder: it needs an 'input_ids' input and a 'sentence_embedding' output",
                      where=where, hint=f"inputs: {', '.join(_input_names(sess))}; "
                                        f"outputs: {', '.join(_output_names(sess))}")
    out = []
    bar = _progress(None, total=len(texts), desc="embeddings", unit="sentence", enabled=progress)
    for start in range(0, len(texts), batch_size):
        ids, mask = _encode(texts[start:start + batch_size], tokenizer, max_length)
        (emb,) = run(sess, [_EMBEDDING], token_feeds(sess, ids, mask, where=where), where)
        out.append(np.asarray(emb, dtype=np.float32).reshape(len(ids), -1))
        bar.update(len(ids))
    bar.close()
    return np.concatenate(out)


def cosine_stats(emb_a: np.ndarray, emb_b: np.ndarray) -> tuple[float, float]:
    """Mean and min of the row-wise cosine similarities of two ``[n, dim]`` arrays (float64)."""
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] == 0:
        raise QCError(f"cosine_stats needs two non-empty [n, dim] arrays of one shape, got {list(a.shape)} "
                      f"and {list(b.shape)}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    denom = na * nb
    cos = np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1.0),
                   np.where((na == 0) & (nb == 0), 1.0, 0.0))
    return float(cos.mean()), float(cos.min())


# -- SQNR -----------------------------------------------------------------------------------------
def _energies(reference: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    r = np.asarray(reference, dtype=np.float64)
    t = np.asarray(test, dtype=np.float64)
    if r.shape != t.shape:
        raise QCError(f"cannot compare outputs of shapes {list(r.shape)} and {list(t.shape)}")
    return float(np.square(r).sum()), float(np.square(r - t).sum())


def sqnr_from(signal: float, noise: float) -> float:
    """SQNR in dB from the signal and noise energies (inf without noise, -inf without signal)."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """``10 log10(sum ref^2 / sum (ref - test)^2)`` in dB, float64; inf when the arrays are equal."""
    return sqnr_from(*_energies(reference, test))


def compare_outputs(model: Any, ref_model: Any, feeds: Feeds | Iterable[Feeds], *, optimize: bool = False,
                    progress: bool = False) -> dict[str, float]:
    """SQNR in dB of each output of ``model`` against the same-named output of ``ref_model``.

    ``feeds`` is one feed dict or an iterable of them; over several, the signal and noise
    energies are summed before the ratio is taken. Outputs of ``ref_model`` that ``model`` lacks
    are an error; extra outputs of ``model`` are ignored.
    """
    sess, ref = session(model, optimize=optimize), session(ref_model, optimize=optimize)
    names = _output_names(ref)
    missing = [n for n in names if n not in _output_names(sess)]
    if missing:
        raise QCError(f"the model lacks the reference's output(s) {', '.join(missing)}", where=_where(model),
                      hint="outputs: " + ", ".join(_output_names(sess)))
    feed_list = [feeds] if isinstance(feeds, Mapping) else list(feeds)
    if not feed_list:
        raise QCError("no inputs to compare the models on")
    energy = {n: [0.0, 0.0] for n in names}
    for f in _progress(feed_list, total=len(feed_list), desc="sqnr", unit="input", enabled=progress):
        got = dict(zip(names, run(sess, names, f, _where(model))))
        want = dict(zip(names, run(ref, names, f, _where(ref_model))))
        for n in names:
            s, e = _energies(want[n], got[n])
            energy[n][0] += s
            energy[n][1] += e
    return {n: sqnr_from(s, e) for n, (s, e) in energy.items()}


# -- latency --------------------------------------------------------------------------------------
def latency_ms(model: Any, feeds: Feeds, *, runs: int = 10, warmup: int = 2, optimize: bool = True,
               threads: int | None = None, disabled_optimizers: Sequence[str] | None = None) -> float:
    """Median wall time in ms of ``runs`` calls of ``session.run`` after ``warmup`` calls.
    Optimizations are on by default here: latency is measured as a deployment would run."""
    sess = session(model, optimize=optimize, threads=threads, disabled_optimizers=disabled_optimizers)
    for _ in range(warmup):
        sess.run(None, dict(feeds))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, dict(feeds))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))
