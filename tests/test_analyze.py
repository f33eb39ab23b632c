"""qc analyze (per-layer sensitivity, error split, report) and qc compile --accuracy (mixed precision)."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_qc
from qc.onnx.evaluator import ort_session
from qc.tools.mixed import Criterion

D = 32


def chain(path, outlier_layer=1, layers=4):
    """x -> MatMul -> Relu -> ... (``layers`` MatMuls); the input of MatMul ``outlier_layer`` has one
    feature 60x larger than the rest (its producer's weight column is scaled), so per-tensor int8
    activations there lose everything else: that layer is the most sensitive."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = rng.standard_normal((D, D)) / np.sqrt(D)
        if i == outlier_layer - 1:
            w[:, 3] *= 60.0
        w = w.astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, D])],
                          [helper.make_tensor_value_info(f"h{layers - 1}", TensorProto.FLOAT, [1, 8, D])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def chain_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("analyze")
    model = chain(str(d / "chain.onnx"))
    calib = str(d / "calib.npz")
    np.savez(calib, x=np.random.default_rng(1).standard_normal((16, 1, 8, D)).astype(np.float32))
    return model, calib, d


def _analyze(model, calib, d, name, *extra):
    out = d / f"{name}.json"
    r = run_qc("analyze", model, "--quant", "w8a8", "--calib", calib, "--outliers", "none", "--weights", "tensor",
               "--no-reduce-range", "--json", str(out), *extra)     # all 8 bits of the weights: the seed's claim
    assert r.returncode == 0, r.stderr
    return r, json.loads(out.read_text().replace("Infinity", "1e999"))


def test_analyze_ranks_the_layer_with_outliers_first(chain_model):
    model, calib, d = chain_model
    r, data = _analyze(model, calib, d, "serial", "--exact", "--html", str(d / "report.html"))
    ranking = [row["name"] for row in data["ranking"]]
    assert ranking[0] == "mm1", ranking
    first = data["ranking"][0]
    # its activations, not its weights, carry the error (the seed's claim on this model)
    assert first["alone_act"] < first["alone_weight"] - 10
    assert data["activations_only"] < data["weights_only"] - 5
    assert data["evaluations"] == 4 + 4 + 3 * 4
    assert "error split: activations" in r.stdout and "1  mm1" in r.stdout
    assert data["activations"]["mm1"]["max"] > 4 * data["activations"]["mm2"]["max"]
    assert data["activations"]["mm1"]["outlier_features"] == 1
    page = (d / "report.html").read_text()
    assert page.count("<svg") >= 5 and "mm1" in page and "longer = more sensitive" in page


def test_analyze_scores_equal_the_compiled_models(chain_model, tmp_path):
    """A score from the switchboard equals the SQNR of the model qc compile writes (all quantized)."""
    model, calib, d = chain_model
    _, data = _analyze(model, calib, d, "check")
    out = str(tmp_path / "q.onnx")
    r = run_qc("compile", model, "--target", "x86-avx2", "--quant", "w8a8", "--calib", calib, "--outliers", "none",
               "--weights", "tensor", "--no-reduce-range", "-o", out, "--quiet")
    assert r.returncode == 0, r.stderr
    held = np.load(calib)["x"][-2:]  # the two held-aside samples analyze scored on
    ref = np.concatenate([ort_session(model).run(None, {"x": x})[0].ravel() for x in held]).astype(np.float64)
    got = np.concatenate([ort_session(out).run(None, {"x": x})[0].ravel() for x in held]).astype(np.float64)
    sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))
    assert data["all_quantized"] == pytest.approx(sqnr, abs=0.05)


def test_analyze_jobs_and_ray_give_the_serial_ranking(chain_model):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'qc[ray]')")
    model, calib, d = chain_model
    _, serial = _analyze(model, calib, d, "s")
    _, jobs = _analyze(model, calib, d, "j", "--jobs", "2")
    _, ray = _analyze(model, calib, d, "r", "--ray", "local", "--jobs", "2")
    for other in (jobs, ray):
        assert [r["name"] for r in other["ranking"]] == [r["name"] for r in serial["ranking"]]
        assert [r["alone"] for r in other["ranking"]] == [r["alone"] for r in serial["ranking"]]


def test_accuracy_keeps_the_fewest_layers_in_float16(chain_model, tmp_path):
    model, calib, d = chain_model
    out, rep = str(tmp_path / "mixed.onnx"), tmp_path / "r.json"
    r = run_qc("compile", model, "--target", "x86-avx2", "--quant", "w8a8", "--calib", calib, "--outliers", "none",
               "--weights", "tensor", "-o", out, "--accuracy", "sqnr>=21", "--report-json", str(rep))
    assert r.returncode == 0, r.stderr
    acc = json.loads(rep.read_text())["accuracy_search"]
    k = len(acc["float16_layers"])
    assert acc["met"] and acc["float16_layers"][0] == "mm1" and 0 < k < acc["layers"]
    tried = {t["float16_layers"]: t["score"] for t in acc["tried"]}
    assert tried[k] >= 21 and tried[k - 1] < 21  # the fewest: one layer less misses
    assert acc["search_evaluations"] < 2 * acc["layers"]
    assert "accuracy: sqnr>=21 met" in r.stdout
    # the written model: mm1 runs on float16 weights, the others stay int8, and the criterion holds
    proto = onnx.load(out)
    names = {i.name: numpy_helper.to_array(i).dtype for i in proto.graph.initializer}
    assert names["w1.f16"] == np.float16 and names["w0.q"] == np.int8  # mm1 float16, mm0 stays int8 (7-bit)
    held = np.load(calib)["x"][-2:]
    ref = np.concatenate([ort_session(model).run(None, {"x": x})[0].ravel() for x in held]).astype(np.float64)
    got = np.concatenate([ort_session(out).run(None, {"x": x})[0].ravel() for x in held]).astype(np.float64)
    assert 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)) >= 21


def test_accuracy_that_cannot_be_met_writes_the_best_model(chain_model, tmp_path):
    model, calib, d = chain_model
    out = str(tmp_path / "best.onnx")
    r = run_qc("compile", model, "--target", "x86-avx2", "--quant", "w8a8", "--calib", calib, "--outliers", "none",
               "-o", out, "--accuracy", "sqnr>=500")
    assert r.returncode == 0, r.stderr
    assert "accuracy: sqnr>=500 NOT met (best configuration found written)" in r.stdout
    assert "4 of 4 layers kept in float16" in r.stdout
    assert onnx.load(out).graph.node


@pytest.mark.parametrize("text,err", [
    ("cosine>0.9", "cannot read the accuracy criterion 'cosine>0.9'"),
    ("sqnr>=3%", "a relative (%) criterion is for perplexity, not sqnr"),
    ("ppl>=2", "'ppl>=2': use <= with ppl"),
])
def test_bad_criterion(chain_model, tmp_path, text, err):
    model, calib, _ = chain_model
    r = run_qc("compile", model, "--target", "x86-avx2", "--quant", "w8a8", "--calib", calib,
               "-o", str(tmp_path / "x.onnx"), "--accuracy", text)
    assert r.returncode == 2 and err in r.stderr and "Traceback" not in r.stderr


def test_criterion_thresholds():
    c = Criterion.parse("ppl<=+2%")
    assert c.relative and c.threshold(20.0) == pytest.approx(20.4)
    assert c.holds(20.3, 20.0) and not c.holds(20.5, 20.0)
    assert Criterion.parse("cosine>=0.995").holds(0.996, 1.0)


def test_calibration_in_two_workers_merges_to_the_serial_statistics(chain_model):
    from qc.calib.data import from_npz
    from qc.frontend.onnx import import_onnx
    from qc.pm import PassContext, PassManager, parse_pass

    model, calib, _ = chain_model
    got = {}
    for jobs in (1, 2):
        module = import_onnx(onnx.load(model))
        ctx = PassContext(calibration_data=from_npz(calib), quiet=True)
        PassManager([parse_pass(f"calibrate{{jobs={jobs},rows=16}}")], ctx=ctx).run(module)
        got[jobs] = ctx.calibration
    _assert_same_statistics(got[1], got[2], samples=16)


def _assert_same_statistics(one, other, samples: int) -> None:
    """Two calibrations agree: the same tensors, min/max/count, histograms, per-feature max and rows."""
    assert one.samples == other.samples == samples and one.tensors.keys() == other.tensors.keys()
    for name, s in one.tensors.items():
        t = other.tensors[name]
        assert (s.min, s.max, s.count) == (t.min, t.max, t.count)
        np.testing.assert_array_equal(s.hist.counts, t.hist.counts)
        np.testing.assert_array_equal(s.channel_absmax, t.channel_absmax)
        np.testing.assert_allclose(s.channel_abssum, t.channel_abssum, rtol=1e-12)
        if s.row_sample is not None:
            np.testing.assert_array_equal(s.row_sample, t.row_sample)


class _PicklingExecutor:
    """A qc.pm.Executor in this process that sends everything through pickle, as Ray would."""
    workers = 3

    def __init__(self):
        self.described = []

    def map(self, setup, fn, shared, items, *, describe, desc=""):
        import pickle

        self.described = [describe(i) for i in range(len(items))]
        state = setup(pickle.loads(pickle.dumps(shared)))
        return [pickle.loads(pickle.dumps(fn(state, pickle.loads(pickle.dumps(it))))) for it in items]


def test_calibration_on_an_injected_executor_merges_to_the_serial_statistics(chain_model):
    """calibrate runs its sample shares on PassContext.executor (what --ray puts there) and merges
    them in sample order: the serial statistics (the pass imports nothing of the executor's)."""
    from qc.calib.data import from_npz
    from qc.frontend.onnx import import_onnx
    from qc.pm import PassContext, PassManager, parse_pass

    model, calib, _ = chain_model
    got = {}
    executor = _PicklingExecutor()
    for ex in (None, executor):
        module = import_onnx(onnx.load(model))
        ctx = PassContext(calibration_data=from_npz(calib), quiet=True, executor=ex)
        PassManager([parse_pass("calibrate{rows=16}")], ctx=ctx).run(module)
        got[ex is None] = ctx.calibration
    one, many = got[True], got[False]
    assert [d.split(" (")[0] for d in executor.described] == [  # 3 contiguous shares, named in errors
        "calibration samples 0..4", "calibration samples 5..10", "calibration samples 11..15"]
    _assert_same_statistics(one, many, samples=16)
