"""`qc eval MODEL --reference REF` for any model (issue 18, bug 8): per output SQNR, cosine, max
|error| and top-1 agreement, on inputs generated from the signature or read from an .npz, checked
against numpy on onnxruntime's outputs (graph optimizations off); JSON output; the errors."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from conftest import run_qc
from qc.calib.data import from_arrays
from qc.driver import load_model
from qc.tools import evaluate


def small_cnn(path, seed: int = 0) -> str:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: class scores logits [N, 10] for
    x [N, 3, 16, 16] (a symbolic batch, as exporters write it), and a score [N, 1] (their mean)."""
    rng = np.random.RandomState(seed)

    def w(name, *shape):
        return numpy_helper.from_array((rng.randn(*shape) * np.sqrt(2 / np.prod(shape[1:]))).astype(np.float32), name)

    inits = [w("w1", 8, 3, 3, 3), numpy_helper.from_array(np.zeros(8, np.float32), "b1"), w("w2", 10, 8),
             numpy_helper.from_array(np.zeros(10, np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r1"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1, name="fc"),
             helper.make_node("ReduceMean", ["logits"], ["score"], axes=[1], keepdims=1, name="mean")]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("logits", TP.FLOAT, ["N", 10]),
                           helper.make_tensor_value_info("score", TP.FLOAT, ["N", 1])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(float reference, its w8a8 compile by qc) on a few calibration images."""
    import qc

    d = tmp_path_factory.mktemp("eval")
    ref = small_cnn(d / "cnn.onnx")
    calib = from_arrays({"x": np.random.RandomState(5).randn(8, 1, 3, 16, 16).astype(np.float32)})
    result = qc.compile(ref, target="x86-avx2", quant="w8a8", calibration=calib, holdout=0)
    result.write(str(d / "cnn_w8a8.onnx"))
    result.close()
    return ref, str(d / "cnn_w8a8.onnx")


def _ort(path, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def _numpy_metrics(model, ref, samples):
    """What qc eval must print, computed here from onnxruntime's outputs with numpy alone."""
    got = [_ort(model, s) for s in samples]
    want = [_ort(ref, s) for s in samples]
    out = {}
    for name in want[0]:
        r = [w[name].astype(np.float64) for w in want]
        g = [x[name].astype(np.float64) for x in got]
        per = [10 * math.log10((a ** 2).sum() / ((a - b) ** 2).sum()) for a, b in zip(r, g)]
        cos = [float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(r, g)]
        signal, noise = sum((a ** 2).sum() for a in r), sum(((a - b) ** 2).sum() for a, b in zip(r, g))
        m = {"sqnr_db": 10 * math.log10(signal / noise),
             "sqnr_db_min": min(per), "sqnr_db_median": float(np.median(per)), "cosine": float(np.mean(cos)),
             "max_abs_error": max(float(np.abs(a - b).max()) for a, b in zip(r, g))}
        if r[0].shape[-1] > 1:
            rows = np.concatenate([a.reshape(-1, a.shape[-1]) for a in r])
            test = np.concatenate([b.reshape(-1, b.shape[-1]) for b in g])
            m["top1"] = float((rows.argmax(1) == test.argmax(1)).mean())
        out[name] = m
    return out


def _assert_close(got: dict, want: dict):
    for name, m in want.items():
        for k, v in m.items():
            assert got[name][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (name, k)


def test_generated_inputs_json_matches_numpy(models):
    ref, quant = models
    r = run_qc("eval", quant, "--reference", ref, "--shape", "x=2x3x16x16", "--samples", "8", "--seed", "3", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    rng = np.random.default_rng(3)                   # the documented generator: standard normal float32
    samples = [{"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)} for _ in range(8)]
    want = _numpy_metrics(quant, ref, samples)
    _assert_close(report["outputs"], want)
    assert report["inputs"] == {"from": "signature", "samples": 8, "seed": 3,
                                "generators": ["x: normal(0, 1) float32[2, 3, 16, 16]"]}
    logits, score = report["outputs"]["logits"], report["outputs"]["score"]
    assert logits["classifier_like"] and logits["top1_rows"] == 16 and 0.5 < logits["top1"] <= 1.0
    assert not score["classifier_like"] and "top1" not in score   # last axis 1: no classes
    assert 20 < logits["sqnr_db"] < 80 and logits["sqnr_db_min"] <= logits["sqnr_db_median"]
    # same seed, same bytes
    assert run_qc("eval", quant, "--reference", ref, "--shape", "x=2x3x16x16", "--samples", "8", "--seed", "3",
                  "--json").stdout == r.stdout


def test_npz_inputs_text_report(models, tmp_path):
    ref, quant = models
    xs = np.random.RandomState(9).randn(5, 1, 3, 16, 16).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=xs)
    r = run_qc("eval", quant, "--ref", ref, "--inputs", str(tmp_path / "x.npz"))
    assert r.returncode == 0, r.stderr
    want = _numpy_metrics(quant, ref, [{"x": x} for x in xs])
    lines = r.stdout.splitlines()
    assert lines[0] == f"qc eval: {quant} vs {ref}, 5 samples from {tmp_path / 'x.npz'}"
    assert lines[1].split() == ["output", "sqnr", "dB", "min/median", "cosine", "max", "|err|", "top-1"]
    m = want["logits"]
    assert lines[2].split() == ["logits", f"{m['sqnr_db']:.2f}", f"{m['sqnr_db_min']:.2f}/{m['sqnr_db_median']:.2f}",
                                f"{m['cosine']:.6f}", f"{m['max_abs_error']:.4g}", f"{100 * m['top1']:.1f}%", "of", "5"]
    s = want["score"]
    assert lines[3].split()[1:] == [f"{s['sqnr_db']:.2f}", f"{s['sqnr_db_min']:.2f}/{s['sqnr_db_median']:.2f}",
                                    f"{s['cosine']:.6f}", f"{s['max_abs_error']:.4g}", "-"]
    r3 = run_qc("eval", quant, "--ref", ref, "--inputs", str(tmp_path / "x.npz"), "--samples", "3", "--json")
    _assert_close(json.loads(r3.stdout)["outputs"], _numpy_metrics(quant, ref, [{"x": x} for x in xs[:3]]))


def test_identical_models_are_infinite_sqnr_and_full_agreement(models):
    ref, _ = models
    import shutil
    copy = ref.replace(".onnx", "_copy.onnx")
    shutil.copyfile(ref, copy)
    r = run_qc("eval", copy, "--ref", ref, "--shape", "x=1x3x16x16", "--samples", "2", "--json")
    out = json.loads(r.stdout)["outputs"]["logits"]
    assert out["sqnr_db"] == "inf" and out["max_abs_error"] == 0.0 and out["top1"] == 1.0 and out["cosine"] == 1.0


def test_errors_are_one_line(models, tmp_path):
    ref, quant = models
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 1, 3, 16, 16), np.float32))
    cases = [
        (["eval", quant, "--ref", ref],
         f"qc: error: {ref}: input 'x' [N, 3, 16, 16] has the symbolic dimension 'N' (axis 0), so inputs cannot be "
         "generated for it; give its size: --shape x=Nx3x16x16 (with numbers), or give inputs with --inputs X.npz"),
        (["eval", quant, "--ref", ref, "--shape", "x=2x3x16x17"],
         f"qc: error: {ref}: --shape x=2x3x16x17 does not match the input's shape [N, 3, 16, 16]; keep its static "
         "dimensions and give a size for each symbolic one"),
        (["eval", quant, "--ref", ref, "--shape", "y=1x2"],
         "qc: error: --shape names 'y', which is not a model input; the inputs are x"),
        (["eval", quant, "--ref", ref, "--shape", "x=1x3x16x16", "--inputs", str(tmp_path / "x.npz")],
         "qc: error: --shape sizes generated inputs; --inputs gives the inputs themselves; drop --shape (or --inputs)"),
        (["eval", quant],
         f"qc: error: {quant}: qc eval compares this model (inputs x; outputs logits, score) with a reference model; "
         "give --reference FP32.onnx"),
    ]
    for argv, expected in cases:
        r = run_qc(*argv)
        assert r.returncode == 2 and r.stdout == "", (argv, r.stdout, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(expected), (argv, r.stderr)


def test_generated_token_ids_stay_inside_the_embedding(tmp_path):
    """int32 input_ids cast and fed to a Gather of a [50, 4] table are drawn from [0, 50); a mask is ones."""
    table = numpy_helper.from_array(np.random.RandomState(0).randn(50, 4).astype(np.float32), "emb")
    nodes = [helper.make_node("Cast", ["input_ids"], ["ids64"], to=TP.INT64),   # exporters cast int32 ids
             helper.make_node("Gather", ["emb", "ids64"], ["h"], axis=0),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TP.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axes"], ["m3"]),
             helper.make_node("Mul", ["h", "m3"], ["y"])]
    axes = numpy_helper.from_array(np.array([2], np.int64), "axes")
    g = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("input_ids", TP.INT32, [1, "seq"]),
                                         helper.make_tensor_value_info("attention_mask", TP.INT64, [1, "seq"])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, "seq", 4])], [table, axes])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "emb.onnx"))
    specs = evaluate.signature(load_model(str(tmp_path / "emb.onnx")),
                               {"input_ids": (1, 64), "attention_mask": (1, 64)})
    assert [s.describe() for s in specs] == ["input_ids: ints in [0, 50) int32[1, 64]",
                                             "attention_mask: ones int64[1, 64]"]
    feeds = evaluate.generate(specs, 20, seed=1)
    ids = np.stack([f["input_ids"] for f in feeds])
    assert ids.min() >= 0 and ids.max() == 49 and len(np.unique(ids)) > 40
    assert all((f["attention_mask"] == 1).all() for f in feeds)


# -- the compile report's held-aside SQNR ---------------------------------------------------------
def _compile_report(tmp_path, samples: int, holdout: int | None):
    import qc

    ref = small_cnn(tmp_path / "cnn.onnx")
    xs = np.random.RandomState(5).randn(samples, 1, 3, 16, 16).astype(np.float32)
    result = qc.compile(ref, target="x86-avx2", quant="w8a8", calibration=from_arrays({"x": xs}), holdout=holdout)
    out = str(tmp_path / "q.onnx")
    result.write(out)
    result.close()
    return ref, out, xs, result.report


def test_compile_report_sqnr_uses_16_samples_and_says_so(tmp_path):
    """8 calibration samples hold 1 aside: the report measures it and 15 inputs generated like the
    real ones, gives each group apart and the spread, and says how many of each."""
    from qc.tools.report import format_report

    ref, out, xs, report = _compile_report(tmp_path, 8, None)
    a = report["accuracy"]
    assert (a["samples"], a["held_aside"], a["generated"], a["generated_from"]) == (16, 1, 15, 8)
    held = _numpy_metrics(out, ref, [{"x": xs[-1]}])      # the last sample is the held-aside one
    for name in ("logits", "score"):
        assert a["held_aside_sqnr_db"][name] == pytest.approx(held[name]["sqnr_db"], rel=1e-9)
        assert a["sqnr_db_min"][name] <= a["sqnr_db_median"][name]
        assert min(a["held_aside_sqnr_db"][name], a["generated_sqnr_db"][name]) <= a["sqnr_db"][name] <= \
            max(a["held_aside_sqnr_db"][name], a["generated_sqnr_db"][name])
    text = format_report(report)
    assert ("  output SQNR vs the float model on 16 samples (1 held-aside + 15 generated like the 8 real ones): "
            f"logits {a['sqnr_db']['logits']:.2f} dB, score {a['sqnr_db']['score']:.2f} dB\n") in text
    assert f"    per sample min / median: logits {a['sqnr_db_min']['logits']:.2f} / " in text
    assert f"    held-aside alone: logits {a['held_aside_sqnr_db']['logits']:.2f} dB" in text
    # the same compile writes the same report numbers (generated inputs are seeded)
    again = tmp_path / "again"
    again.mkdir()
    assert _compile_report(again, 8, None)[3]["accuracy"] == a


def test_compile_report_with_enough_held_aside_samples_generates_none(tmp_path):
    ref, out, xs, report = _compile_report(tmp_path, 40, 16)
    a = report["accuracy"]
    assert (a["samples"], a["held_aside"], a["generated"]) == (16, 16, 0)
    assert "generated_sqnr_db" not in a and "held_aside_sqnr_db" not in a
    want = _numpy_metrics(out, ref, [{"x": x} for x in xs[-16:]])
    assert a["sqnr_db"]["logits"] == pytest.approx(want["logits"]["sqnr_db"], rel=1e-9)
    assert a["sqnr_db_min"]["logits"] == pytest.approx(want["logits"]["sqnr_db_min"], rel=1e-9)


def test_compile_report_without_held_aside_samples_still_measures(tmp_path):
    """Fewer than 8 samples hold none aside: before, no SQNR at all; now 16 generated inputs, said
    so. An explicit holdout=0 (--holdout 0) still measures nothing."""
    from qc.tools.report import format_report

    _, _, _, report = _compile_report(tmp_path, 6, None)
    a = report["accuracy"]
    assert (a["samples"], a["held_aside"], a["generated"], a["generated_from"]) == (16, 0, 16, 6)
    assert "on 16 samples (0 held-aside + 16 generated like the 6 real ones)" in format_report(report)
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    assert _compile_report(explicit, 8, 0)[3]["accuracy"] is None


def test_generated_like_real_samples():
    """Floats: the real mean and std; integers: element by element from the real samples."""
    rng = np.random.default_rng(0)
    real = [{"x": (3 + 2 * rng.standard_normal((4, 50))).astype(np.float32),
             "ids": rng.integers(100, 200, (1, 8)), "mask": np.ones((1, 8), np.int64),
             "pos": np.arange(8)[None]} for _ in range(6)]
    fake = evaluate.like(real, 40, seed=2)
    x = np.stack([f["x"] for f in fake])
    assert x.dtype == np.float32 and x.shape == (40, 4, 50)
    assert abs(x.mean() - 3) < 0.05 and abs(x.std() - 2) < 0.05
    ids = np.stack([f["ids"] for f in fake])
    seen = np.stack([r["ids"] for r in real])
    assert all(ids[:, 0, j].tolist() and set(ids[:, 0, j]) <= set(seen[:, 0, j]) for j in range(8))
    assert all((f["mask"] == 1).all() and (f["pos"] == np.arange(8)).all() for f in fake)
    assert evaluate.like(real, 3, seed=2)[0]["x"].tobytes() == fake[0]["x"].tobytes()


def test_held_aside_check_survives_inputs_the_model_cannot_take(tmp_path):
    """A float input cast to a Gather index takes only a few values: imitated normal values go out
    of the table, onnxruntime refuses them, and the check falls back to the held-aside samples
    (saying why) instead of failing after the output was written."""
    from qc.tools.holdout import output_sqnr
    from qc.tools.report import format_accuracy

    table = numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(10, 2), "table")
    nodes = [helper.make_node("Cast", ["f"], ["i"], to=TP.INT64), helper.make_node("Gather", ["table", "i"], ["y"])]
    g = helper.make_graph(nodes, "pick", [helper.make_tensor_value_info("f", TP.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, 2])], [table])
    path = str(tmp_path / "pick.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    real = [{"f": np.array([v], np.float32)} for v in (0, 9, 0, 9)]
    a = output_sqnr(path, path, real[:1], calibration=real[1:])
    assert (a["samples"], a["held_aside"], a["generated"]) == (1, 1, 0)
    assert a["sqnr_db"] == {"y": "inf"} and "onnxruntime failed running the model" in a["generated_failed"]
    assert format_accuracy(a)[1].startswith("    (no generated samples: ")
    none = output_sqnr(path, path, [], calibration=real)
    assert none["samples"] == 0 and format_accuracy(none)[0].startswith(
        "  output SQNR: not measured (inputs generated like the calibration data failed: ")


def test_scalar_inputs_are_0d_arrays():
    """A scalar input (silero-vad's sample rate `sr`: shape []) is generated as a 0-d array, never a
    numpy scalar (onnxruntime refuses those: 'Unable to handle object of type numpy.int64')."""
    real = [{"sr": np.asarray(np.int64(16000)), "x": np.asarray(np.float32(0.5))} for _ in range(3)]
    for f in evaluate.like(real, 4) + evaluate.generate(
            [evaluate.InputSpec("sr", np.dtype(np.int64), (), "small", 4),
             evaluate.InputSpec("x", np.dtype(np.float32), (), "normal")], 2, seed=0):
        assert all(type(a) is np.ndarray and a.shape == () for a in f.values()), f
    assert all(int(f["sr"]) == 16000 for f in evaluate.like(real, 4))
