"""The qc command line: commands, outputs, and one-line errors with exit code 2 for bad input."""
import hashlib
import os

import onnx
import pytest
from onnx import TensorProto, helper

from conftest import LIGHT_DIR, small_mlp

SQUEEZENET = os.path.join(LIGHT_DIR, "light_squeezenet.onnx")


def _cycle_model(path):
    nodes = [helper.make_node("Relu", ["b"], ["a"], name="first"), helper.make_node("Neg", ["a"], ["b"], name="second"),
             helper.make_node("Add", ["a", "x"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "cyclic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _dangling_model(path):
    nodes = [helper.make_node("Add", ["x", "nowhere"], ["y"], name="adder")]
    graph = helper.make_graph(nodes, "dangling", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _bad_inputs(tmp):
    """(name, argv, expected one-line message) for each bad input of the acceptance list."""
    mlp = str(tmp / "mlp.onnx")
    small_mlp(mlp)
    (tmp / "notonnx.onnx").write_text("this is plain text, not a protobuf\n")
    with open(SQUEEZENET, "rb") as f:
        (tmp / "truncated.onnx").write_bytes(f.read()[:5000])
    _cycle_model(str(tmp / "cycle.onnx"))
    _dangling_model(str(tmp / "dangling.onnx"))
    (tmp / "syntax.qir").write_text('module @m {ir_version = 10, opset_import = {"" = 17}} {\n'
                                    '  func @main(%x: f32[2]) -> (f32[2]) {\n'
                                    '    %y = onnx.Relu(%x) {alpha = } : f32[2]\n    return %y\n  }\n}\n')
    (tmp / "nosidecar.qir").write_text('weights "nosidecar.qir.weights"\n'
                                       'module @m {ir_version = 10, opset_import = {"" = 17}} {\n'
                                       '  const @w : f32[64] = blob("w", offset = 0, bytes = 256)\n'
                                       '  func @main(%x: f32[64]) -> (f32[64]) {\n'
                                       '    %y = onnx.Add(%x, @w) : f32[64]\n    return %y\n  }\n}\n')
    missing = str(tmp / "missing.onnx")
    return [
        ("missing file", ["show", missing], f"qc: error: {missing}: no such file"),
        ("non-ONNX file", ["show", str(tmp / "notonnx.onnx")], "not a valid ONNX model"),
        ("truncated protobuf", ["show", str(tmp / "truncated.onnx")],
         "not a valid ONNX model: the protobuf does not decode"),
        ("cycle", ["show", str(tmp / "cycle.onnx")], "has a cycle through nodes 'first', 'second', 'out'"),
        ("dangling input", ["show", str(tmp / "dangling.onnx")],
         "node 'adder' (Add) in graph reads 'nowhere', which no node, graph input or initializer defines"),
        ("unknown pass", ["opt", mlp, "-p", "dce,no-such-pass"],
         "qc: error: unknown pass 'no-such-pass'; known passes: "),
        ("bad pass option", ["opt", mlp, "-p", "dce{frobnicate=1}"],
         "qc: error: pass 'dce' has no option 'frobnicate'"),
        ("text IR syntax error", ["show", str(tmp / "syntax.qir")],
         f"qc: error: {tmp / 'syntax.qir'}:3:33: unexpected '}}'"),
        ("missing sidecar", ["show", str(tmp / "nosidecar.qir")],
         f"qc: error: {tmp / 'nosidecar.qir'}: "
         "the weights sidecar 'nosidecar.qir.weights' named on its first line is missing"),
        ("unknown target", ["compile", mlp, "--target", "pdp-11", "-o", str(tmp / "o.onnx")],
         "qc: error: unknown target 'pdp-11'; known targets: "),
        ("output over input", ["opt", mlp, "-p", "", "-o", mlp], "the output would overwrite the input"),
        ("unknown output kind", ["opt", mlp, "-p", "", "-o", str(tmp / "out.txt")], "unknown output kind"),
    ]


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, qc_cli):
    for name, argv, expected in _bad_inputs(tmp_path):
        before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        r = qc_cli(*argv)
        assert r.returncode == 2, (name, r.returncode, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1, (name, r.stderr)
        assert expected in lines[0], (name, lines[0])
        assert lines[0].startswith("qc: error: ") and "Traceback" not in r.stderr
        assert r.stdout == "", name
        after = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        assert after == before, f"{name}: a file changed or appeared"


def test_debug_shows_the_traceback(tmp_path, qc_cli):
    r = qc_cli("--debug", "show", str(tmp_path / "missing.onnx"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_version_and_help(qc_cli):
    r = qc_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == "qc 0.1.0"
    assert qc_cli().returncode == 2


def test_show_opt_compile_on_a_light_model(tmp_path, qc_cli):
    r = qc_cli("show", SQUEEZENET)
    assert r.returncode == 0
    assert r.stdout.startswith('module @squeezenet_old {ir_version = 3, opset_import = {"" = 9}')
    assert "onnx.Conv(%data_0, %conv1_w_0, @conv1_b_0)" in r.stdout
    qir = str(tmp_path / "sq.qir")
    assert qc_cli("opt", SQUEEZENET, "-p", "", "-o", qir).returncode == 0
    assert os.path.exists(qir + ".weights")
    onnx_out = str(tmp_path / "sq.onnx")
    r = qc_cli("opt", qir, "-p", "", "-o", onnx_out)
    assert r.returncode == 0, r.stderr
    onnx.checker.check_model(onnx.load(onnx_out), full_check=True)
    out = str(tmp_path / "compiled.onnx")
    r = qc_cli("compile", SQUEEZENET, "--target", "x86-avx2", "-o", out, "--timing")
    assert r.returncode == 0, r.stderr
    assert "qc compile:" in r.stdout and "pipeline: " in r.stdout
    assert "total" in r.stderr and "ms" in r.stderr


def test_same_input_gives_byte_identical_output(tmp_path, qc_cli):
    digests = set()
    for i in range(2):
        out = str(tmp_path / f"c{i}.onnx")
        assert qc_cli("compile", SQUEEZENET, "--target", "x86-avx2", "-o", out, "--quiet").returncode == 0
        with open(out, "rb") as f:
            digests.add(hashlib.sha256(f.read()).hexdigest())
        qir = str(tmp_path / f"c{i}.qir")
        assert qc_cli("opt", SQUEEZENET, "-p", "", "-o", qir).returncode == 0
        with open(qir, "rb") as f, open(qir + ".weights", "rb") as w:
            digests.add(hashlib.sha256(f.read().replace(f"c{i}.qir".encode(), b"X") + w.read()).hexdigest())
    assert len(digests) == 2  # one for the .onnx runs, one for the .qir runs


def test_passes_lists_every_builtin_pass_with_options(qc_cli):
    r = qc_cli("passes")
    assert r.returncode == 0
    for name in ("fold-constants", "dce", "cse", "remove-identity", "fold-batchnorm", "propagate-shapes"):
        assert f"\n{name}\n" in "\n" + r.stdout
    assert "named pipelines:" in r.stdout and "default: " in r.stdout


@pytest.mark.parametrize("flag", ["--print-ir-after=dce", "--print-ir-before=dce"])
def test_print_ir_before_after_named_pass(tmp_path, qc_cli, flag):
    mlp = str(tmp_path / "mlp.onnx")
    small_mlp(mlp)
    r = qc_cli("opt", mlp, "-p", "cse,dce", flag)
    assert r.returncode == 0, r.stderr
    when = "After" if "after" in flag else "Before"
    assert r.stderr.count("// -----// IR Dump") == 1
    assert f"// -----// IR Dump {when} dce //----- //" in r.stderr


def test_dump_ir_dir(tmp_path, qc_cli):
    mlp = str(tmp_path / "mlp.onnx")
    small_mlp(mlp)
    r = qc_cli("opt", mlp, "-p", "cse,dce", "--dump-ir-dir", str(tmp_path / "dump"))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "dump")) == ["00-input.qir", "01-cse.qir", "02-dce.qir"]
