"""The catalogue of bad inputs (docs/robustness.md): each one through the `qc` CLI.

A refused input gives exit code 2 and one line ``qc: error: WHERE: WHAT; WHAT TO DO`` on stderr,
never a traceback. Odd but valid inputs (huge declared shapes, zero-size tensors) go through.
"""
from __future__ import annotations

import os
import pickle
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_qc, small_mlp

F = TensorProto.FLOAT
vi = helper.make_tensor_value_info


def refused(proc: subprocess.CompletedProcess, *parts: str) -> str:
    """Assert exit code 2 and one ``qc: error:`` line holding every part; return the line."""
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {err}"
    assert "Traceback" not in err and "internal error" not in err, err
    assert err.startswith("qc: error: ") and err.count("\n") == 1, err
    for part in parts:
        assert part in err, f"{part!r} not in {err!r}"
    return err


def save(model: onnx.ModelProto, path) -> str:
    path = str(path)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path


def graph_model(nodes, inputs, outputs, inits=(), opsets=(("", 17),)) -> onnx.ModelProto:
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                             opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def matmul_model(w: np.ndarray) -> onnx.ModelProto:
    k, n = w.shape
    return graph_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [vi("x", F, [2, k])],
                       [vi("y", F, [2, n])], [numpy_helper.from_array(w, "w")])


def external_model(directory, location: str, length: int | None = 64) -> str:
    """MatMul by a 4x4 float weight 'w' stored as external data at ``location``."""
    t = TensorProto(name="w", data_type=F, dims=[4, 4], data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value=location)
    if length is not None:
        t.external_data.add(key="length", value=str(length))
    model = graph_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [vi("x", F, [1, 4])],
                        [vi("y", F, [1, 4])], [t])
    return save(model, os.path.join(directory, "model.onnx"))


# -- graph structure -----------------------------------------------------------------------------
def test_cycle(tmp_path):
    model = graph_model([helper.make_node("Relu", ["b_out"], ["a_out"], name="a"),
                         helper.make_node("Neg", ["a_out"], ["b_out"], name="b")],
                        [vi("x", F, [2])], [vi("a_out", F, [2])])
    path = save(model, tmp_path / "cycle.onnx")
    refused(run_qc("show", path), path, "has a cycle through nodes 'a', 'b'", "ONNX graphs must be acyclic")


def test_node_reading_its_own_output(tmp_path):
    model = graph_model([helper.make_node("Add", ["x", "y"], ["y"], name="loop")], [vi("x", F, [2])], [vi("y", F, [2])])
    path = save(model, tmp_path / "self.onnx")
    refused(run_qc("show", path), path, "node 'loop' in graph reads its own output 'y' (a cycle)")


def test_duplicate_value_names(tmp_path):
    model = graph_model([helper.make_node("Relu", ["x"], ["h"], name="r1"),
                         helper.make_node("Neg", ["x"], ["h"], name="r2")],
                        [vi("x", F, [2])], [vi("h", F, [2])])
    path = save(model, tmp_path / "dup.onnx")
    refused(run_qc("compile", path, "--target", "x86-avx2", "-o", str(tmp_path / "o.onnx")),
            path, "value 'h' is defined twice in graph", "every name is assigned once")
    assert not os.path.exists(tmp_path / "o.onnx")


def test_undefined_input_and_missing_output(tmp_path):
    model = graph_model([helper.make_node("Relu", ["nowhere"], ["y"], name="r")], [vi("x", F, [2])], [vi("y", F, [2])])
    path = save(model, tmp_path / "undef.onnx")
    refused(run_qc("show", path), path, "node 'r' (Relu) in graph reads 'nowhere', which no node, graph input or "
            "initializer defines", "fix the input name or add its producer")
    model = graph_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", F, [2])], [vi("zz", F, [2])])
    path = save(model, tmp_path / "noout.onnx")
    refused(run_qc("show", path), path, "graph output 'zz' of graph is not produced by any node")


def test_operand_type_mismatch(tmp_path):
    model = graph_model([helper.make_node("Add", ["x", "c"], ["y"], name="add")], [vi("x", F, [2])], [vi("y", F, [2])],
                        [numpy_helper.from_array(np.array([1, 2], np.int64), "c")])
    path = save(model, tmp_path / "types.onnx")
    refused(run_qc("compile", path, "--target", "x86-avx2", "-o", str(tmp_path / "o.onnx")),
            "onnx.Add 'add' input 1 %c is tensor(int64), but type T is already tensor(float)")


def test_initializer_contradicting_its_declared_type(tmp_path):
    model = graph_model([helper.make_node("Relu", ["w"], ["y"], name="r")], [vi("w", TensorProto.INT64, [3])],
                        [vi("y", F, [2])], [numpy_helper.from_array(np.ones(2, np.float32), "w")])
    path = save(model, tmp_path / "decl.onnx")
    refused(run_qc("show", path), path, "initializer 'w' in graph holds f32[2], but the graph declares it as i64[3]")


def test_domain_not_imported(tmp_path):
    model = graph_model([helper.make_node("Relu", ["x"], ["y"], name="r", domain="com.example")],
                        [vi("x", F, [2])], [vi("y", F, [2])])
    path = save(model, tmp_path / "domain.onnx")
    refused(run_qc("compile", path, "--target", "x86-avx2", "-o", str(tmp_path / "o.onnx")),
            "com.example.Relu 'r' is in domain 'com.example', which the model does not import",
            "add the domain to opset_import")


def test_unknown_operator(tmp_path):
    model = graph_model([helper.make_node("Frobnicate", ["x"], ["y"], name="f")], [vi("x", F, [2])], [vi("y", F, [2])])
    path = save(model, tmp_path / "op.onnx")
    refused(run_qc("compile", path, "--target", "x86-avx2", "-o", str(tmp_path / "o.onnx")),
            "onnx.Frobnicate 'f': no such operator in 'ai.onnx' at opset 17")


def test_unknown_element_type_and_non_utf8_names(tmp_path):
    model = small_mlp()
    model.graph.input[0].type.tensor_type.elem_type = 40
    path = save(model, tmp_path / "dtype.onnx")
    refused(run_qc("show", path), path, "unknown tensor element type code 40")
    data = small_mlp().SerializeToString().replace(b"Relu", b"R\xfflu")
    path = tmp_path / "utf8.onnx"
    path.write_bytes(data)
    refused(run_qc("show", str(path)), "NodeProto.op_type is not valid UTF-8 text")


# -- sizes ----------------------------------------------------------------------------------------
def test_huge_declared_shapes_are_only_types(tmp_path):
    """A declared shape of 10^24 elements is a type, not an allocation: it compiles and prints."""
    n = 10**12
    model = graph_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", F, [n, n])], [vi("y", F, [n, n])])
    path = save(model, tmp_path / "huge.onnx")
    out = tmp_path / "o.onnx"
    proc = run_qc("compile", path, "--target", "x86-avx2", "-o", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert [d.dim_value for d in onnx.load(str(out)).graph.output[0].type.tensor_type.shape.dim] == [n, n]


def test_huge_tensor_dims_with_little_data(tmp_path):
    model = matmul_model(np.ones((4, 3), np.float32))
    model.graph.initializer[0].dims[:] = [10**12, 3]
    path = save(model, tmp_path / "dims.onnx")
    refused(run_qc("show", path), path, "tensor 'w' is f32[1000000000000, 3] = 12000000000000 bytes, but its raw_data "
            "has 48", "the model is corrupt")


def test_zero_size_tensors_compile(tmp_path):
    model = graph_model([helper.make_node("Concat", ["x", "e"], ["y"], name="cat", axis=0)], [vi("x", F, [2, 3])],
                        [vi("y", F, [2, 3])], [numpy_helper.from_array(np.zeros((0, 3), np.float32), "e")])
    path = save(model, tmp_path / "zero.onnx")
    proc = run_qc("compile", path, "--target", "x86-avx2", "-o", str(tmp_path / "o.onnx"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    import onnxruntime as ort

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = ort.InferenceSession(str(tmp_path / "o.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, x)


def test_zero_size_weight_quantizes(tmp_path):
    model = graph_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [vi("x", F, [2, 0])],
                        [vi("y", F, [2, 3])], [numpy_helper.from_array(np.zeros((0, 3), np.float32), "w")])
    path = save(model, tmp_path / "zero.onnx")
    proc = run_qc("compile", path, "--target", "x86-avx2", "--quant", "w8", "-o", str(tmp_path / "o.onnx"), "--quiet")
    assert proc.returncode == 0, proc.stderr


def test_file_over_two_gigabytes(tmp_path):
    path = tmp_path / "big.onnx"
    with open(path, "wb") as f:
        f.truncate(2**31 + 10)  # sparse: no disk used
    refused(run_qc("show", str(path)), str(path), "over protobuf's 2 GB limit",
            "store the large weights as external data")


def _nested_bytes(depth: int) -> bytes:
    """A ModelProto nesting If nodes ``depth`` deep, encoded by hand (protobuf's own encoder
    refuses to go past its depth limit). Field numbers are onnx.proto's."""
    def field(number: int, payload: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload

    leaf = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "leaf", [], [vi("y", F, [1])])
    graph = leaf.SerializeToString()
    for _ in range(depth):
        attr = field(1, b"then_branch") + _varint(20 << 3) + _varint(AttributeProto_GRAPH) + field(6, graph)
        node = field(1, b"c") + field(2, b"y") + field(4, b"If") + field(5, attr)
        graph = field(1, node) + field(2, b"g") + field(12, vi("y", F, [1]).SerializeToString())
    graph += (field(11, vi("c", TensorProto.BOOL, []).SerializeToString())
              + field(11, vi("x", F, [1]).SerializeToString()))
    return _varint(1 << 3) + _varint(8) + field(8, helper.make_opsetid("", 17).SerializeToString()) + field(7, graph)


AttributeProto_GRAPH = onnx.AttributeProto.GRAPH


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_protobuf_nesting_limit(tmp_path):
    deep = tmp_path / "deep.onnx"
    deep.write_bytes(_nested_bytes(60))
    refused(run_qc("show", str(deep)), str(deep), "nests messages (subgraphs in subgraphs) deeper than protobuf's "
            "decoding limit")
    shallow = tmp_path / "shallow.onnx"
    shallow.write_bytes(_nested_bytes(20))
    proc = run_qc("show", str(shallow), "--summary")
    assert proc.returncode == 0 and "onnx.If x20" in proc.stdout, proc.stderr


def test_not_onnx_empty_truncated_directory(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    refused(run_qc("show", str(empty)), str(empty), "the file is empty")
    text = tmp_path / "text.onnx"
    text.write_text("hello, I am not a model\n")
    refused(run_qc("show", str(text)), str(text), "not")
    truncated = tmp_path / "trunc.onnx"
    data = onnx.load(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                                  "light_squeezenet.onnx")).SerializeToString()
    truncated.write_bytes(data[: len(data) // 2])
    refused(run_qc("show", str(truncated)), str(truncated), "is the file truncated")
    refused(run_qc("show", str(tmp_path)), str(tmp_path), "is a directory")
    bad = tmp_path / "latin1.qir"
    bad.write_bytes(b"module @m \xe9\xff {}")
    refused(run_qc("show", str(bad)), str(bad), "not a text IR file (it is not UTF-8 text)")


# -- weights ----------------------------------------------------------------------------------------
def test_nan_and_inf_weights_import(tmp_path):
    """Import and plain compile keep NaN/Inf as they are (a float model may mean them)."""
    w = np.ones((4, 3), np.float32)
    w[1, 1], w[2, 0] = np.nan, np.inf
    path = save(matmul_model(w), tmp_path / "nan.onnx")
    proc = run_qc("show", path, "--full")
    assert proc.returncode == 0 and "nan" in proc.stdout and "inf" in proc.stdout, proc.stderr


def test_nan_weights_refused_by_quantization(tmp_path):
    w = np.ones((4, 3), np.float32)
    w[1, 1] = np.nan
    path = save(matmul_model(w), tmp_path / "nan.onnx")
    refused(run_qc("compile", path, "--target", "x86-avx2", "--quant", "w8", "-o", str(tmp_path / "o.onnx")),
            "'w'", "NaN")


@pytest.mark.parametrize("location, expected", [
    ("../secret.bin", "outside the model's directory"),
    ("sub/../../secret.bin", "outside the model's directory"),
    ("/etc/passwd", "at the absolute path '/etc/passwd'"),
])
def test_external_data_outside_the_model_directory(tmp_path, location, expected):
    (tmp_path / "secret.bin").write_bytes(bytes(64))
    directory = tmp_path / "model"
    (directory / "sub").mkdir(parents=True)
    path = external_model(directory, location)
    refused(run_qc("show", path), path, "tensor 'w'", expected, "external data must be a relative path inside the "
            "model's directory")


def test_external_data_symlink_out_of_the_directory(tmp_path):
    (tmp_path / "secret.bin").write_bytes(bytes(64))
    directory = tmp_path / "model"
    directory.mkdir()
    os.symlink(tmp_path / "secret.bin", directory / "w.bin")
    path = external_model(directory, "w.bin")
    refused(run_qc("show", path), path, "tensor 'w' points to external data 'w.bin' outside the model's directory")
    (directory / "w.bin").unlink()
    (directory / "real.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes())
    os.symlink("real.bin", directory / "w.bin")  # a symlink that stays inside is fine
    proc = run_qc("show", path, "--full")
    assert proc.returncode == 0 and "15.0" in proc.stdout, proc.stderr


def test_external_data_missing_or_short(tmp_path):
    path = external_model(tmp_path, "w.bin")
    refused(run_qc("show", path), path, "tensor 'w' keeps its data in 'w.bin', which does not exist beside the model",
            "copy the external data file next to the .onnx file")
    (tmp_path / "w.bin").write_bytes(bytes(40))
    path = external_model(tmp_path, "w.bin", length=None)
    refused(run_qc("show", path), path, "tensor 'w' needs bytes 0..64 of 'w.bin', which has only 40")
    path = external_model(tmp_path, "w.bin", length=32)
    refused(run_qc("show", path), path, "tensor 'w' is 64 bytes, but its external data length says 32")


# -- text IR ----------------------------------------------------------------------------------------
_QIR = 'module @m {{ir_version = 8, opset_import = {{"" = 17}}}} {{\n{consts}  func @main(%x: {t}) -> ({t}) {{\n' \
       '    %y = onnx.Relu(%x) : {t}\n    return %y\n  }}\n}}\n'


@pytest.mark.parametrize("const, expected", [
    ("const @w : f32[1000000000000] = dense[1.0]", "2:9: w: 1 values for a tensor of 1000000000000 elements"),
    ("const @w : f32[4611686018427387904, 4] = dense[]", "w: 0 values for a tensor of 18446744073709551616 elements"),
    ("const @w : f32[99999999999999999999] = dense[1.0]", "bad dimension '99999999999999999999 (beyond 64 bits)'"),
    ('const @w : f32[1000000, 1000000] = blob("w", bytes = 4)', "blob 'w' says 4 bytes but f32[1000000, 1000000] "
                                                                 "needs 4000000000000"),
    ("const @w : f32[1000000000000] = hex\"00ff\"", "hex data has 2 bytes, f32[1000000000000] needs 4000000000000"),
])
def test_text_ir_absurd_sizes(tmp_path, const, expected):
    path = tmp_path / "m.qir"
    path.write_text(_QIR.format(consts="  " + const + "\n", t="f32[2]"))
    refused(run_qc("show", str(path)), str(path), expected)


def test_text_ir_sidecar_offset_outside(tmp_path):
    path = tmp_path / "m.qir"
    (tmp_path / "m.qir.weights").write_bytes(bytes(64))
    path.write_text('weights "m.qir.weights"\n' + _QIR.format(
        consts='  const @w : f32[1000000, 1000000] = blob("w", offset = 0, bytes = 4000000000000)\n', t="f32[2]"))
    refused(run_qc("show", str(path)), str(path), "tensor 'w' lies outside the weights sidecar")


def test_text_ir_huge_declared_shape_is_only_a_type(tmp_path):
    path = tmp_path / "m.qir"
    path.write_text(_QIR.format(consts="", t="f32[1000000000000, 1000000000000]"))
    out = tmp_path / "o.onnx"
    proc = run_qc("compile", str(path), "--target", "x86-avx2", "-o", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert onnx.load(str(out)).graph.node[0].op_type == "Relu"


# -- nothing from an input is executed ------------------------------------------------------------------
class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_calibration_npz_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    payload = np.empty(1, dtype=object)
    payload[0] = _Exploit(str(marker))
    np.savez(tmp_path / "calib.npz", x=payload)
    assert not marker.exists()
    with open(tmp_path / "probe.pkl", "wb") as f:  # the payload is live: unpickling it creates the marker
        pickle.dump(_Exploit(str(tmp_path / "probe")), f)
    with open(tmp_path / "probe.pkl", "rb") as f:
        pickle.load(f).close()
    assert (tmp_path / "probe").exists()
    path = save(small_mlp(), tmp_path / "m.onnx")
    refused(run_qc("compile", path, "--target", "x86-avx2", "--quant", "w8a8", "--calib", str(tmp_path / "calib.npz"),
                   "-o", str(tmp_path / "o.onnx")), "calib.npz", "it holds object arrays, which qc does not unpickle")
    assert not marker.exists()


def test_text_ir_strings_are_data_not_code(tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__(\\x27os\\x27).system(\\x27touch {marker}\\x27)"
    path = tmp_path / "m.qir"
    path.write_text(_QIR.format(consts="", t="f32[2]").replace("onnx.Relu(%x)", f'onnx.Relu(%x) {{note = "{code}"}}'))
    proc = run_qc("show", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "__import__" in proc.stdout and not marker.exists()


@pytest.mark.parametrize("reference", ["../outside.weights", "/etc/passwd", "link.weights"])
def test_text_ir_sidecar_outside_the_directory(tmp_path, reference):
    (tmp_path / "outside.weights").write_bytes(bytes(64))
    directory = tmp_path / "ir"
    directory.mkdir()
    os.symlink(tmp_path / "outside.weights", directory / "link.weights")
    path = directory / "m.qir"
    path.write_text(f'weights "{reference}"\n' + _QIR.format(
        consts='  const @w : f32[4] = blob("w", offset = 0, bytes = 16)\n', t="f32[2]"))
    refused(run_qc("show", str(path)), str(path), f"the weights sidecar '{reference}' named on its first line is "
            "outside the .qir file's directory", "must be a relative path inside the .qir file's directory")
