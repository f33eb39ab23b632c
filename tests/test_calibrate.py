"""Calibration: streaming statistics, range methods, the cache file, calibration data, the pass."""
import os

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qc
from conftest import small_mlp
from qc.calib.data import check_against, from_arrays, from_npz, from_samples, from_text
from qc.calib.stats import CalibrationStats, Histogram, TensorStats, choose_range, expected_mse, scale_zero_point
from qc.errors import QCError
from qc.pm import PassContext, PassManager
from test_metrics import word_tokenizer

RNG = np.random.default_rng(1234)


# -- statistics ---------------------------------------------------------------------------------
def _batches():
    """Batches whose range grows (the histogram must widen) and shrinks again."""
    return [RNG.standard_normal((3, 7, 16)).astype(np.float32) * s for s in (0.01, 1.0, 0.2, 37.0, 5.0)]


def test_histogram_merge_equals_one_shot():
    batches = _batches()
    whole = np.concatenate([b.reshape(-1) for b in batches])
    one_shot = Histogram(1024)
    one_shot.update(whole)
    streamed = Histogram(1024)
    for b in batches:
        streamed.update(b)
    left, right = Histogram(1024), Histogram(1024)
    for b in batches[:2]:
        left.update(b)
    for b in batches[2:]:
        right.update(b)
    right_first = right.copy()
    left.merge(right)            # the finer one (left) coarsens to right's range
    right_first.merge(Histogram(1024))
    for h in (streamed, left):
        assert h.exponent == one_shot.exponent
        np.testing.assert_array_equal(h.counts, one_shot.counts)
    assert one_shot.total == whole.size
    assert abs(whole).max() < one_shot.limit <= 2 * abs(whole).max()
    expected, _ = np.histogram(whole, bins=1024, range=(-one_shot.limit, one_shot.limit))
    np.testing.assert_array_equal(one_shot.counts, expected)


def test_streaming_stats_equal_stats_of_the_concatenation():
    batches = _batches()
    options = {"channels": True, "histogram": True, "hessian_enabled": True, "max_rows": 20}
    streamed, merged_a, merged_b, one = (TensorStats(**options) for _ in range(4))
    for b in batches:
        streamed.update(b)
    for b in batches[:3]:
        merged_a.update(b)
    for b in batches[3:]:
        merged_b.update(b)
    merged_a.merge(merged_b)
    one.update(np.concatenate(batches))
    rows = np.concatenate([b.reshape(-1, 16) for b in batches]).astype(np.float64)
    for s in (streamed, merged_a):
        assert (s.min, s.max, s.count, s.rows) == (one.min, one.max, one.count, one.rows)
        assert s.min == rows.min() and s.max == rows.max() and s.count == rows.size and s.rows == len(rows)
        np.testing.assert_array_equal(s.channel_absmax, np.abs(rows).max(axis=0).astype(np.float32))
        np.testing.assert_array_equal(s.channel_min, rows.min(axis=0).astype(np.float32))
        np.testing.assert_array_equal(s.channel_max, rows.max(axis=0).astype(np.float32))
        np.testing.assert_allclose(s.channel_abssum, np.abs(rows).sum(axis=0), rtol=1e-12)
        np.testing.assert_allclose(s.hessian, rows.T @ rows, rtol=1e-12)
        np.testing.assert_array_equal(s.hist.counts, one.hist.counts)
        np.testing.assert_array_equal(s.row_sample, one.row_sample)   # bottom-k by content: order-free
    assert one.row_sample.shape == (20, 16)
    kept = {r.tobytes() for r in rows.astype(np.float32)}
    assert all(r.tobytes() in kept for r in one.row_sample)


def test_feature_axis_and_non_finite_values():
    x = RNG.standard_normal((2, 5, 3, 3)).astype(np.float32)      # NCHW: channels on axis 1
    s = TensorStats(axis=1)
    s.update(x)
    np.testing.assert_array_equal(s.channel_absmax, np.abs(x).max(axis=(0, 2, 3)))
    assert s.rows == 2 * 3 * 3
    y = np.array([[1.0, np.nan], [np.inf, -2.0]], dtype=np.float32)
    t = TensorStats()
    t.update(y)
    assert (t.min, t.max, t.count, t.nonfinite, t.zeros) == (-2.0, 1.0, 2, 2, 0)
    assert t.hist.total == 2


def _gauss_with_outlier(n=1_000_000, outlier=50.0):
    x = RNG.standard_normal(n).astype(np.float32)
    x[n // 2] = outlier
    return x


def _quant_mse(x, lo, hi, qmin=-128, qmax=127, symmetric=True):
    scale, zp = scale_zero_point(lo, hi, qmin=qmin, qmax=qmax, symmetric=symmetric)
    q = np.clip(np.round(x / scale) + zp, qmin, qmax)
    return float(np.mean(((q - zp) * scale - x).astype(np.float64) ** 2))


def test_range_methods_on_gaussian_with_a_lone_outlier():
    x = _gauss_with_outlier()
    s = TensorStats(channels=False)
    s.update(x)
    q = {"qmin": -128, "qmax": 127, "symmetric": True}
    minmax = choose_range(s, "minmax", **q)
    assert minmax == (-50.0, 50.0)                                   # covers everything
    lo, hi = choose_range(s, "percentile", percentile=99.99, **q)
    assert lo == -hi and 3.7 < hi < 4.1                              # |x| 99.99th percentile of N(0,1): 3.89
    _, entropy_hi = choose_range(s, "entropy", **q)
    assert 4.0 < entropy_hi < 20.0                                   # clips the outlier, keeps the bulk
    _, mse_hi = choose_range(s, "mse", **q)
    assert 2.5 < mse_hi < 10.0
    measured = {name: _quant_mse(x, -t, t) for name, t in (("minmax", 50.0), ("mse", mse_hi), ("entropy", entropy_hi))}
    assert measured["mse"] < measured["entropy"] < measured["minmax"]
    assert measured["mse"] < 0.25 * measured["minmax"]
    # the histogram's estimate of the error follows the measured one
    est = expected_mse(s, -mse_hi, mse_hi, **q)
    assert est == pytest.approx(measured["mse"], rel=0.3)


def test_range_methods_for_asymmetric_data():
    relu = np.maximum(_gauss_with_outlier(200_000, 40.0), 0)
    s = TensorStats(channels=False)
    s.update(relu)
    q = {"qmin": 0, "qmax": 255, "symmetric": False}
    assert choose_range(s, "minmax", **q) == (0.0, 40.0)
    assert s.zeros == np.count_nonzero(relu == 0) > 90_000     # exact zeros add no rounding noise
    for method in ("percentile", "entropy"):
        lo, hi = choose_range(s, method, **q)
        assert lo == 0.0 and 1.0 < hi < 20.0, method
    lo, hi = choose_range(s, "mse", **q)   # 200k values: keeping much of the outlier's range costs least
    assert lo == 0.0 and hi <= 40.0
    assert _quant_mse(relu, lo, hi, 0, 255, False) <= _quant_mse(relu, 0.0, 40.0, 0, 255, False)
    shifted = RNG.standard_normal(200_000).astype(np.float32) + 3.0
    shifted[0] = -30.0
    t = TensorStats(channels=False)
    t.update(shifted)
    lo, hi = choose_range(t, "mse", **q)
    assert -30.0 < lo < 0.0 and hi <= shifted.max()
    assert _quant_mse(shifted, lo, hi, 0, 255, False) < _quant_mse(shifted, -30.0, shifted.max(), 0, 255, False)
    lo, hi = choose_range(t, "percentile", percentile=99.9, **q)
    assert -1.0 < lo < 0.5 and 5.5 < hi < 6.5 + 1e-6


def test_range_edge_cases():
    empty = TensorStats()
    assert choose_range(empty, "entropy", qmin=-128, qmax=127, symmetric=True) == (0.0, 0.0)
    zeros = TensorStats()
    zeros.update(np.zeros(10, np.float32))
    assert choose_range(zeros, "mse", qmin=-128, qmax=127, symmetric=True) == (0.0, 0.0)
    assert scale_zero_point(0.0, 0.0, qmin=-128, qmax=127, symmetric=True) == (np.float32(1.0), 0)
    no_hist = TensorStats(histogram=False)
    no_hist.update(np.arange(5, dtype=np.float32))
    with pytest.raises(QCError, match="needs a histogram.*histogram=true"):
        choose_range(no_hist, "percentile", qmin=0, qmax=255, symmetric=False)
    with pytest.raises(QCError, match="unknown calibration method 'kl'.*minmax, percentile, entropy, mse"):
        choose_range(no_hist, "kl", qmin=0, qmax=255, symmetric=False)


def test_scale_and_zero_point():
    scale, zp = scale_zero_point(-1.0, 2.54, qmin=-128, qmax=127, symmetric=True)
    assert zp == 0 and scale == np.float32(2.54 / 127)
    scale, zp = scale_zero_point(-1.0, 2.54, qmin=0, qmax=255, symmetric=True)
    assert zp == 128 and scale == np.float32(2.54 / 127)
    scale, zp = scale_zero_point(-1.0, 3.0, qmin=0, qmax=255, symmetric=False)
    assert scale == np.float32(4.0 / 255) and zp == round(1.0 / (4.0 / 255))
    scale, zp = scale_zero_point(0.5, 3.0, qmin=0, qmax=255, symmetric=False)   # 0 is always covered
    assert zp == 0 and scale == np.float32(3.0 / 255)
    assert isinstance(scale, np.float32) and isinstance(zp, int)


# -- the cache file -----------------------------------------------------------------------------
def test_calibration_stats_round_trip(tmp_path):
    stats = CalibrationStats(samples=3, key="abc", method="entropy", options={"rows": 4})
    a = TensorStats(hessian_enabled=True, max_rows=4)
    for b in _batches():
        a.update(b)
    b = TensorStats(channels=False, histogram=False)
    stats.tensors = {"x/with odd:name": a, "y": b, "t0.hist": TensorStats()}
    path = str(tmp_path / "calib.npz")
    stats.save(path)
    back = CalibrationStats.load(path)
    assert (back.samples, back.key, back.method, back.options) == (3, "abc", "entropy", {"rows": 4})
    assert list(back.tensors) == list(stats.tensors)
    got = back.tensors["x/with odd:name"]
    assert (got.min, got.max, got.count, got.rows, got.axis) == (a.min, a.max, a.count, a.rows, a.axis)
    for field in ("channel_absmax", "channel_abssum", "channel_min", "channel_max", "hessian", "row_sample",
                  "row_priority"):
        np.testing.assert_array_equal(getattr(got, field), getattr(a, field))
    np.testing.assert_array_equal(got.hist.counts, a.hist.counts)
    assert got.hist.exponent == a.hist.exponent
    assert back.tensors["y"].hist is None and back.tensors["y"].count == 0
    assert back.tensors["t0.hist"].min == float("inf")
    got.update(_batches()[0])          # a loaded set keeps streaming
    for method in ("minmax", "entropy"):
        assert choose_range(got, method, qmin=-128, qmax=127, symmetric=True)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".qc-")]   # atomic: no temporary left


def test_calibration_stats_load_errors(tmp_path):
    missing = str(tmp_path / "none.npz")
    with pytest.raises(QCError, match="none.npz: no such calibration cache file"):
        CalibrationStats.load(missing)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(QCError, match=r"garbage.npz: not a readable qc calibration cache .*; delete the file"):
        CalibrationStats.load(str(garbage))
    other = str(tmp_path / "other.npz")
    np.savez(other, x=np.zeros(3))
    with pytest.raises(QCError, match="other.npz: not a readable qc calibration cache"):
        CalibrationStats.load(other)
    pickled = str(tmp_path / "pickled.npz")
    np.savez(pickled, meta=np.array([{"format": "qc-calibration"}], dtype=object))
    with pytest.raises(QCError, match="pickled.npz: not a readable qc calibration cache"):
        CalibrationStats.load(pickled)


# -- calibration data ---------------------------------------------------------------------------
def _mlp_module(batch="N"):
    """x[batch, 4] -> MatMul(w) -> h -> Add(b) -> Relu -> MatMul(w2 = Cast(w2_f16)) -> y."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    w2 = rng.standard_normal((6, 3)).astype(np.float16)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b"], ["z"], name="add"),
             helper.make_node("Relu", ["z"], ["r"], name="relu"),
             helper.make_node("Cast", ["w2_f16"], ["w2"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.linspace(-1, 1, 6).astype(np.float32), "b"),
         numpy_helper.from_array(w2, "w2_f16")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return qc.import_onnx(proto), w, w2.astype(np.float32)


def test_check_against_accepts_good_data_and_both_sample_layouts(tmp_path):
    module = qc.import_onnx(small_mlp())                      # x: f32[2, 4]
    x = RNG.standard_normal((3, 2, 4)).astype(np.float32)
    check_against(from_arrays({"x": x}), module)              # leading sample axis on top of [2, 4]
    feeds = list(from_arrays({"x": x}).feeds(module))
    assert [f["x"].shape for f in feeds] == [(2, 4)] * 3
    folder = tmp_path / "samples"
    folder.mkdir()
    for i in (2, 0, 1):
        np.savez(folder / f"s{i}.npz", x=x[i])
    data = from_npz(str(folder))
    check_against(data, module)
    assert len(data) == 3
    np.testing.assert_array_equal(np.stack([f["x"] for f in data.feeds(module)]), x)   # sorted by name
    assert data.where(1).endswith("s1.npz")
    single = str(tmp_path / "calib.npz")
    np.savez(single, x=x)
    assert from_npz(single).key == from_npz(single).key != data.key


def _error(data, module):
    with pytest.raises(QCError) as e:
        check_against(data, module)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_bad_calibration_data_messages(tmp_path):
    module = qc.import_onnx(small_mlp())
    good = RNG.standard_normal((3, 2, 4)).astype(np.float32)
    path = str(tmp_path / "calib.npz")

    def npz(**arrays):
        np.savez(path, **arrays)
        return from_npz(path)

    msg = _error(npz(input=good), module)
    assert msg.startswith(f"{path}: the calibration data has no array for the model input 'x'; its arrays: input")
    assert "name the arrays after the model inputs: x (float32[2, 4])" in msg
    msg = _error(npz(x=good, extra=good), module)
    assert "has an array 'extra' that is not a model input" in msg and "rename or drop the array" in msg
    msg = _error(npz(x=good.astype(np.float64)), module)
    assert msg == (f"{path}: input 'x' expects float32, the calibration data has float64; "
                   "convert the array with .astype(np.float32)")
    msg = _error(npz(x=good[:, :, :3]), module)
    assert "input 'x' expects shape [2, 4], sample 0 has [2, 3] (axis 1: 3 instead of 4)" in msg
    msg = _error(npz(x=good[:, 0, 0]), module)
    assert "input 'x' expects rank 2 [2, 4], sample 0 has shape [1]" in msg
    msg = _error(npz(x=good[:0]), module)
    assert msg.startswith(f"{path}: the calibration data has no samples; give at least one sample")
    bad = good.copy()
    bad[2, 1, 1] = np.nan
    bad[2, 0, 0] = np.inf
    msg = _error(npz(x=bad), module)
    assert msg.startswith(f"{path}: input 'x' of sample 2 contains 1 NaN and 1 Inf value(s); "
                          "clean the calibration data")
    folder = tmp_path / "dir"
    folder.mkdir()
    np.savez(folder / "a.npz", x=good[0])
    np.savez(folder / "b.npz", x=good[1].astype(np.int64))
    msg = _error(from_npz(str(folder)), module)
    assert msg.startswith(f"{folder / 'b.npz'}: input 'x' expects float32, the calibration data has int64")


def test_calibration_data_file_errors(tmp_path):
    with pytest.raises(QCError, match="missing.npz: no such calibration data file or directory"):
        from_npz(str(tmp_path / "missing.npz"))
    npy = str(tmp_path / "x.npy")
    np.save(npy, np.zeros(3))
    with pytest.raises(QCError, match=r"x.npy: not an .npz archive"):
        from_npz(npy)
    objects = str(tmp_path / "objects.npz")
    np.savez(objects, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(QCError, match="objects.npz: cannot read the calibration data .it holds object arrays"):
        from_npz(objects)
    ragged = str(tmp_path / "ragged.npz")
    np.savez(ragged, a=np.zeros((3, 2)), b=np.zeros((4, 2)))
    with pytest.raises(QCError, match=r"ragged.npz: every array needs the same leading sample axis; got a \[3, 2\]"):
        from_npz(ragged)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(QCError, match="empty: the directory has no .npz files"):
        from_npz(str(empty_dir))


def test_symbolic_dims_must_agree_within_a_sample():
    module, _, _ = _mlp_module()
    graph = module.graph
    assert graph.inputs[0].type.shape == ("N", 4)
    two = from_samples([{"x": np.zeros((2, 4), np.float32)}, {"x": np.zeros((5, 4), np.float32)}])
    check_against(two, module)                                  # different samples may differ
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "pair",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", "k"]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, ["k", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    pair = qc.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    bad = from_samples([{"a": np.zeros((2, 4), np.float32), "b": np.zeros((5, 3), np.float32)}])
    assert "inputs 'a' and 'b' share the dimension 'k', but sample 0 gives 4 and 5" in _error(bad, pair)
    ok = from_samples([{"a": np.ones((2, 4), np.float32), "b": np.full((4, 3), 2, np.float32)}])
    stats = _run(pair, ok, "calibrate{outputs=true}").calibration
    assert set(stats.tensors) == {"a", "b", "y"} and stats["y"].max == 8.0   # graph inputs observed from feeds
    assert stats["b"].axis == -2 and stats["b"].channel_absmax is None     # activation x activation


class _Chars:
    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 50 for c in text]


def test_from_text_builds_token_feeds(tmp_path):
    text = ("the model is small and the text runs fast on the cpu . " * 40) + "\n"
    data = from_text(text, word_tokenizer(), seq_len=8, samples=5, input_names=["input_ids", "attention_mask"])
    samples = list(data)
    assert len(data) == 5 and set(samples[0]) == {"input_ids", "attention_mask"}
    ids = samples[0]["input_ids"]
    assert ids.shape == (1, 8) and ids.dtype == np.int64
    assert ids[0, 0] == 2 and ids[0, -1] == 3                   # [CLS] ... [SEP] for a BERT-style vocabulary
    np.testing.assert_array_equal(samples[0]["attention_mask"], np.ones((1, 8), np.int64))
    plain = from_text(text, _Chars(), seq_len=6, samples=3, input_names={"input_ids": np.int32})
    first = next(iter(plain))["input_ids"]
    assert first.dtype == np.int32 and first.shape == (1, 6)
    np.testing.assert_array_equal(first[0], [ord(c) % 50 for c in text[:6]])
    assert plain.key != from_text(text, _Chars(), seq_len=6, samples=2, input_names={"input_ids": np.int32}).key
    with pytest.raises(QCError, match="the model has an input 'pixels' that qc cannot feed from text"):
        from_text(text, _Chars(), seq_len=6, samples=3, input_names=["input_ids", "pixels"])


# -- the pass -----------------------------------------------------------------------------------
def _run(module, data, spec="calibrate", **options):
    ctx = PassContext(calibration_data=data, quiet=True, **options)
    PassManager.parse(spec, ctx=ctx).run(module)
    return ctx


def test_calibrate_small_mlp_matches_numpy_activations():
    module = qc.import_onnx(small_mlp())
    w = numpy_helper.to_array(small_mlp().graph.initializer[0])
    x = RNG.standard_normal((6, 2, 4)).astype(np.float32)
    before = qc.print_ir(module)
    ctx = _run(module, from_arrays({"x": x}), "calibrate{outputs=true,hessian=true,rows=5}")
    assert qc.print_ir(module) == before                       # the IR is not changed
    stats = ctx.calibration
    assert set(stats.tensors) == {"x", "h"} and stats.samples == 6 and stats.method == "minmax"
    sx, sh = stats["x"], stats["h"]
    assert (sx.min, sx.max) == (float(x.min()), float(x.max()))
    h = x.astype(np.float64) @ w.astype(np.float64)
    np.testing.assert_allclose([sh.min, sh.max], [h.min(), h.max()], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(sx.channel_absmax, np.abs(x).max(axis=(0, 1)))
    rows = x.reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(sx.hessian, rows.T @ rows, rtol=1e-12)
    assert sx.row_sample.shape == (5, 4) and sh.hessian is None and sh.channel_absmax is None
    assert any("6 samples, 2 tensors" in r for r in ctx.remarks)


def test_calibrate_observes_fetched_activations_batched_or_not():
    module, w, w2 = _mlp_module()
    x = RNG.standard_normal((7, 3, 4)).astype(np.float32)
    data = from_arrays({"x": x[:, 0]})                         # 7 samples of [1, 4]
    one = _run(module, data, "calibrate{hessian=true}").calibration
    four = _run(module, data, "calibrate{hessian=true,batch-size=4}").calibration
    assert set(one.tensors) == {"x", "r"}                      # w2 = Cast(const) is a weight, not observed
    r = np.maximum(x[:, 0] @ w + np.linspace(-1, 1, 6).astype(np.float32), 0)
    for stats in (one, four):
        sr = stats["r"]
        np.testing.assert_allclose([sr.min, sr.max], [r.min(), r.max()], rtol=1e-6)
        np.testing.assert_allclose(sr.channel_absmax, np.abs(r).max(axis=0), rtol=1e-6)
        np.testing.assert_allclose(sr.hessian, r.T.astype(np.float64) @ r, rtol=1e-5)
        assert stats.samples == 7 and sr.rows == 7
    np.testing.assert_array_equal(one["x"].hist.counts, four["x"].hist.counts)


def test_calibrate_cache(tmp_path):
    module, _, _ = _mlp_module()
    x = RNG.standard_normal((4, 2, 4)).astype(np.float32)
    cache = str(tmp_path / "cache.npz")
    first = _run(module, from_arrays({"x": x}), "calibrate{method=mse}", calibration_cache=cache)
    assert os.path.isfile(cache)
    again = _run(module, from_arrays({"x": x}), "calibrate{method=entropy}", calibration_cache=cache)
    assert any("loaded from" in r for r in again.remarks)
    a, b = first.calibration, again.calibration
    assert a.key == b.key and b.method == "entropy" and b.samples == 4
    np.testing.assert_array_equal(a["r"].hist.counts, b["r"].hist.counts)
    other = _run(module, from_arrays({"x": x[:3]}), "calibrate", calibration_cache=cache)
    assert any("recomputing" in r for r in other.remarks) and other.calibration.samples == 3
    options = _run(module, from_arrays({"x": x[:3]}), "calibrate{hessian=true}", calibration_cache=cache)
    assert any("recomputing" in r for r in options.remarks)
    changed, _, _ = _mlp_module()
    changed.graph.consts["w"].const = qc.ir.tensor.Tensor.from_array(np.ones((4, 6), np.float32))
    weights = _run(changed, from_arrays({"x": x[:3]}), "calibrate{hessian=true}", calibration_cache=cache)
    assert any("recomputing" in r for r in weights.remarks)
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(QCError, match="bad.npz: not a readable qc calibration cache"):
        _run(module, from_arrays({"x": x}), calibration_cache=str(tmp_path / "bad.npz"))


def test_calibrate_errors():
    module = qc.import_onnx(small_mlp())
    with pytest.raises(QCError, match="calibrate needs calibration data.*--calib FILE.npz or --calib-text FILE"):
        PassManager.parse("calibrate", ctx=PassContext()).run(module)
    with pytest.raises(QCError, match="no array for the model input 'x'"):
        _run(module, from_arrays({"y": np.zeros((1, 2, 4), np.float32)}))
    with pytest.raises(QCError, match="unknown method 'kl'"):
        _run(module, from_arrays({"x": np.zeros((1, 2, 4), np.float32)}), "calibrate{method=kl}")
    with pytest.raises(QCError, match="batch-size must be at least 1"):
        _run(module, from_arrays({"x": np.zeros((1, 2, 4), np.float32)}), "calibrate{batch-size=0}")


def test_calibrate_static_batch_ignores_batch_size():
    module = qc.import_onnx(small_mlp())
    ctx = _run(module, from_arrays({"x": RNG.standard_normal((3, 2, 4)).astype(np.float32)}),
               "calibrate{batch-size=8}")
    assert any("batch-size 8 ignored" in r for r in ctx.remarks)
    assert ctx.calibration.samples == 3


def test_calibrate_conv_channels_and_gemm_transposes():
    x = RNG.standard_normal((2, 3, 5, 5)).astype(np.float32)
    wc = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    wg = RNG.standard_normal((5, 36)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "wc"], ["c"], name="conv"),
             helper.make_node("Flatten", ["c"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wg"], ["y"], transB=1, name="gemm")]
    graph = helper.make_graph(nodes, "cg", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                              [numpy_helper.from_array(wc, "wc"), numpy_helper.from_array(wg, "wg")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    module = qc.import_onnx(proto)
    stats = _run(module, from_arrays({"x": x}), "calibrate{hessian=true}").calibration
    assert set(stats.tensors) == {"x", "f"}
    np.testing.assert_array_equal(stats["x"].channel_absmax, np.abs(x).max(axis=(0, 2, 3)))
    assert stats["x"].hessian is None                          # no Hessian for Conv
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(proto)
    f = np.concatenate([ref.run(["f"], {"x": x[i:i + 1]})[0] for i in range(2)])
    assert stats["f"].hessian.shape == (36, 36)
    np.testing.assert_allclose(stats["f"].channel_absmax, np.abs(f).max(axis=0), rtol=1e-5)


def test_calibrate_reads_the_weights_in_place():
    """The session gets the IR's weight buffers (add_external_initializers): the proto it is
    built from holds no weight bytes, so no copy is made and the 2 GB protobuf limit never applies."""
    from qc.onnx.writer import export_onnx_sharing_weights

    w = RNG.standard_normal((32, 64)).astype(np.float32)             # 8 KiB: handed over as an array
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
                               helper.make_node("MatMul", ["t", "w2"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(w, "w"),
                               numpy_helper.from_array(np.ones((64, 2), np.float32), "w2")])
    module = qc.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    proto, arrays = export_onnx_sharing_weights(module)
    assert sorted(arrays) == ["w"] and proto.ByteSize() < 1024     # w2 (512 bytes) stays inline
    x = RNG.standard_normal((3, 1, 32)).astype(np.float32)
    stats = _run(module, from_arrays({"x": x[:, 0]})).calibration
    t = np.tanh(x[:, 0].astype(np.float64) @ w)
    np.testing.assert_allclose([stats["t"].min, stats["t"].max], [t.min(), t.max()], rtol=1e-5)
