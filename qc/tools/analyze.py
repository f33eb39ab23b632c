"""Per-layer sensitivity and accuracy-driven mixed precision over a switchboard model.

Configurations (which units run quantized) are scored against the all-float run of the same
model, on a few samples, on its ``sentence_embedding`` or ``logits`` output if it has one, else its
first: SQNR (default), mean cosine of its rows (sentence
encoders) or perplexity (language models: logits + input_ids). Scoring runs in this process, in
``jobs`` local worker processes (which load the same model file), or on a Ray cluster (the model,
switches and samples travel through its object store: qc.tools.cluster); every worker computes
the same reference with the same session, so the scores do not depend on where they ran.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qc.errors import QCError

from .switchboard import Switch, flags

METRICS = ("sqnr", "cosine", "ppl")


@dataclass(frozen=True)
class Config:
    """Which units run quantized: activations and weights separately."""
    act: frozenset[str]
    weight: frozenset[str]


def score_of(metric: str, reference: list[np.ndarray], outputs: list[np.ndarray],
             input_ids: list[np.ndarray] | None = None) -> float:
    """Higher is better for sqnr (dB) and cosine; for ppl the perplexity itself (lower is better)."""
    if metric == "sqnr":
        ref = np.concatenate([r.ravel() for r in reference]).astype(np.float64)
        got = np.concatenate([o.ravel() for o in outputs]).astype(np.float64)
        noise = float(np.sum((ref - got) ** 2))
        return math.inf if noise == 0 else 10 * math.log10(float(np.sum(ref ** 2)) / noise)
    if metric == "cosine":
        cos = []
        for r, o in zip(reference, outputs):
            r2, o2 = r.reshape(r.shape[0], -1).astype(np.float64), o.reshape(o.shape[0], -1).astype(np.float64)
            den = np.linalg.norm(r2, axis=1) * np.linalg.norm(o2, axis=1)
            cos.extend(np.where(den > 0, np.sum(r2 * o2, axis=1) / np.maximum(den, 1e-300), 1.0))
        return float(np.mean(cos))
    if metric == "ppl":
        from qc.tools.metrics import nll

        losses = [nll(o[:, :-1], ids[:, 1:]).ravel() for o, ids in zip(outputs, input_ids or [])]
        return float(np.exp(np.mean(np.concatenate(losses))))
    raise QCError(f"unknown metric '{metric}'", hint="one of " + ", ".join(METRICS))


def main_output(names: Sequence[str]) -> str:
    """The output a configuration is scored on: sentence_embedding or logits if present, else the first."""
    return next((n for n in ("sentence_embedding", "logits") if n in names), names[0])


class Scorer:
    """One onnxruntime session of the switchboard model; scores configurations."""

    def __init__(self, model: Any, switches: list[Switch], feeds: list[dict[str, np.ndarray]], metric: str):
        from qc.onnx.evaluator import PortableModel, module_session, portable_session

        if isinstance(model, (str, os.PathLike)):  # a worker: the same kind of session as in process
            import onnx

            from qc.frontend.onnx import import_onnx

            model = import_onnx(onnx.load(os.fspath(model)))
        # a PortableModel: a Ray worker's copy, the very session module_session makes here
        self.sess = portable_session(model) if isinstance(model, PortableModel) else module_session(model)
        self.switches, self.feeds, self.metric = switches, feeds, metric
        self.output = main_output([o.name for o in self.sess.get_outputs()])
        self.input_ids = [f["input_ids"] for f in feeds] if metric == "ppl" else None
        self.reference = self.outputs(Config(frozenset(), frozenset()))

    def outputs(self, config: Config) -> list[np.ndarray]:
        switch_feeds = flags(self.switches, set(config.act), set(config.weight))
        return [self.sess.run([self.output], {**f, **switch_feeds})[0] for f in self.feeds]

    def score(self, config: Config) -> float:
        return score_of(self.metric, self.reference, self.outputs(config), self.input_ids)


# -- running many configurations ------------------------------------------------------------------
_WORKER: Scorer | None = None


def _init_worker(path: str, switches: list[Switch], feeds: list, metric: str) -> None:
    global _WORKER
    _WORKER = Scorer(path, switches, feeds, metric)


def _score_in_worker(config: Config) -> float:
    assert _WORKER is not None
    return _WORKER.score(config)


def _ray_setup(shared: tuple) -> Scorer:
    """A Ray worker's scorer, from what the driver put into the object store once."""
    model, switches, feeds, metric = shared
    return Scorer(model, switches, feeds, metric)


def _ray_score(scorer: Scorer, config: Config) -> float:
    return scorer.score(config)


@dataclass
class Runner:
    """Scores lists of configurations: in process (jobs=1), in local worker processes, or on Ray."""
    module: Any
    switches: list[Switch]
    feeds: list[dict[str, np.ndarray]]
    metric: str = "sqnr"
    jobs: int = 1
    ray_address: str | None = None
    workdir: str | None = None
    executor: Any = None    # a qc.pm.Executor, e.g. qc.tools.cluster.RayExecutor (made from ray_address if not given)
    evaluations: int = 0
    seconds: float = 0.0
    _local: Scorer | None = field(default=None, repr=False)
    _pool: Any = field(default=None, repr=False)
    _shared: Any = field(default=None, repr=False)
    _own_executor: bool = field(default=False, repr=False)
    _path: str | None = field(default=None, repr=False)

    def _model_file(self) -> str:
        """The switchboard model on disk, for workers (weights in a side file)."""
        if self._path is None:
            import tempfile

            from qc.backends.onnx import save_onnx

            d = tempfile.mkdtemp(prefix="qc-analyze-", dir=self.workdir)
            self._path = os.path.join(d, "switchboard.onnx")
            save_onnx(self.module, self._path, external=True)
        return self._path

    def reference_and_scorer(self) -> Scorer:
        if self._local is None:
            self._local = Scorer(self.module, self.switches, self.feeds, self.metric)
        return self._local

    def score(self, configs: Sequence[Config], labels: Sequence[str] | None = None) -> list[float]:
        """Scores of ``configs``; ``labels`` name them in errors (a layer, a float16 set)."""
        t0 = time.perf_counter()
        configs = list(configs)
        if self.ray_address or self.executor is not None:
            out = self._score_ray(configs, labels)
        elif self.jobs > 1 and len(configs) > 1:
            out = self._score_pool(configs)
        else:
            s = self.reference_and_scorer()
            out = [s.score(c) for c in configs]
        self.evaluations += len(configs)
        self.seconds += time.perf_counter() - t0
        return out

    def _portable_switches(self) -> list[Switch]:
        """The switches without their graph ops (workers need only the input names)."""
        import dataclasses

        return [dataclasses.replace(s, wheres=[]) for s in self.switches]

    def _score_pool(self, configs: list[Config]) -> list[float]:
        if self._pool is None:
            import multiprocessing

            path = self._model_file()
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(self.jobs, initializer=_init_worker,
                                  initargs=(path, self._portable_switches(), self.feeds, self.metric))
        return self._pool.map(_score_in_worker, configs, chunksize=1)

    def _score_ray(self, configs: list[Config], labels: Sequence[str] | None) -> list[float]:
        """One Ray task per configuration; the switchboard model (its ONNX bytes and weights), the
        switches and the samples go into the object store once and every task refers to them."""
        if self.executor is None:
            from .cluster import RayExecutor

            self.executor, self._own_executor = RayExecutor(str(self.ray_address), jobs=self.jobs), True
        if self._shared is None:
            from qc.onnx.evaluator import portable_model

            shared = (portable_model(self.module), self._portable_switches(), self.feeds, self.metric)
            share = getattr(self.executor, "share", None)  # RayExecutor: into the object store once
            self._shared = share(shared) if share is not None else shared

        def describe(i: int) -> str:
            what = labels[i] if labels is not None else f"configuration {i + 1} of {len(configs)}"
            return f"scoring {what}"

        return self.executor.map(_ray_setup, _ray_score, self._shared, configs, describe=describe,
                                 desc=f"{self.metric} evaluations")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None
        self._shared = None
        if self._own_executor and self.executor is not None:
            self.executor.close()
            self.executor, self._own_executor = None, False
        if self._path is not None:
            import shutil

            shutil.rmtree(os.path.dirname(self._path), ignore_errors=True)
            self._path = None


# -- the analysis ---------------------------------------------------------------------------------
@dataclass
class LayerResult:
    name: str
    op_type: str
    alone: float            # score with only this unit quantized (weights and activations)
    alone_weight: float | None = None   # only this unit's weights quantized (exact mode)
    alone_act: float | None = None      # only this unit's activations quantized (exact mode)
    all_but: float | None = None        # every unit quantized except this one (exact mode)


@dataclass
class Analysis:
    metric: str
    samples: int
    float_score: float
    all_quantized: float
    weights_only: float
    activations_only: float
    layers: list[LayerResult]
    evaluations: int
    seconds: float
    output: str = ""

    def ranking(self) -> list[LayerResult]:
        """Most sensitive first: the lowest SQNR / cosine alone, or the highest perplexity alone."""
        key = (lambda r: -r.alone) if self.metric == "ppl" else (lambda r: r.alone)
        return sorted(self.layers, key=key)


def _all(switches: list[Switch], part: str) -> frozenset[str]:
    return frozenset(s.name for s in switches if getattr(s, part))


def analyze(runner: Runner, *, exact: bool = False) -> Analysis:
    """Score the float model, the quantized one, weights-only, activations-only, and each unit alone
    (``exact``: also each unit's weights alone, activations alone, and all-but-this-unit)."""
    sw = runner.switches
    all_a, all_w = _all(sw, "act"), _all(sw, "weight")
    none = frozenset()
    configs = [Config(none, none), Config(all_a, all_w), Config(none, all_w), Config(all_a, none)]
    names = [s.name for s in sw]
    for s in sw:
        one = frozenset([s.name])
        configs.append(Config(one & all_a, one & all_w))
    if exact:
        for s in sw:
            one = frozenset([s.name])
            configs += [Config(none, one & all_w), Config(one & all_a, none), Config(all_a - one, all_w - one)]
    labels = ["the float model", "the quantized model", "the weights-only model", "the activations-only model"]
    labels += [f"layer '{n}' alone" for n in names]
    if exact:
        for n in names:
            labels += [f"layer '{n}' weights alone", f"layer '{n}' activations alone", f"all layers but '{n}'"]
    scores = runner.score(configs, labels)
    base = scores[:4]
    alone = scores[4:4 + len(sw)]
    layers = [LayerResult(n, s.op_type, a) for n, s, a in zip(names, sw, alone)]
    if exact:
        rest = scores[4 + len(sw):]
        for i, layer in enumerate(layers):
            layer.alone_weight, layer.alone_act, layer.all_but = rest[3 * i:3 * i + 3]
    return Analysis(runner.metric, len(runner.feeds), base[0], base[1], base[2], base[3], layers,
                    runner.evaluations, runner.seconds,
                    main_output([v.name for v in runner.module.graph.outputs]))
