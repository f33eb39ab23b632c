"""Text that ships offline, turned into token windows for calibration and evaluation.

Two built-in sources, deliberately disjoint so that a model is never evaluated on the text it
was calibrated on:

- ``licenses`` (calibration): the licence texts Debian installs with ``base-files`` in
  ``/usr/share/common-licenses`` (GPL-3, Apache-2.0, MPL-2.0, ...), concatenated.
- ``python-reference`` (evaluation): the Python Language Reference as the interpreter's own
  standard library carries it (``pydoc_data.topics``, the text ``help("execmodel")`` prints).

Each is written once as a plain UTF-8 file into a cache directory (``$QC_CACHE_DIR``, else
``$XDG_CACHE_HOME/qc``, else ``~/.cache/qc``) so that it can be named by a path like any user
file. Nothing is downloaded. The Python reference differs a little between Python versions; the
file name carries the version.

``token_windows`` cuts a text into fixed-length windows of token ids (deterministic), and
``to_npz`` writes them in the layout ``qc compile --calib`` reads (arrays named after the model
inputs, with a leading sample axis).
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import QCError

LICENSE_DIR = "/usr/share/common-licenses"
# Prose licences, largest first; GPL-1/2 and LGPL-2 are left out as near-duplicates of GPL-3/LGPL-2.1.
CALIBRATION_LICENSES = ("GPL-3", "LGPL-2.1", "GFDL-1.3", "MPL-2.0", "Apache-2.0", "CC0-1.0", "Artistic")


# -- text sources -------------------------------------------------------------------------------
def cache_dir() -> str:
    """Where qc keeps generated files: $QC_CACHE_DIR, else $XDG_CACHE_HOME/qc, else ~/.cache/qc."""
    if os.environ.get("QC_CACHE_DIR"):
        return os.environ["QC_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "qc")


def _materialize(name: str, make_text: Callable[[], str]) -> str:
    path = os.path.join(cache_dir(), "text", name)
    if os.path.isfile(path):
        return path
    text = make_text()
    from ..fileio import atomic_write

    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_write(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise QCError(f"cannot write the text file: {e.strerror}", where=path,
                      hint="set QC_CACHE_DIR to a writable directory") from None
    return path


def _license_text() -> str:
    missing = [n for n in CALIBRATION_LICENSES if not os.path.isfile(os.path.join(LICENSE_DIR, n))]
    if missing:
        raise QCError(f"the calibration text needs the licence texts {', '.join(missing)}, which are missing",
                      where=LICENSE_DIR,
                      hint="on Debian they come with the base-files package; elsewhere pass your own text file")
    parts = []
    for name in CALIBRATION_LICENSES:
        with open(os.path.join(LICENSE_DIR, name), encoding="utf-8") as f:
            parts.append(f.read().strip())
    return "\n\n\n".join(parts) + "\n"


def _python_reference_text() -> str:
    try:
        from pydoc_data import topics
    except ImportError:
        raise QCError("the evaluation text needs the Python Language Reference (the standard library's "
                      "pydoc_data package), which this Python lacks",
                      hint="install the full standard library or pass your own text file") from None
    return "\n\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics)) + "\n"


SOURCES: dict[str, tuple[str, Callable[[], str], str]] = {
    # name: (file name in the cache, text maker, description)
    "licenses": ("licenses.txt", _license_text,
                 "calibration: licence texts from /usr/share/common-licenses ("
                 + ", ".join(CALIBRATION_LICENSES) + ")"),
    "python-reference": (f"python{sys.version_info[0]}.{sys.version_info[1]}-reference.txt", _python_reference_text,
                         "evaluation: the Python Language Reference from the standard library's pydoc_data"),
}
CALIBRATION_SOURCE = "licenses"
EVALUATION_SOURCE = "python-reference"


def text_source(name: str) -> str:
    """The path of a built-in text source (written into the cache on first use)."""
    if name not in SOURCES:
        raise QCError(f"unknown text source '{name}'", hint="known: " + ", ".join(SOURCES))
    file_name, make, _ = SOURCES[name]
    return _materialize(file_name, make)


def default_calibration_text() -> str:
    """Path of the default calibration text (licence texts; never used for evaluation)."""
    return text_source(CALIBRATION_SOURCE)


def default_evaluation_text() -> str:
    """Path of the default evaluation text (the Python Language Reference; never used for calibration)."""
    return text_source(EVALUATION_SOURCE)


def resolve_text(spec: str | os.PathLike | None, *, default: str = EVALUATION_SOURCE) -> str:
    """A ``--text`` argument -> a path: an existing file, or a source name (``licenses``,
    ``python-reference``); None gives the *default* source."""
    if spec is None:
        return text_source(default)
    spec = os.fspath(spec)
    if os.path.isfile(spec):
        return spec
    if spec in SOURCES:
        return text_source(spec)
    raise QCError("no such file", where=spec, hint="give a text file or one of: " + ", ".join(SOURCES))


def read_text(path_or_text: str | os.PathLike) -> str:
    """The text itself: a path (``os.PathLike``, or a one-line ``str`` naming a file) is read as
    UTF-8; a ``str`` containing a newline is the text."""
    if isinstance(path_or_text, str) and ("\n" in path_or_text or len(path_or_text) > 4096):
        return path_or_text
    path = os.fspath(path_or_text)
    if not os.path.isfile(path):
        raise QCError("no such file", where=path,
                      hint="to pass text instead of a path, give a string that contains a newline")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise QCError("not a UTF-8 text file", where=path) from None


# -- tokenizers ---------------------------------------------------------------------------------
def load_tokenizer(spec: str):
    """``--tokenizer``: a model name from ``qc models`` or a ``tokenizer.json`` file."""
    if spec.endswith(".json") or os.sep in spec or os.path.exists(spec):
        if not os.path.isfile(spec):
            raise QCError("no such file", where=spec)
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_file(spec)
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            raise QCError(f"not a tokenizer.json file ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                          where=spec) from None
    from ..models import MODELS, tokenizer

    if spec not in MODELS:
        raise QCError(f"unknown tokenizer '{spec}'", hint="give a model name (" + ", ".join(MODELS)
                      + ") or a tokenizer.json file")
    return tokenizer(spec)


def encode_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (a ``tokenizers.Tokenizer``, or any object whose
    ``encode(text)`` returns ids or an object with ``.ids``)."""
    if getattr(tokenizer, "truncation", None) or getattr(tokenizer, "padding", None):
        from tokenizers import Tokenizer  # a copy without truncation/padding (tokenizer.json may set them)

        tokenizer = Tokenizer.from_str(tokenizer.to_str())
        tokenizer.no_truncation()
        tokenizer.no_padding()
    try:
        encoded = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        encoded = tokenizer.encode(text)
    ids = getattr(encoded, "ids", encoded)
    return list(ids)


# -- windows ------------------------------------------------------------------------------------
def token_windows(path_or_text: str | os.PathLike, tokenizer: Any, seq_len: int, samples: int | None = None,
                  stride: int | None = None) -> np.ndarray:
    """Cut a text into windows of ``seq_len`` token ids: int64 ``[n, seq_len]``.

    The whole text is tokenized once (no special tokens); window ``i`` starts at token
    ``i * stride`` (default ``stride = seq_len``: non-overlapping). A partial window at the end is
    dropped. With ``samples``, that many windows are taken evenly spread over the text (the same
    ones every time); asking for more windows than the text has is an error.
    """
    if seq_len < 2:
        raise QCError(f"sequence length must be at least 2 (got {seq_len})")
    stride = seq_len if stride is None else stride
    if stride < 1:
        raise QCError(f"stride must be at least 1 (got {stride})")
    if samples is not None and samples < 1:
        raise QCError(f"the number of samples must be at least 1 (got {samples})")
    text = read_text(path_or_text)
    ids = np.asarray(encode_ids(tokenizer, text), dtype=np.int64)
    available = 0 if len(ids) < seq_len else (len(ids) - seq_len) // stride + 1
    where = os.fspath(path_or_text) if not (isinstance(path_or_text, str) and "\n" in path_or_text) else None
    if available == 0:
        raise QCError(f"the text has {len(ids)} tokens, fewer than one window of {seq_len}", where=where,
                      hint="use a longer text or a shorter --seq-len")
    if samples is None:
        starts = np.arange(available) * stride
    elif samples > available:
        raise QCError(f"the text gives {available} windows of {seq_len} tokens (stride {stride}), "
                      f"fewer than the {samples} asked for", where=where,
                      hint="ask for fewer --samples, or use a longer text or a shorter --seq-len")
    else:
        starts = np.linspace(0, available - 1, samples).round().astype(np.int64) * stride
    return np.stack([ids[s:s + seq_len] for s in starts]).astype(np.int64)


def sentences(path_or_text: str | os.PathLike, count: int | None = None, *, min_words: int = 6,
              max_words: int = 40) -> list[str]:
    """Plain English sentences from a text (for sentence-embedding checks), deterministic.

    Paragraphs are unwrapped, split after ``.``, ``!`` or ``?``; a sentence is kept when it has
    ``min_words`` to ``max_words`` words, starts with a capital letter and contains no code
    (no brackets, ``=``, ``*``, quotes or backquotes). With ``count``, that many are taken evenly
    spread over the text.
    """
    text = read_text(path_or_text)
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        flat = " ".join(re.sub(r"(?<=\w)-\n\s*(?=\w)", "-", para).split())
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", flat):
            words = s.split()
            if not (min_words <= len(words) <= max_words) or not s[0].isupper() or s[-1] not in ".!?":
                continue
            if re.search(r"[()\[\]{}=*\"`<>|_#$\\]", s) or sum(c.isalpha() for c in s) < 0.7 * len(s):
                continue
            out.append(s)
    if count is None:
        return out
    if count > len(out):
        raise QCError(f"the text has {len(out)} usable sentences, fewer than the {count} asked for",
                      hint="ask for fewer sentences or give a longer text")
    return [out[i] for i in np.linspace(0, len(out) - 1, count).round().astype(int)]


def read_sentences(path: str) -> list[str]:
    """``--sentences FILE``: one sentence per non-empty line."""
    text = read_text(os.fspath(path))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise QCError("no sentences in the file (one per line expected)", where=path)
    return lines


def pad_batch(tokenizer: Any, texts: Sequence[str], max_length: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Encode sentences with special tokens, truncated to ``max_length`` and padded to the longest:
    ``(input_ids, attention_mask)`` int64 ``[n, L]``. Uses a copy of the tokenizer's settings."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.enable_truncation(max_length)
    padding = tokenizer.padding or {}
    pad_id = padding.get("pad_id")
    pad_token = padding.get("pad_token")
    if pad_id is None:
        for candidate in ("[PAD]", "<pad>", "<|endoftext|>"):
            if tok.token_to_id(candidate) is not None:
                pad_id, pad_token = tok.token_to_id(candidate), candidate
                break
        else:
            pad_id, pad_token = 0, tok.id_to_token(0) or "[PAD]"
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
    encoded = tok.encode_batch(list(texts))
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
    return ids, mask


# -- .npz for --calib -----------------------------------------------------------------------------
def to_npz(windows: np.ndarray | Mapping[str, np.ndarray], path: str, input_name: str = "input_ids") -> str:
    """Write calibration data for ``--calib``: one array per model input, named after it, with a
    leading sample axis. ``windows`` is the ``input_ids`` array (named ``input_name``) or a mapping
    input name -> array (all with the same number of samples). Written atomically; returns path."""
    arrays = dict(windows) if isinstance(windows, Mapping) else {input_name: windows}
    if not arrays:
        raise QCError("no arrays to write", where=path)
    counts = {name: np.asarray(a).shape[0] if np.ndim(a) else None for name, a in arrays.items()}
    if None in counts.values() or len(set(counts.values())) != 1:
        raise QCError("every array needs the same leading sample axis; got "
                      + ", ".join(f"{k}: {np.shape(v)}" for k, v in arrays.items()), where=path)
    if not path.endswith(".npz"):
        raise QCError("calibration data files end in .npz", where=path)
    from ..fileio import atomic_write

    with atomic_write(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


def iter_batches(array: np.ndarray, batch_size: int) -> Iterable[np.ndarray]:
    for start in range(0, len(array), batch_size):
        yield array[start:start + batch_size]
