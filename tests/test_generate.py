"""KV-cache decoders: the Optimum layout, qc generate, calibration through decode steps, the int8
cache, and decode-path perplexity; on 2 layers of SmolLM2 and on tests/tiny_decoder.py (built
independently of qc's builder: interleaved RoPE, Tile GQA, fused QKV, sliding window)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import qc.models
from conftest import run_qc
from qc.errors import QCError
from qc.models import smollm2
from qc.onnx.evaluator import ort_session
from qc.onnx.kv_layout import parse_override, recognize
from qc.tools import metrics
from qc.tools.generate import OrtStepper, Sampler, decode_nll, generate, window_nll
from tiny_decoder import TinyConfig, model, reference, weights

PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.", "Name three colours.")


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    work = tmp_path_factory.mktemp("smol-kv")
    kv, plain = str(work / "kv.onnx"), str(work / "plain.onnx")
    qc.models.build("smollm2-135m", kv, layers=2, kv_cache=True)
    qc.models.build("smollm2-135m", plain, layers=2)
    return kv, plain


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = TinyConfig()
    w = weights(cfg)
    path = str(tmp_path_factory.mktemp("tiny") / "tiny.onnx")
    onnx.save(model(cfg, w), path)
    return cfg, w, path


def test_kv_model_prefill_then_steps_equal_the_plain_forward(smol):
    kv, plain = smol
    ids = np.random.default_rng(0).integers(0, 49152, 11)
    want = ort_session(plain).run(["logits"], {"input_ids": ids[None]})[0][0]
    stepper = OrtStepper.load(kv)
    got = [stepper.step(ids[:6].tolist(), all_logits=True)] + [stepper.step([int(t)]) for t in ids[6:]]
    np.testing.assert_allclose(np.concatenate(got), want, atol=2e-4, rtol=0)
    assert stepper.cache_length == 11
    assert stepper.cache_bytes == 2 * 2 * 3 * 11 * 64 * 4  # layers x (k, v) x kv_heads x tokens x head_dim x f32


def test_layout_is_recognized_from_names_and_shapes(smol):
    layout = recognize(onnx.load(smol[0], load_external_data=False))
    assert layout is not None and layout.layers == 2
    assert [(p.past.name, p.present.name, p.seq_axis) for p in layout.pairs][:2] == [
        ("past_key_values.0.key", "present.0.key", 2), ("past_key_values.0.value", "present.0.value", 2)]
    assert layout.describe() == ("KV cache: 2 layers x key/value [batch, 3, past_seq, 64] FLOAT, "
                                 "inputs input_ids, attention_mask, position_ids")
    assert recognize(onnx.load(smol[1], load_external_data=False)) is None


@pytest.mark.parametrize("which", ["smollm2", "tiny", "tiny-window"])
def test_cached_greedy_equals_recomputed_greedy(which, smol, tiny, tmp_path):
    if which == "smollm2":
        path, tok = smol[0], smollm2.tokenizer()
        prompts = [tok.encode(smollm2.chat_prompt(p)).ids for p in PROMPTS]
    else:
        cfg = TinyConfig(window=5) if which == "tiny-window" else tiny[0]
        path = str(tmp_path / "m.onnx")
        onnx.save(model(cfg, weights(cfg)), path)
        prompts = [list(range(10 + 7 * i, 19 + 7 * i)) for i in range(3)]
    cached, recomputed = OrtStepper.load(path), OrtStepper.load(path, recompute=True)
    for prompt in prompts:
        a = generate(cached, prompt, 32).generated_ids
        assert len(a) == 32
        assert a == generate(recomputed, prompt, 32).generated_ids


def test_tiny_decoder_through_the_cache_matches_its_numpy_reference(tiny):
    cfg, w, path = tiny
    ids = np.random.default_rng(1).integers(0, cfg.vocab, 12)
    stepper = OrtStepper.load(path)
    got = np.concatenate([stepper.step(ids[:7].tolist(), all_logits=True)] + [stepper.step([int(t)]) for t in ids[7:]])
    np.testing.assert_allclose(got, reference(cfg, w, ids), atol=5e-5, rtol=0)


def test_sampling_is_seeded_and_top_k_bounded():
    logits = np.array([0.0, 5.0, 4.9, -3.0, 4.8], np.float32)
    assert Sampler()(logits) == 1
    draws = [Sampler(temperature=1.0, top_k=2, seed=s)(logits) for s in range(40)]
    assert set(draws) == {1, 2}
    assert draws == [Sampler(temperature=1.0, top_k=2, seed=s)(logits) for s in range(40)]
    with pytest.raises(QCError, match="--temperature must be >= 0"):
        Sampler(temperature=-1)


def test_layout_override_for_other_names(tiny, tmp_path):
    cfg, _, path = tiny
    m = onnx.load(path)
    rename = {"input_ids": "tokens", "logits": "scores"}
    for i in range(cfg.layers):
        for kind in ("key", "value"):
            rename[f"past_key_values.{i}.{kind}"] = f"cache_in_{i}_{kind}"
            rename[f"present.{i}.{kind}"] = f"cache_out_{i}_{kind}"
    for v in list(m.graph.input) + list(m.graph.output):
        v.name = rename.get(v.name, v.name)
    for node in m.graph.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
        node.output[:] = [rename.get(x, x) for x in node.output]
    other = str(tmp_path / "renamed.onnx")
    onnx.save(m, other)
    assert recognize(onnx.load(other)) is None
    spec = "ids=tokens,logits=scores,past=cache_in_{i}_{kv},present=cache_out_{i}_{kv}"
    renamed = OrtStepper.load(other, override=parse_override(spec))
    assert renamed.layout.layers == cfg.layers
    prompt = [5, 6, 7, 8]
    assert generate(renamed, prompt, 12).generated_ids == generate(OrtStepper.load(path), prompt, 12).generated_ids
    with pytest.raises(QCError, match="needs both"):
        parse_override("past=cache_in_{i}")


def test_qc_generate_json_and_errors(smol):
    kv, plain = smol
    done = run_qc("generate", kv, "--prompt-ids", "1,2,3,4", "--max-new-tokens", "5", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["prompt_ids"] == [1, 2, 3, 4] and len(out["generated_ids"]) <= 5
    assert out["prefill_tokens_per_s"] > 0 and {"decode_tokens_per_s", "cache_bytes"} <= set(out)
    streamed = run_qc("generate", kv, "--prompt", "Hello", "--chat", "--max-new-tokens", "4")
    assert streamed.returncode == 0 and "prefill: 10 tokens" in streamed.stderr and "KV cache:" in streamed.stderr
    bad = run_qc("generate", plain, "--prompt-ids", "1,2")
    assert bad.returncode == 2 and "has no key/value cache inputs" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_qc("generate", kv, "--prompt-ids", "1,x")
    assert bad.returncode == 2 and "--prompt-ids must be comma-separated integers" in bad.stderr
    bad = run_qc("generate", kv, "--prompt-ids", "1", "--kv-layout", "past=a")
    assert bad.returncode == 2 and "bad KV layout entry" not in bad.stderr and "needs both" in bad.stderr


def test_calibration_observes_prefill_and_decode_steps(smol):
    from qc.calib.data import load_inputs
    from qc.onnx.reader import import_model

    module = import_model(onnx.load(smol[0]))
    data = load_inputs(module, smollm2.tokenizer, npz=None, text="licenses", samples=2, seq_len=32,
                       flags=("--calib", "--calib-text"))
    assert len(data) == 2 * 5
    prefill, step = data.sample(0), data.sample(1)
    assert prefill["input_ids"].shape == (1, 28) and prefill["past_key_values.0.key"].shape == (1, 3, 0, 64)
    assert step["input_ids"].shape == (1, 1) and step["past_key_values.1.value"].shape == (1, 3, 28, 64)
    assert step["position_ids"].tolist() == [[28]] and step["attention_mask"].shape == (1, 29)
    # the cache a decode step sees is what the float model wrote in the prefill
    want = ort_session(smol[0]).run(["present.1.value"], prefill)[0]
    np.testing.assert_allclose(step["past_key_values.1.value"], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheme,rel", [("w8a8", 5e-3), ("dyn8", 5e-3), ("w4a8", 5e-3), ("w4a8-token", 1e-5)])
def test_quantized_independent_decoder_generates_and_decode_path_equals_one_pass(scheme, rel, tiny, tmp_path):
    """w4a8 per token sums integers in float32 (exact in any order): one row gives what many give."""
    _, _, path = tiny
    out = str(tmp_path / f"tiny-{scheme}.onnx")
    quant = ["w4a8", "--act-granularity", "token"] if scheme == "w4a8-token" else [scheme]
    done = run_qc("compile", path, "--target", "x86-avx2", "--quant", *quant, "--calib-text", "licenses",
                  "--tokenizer", "smollm2-135m", "--samples", "4", "--seq-len", "32", "-o", out)
    assert done.returncode == 0, done.stderr
    gen = run_qc("generate", out, "--prompt-ids", "11,12,13", "--max-new-tokens", "8", "--json")
    assert gen.returncode == 0 and len(json.loads(gen.stdout)["generated_ids"]) == 8
    windows = np.random.default_rng(2).integers(0, 49152, (2, 24))
    one_pass = metrics.perplexity(out, windows, progress=False)
    assert metrics.decode_perplexity(out, windows, progress=False) == pytest.approx(one_pass, rel=rel)
    stepper = OrtStepper.load(out)
    per_token = np.concatenate([window_nll(stepper, [int(t) for t in w]) for w in windows])
    assert np.exp(per_token.mean()) == pytest.approx(one_pass, rel=1e-5)


def test_int8_kv_cache_quarter_bytes_and_close_perplexity(tiny, tmp_path):
    _, _, path = tiny
    outs = {}
    for kv in ("float32", "int8"):
        outs[kv] = str(tmp_path / f"tiny-{kv}.onnx")
        done = run_qc("compile", path, "--target", "x86-avx2", "--quant", "w8a8", "--calib-text", "licenses",
                      "--tokenizer", "smollm2-135m", "--samples", "4", "--seq-len", "32", "--kv-cache-dtype", kv,
                      "-o", outs[kv])
        assert done.returncode == 0, done.stderr
    layout = recognize(onnx.load(outs["int8"]))
    assert sorted({p.kind for p in layout.pairs}) == ["key", "key_scale", "value", "value_scale"]
    assert {p.past.elem_type for p in layout.pairs if p.kind in ("key", "value")} == {onnx.TensorProto.INT8}
    float_cache, int8_cache = OrtStepper.load(outs["float32"]), OrtStepper.load(outs["int8"])
    prompt = list(range(100, 120))
    generate(float_cache, prompt, 4)
    generate(int8_cache, prompt, 4)
    assert int8_cache.cache_bytes / float_cache.cache_bytes == pytest.approx((16 + 4) / 64)  # head_dim 16
    windows = np.random.default_rng(3).integers(0, 49152, (2, 24)).tolist()
    nll = {kv: sum(decode_nll(OrtStepper.load(p), w)[0] for w in windows) for kv, p in outs.items()}
    assert abs(nll["int8"] / nll["float32"] - 1) < 0.01
