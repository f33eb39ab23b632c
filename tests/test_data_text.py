"""qc.data.text: deterministic token windows, separate calibration and evaluation texts, .npz output."""
import os
import re

import numpy as np
import pytest

from qc.data import text as textdata
from qc.errors import QCError
from test_metrics import VOCAB, word_tokenizer


class CharTokenizer:
    """One token per character (its code point): windows can be checked by hand."""

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QC_CACHE_DIR", str(tmp_path / "cache"))


TEXT = "".join(chr(ord("a") + i % 26) for i in range(100)) + "\n"  # 101 characters


def test_windows_are_consecutive_token_runs():
    w = textdata.token_windows(TEXT, CharTokenizer(), 10)
    assert w.dtype == np.int64 and w.shape == (10, 10)  # 101 tokens: 10 full windows, the rest dropped
    expected = np.array([ord(c) for c in TEXT[:100]], np.int64).reshape(10, 10)
    np.testing.assert_array_equal(w, expected)


def test_windows_with_stride_and_samples():
    tok = CharTokenizer()
    w = textdata.token_windows(TEXT, tok, 10, stride=5)
    assert w.shape == (19, 10)  # starts 0, 5, ..., 90
    np.testing.assert_array_equal(w[1, :5], w[0, 5:])
    picked = textdata.token_windows(TEXT, tok, 10, samples=4)
    full = textdata.token_windows(TEXT, tok, 10)
    np.testing.assert_array_equal(picked[0], full[0])  # evenly spread, first and last included
    np.testing.assert_array_equal(picked[-1], full[-1])
    np.testing.assert_array_equal(picked, full[[0, 3, 6, 9]])


def test_windows_are_deterministic_with_a_real_tokenizer(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("The model is small and runs fast on the ARM edge device. " * 40)
    tok = word_tokenizer()
    a = textdata.token_windows(str(path), tok, 16, samples=5)
    b = textdata.token_windows(path, word_tokenizer(), 16, samples=5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 16) and a.dtype == np.int64
    assert 2 not in a and 3 not in a  # no [CLS]/[SEP]: running text, no special tokens
    assert tok.token_to_id("[UNK]") not in a


def test_truncation_in_tokenizer_json_does_not_cut_the_text(tmp_path):
    tok = word_tokenizer()
    tok.enable_truncation(8)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    w = textdata.token_windows("the model is small and runs fast\n" * 20, tok, 7)
    assert w.shape == (20, 7)
    assert tok.truncation is not None  # the caller's tokenizer is left as it was


def test_window_errors(tmp_path):
    tok = CharTokenizer()
    with pytest.raises(QCError, match="the text has 101 tokens, fewer than one window of 200"):
        textdata.token_windows(TEXT, tok, 200)
    with pytest.raises(QCError, match="the text gives 10 windows of 10 tokens .*fewer than the 11 asked for"):
        textdata.token_windows(TEXT, tok, 10, samples=11)
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(QCError, match=re.escape(f"{missing}: no such file")):
        textdata.token_windows(missing, tok, 10)
    with pytest.raises(QCError, match="at least 2"):
        textdata.token_windows(TEXT, tok, 1)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(QCError, match="not a UTF-8 text file"):
        textdata.token_windows(str(tmp_path / "latin1.txt"), tok, 2)


def _paragraphs(path):
    with open(path, encoding="utf-8") as f:
        return {" ".join(p.split()) for p in re.split(r"\n\s*\n", f.read()) if len(p.split()) >= 8}


def test_calibration_and_evaluation_texts_are_separate():
    if not all(os.path.isfile(os.path.join(textdata.LICENSE_DIR, n)) for n in textdata.CALIBRATION_LICENSES):
        with pytest.raises(QCError, match="base-files"):
            textdata.default_calibration_text()
        pytest.skip("no Debian licence texts on this machine")
    calib, evaluation = textdata.default_calibration_text(), textdata.default_evaluation_text()
    assert os.path.isfile(calib) and os.path.isfile(evaluation)
    assert os.path.realpath(calib) != os.path.realpath(evaluation)
    assert os.path.dirname(calib) == os.path.join(os.environ["QC_CACHE_DIR"], "text")
    shared = _paragraphs(calib) & _paragraphs(evaluation)
    assert not shared, f"paragraphs in both texts: {sorted(shared)[:3]}"
    calib_sentences, eval_sentences = set(textdata.sentences(calib)), set(textdata.sentences(evaluation))
    assert len(eval_sentences) > 300 and len(calib_sentences) > 100
    assert not calib_sentences & eval_sentences
    # the files are written once and then reused as they are
    assert textdata.default_evaluation_text() == evaluation
    assert textdata.resolve_text(None) == evaluation
    assert textdata.resolve_text("licenses") == calib


def test_evaluation_text_is_english_prose():
    with open(textdata.default_evaluation_text(), encoding="utf-8") as f:
        text = f.read()
    words = text.split()
    assert len(words) > 50_000
    common = sum(w.lower() in {"the", "a", "of", "is", "to", "and", "in"} for w in words)
    assert common / len(words) > 0.1


def test_resolve_text_errors(tmp_path):
    with pytest.raises(QCError, match="no such file; give a text file or one of: licenses, python-reference"):
        textdata.resolve_text(str(tmp_path / "nope.txt"))
    with pytest.raises(QCError, match="unknown text source 'nope'"):
        textdata.text_source("nope")


def test_sentences_are_prose_and_deterministic():
    text = ("The first sentence is plain English prose here. Call f(x) = 2 to see code, which is dropped.\n"
            "A second line is wrapped\nacross two lines but is one sentence. Short one.\n\n"
            "The last paragraph has yet another plain sentence in it!\n")
    got = textdata.sentences(text)
    assert got == ["The first sentence is plain English prose here.",
                   "A second line is wrapped across two lines but is one sentence.",
                   "The last paragraph has yet another plain sentence in it!"]
    assert textdata.sentences(text, 2) == [got[0], got[2]]
    with pytest.raises(QCError, match="3 usable sentences, fewer than the 4 asked for"):
        textdata.sentences(text, 4)


def test_to_npz_round_trip(tmp_path):
    windows = np.arange(24, dtype=np.int64).reshape(3, 8)
    path = textdata.to_npz(windows, str(tmp_path / "calib.npz"))
    with np.load(path) as data:
        assert list(data) == ["input_ids"]
        np.testing.assert_array_equal(data["input_ids"], windows)
    both = {"input_ids": windows, "attention_mask": np.ones_like(windows)}
    textdata.to_npz(both, str(tmp_path / "enc.npz"))
    with np.load(tmp_path / "enc.npz") as data:
        assert sorted(data) == ["attention_mask", "input_ids"]
    textdata.to_npz(windows, str(tmp_path / "ids.npz"), input_name="tokens")
    with np.load(tmp_path / "ids.npz") as data:
        assert list(data) == ["tokens"]


def test_to_npz_errors(tmp_path):
    with pytest.raises(QCError, match="same leading sample axis"):
        textdata.to_npz({"input_ids": np.zeros((3, 4)), "attention_mask": np.zeros((2, 4))}, str(tmp_path / "x.npz"))
    with pytest.raises(QCError, match="end in .npz"):
        textdata.to_npz(np.zeros((3, 4)), str(tmp_path / "x.bin"))
    assert not os.listdir(tmp_path)


def test_pad_batch_pads_with_pad_and_masks():
    ids, mask = textdata.pad_batch(word_tokenizer(), ["the model", "the model is small"], max_length=5)
    assert ids.tolist() == [[2, 4, 6, 3, 0], [2, 4, 6, 7, 3]]  # truncated to 5 keeps [SEP]
    assert mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_load_tokenizer(tmp_path):
    path = str(tmp_path / "tokenizer.json")
    word_tokenizer(path)
    tok = textdata.load_tokenizer(path)
    assert tok.encode("the model", add_special_tokens=False).ids == [VOCAB.index("the"), VOCAB.index("model")]
    with pytest.raises(QCError, match="unknown tokenizer 'gpt-17'; give a model name"):
        textdata.load_tokenizer("gpt-17")
    with pytest.raises(QCError, match="no such file"):
        textdata.load_tokenizer(str(tmp_path / "other.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(QCError, match="not a tokenizer.json file"):
        textdata.load_tokenizer(str(tmp_path / "bad.json"))
