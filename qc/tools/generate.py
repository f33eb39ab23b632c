"""Token generation with a key/value cache: prefill the prompt once, then decode token by token.

A *stepper* runs the decoder on a few new tokens given what it has cached and returns their
logits; :func:`generate` drives any stepper (onnxruntime here, qc's C decode runtime in
``qc.backends.c.decode``) with a :class:`Sampler`::

    stepper = OrtStepper.load("smollm2-kv.onnx")
    result = generate(stepper, prompt_ids, max_new_tokens=64, sampler=Sampler(), eos=2)
    result.generated_ids, result.decode_tokens_per_s, result.cache_bytes

:class:`OrtStepper` feeds each ``present.*`` output back as the next step's ``past_*`` input
(the pairs of :mod:`qc.onnx.kv_layout`), with ``attention_mask`` all ones and ``position_ids``
counting on from the cache length. ``recompute=True`` runs the same model with an empty cache
over the whole sequence at every step: the reference that cached decoding must equal.
:func:`decode_nll` scores a text through the decode path (one token per step, through the
cache), for perplexity.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from qc.errors import QCError
from qc.onnx.kv_layout import KVLayout, Port, recognize


class Stepper(Protocol):
    """A decoder with a cache: ``step`` appends tokens and returns their logits, ``[n, vocab]``
    with ``all_logits``, else the last token's ``[1, vocab]`` (which a runtime may compute alone:
    the C decode runtime's ``prefill_last_run``)."""

    def reset(self) -> None: ...

    def step(self, token_ids: Sequence[int], all_logits: bool = False) -> np.ndarray: ...

    @property
    def cache_length(self) -> int: ...

    @property
    def cache_bytes(self) -> int: ...


@dataclass
class Sampler:
    """Greedy (``temperature == 0``) or temperature sampling from the ``top_k`` most likely tokens."""

    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise QCError(f"--temperature must be >= 0 (got {self.temperature})")
        if self.top_k < 0:
            raise QCError(f"--top-k must be >= 0 (got {self.top_k})")
        self._rng = np.random.default_rng(self.seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.temperature == 0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / self.temperature
        if 0 < self.top_k < scaled.size:
            cut = np.partition(scaled, -self.top_k)[-self.top_k]
            scaled = np.where(scaled >= cut, scaled, -np.inf)
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        return int(self._rng.choice(probs.size, p=probs))


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    generated_ids: list[int]
    prefill_seconds: float
    decode_seconds: float
    decode_steps: int
    cache_bytes: int
    stopped_at_eos: bool

    @property
    def prefill_tokens_per_s(self) -> float:
        return len(self.prompt_ids) / self.prefill_seconds if self.prefill_seconds > 0 else math.inf

    @property
    def decode_tokens_per_s(self) -> float:
        # the first new token comes out of the prefill; each further one costs one decode step
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"prompt_ids": self.prompt_ids, "generated_ids": self.generated_ids,
                "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 3),
                "decode_tokens_per_s": round(self.decode_tokens_per_s, 3),
                "decode_steps": self.decode_steps, "cache_bytes": self.cache_bytes,
                "stopped_at_eos": self.stopped_at_eos}


def generate(stepper: Stepper, prompt_ids: Sequence[int], max_new_tokens: int, sampler: Sampler | None = None,
             eos: int | None = None, on_token: Callable[[int], None] | None = None) -> GenerationResult:
    """Prefill ``prompt_ids``, then sample up to ``max_new_tokens`` tokens one step each (stopping
    after ``eos``, which is not returned)."""
    if not prompt_ids:
        raise QCError("the prompt is empty", hint="give --prompt text or --prompt-ids")
    if max_new_tokens < 0:
        raise QCError(f"--max-new-tokens must be >= 0 (got {max_new_tokens})")
    sampler = sampler or Sampler()
    stepper.reset()
    t0 = time.perf_counter()
    logits = stepper.step(list(prompt_ids))[-1]
    prefill = time.perf_counter() - t0
    generated: list[int] = []
    stopped, steps = False, 0
    t0 = time.perf_counter()
    while len(generated) < max_new_tokens:
        token = sampler(logits)
        if eos is not None and token == eos:
            stopped = True
            break
        generated.append(token)
        if on_token:
            on_token(token)
        if len(generated) == max_new_tokens:
            break
        logits = stepper.step([token])[-1]
        steps += 1
    return GenerationResult(list(prompt_ids), generated, prefill, time.perf_counter() - t0, steps,
                            stepper.cache_bytes, stopped)


def decode_nll(stepper: Stepper, ids: Sequence[int], prefill: int = 1) -> tuple[float, int]:
    """Sum of -log p(token) over ``ids[prefill:]``, each predicted through the decode path: the
    first ``prefill`` tokens in one step, then one token per step. Returns (sum, count)."""
    if not 1 <= prefill < len(ids):
        raise QCError(f"need 1 <= prefill < {len(ids)} tokens (got prefill={prefill})")
    stepper.reset()
    logits = stepper.step(list(ids[:prefill]))[-1]
    total = 0.0
    for position in range(prefill, len(ids)):
        total += _nll(logits, ids[position])
        if position + 1 < len(ids):
            logits = stepper.step([ids[position]])[-1]
    return total, len(ids) - prefill


def window_nll(stepper: Stepper, ids: Sequence[int]) -> np.ndarray:
    """-log p(token) of ``ids[1:]``, all predicted in one step from an empty cache (the
    one-pass counterpart of :func:`decode_nll`), float64 ``[len(ids) - 1]``."""
    if len(ids) < 2:
        raise QCError(f"need at least 2 tokens (got {len(ids)})")
    stepper.reset()
    logits = stepper.step(list(ids), all_logits=True)
    return np.array([_nll(logits[i], ids[i + 1]) for i in range(len(ids) - 1)])


def _nll(logits: np.ndarray, target: int) -> float:
    z = logits.astype(np.float64)
    top = z.max()
    return float(top + math.log(np.exp(z - top).sum()) - z[target])


class OrtStepper:
    """A KV-cache ONNX decoder in onnxruntime (batch 1)."""

    def __init__(self, session: Any, layout: KVLayout, *, recompute: bool = False):
        self.session, self.layout, self.recompute = session, layout, recompute
        self._outputs = [layout.logits.name] + [p.present.name for p in layout.pairs]
        self._empty = {p.past.name: _empty_cache(p.past, p.seq_axis) for p in layout.pairs}
        if layout.other_inputs:
            names = ", ".join(p.name for p in layout.other_inputs)
            raise QCError(f"the decoder has inputs qc cannot feed: {names}",
                          hint="bind them to constants (qc opt --bind NAME=VALUE) or name them with --kv-layout")
        self.reset()

    @classmethod
    def load(cls, path: str, *, override: dict[str, str] | None = None, optimize: bool = True,
             threads: int | None = None, recompute: bool = False) -> OrtStepper:
        import onnx

        from qc.onnx.evaluator import ort_session

        model = onnx.load(path, load_external_data=False)
        layout = recognize(model, override, where=path)
        if layout is None:
            raise QCError("the model has no key/value cache inputs (past_key_values.*)", where=path,
                          hint="build it with `qc models build NAME --kv-cache`, or name the cache with --kv-layout")
        return cls(ort_session(path, optimize=optimize, threads=threads), layout, recompute=recompute)

    def reset(self) -> None:
        self._cache = dict(self._empty)
        self._ids: list[int] = []

    @property
    def cache_length(self) -> int:
        return len(self._ids)

    @property
    def cache_bytes(self) -> int:
        return sum(a.nbytes for a in self._cache.values())

    def step(self, token_ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        if self.recompute:
            self._ids += list(token_ids)
            logits = self._run(self._ids, 0, self._empty)[0]
            return logits[-len(token_ids):] if all_logits else logits[-1:]
        results = self._run(list(token_ids), len(self._ids), self._cache)
        self._ids += list(token_ids)
        self._cache = {p.past.name: r for p, r in zip(self.layout.pairs, results[1:])}
        return results[0] if all_logits else results[0][-1:]

    def _run(self, ids: list[int], past: int, cache: dict[str, np.ndarray]) -> list[np.ndarray]:
        layout = self.layout
        feeds: dict[str, np.ndarray] = {layout.input_ids.name: np.asarray([ids], dtype=layout.input_ids.numpy_dtype)}
        if layout.attention_mask is not None:
            feeds[layout.attention_mask.name] = np.ones((1, past + len(ids)), layout.attention_mask.numpy_dtype)
        if layout.position_ids is not None:
            positions = np.arange(past, past + len(ids), dtype=layout.position_ids.numpy_dtype)
            feeds[layout.position_ids.name] = positions[None]
        feeds.update(cache)
        out = self.session.run(self._outputs, feeds)
        logits = out[0]
        return [logits.reshape(-1, logits.shape[-1]), *out[1:]]


def _empty_cache(port: Port, seq_axis: int) -> np.ndarray:
    shape = []
    for axis, dim in enumerate(port.dims):
        if axis == seq_axis:
            shape.append(0)
        elif axis == 0:
            shape.append(1)
        elif isinstance(dim, int):
            shape.append(dim)
        else:
            raise QCError(f"cache input '{port.name}' has a symbolic dim '{dim}' at axis {axis}: its size is unknown",
                          hint="give the model static head counts and head sizes")
    return np.zeros(shape, dtype=port.numpy_dtype)
