"""The C decode runtime on a Cortex-M55: a tiny random-weight Llama (tests/tiny_llama.py, 2 layers,
GQA, 1.7 MB of float32 weights) compiled with --target cortex-m55 --max-context, linked for qemu's
mps3-an547 board with the weights in flash and the arena and KV cache in SRAM, run under
qemu-system-arm: its greedy tokens against onnxruntime's on the same ONNX (the C output's
model.onnx, graph optimizations off), float32 and w8a8."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import tiny_llama
from conftest import run_qc
from qc.backends.c import toolchain
from qc.backends.c.decode import firmware_argmax, firmware_generate
from qc.backends.c.runner import build_model, load_report
from qc.errors import QCError
from qc.tools.generate import OrtStepper, Sampler, generate

CPU = "cortex-m55"
CONTEXT = 64
NEW = 24
# a short prompt (one-token steps only) and one longer than a prefill chunk (16): prefill_run, then steps
PROMPTS = ([1, 5, 9, 200], [int(t) for t in np.random.default_rng(7).integers(0, tiny_llama.CONFIG.vocab, 18)])
FLASH = 2 << 20


@pytest.fixture(scope="module")
def tiny_kv(tmp_path_factory):
    toolchain.require_tools("cortex-m")
    path = str(tmp_path_factory.mktemp("m55") / "tiny-kv.onnx")
    tiny_llama.write(path)
    return path


def _firmware(kv: str, out: str, *quant: str):
    done = run_qc("compile", kv, "--target", CPU, "-o", out, "--emit-harness", "--max-context", str(CONTEXT), *quant)
    assert done.returncode == 0, done.stderr
    assert "decode runtime: KV cache" in done.stdout
    with open(os.path.join(out, "report.json")) as f:
        assert "decode" in json.load(f)
    report = load_report(out)
    return report, build_model(report, "cortex-m", CPU)


@pytest.fixture(scope="module")
def fp32_fw(tiny_kv, tmp_path_factory):
    return _firmware(tiny_kv, str(tmp_path_factory.mktemp("fp32") / "c"))


def _onnxruntime(report) -> OrtStepper:
    return OrtStepper.load(os.path.join(report["out_dir"], "model.onnx"), optimize=False)


def _greedy(ort: OrtStepper, prompt: list[int]) -> list[int]:
    ort.reset()
    return generate(ort, prompt, NEW, Sampler()).generated_ids


def _forced(ort: OrtStepper, ids: list[int]) -> np.ndarray:
    """onnxruntime's logits after each of *ids*, fed at once through the cache."""
    ort.reset()
    return ort.step(ids, all_logits=True)


def _memory(report, exe, name: str) -> tuple[int, int, int]:
    """(code, flash, static RAM) bytes of the linked firmware, printed."""
    sections = toolchain.section_bytes(exe)
    data = sections.get(".data", 0)
    code, flash, ram = sections[".text"], sections[".rodata"] + data, data + sections[".bss"]
    print(f"cortex-m55 {name} firmware: code {code} bytes (ITCM), flash {flash} bytes (weights "
          f"{report['weight_bytes']}), static RAM {ram} bytes (arena + KV cache {report['decode']['ram_bytes']})")
    assert report["weight_bytes"] <= sections[".rodata"]
    return code, flash, ram


def test_the_firmware_fits_2_mb_of_flash_with_the_cache_in_sram(fp32_fw):
    report, exe = fp32_fw
    decode = report["decode"]
    # 2 layers x (key, value) x 2 kv heads x 64 slots x 32 floats
    assert decode["kv_cache_bytes"] == 2 * 2 * 2 * CONTEXT * 32 * 4
    code, flash, ram = _memory(report, exe, "fp32")
    assert code + flash <= FLASH
    # .bss holds the arena and the cache, the prefill chunk's logits and the harness's own buffers; no weights
    chunk_logits = 4 * decode["prefill_chunk"] * decode["vocab"]
    assert decode["ram_bytes"] + chunk_logits <= ram < decode["ram_bytes"] + chunk_logits + (16 << 10)


def test_fp32_firmware_greedy_tokens_equal_onnxruntime_under_qemu(fp32_fw):
    report, exe = fp32_fw
    ort = _onnxruntime(report)
    for prompt in PROMPTS:
        want = _greedy(ort, prompt)
        assert len(set(want)) > NEW // 2  # the random model does not settle on one token
        assert firmware_generate(exe, CPU, prompt, NEW) == want
        ids = prompt + want
        assert firmware_argmax(exe, CPU, ids) == _forced(ort, ids).argmax(1).tolist()


def test_the_firmware_refuses_more_tokens_than_the_cache_holds(fp32_fw):
    _, exe = fp32_fw
    with pytest.raises(QCError, match="exited with 2"):
        firmware_generate(exe, CPU, PROMPTS[0], CONTEXT)


def test_w8a8_firmware_agrees_with_onnxruntime_on_the_quantized_model(tiny_kv, tmp_path):
    """The C's int8 kernels round differently from onnxruntime's QDQ float emulation, so a near tie
    in the logits can go either way: every teacher-forced disagreement must be one (the C's token
    within 0.05 of onnxruntime's top logit, whose spread is about 1), and free-running greedy
    tokens must equal onnxruntime's up to the first of them."""
    calib = tiny_llama.calibration(tiny_kv, str(tmp_path / "calib"))
    report, exe = _firmware(tiny_kv, str(tmp_path / "w8a8"), "--quant", "w8a8", "--calib", calib)
    assert "gemm s8 (mve)" in report["kernels"]
    code, flash, _ = _memory(report, exe, "w8a8")
    assert code + flash < FLASH // 2
    ort = _onnxruntime(report)
    same = total = 0
    for prompt in PROMPTS:
        want = _greedy(ort, prompt)
        ids = prompt + want
        logits = _forced(ort, ids)[len(prompt) - 1:]
        got = np.array(firmware_argmax(exe, CPU, ids)[len(prompt) - 1:])
        differ = np.nonzero(got != logits.argmax(1))[0]
        for i in differ:
            assert logits[i].max() - logits[i][got[i]] < 0.05, f"position {i}: not a near tie"
        same += len(got) - len(differ)
        total += len(got)
        first = int(differ[0]) if len(differ) else NEW
        generated = firmware_generate(exe, CPU, prompt, NEW)
        print(f"w8a8 prompt of {len(prompt)}: greedy tokens equal onnxruntime's for {first} of {NEW}")
        assert generated[:first] == want[:first] and (first < NEW or generated == want)
    print(f"w8a8: {same}/{total} teacher-forced argmax agree")
    assert same / total >= 0.9


def test_a_decoder_over_the_boards_sram_or_flash_is_refused_before_building(fp32_fw):
    report, _ = fp32_fw
    big_cache = {**report, "decode": {**report["decode"], "ram_bytes": 4 << 20}}
    with pytest.raises(QCError, match="needs 4456448 bytes of RAM .* more than the 4194304 of qemu's mps3-an547"):
        build_model(big_cache, "cortex-m", CPU)
    with pytest.raises(QCError, match="weights \\(9437184 bytes\\) do not fit the 8388608 bytes of flash"):
        build_model({**report, "weight_bytes": 9 << 20}, "cortex-m", CPU)


def test_qc_generate_on_the_cortex_m_directory_points_to_the_firmware(fp32_fw):
    report, _ = fp32_fw
    done = run_qc("generate", report["out_dir"], "--prompt-ids", "1,5", "--max-new-tokens", "2")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "harness is a firmware" in done.stderr and "harness N ID..." in done.stderr


def test_the_same_firmware_runs_on_a_cortex_m4(tiny_kv, tmp_path):
    """cortex-m4 (mps2-an386) has no device layout: its firmware links with the board's one script."""
    out = str(tmp_path / "m4")
    done = run_qc("compile", tiny_kv, "--target", "cortex-m4", "-o", out, "--emit-harness", "--max-context",
                  str(CONTEXT))
    assert done.returncode == 0, done.stderr
    report = load_report(out)
    exe = build_model(report, "cortex-m", "cortex-m4")
    want = _greedy(_onnxruntime(report), PROMPTS[1])
    assert firmware_generate(exe, "cortex-m4", PROMPTS[1], NEW) == want
