"""The C decode runtime: a KV-cache decoder compiled to C (one step, run-time past length, the
cache as the step's state), run under qemu-aarch64 -cpu cortex-a76 through its step harness and
compared with onnxruntime on the same ONNX (the C output's model.onnx), on 2 layers of SmolLM2."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

import qc.models
from conftest import run_qc
from qc.backends.c import toolchain
from qc.backends.c.decode import open_stepper
from qc.errors import QCError
from qc.tools.generate import OrtStepper, Sampler, decode_nll, generate
from tiny_decoder import TinyConfig, model, weights

PROMPTS = ([1, 504, 3458, 314, 260, 1345], [1, 9690, 198, 2683, 359, 253, 3761], [1, 28, 216, 4193, 1789])
CONTEXT = 128


@pytest.fixture(scope="module")
def smol_kv(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("c-decode") / "kv.onnx")
    qc.models.build("smollm2-135m", path, layers=2, kv_cache=True)
    return path


def _compile(kv: str, out: str, *quant: str) -> dict:
    toolchain.require_tools("aarch64")
    done = run_qc("compile", kv, "--target", "cortex-a76", "-o", out, "--emit-harness", "--max-context", str(CONTEXT),
                  *quant)
    assert done.returncode == 0, done.stderr
    assert "decode runtime: KV cache" in done.stdout
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def fp32_c(smol_kv, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fp32-a76") / "c")
    return out, _compile(smol_kv, out)


def _greedy(stepper, prompt: list[int], n: int) -> list[int]:
    stepper.reset()
    return generate(stepper, prompt, n, Sampler()).generated_ids


def test_fp32_greedy_tokens_equal_onnxruntime_under_qemu(smol_kv, fp32_c):
    out, report = fp32_c
    decode = report["decode"]
    # 2 layers x (key, value) x 3 kv heads x 128 slots x 64 floats
    assert decode["kv_cache_bytes"] == 2 * 2 * 3 * CONTEXT * 64 * 4
    assert decode["prefill_chunk"] == 16 and decode["prefill_last_row"]
    assert decode["ram_bytes"] == max(report["arena_bytes"], decode["prefill_arena_bytes"],
                                      decode["prefill_last_arena_bytes"]) + decode["kv_cache_bytes"]
    ort = OrtStepper.load(os.path.join(out, "model.onnx"), optimize=False)
    with open_stepper(out) as c:
        for prompt in PROMPTS:
            want, got = _greedy(ort, prompt, 32), _greedy(c, prompt, 32)
            assert got == want
        c.reset()
        ort.reset()
        ids = list(PROMPTS[0]) + [7, 8, 9]
        np.testing.assert_allclose(c.step(ids, all_logits=True), ort.step(ids, all_logits=True), atol=2e-3, rtol=0)
        assert c.cache_length == len(ids)
        _check_last_row_mode(c, ort, [(t * 7919) % 49152 for t in range(1, 36)], atol=2e-3)


def _check_last_row_mode(c, ort, ids: list[int], atol: float) -> None:
    """Two prefill chunks and 3 single steps: the last-row mode (prefill_last_run, the default
    step) gives the all-rows mode's last row bit for bit, near onnxruntime's, and leaves the same
    cache (the next step's logits are equal)."""
    assert len(ids) > 32
    c.reset()
    ort.reset()
    every, want = c.step(ids, all_logits=True), ort.step(ids, all_logits=True)
    after_every = c.step([5])
    c.reset()
    last = c.step(ids)
    assert last.shape == (1, every.shape[1]) and c.cache_length == len(ids)
    np.testing.assert_array_equal(last[0], every[-1])
    np.testing.assert_allclose(last[0], want[-1], atol=atol, rtol=0)
    np.testing.assert_array_equal(c.step([5]), after_every)
    c.reset()
    chunks = c.step(ids[:32])  # whole chunks only: the last row comes from prefill_last_run itself
    c.reset()
    np.testing.assert_array_equal(chunks[0], c.step(ids[:32], all_logits=True)[-1])


def test_the_cache_length_is_enforced(fp32_c):
    out, _ = fp32_c
    with open_stepper(out) as c:
        c.step(list(range(1, CONTEXT - 1)))
        with pytest.raises(QCError, match=f"cache holds {CONTEXT} tokens"):
            c.step([5, 6, 7])
        assert c.step([5]).shape == (1, 49152)  # the refused step computed nothing: one slot is still free
        c.reset()
        assert c.cache_length == 0 and c.step([1]).shape == (1, 49152)


def test_qc_generate_on_the_c_directory_prints_the_onnxruntime_tokens(smol_kv, fp32_c):
    out, _ = fp32_c
    args = ("--prompt-ids", "1,504,3458,314", "--max-new-tokens", "8", "--json")
    c = run_qc("generate", out, *args)
    o = run_qc("generate", os.path.join(out, "model.onnx"), *args)
    assert c.returncode == 0 and o.returncode == 0, c.stderr + o.stderr
    got, want = json.loads(c.stdout), json.loads(o.stdout)
    assert got["generated_ids"] == want["generated_ids"] and len(got["generated_ids"]) == 8
    assert got["decode_tokens_per_s"] > 0 and got["cache_length"] == want["cache_length"] == 11


@pytest.mark.parametrize("scheme", ["w8a8", "w4a8"])
def test_quantized_c_decoder_agrees_with_onnxruntime(smol_kv, tmp_path, scheme):
    """Teacher-forced: onnxruntime's 64 greedy tokens fed to both, the C's argmax at each position
    against onnxruntime's (a regression guard at today's numerics: the C's int8 kernels round
    differently from onnxruntime's QDQ float emulation; benchmarks/README.md has the figures)."""
    out = str(tmp_path / scheme)
    calib = ("--calib-text", "licenses", "--samples", "2", "--seq-len", "32", "--holdout", "0")
    report = _compile(smol_kv, out, "--quant", scheme, *calib)
    assert report["decode"]["prefill_last_row"] and "prefill_last.c" in report["files"]
    ort = OrtStepper.load(os.path.join(out, "model.onnx"), optimize=False)
    same = total = 0
    with open_stepper(out) as c:
        for prompt in PROMPTS[:2]:
            ids = list(prompt) + _greedy(ort, prompt, 64)
            ort.reset()
            c.reset()
            want, got = ort.step(ids, all_logits=True), c.step(ids, all_logits=True)
            same += int(np.sum(want.argmax(1)[len(prompt) - 1:] == got.argmax(1)[len(prompt) - 1:]))
            total += len(ids) - len(prompt) + 1
        ids = [int(t) for t in np.random.default_rng(1).integers(0, 49152, 48)]
        ort.reset()
        c.reset()
        nll_ort, n = decode_nll(ort, ids)
        nll_c, _ = decode_nll(c, ids)
        _check_last_row_mode(c, ort, ids[:40], atol=1.0)
    ratio = float(np.exp(nll_c / n) / np.exp(nll_ort / n))
    print(f"{scheme}: {same}/{total} argmax agree, decode-path perplexity C / onnxruntime {ratio:.4f}")
    assert same / total >= 0.8, f"{same}/{total} tokens agree"
    assert abs(ratio - 1) < 0.03


def test_attention_that_is_not_recognized_is_one_clear_error(tmp_path):
    cfg = TinyConfig()  # Tile-repeated key/value heads: query head j reads kv head j % kv_heads
    path = str(tmp_path / "tiny.onnx")
    onnx.save(model(cfg, weights(cfg)), path)
    done = run_qc("compile", path, "--target", "cortex-a76", "-o", str(tmp_path / "c"), "--max-context", "64")
    assert done.returncode == 2
    assert "no attention over the KV cache was recognized" in done.stderr and "Traceback" not in done.stderr


def test_max_context_needs_a_kv_cache_decoder(tmp_path):
    from conftest import small_mlp

    path = str(tmp_path / "mlp.onnx")
    small_mlp(path)
    done = run_qc("compile", path, "--target", "cortex-a76", "-o", str(tmp_path / "c"), "--max-context", "64")
    assert done.returncode == 2 and "--max-context is for KV-cache decoders" in done.stderr
    done = run_qc("compile", path, "--target", "cortex-a76", "-o", str(tmp_path / "d"), "--max-context", "64",
                  "--shape", "x=2x4")
    assert done.returncode == 2 and "not both" in done.stderr
