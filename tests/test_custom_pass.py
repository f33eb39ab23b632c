"""The worked example of docs/writing-passes.md: a user's pass file through `qc opt --load-pass`."""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper

from conftest import REPO
from qc.testing.conformance import run_onnx

EXAMPLE = os.path.join(REPO, "examples", "passes", "fold_double_cast.py")


def _double_cast_model(path):
    nodes = [helper.make_node("Cast", ["x"], ["wide"], to=TensorProto.INT32, name="to_i32"),
             helper.make_node("Cast", ["wide"], ["y"], to=TensorProto.FLOAT, name="to_f32"),
             helper.make_node("Cast", ["f"], ["half"], to=TensorProto.FLOAT16, name="to_f16"),
             helper.make_node("Cast", ["half"], ["z"], to=TensorProto.FLOAT, name="back_to_f32")]
    graph = helper.make_graph(nodes, "casts",
                              [helper.make_tensor_value_info("x", TensorProto.INT8, [5]),
                               helper.make_tensor_value_info("f", TensorProto.FLOAT, [5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [5])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_docs_show_exactly_the_example_file():
    with open(os.path.join(REPO, "docs", "writing-passes.md")) as f:
        docs = f.read()
    with open(EXAMPLE) as f:
        assert f.read() in docs


def test_custom_pass_runs_and_shows_in_print_ir_after_all(tmp_path, qc_cli):
    model, out = str(tmp_path / "casts.onnx"), str(tmp_path / "casts.opt.onnx")
    _double_cast_model(model)
    r = qc_cli("opt", model, "--load-pass", EXAMPLE, "-p", "fold-double-cast,dce", "--print-ir-after-all",
               "-o", out)
    assert r.returncode == 0, r.stderr
    after_fold, after_dce = r.stderr.split("// -----// IR Dump After dce //----- //")
    assert "// -----// IR Dump After fold-double-cast //----- //" in after_fold
    # the exact i8 -> i32 step is folded; the rounding f32 -> f16 step is kept
    assert "%y = onnx.Cast(%x) {to = 1}" in after_fold
    assert "onnx.Cast(%half) {to = 1}" in after_fold
    assert "to_i32" not in after_dce and "to_f16" in after_dce
    feeds = {"x": np.array([-128, -1, 0, 7, 127], np.int8),
             "f": np.array([0.1, 1e-8, 70000.0, -3.3, 2.0], np.float32)}
    for a, b in zip(run_onnx(onnx.load(model), feeds), run_onnx(onnx.load(out), feeds)):
        assert a.tobytes() == b.tobytes()


def test_custom_pass_option_and_listing(tmp_path, qc_cli):
    model = str(tmp_path / "casts.onnx")
    _double_cast_model(model)
    r = qc_cli("opt", model, "--load-pass", EXAMPLE, "-p", "fold-double-cast{allow-lossy=true}")
    assert r.returncode == 0, r.stderr
    assert "%z = onnx.Cast(%f) {to = 1}" in r.stdout
    r = qc_cli("passes", "--load-pass", EXAMPLE, "fold-double-cast")
    assert r.returncode == 0 and "allow-lossy: bool = False" in r.stdout
    r = qc_cli("opt", model, "--load-pass", EXAMPLE, "-p", "fold-double-cast{allow-lossy=maybe}")
    assert r.returncode == 2
    assert r.stderr.strip() == ("qc: error: option 'allow-lossy' of pass 'fold-double-cast' expects true or false, "
                                "got 'maybe'")
