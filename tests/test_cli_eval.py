"""`qc eval` on hand-built tiny models (a lookup-table LM and a mean-pooling encoder), `qc models`,
and their one-line errors (exit code 2)."""
import math
import re

import numpy as np
import pytest

from conftest import run_qc, small_mlp
from qc.data import text as textdata
from qc.tools import metrics
from test_metrics import VOCAB, lm_table, tiny_encoder, tiny_lm, word_tokenizer

PROSE = ("The model is small and the model runs fast on the ARM edge device. "
         "A text is small. The CPU runs the model and the device is slow. ") * 30


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("QC_CACHE_DIR", str(tmp_path / "cache"))
    paths = {"lm": tmp_path / "lm.onnx", "lm_ref": tmp_path / "lm_ref.onnx", "enc": tmp_path / "enc.onnx",
             "enc_ref": tmp_path / "enc_ref.onnx", "tok": tmp_path / "tokenizer.json", "text": tmp_path / "prose.txt",
             "sentences": tmp_path / "sentences.txt", "mlp": tmp_path / "mlp.onnx"}
    table = lm_table(seed=7)
    tiny_lm(table, str(paths["lm_ref"]))
    tiny_lm(table + np.random.default_rng(8).standard_normal(table.shape).astype(np.float32) * 0.05, str(paths["lm"]))
    emb = np.random.default_rng(9).standard_normal((len(VOCAB), 8)).astype(np.float32)
    tiny_encoder(emb, str(paths["enc_ref"]))
    tiny_encoder(emb + np.float32(0.01), str(paths["enc"]))
    word_tokenizer(str(paths["tok"]))
    paths["text"].write_text(PROSE)
    paths["sentences"].write_text("The model is small.\n\nThe CPU runs the model and the device is slow.\n")
    small_mlp(str(paths["mlp"]))
    return {k: str(v) for k, v in paths.items()}


def _value(pattern, text):
    m = re.search(pattern, text)
    assert m, f"no match for {pattern!r} in:\n{text}"
    return float(m.group(1))


def test_eval_lm_prints_perplexity(files):
    r = run_qc("eval", files["lm_ref"], "--tokenizer", files["tok"], "--text", files["text"], "--seq-len", "16",
               "--samples", "6")
    assert r.returncode == 0, r.stderr
    assert f"text: {files['text']}: 6 windows x 16 tokens" in r.stdout
    windows = textdata.token_windows(files["text"], word_tokenizer(), 16, samples=6)
    expected = metrics.perplexity(files["lm_ref"], windows, progress=False)
    assert _value(r"perplexity: ([0-9.]+)\n", r.stdout) == pytest.approx(expected, abs=5e-4)
    assert r.stderr == ""  # no progress bar when stderr is not a terminal


def test_eval_lm_against_a_reference(files):
    r = run_qc("eval", files["lm"], "--ref", files["lm_ref"], "--tokenizer", files["tok"], "--text", files["text"],
               "--seq-len", "16", "--samples", "4", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    windows = textdata.token_windows(files["text"], word_tokenizer(), 16, samples=4)
    ppl = metrics.perplexity(files["lm"], windows, progress=False)
    ref = metrics.perplexity(files["lm_ref"], windows, progress=False)
    assert _value(r"perplexity: ([0-9.]+) \(ref", r.stdout) == pytest.approx(ppl, abs=5e-4)
    assert _value(r"\(ref ([0-9.]+),", r.stdout) == pytest.approx(ref, abs=5e-4)
    sqnr = metrics.compare_outputs(files["lm"], files["lm_ref"], [{"input_ids": windows[i:i + 1]} for i in range(4)])
    logits_db = _value(r"sqnr vs ref \(4 windows\): logits ([0-9.]+) dB", r.stdout)
    assert logits_db == pytest.approx(sqnr["logits"], abs=0.01)
    assert 20 < sqnr["logits"] < 40  # noise 0.05 on logits of scale 2: about 32 dB


def test_eval_default_text_is_the_evaluation_text(files, tmp_path):
    # a tokenizer that knows none of the words still tokenizes (to [UNK]): enough to check the default
    r = run_qc("eval", files["lm_ref"], "--tokenizer", files["tok"], "--samples", "2", "--seq-len", "8")
    assert r.returncode == 0, r.stderr
    assert f"text: {tmp_path / 'cache' / 'text'}" in r.stdout and "-reference.txt: 2 windows x 8 tokens" in r.stdout


def test_eval_encoder_cosine_and_sqnr(files):
    r = run_qc("eval", files["enc"], "--ref", files["enc_ref"], "--tokenizer", files["tok"], "--sentences",
               files["sentences"])
    assert r.returncode == 0, r.stderr
    assert "(sentence encoder)" in r.stdout and f"sentences: 2 from {files['sentences']}" in r.stdout
    texts = ["The model is small.", "The CPU runs the model and the device is slow."]
    got = metrics.sentence_embeddings(files["enc"], texts, word_tokenizer(), progress=False)
    want = metrics.sentence_embeddings(files["enc_ref"], texts, word_tokenizer(), progress=False)
    mean, low = metrics.cosine_stats(got, want)
    assert _value(r"cosine vs ref: mean ([0-9.]+)", r.stdout) == pytest.approx(mean, abs=1e-6)
    assert _value(r"min ([0-9.]+)\n", r.stdout) == pytest.approx(low, abs=1e-6)
    assert re.search(r"sqnr vs ref \(2 sentences\): last_hidden_state [0-9.]+ dB, sentence_embedding [0-9.]+ dB",
                     r.stdout)


def test_eval_encoder_sentences_from_text(files):
    r = run_qc("eval", files["enc"], "--ref", files["enc_ref"], "--tokenizer", files["tok"], "--text",
               files["text"], "--samples", "5")
    assert r.returncode == 0, r.stderr
    assert f"sentences: 5 from {files['text']}" in r.stdout


def test_eval_identical_models_report_infinite_sqnr(files, tmp_path):
    import shutil

    copy = str(tmp_path / "copy.onnx")
    shutil.copy(files["lm_ref"], copy)
    r = run_qc("eval", copy, "--ref", files["lm_ref"], "--tokenizer", files["tok"], "--text", files["text"],
               "--seq-len", "8", "--samples", "2")
    assert r.returncode == 0, r.stderr
    assert "+0.00%" in r.stdout and "logits inf (identical)" in r.stdout


def test_eval_tokenizer_from_the_producer(files, tmp_path):
    # a model that says it was built by qc.models.smollm2 gets that model's tokenizer by default; here the
    # mismatch with an explicit --tokenizer of the other model is what we can check without the real model
    path = str(tmp_path / "built.onnx")
    tiny_lm(lm_table(), path, producer="qc.models.smollm2")
    r = run_qc("eval", path, "--tokenizer", "minilm-l6", "--text", files["text"])
    assert r.returncode == 2
    assert r.stderr == (f"qc: error: {path}: the model was built as smollm2-135m but --tokenizer names minilm-l6; "
                        "use --tokenizer smollm2-135m\n")


def _errors(files, tmp_path):
    missing = str(tmp_path / "missing.onnx")
    return [
        (["eval", missing], f"qc: error: {missing}: no such file"),
        (["eval", files["lm"], "--ref", missing], f"qc: error: {missing}: no such file"),
        (["eval", files["lm"], "--tokenizer", files["tok"], "--text", str(tmp_path / "no.txt")],
         f"qc: error: {tmp_path / 'no.txt'}: no such file; give a text file or one of: licenses, python-reference"),
        (["eval", files["lm"], "--tokenizer", "gpt-17", "--text", files["text"]],
         "qc: error: unknown tokenizer 'gpt-17'; give a model name (smollm2-135m, minilm-l6) or a tokenizer.json file"),
        (["eval", files["lm"], "--text", files["text"]],
         f"qc: error: {files['lm']}: which tokenizer does the model use? give --tokenizer; a model name "
         "(smollm2-135m, minilm-l6) or a tokenizer.json file"),
        (["eval", files["mlp"], "--tokenizer", files["tok"]],
         f"qc: error: {files['mlp']}: qc eval compares this model (inputs x; outputs y) with a reference model; give "
         "--reference FP32.onnx (perplexity and sentence cosine need a language model"),
        (["eval", files["enc"], "--tokenizer", files["tok"]],
         f"qc: error: {files['enc']}: an encoder is measured against a reference; give --ref FP32.onnx"),
        (["eval", files["lm"], "--ref", files["enc_ref"], "--tokenizer", files["tok"]],
         f"qc: error: {files['enc_ref']}: the reference is not a language model (no input_ids -> logits)"),
        (["eval", files["enc"], "--ref", files["lm_ref"], "--tokenizer", files["tok"]],
         f"qc: error: {files['lm_ref']}: the reference is not a sentence encoder (no input_ids -> sentence_embedding)"),
        (["eval", files["lm"], "--ref", files["lm"]],
         f"qc: error: {files['lm']}: --ref is the model itself; give the float32 model the quantized one came from"),
        (["eval", files["lm"], "--tokenizer", files["tok"], "--text", files["text"], "--seq-len", "16",
          "--samples", "1000"], "fewer than the 1000 asked for; ask for fewer --samples"),
        (["eval", files["lm"], "--samples", "0"], "qc: error: --samples must be at least 1 (got 0)"),
        (["eval", files["lm"], "--seq-len", "x"], "qc: error: argument --seq-len: invalid int value: 'x'"),
        (["models", "build", "gpt-17", "-o", str(tmp_path / "m.onnx")],
         "qc: error: unknown model 'gpt-17'; known models: smollm2-135m, minilm-l6"),
        (["models", "build", "minilm-l6", "-o", str(tmp_path / "m.txt")],
         f"qc: error: {tmp_path / 'm.txt'}: unknown output kind; use a .onnx file name"),
        (["models", "build", "minilm-l6", "-o", str(tmp_path / "m.onnx"), "--layers", "0"],
         "qc: error: --layers must be at least 1 (got 0)"),
        (["models", "build", "minilm-l6"], "qc: error: the following arguments are required: -o/--output"),
    ]


def test_eval_and_models_errors_are_one_line(files, tmp_path):
    failures = []
    for argv, expected in _errors(files, tmp_path):
        r = run_qc(*argv)
        lines = r.stderr.splitlines()
        if r.returncode != 2 or len(lines) != 1 or expected not in lines[0] or r.stdout:
            failures.append(f"{argv}: exit {r.returncode}, stdout {r.stdout!r}, stderr {r.stderr!r}")
    assert not failures, "\n".join(failures)


def test_models_lists_the_registry():
    r = run_qc("models")
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == ["smollm2-135m", "minilm-l6"]
    assert "GGUF" in r.stdout and "safetensors" in r.stdout


def test_fmt_of_infinite_sqnr():
    from qc.cli import _fmt_db

    assert _fmt_db(math.inf) == "inf (identical)" and _fmt_db(12.345) == "12.35 dB"
