"""ONNX frontend and writer: external data (lazy), sparse initializers, functions, opset upgrade."""
import hashlib
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qc
from conftest import LIGHT_DIR
from qc.testing.conformance import random_feeds, run_onnx


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _big_weight_model(directory):
    w = np.random.default_rng(1).standard_normal((256, 1024)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1024])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = os.path.join(directory, "big.onnx")
    onnx.save_model(model, path, save_as_external_data=True, location="big.weights", size_threshold=0)
    return path, w


def test_external_data_stays_on_disk_until_touched_and_is_written_external(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path, w = _big_weight_model(str(src))
    digests = {p: _digest(p) for p in (path, str(src / "big.weights"))}
    module = qc.import_onnx(path)
    tensor = module.graph.consts["w"].const
    assert not tensor.is_loaded and tensor.external_location == "big.weights"
    text = qc.print_ir(module)
    assert 'const @w : f32[256, 1024] = blob("w", bytes = 1048576)' in text
    assert not tensor.is_loaded  # printing with elision does not read the weights
    out = str(tmp_path / "out.onnx")
    qc.save_onnx(module, out, external=True)
    assert os.path.getsize(out + ".data") >= w.nbytes
    assert os.path.getsize(out) < 10_000
    x = {"x": np.ones((2, 256), np.float32)}
    expected = run_onnx(onnx.load(path), x)[0]
    got = run_onnx(onnx.load(out), x)[0]
    assert expected.tobytes() == got.tobytes()
    assert {p: _digest(p) for p in digests} == digests  # inputs untouched
    np.testing.assert_array_equal(tensor.numpy(), w)


def test_small_models_are_written_inline(tmp_path):
    out = str(tmp_path / "sq.onnx")
    qc.save_onnx(qc.import_onnx(os.path.join(LIGHT_DIR, "light_squeezenet.onnx")), out)
    assert not os.path.exists(out + ".data")
    assert [f for f in os.listdir(tmp_path) if f.startswith(".qc-")] == []


def test_sparse_initializer_and_local_function_run_the_same():
    values = helper.make_tensor("s", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    indices = helper.make_tensor("s_idx", TensorProto.INT64, [3], [0, 4, 11])
    sparse = helper.make_sparse_tensor(values, indices, [3, 4])
    fn = helper.make_function("local", "Scale", ["a", "b"], ["c"],
                              [helper.make_node("Mul", ["a", "b"], ["c"])], [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Scale", ["x", "s"], ["y"], domain="local")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
                              sparse_initializer=[sparse])
    model = helper.make_model(graph, functions=[fn], opset_imports=[helper.make_opsetid("", 17),
                                                                    helper.make_opsetid("local", 1)])
    text = qc.print_ir(qc.import_onnx(model), elide_above=None)
    assert "const @s : sparse<f32[3, 4]> = sparse(f32[3] dense[1.0, 2.0, 3.0], i64[3] dense[0, 4, 11])" in text
    assert 'func @Scale(%a, %b) -> (?) attributes {domain = "local", opset_import = {"" = 17}}' in text
    proto = qc.export_onnx(qc.parse_ir(text))
    onnx.checker.check_model(proto)  # full_check rejects a sparse operand of Mul, for the original too
    x = {"x": np.arange(12, dtype=np.float32).reshape(3, 4)}
    assert run_onnx(model, x)[0].tobytes() == run_onnx(proto, x)[0].tobytes()


def test_opset_upgrade_on_request():
    path = os.path.join(LIGHT_DIR, "light_squeezenet.onnx")
    module = qc.import_onnx(path, upgrade_opset=17)
    assert module.opset_imports[""] == 17
    proto = qc.export_onnx(module)
    feeds = random_feeds(onnx.load(path))
    np.testing.assert_allclose(run_onnx(onnx.load(path), feeds)[0], run_onnx(proto, feeds)[0], rtol=1e-5, atol=1e-6)
    assert qc.import_onnx(path).opset_imports[""] == 9


def test_networkx_view_matches_the_graph():
    module = qc.import_onnx(os.path.join(LIGHT_DIR, "light_squeezenet.onnx"))
    g = module.to_networkx()
    import networkx as nx

    assert g.number_of_nodes() == len(module.graph) and nx.is_directed_acyclic_graph(g)
    order = list(nx.topological_sort(g))
    assert len(order) == len(module.graph)


@pytest.mark.parametrize("name", ["light_squeezenet.onnx", "light_resnet50.onnx", "light_inception_v2.onnx"])
def test_opset_upgrade_to_21_keeps_outputs_and_weights(name):
    # The converter runs with the weights detached (frontend._convert_without_weights) and
    # reattaches them; the model must compute the same and hold the same initializers.
    path = os.path.join(LIGHT_DIR, name)
    original = onnx.load(path)
    proto = qc.export_onnx(qc.import_onnx(path, upgrade_opset=21))
    assert {o.domain: o.version for o in proto.opset_import}[""] == 21
    assert sorted(t.name for t in proto.graph.initializer) == sorted(t.name for t in original.graph.initializer)
    onnx.checker.check_model(proto, full_check=True)
    feeds = random_feeds(original)
    np.testing.assert_allclose(run_onnx(original, feeds)[0], run_onnx(proto, feeds)[0], rtol=1e-5, atol=1e-5)


def test_saved_file_parses_to_the_exported_proto(tmp_path):
    # save_onnx streams the initializers one at a time (see writer.save_onnx); parsed back, the
    # file must be the very ModelProto that export_onnx builds in memory, initializer order included.
    module = qc.import_onnx(os.path.join(LIGHT_DIR, "light_resnet50.onnx"))
    path = str(tmp_path / "m.onnx")
    qc.save_onnx(module, path)
    loaded = onnx.load(path)
    assert loaded == qc.export_onnx(module)
    assert [t.name for t in loaded.graph.initializer] == list(module.graph.consts)
