"""What a new user tripped on (issue 14), each checked through the CLI: reloadable IR dumps,
`qc opt --remarks`, a summary `qc check --brief`, "did you mean" for misspelt names."""
from __future__ import annotations

import os

from conftest import REPO, run_qc, small_mlp

EXAMPLE_PASS = os.path.join(REPO, "examples", "passes", "fold_double_cast.py")


# -- misspelt names ----------------------------------------------------------------------------
def test_misspelt_pass_suggests_the_close_name_and_load_pass(tmp_path):
    mlp = str(tmp_path / "mlp.onnx")
    small_mlp(mlp)
    proc = run_qc("opt", mlp, "-p", "fold-constant,dce")
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1
    assert "unknown pass 'fold-constant'; did you mean 'fold-constants'?" in err
    assert "--load-pass FILE.py" in err


def test_misspelt_target_suggests_the_close_name(tmp_path):
    mlp = str(tmp_path / "mlp.onnx")
    small_mlp(mlp)
    proc = run_qc("check", mlp, "--target", "mali-gpus")
    assert proc.returncode == 2
    assert "unknown target 'mali-gpus'; did you mean 'mali-gpu'?" in proc.stderr


def test_a_name_far_from_every_pass_gets_no_suggestion(tmp_path):
    mlp = str(tmp_path / "mlp.onnx")
    small_mlp(mlp)
    proc = run_qc("opt", mlp, "-p", "zzzzzz")
    assert proc.returncode == 2
    assert "did you mean" not in proc.stderr and "known passes: " in proc.stderr


def test_loading_the_same_pass_file_twice_is_harmless(tmp_path):
    mlp = str(tmp_path / "mlp.onnx")
    small_mlp(mlp)
    proc = run_qc("opt", mlp, "--load-pass", EXAMPLE_PASS, "--load-pass", EXAMPLE_PASS, "-p", "fold-double-cast")
    assert proc.returncode == 0, proc.stderr
    assert "module @" in proc.stdout
    listed = run_qc("passes", "--load-pass", EXAMPLE_PASS, "--load-pass", EXAMPLE_PASS, "fold-double-cast")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("fold-double-cast\n")


# -- qc opt --remarks --------------------------------------------------------------------------
CONVBN = """module @convbn {ir_version = 10, opset_import = {"" = 21}} {
  const @w : f32[2, 1, 1, 1] = dense[0.5, -1.0]
  const @scale : f32[2] = dense[2.0, 3.0]
  const @bias : f32[2] = dense[0.1, 0.2]
  const @mean : f32[2] = dense[0.0, 1.0]
  const @var : f32[2] = dense[1.0, 4.0]
  func @main(%x: f32[1, 1, 4, 4]) -> (f32[1, 2, 4, 4]) {
    %c = onnx.Conv(%x, @w) : f32[1, 2, 4, 4] loc("conv")
    %bn = onnx.BatchNormalization(%c, @scale, @bias, @mean, @var) {epsilon = 0.0} : f32[1, 2, 4, 4] loc("bn")
    %y = onnx.Relu(%bn) : f32[1, 2, 4, 4] loc("relu")
    return %y
  }
}
"""


def _convbn(tmp_path) -> str:
    path = tmp_path / "convbn.qir"
    path.write_text(CONVBN)
    return str(path)


def test_opt_remarks_lists_each_remark_on_stderr_when_the_ir_is_on_stdout(tmp_path):
    proc = run_qc("opt", _convbn(tmp_path), "-p", "fold-batchnorm,dce", "--remarks")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("module @convbn")
    remarks = [line for line in proc.stderr.splitlines() if line.startswith("remark: ")]
    assert remarks and all("[fold-batchnorm]" in r for r in remarks)
    assert "remark:" not in proc.stdout


def test_opt_remarks_go_to_stdout_when_the_ir_goes_to_a_file(tmp_path):
    proc = run_qc("opt", _convbn(tmp_path), "-p", "fold-batchnorm,dce", "--remarks", "-o", str(tmp_path / "o.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("remark: [fold-batchnorm] ")


def test_opt_without_remarks_prints_one_count_line(tmp_path):
    proc = run_qc("opt", _convbn(tmp_path), "-p", "fold-batchnorm,dce")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["remarks: 1 from fold-batchnorm (--remarks lists them)"]


# -- --dump-ir-dir stages reload -----------------------------------------------------------------
def _foldable_model(path: str) -> None:
    """x[2,8] -> MatMul(W 8x8) -> Add(b1 + b2, folded by fold-constants) -> Identity -> y[2,8]."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(32).astype(np.float32).reshape(4, 8)[0], "b1"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["b1", "b2"], ["b"], name="bias"),
             helper.make_node("Add", ["h", "b"], ["z"], name="add"),
             helper.make_node("Identity", ["z"], ["y"], name="id")]
    graph = helper.make_graph(nodes, "foldable", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _run_onnx(path: str):
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_every_dumped_stage_reloads_into_onnx(tmp_path):
    import numpy as np

    model, dump = str(tmp_path / "m.onnx"), tmp_path / "dump"
    _foldable_model(model)
    proc = run_qc("opt", model, "-p", "remove-identity,fold-constants,cse,dce", "--dump-ir-dir", str(dump),
                  "-o", str(tmp_path / "out.onnx"))
    assert proc.returncode == 0, proc.stderr
    stages = sorted(n for n in os.listdir(dump) if n.endswith(".qir"))
    assert stages == ["00-input.qir", "01-remove-identity.qir", "02-fold-constants.qir", "03-cse.qir", "04-dce.qir"]
    assert "blob(" in (dump / "03-cse.qir").read_text()  # the 64-element weight is elided ...
    want = _run_onnx(model)
    for stage in stages:  # ... and read back from the sidecar
        back = str(tmp_path / f"{stage}.onnx")
        reload = run_qc("opt", str(dump / stage), "-p", "", "-o", back)
        assert reload.returncode == 0, reload.stderr
        np.testing.assert_array_equal(_run_onnx(back), want)


def test_dump_ir_dir_with_full_writes_every_tensor_into_the_text(tmp_path):
    model, dump = str(tmp_path / "m.onnx"), tmp_path / "dump"
    _foldable_model(model)
    proc = run_qc("opt", model, "-p", "cse", "--dump-ir-dir", str(dump), "--full", "-o", str(tmp_path / "o.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(dump)) == ["00-input.qir", "01-cse.qir"]
    assert "blob(" not in (dump / "01-cse.qir").read_text()
    reload = run_qc("opt", str(dump / "01-cse.qir"), "-p", "", "-o", str(tmp_path / "back.onnx"))
    assert reload.returncode == 0, reload.stderr


def test_elided_data_hint_names_cli_flags(tmp_path):
    model = str(tmp_path / "m.onnx")
    _foldable_model(model)
    shown = run_qc("show", model)
    (tmp_path / "printed.qir").write_text(shown.stdout)
    proc = run_qc("opt", str(tmp_path / "printed.qir"), "-p", "", "-o", str(tmp_path / "o.onnx"))
    assert proc.returncode == 2
    assert "was elided" in proc.stderr and "--full" in proc.stderr
    assert "elide_above" not in proc.stderr


# -- qc check --brief ----------------------------------------------------------------------------
def _many_fallbacks_model(path: str, matmuls: int = 30, convs: int = 12) -> None:
    """A float chain of ``convs`` 1x1 Convs then ``matmuls`` MatMuls: on an int8-only NPU each
    one is a fallback, of two kinds."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for i in range(convs):
        inits.append(numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), f"k{i}"))
        nodes.append(helper.make_node("Conv", [x, f"k{i}"], [f"c{i}"], name=f"conv{i}"))
        x = f"c{i}"
    nodes.append(helper.make_node("Reshape", [x, "flat"], ["r"], name="flatten"))
    inits.append(numpy_helper.from_array(np.array([4, 16], dtype=np.int64), "flat"))
    x = "r"
    for i in range(matmuls):
        inits.append(numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        x = f"m{i}"
    graph = helper.make_graph(nodes, "many", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [4, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_check_brief_summarizes_many_fallbacks_by_reason(tmp_path):
    model = str(tmp_path / "many.onnx")
    _many_fallbacks_model(model, matmuls=30, convs=12)
    full = run_qc("check", model, "--target", "ethos-u55")
    brief = run_qc("check", model, "--target", "ethos-u55", "--brief")
    assert full.returncode == brief.returncode == 0, full.stderr + brief.stderr
    full_fallbacks = [line for line in full.stdout.splitlines() if line.startswith("  ") and ": " in line
                      and "-> cpu" in line]
    assert len(full_fallbacks) >= 42  # the full listing: one line per unit
    lines = brief.stdout.splitlines()
    header = next(line for line in lines if line.startswith("fallbacks ("))
    assert header == "fallbacks (42), by reason:"
    groups = [line for line in lines if " x " in line and "(e.g. " in line]
    counts = sorted(int(line.split(" x ")[0]) for line in groups)
    assert counts == [12, 30]  # Conv and MatMul, most frequent first
    assert int(groups[0].split(" x ")[0]) == 30 and "MatMul" in groups[0] and "Conv" in groups[1]
    assert "and 27 more" in groups[0]
    assert any("without --brief lists each one" in line for line in lines)
    assert len(lines) < 15


def test_check_brief_lists_a_few_fallbacks_one_by_one(tmp_path):
    model = str(tmp_path / "few.onnx")
    _many_fallbacks_model(model, matmuls=2, convs=1)
    brief = run_qc("check", model, "--target", "ethos-u55", "--brief")
    assert brief.returncode == 0, brief.stderr
    assert "fallbacks (3):" in brief.stdout and "  mm1: MatMul" in brief.stdout


# -- make demo -------------------------------------------------------------------------------
def _demo_compile_commands() -> tuple[str, str]:
    """(the command `make demo` echoes, the command it runs) for its `qc compile` step."""
    with open(os.path.join(REPO, "Makefile")) as f:
        makefile = f.read().replace("\\\n", " ")
    demo = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    echoed = next(line.split('echo "', 1)[1].rstrip('"') for line in demo.splitlines() if 'echo "qc compile' in line)
    run = next(line.split("qc compile", 1)[1] for line in demo.splitlines() if "$(RUN) qc compile" in line)
    return echoed, "qc compile " + " ".join(run.split())


def test_make_demo_shows_the_command_it_runs_and_the_readme_shows_it_too():
    echoed, run = _demo_compile_commands()
    assert " ".join(echoed.split()) == run
    with open(os.path.join(REPO, "README.md")) as f:
        assert f"$ {echoed}\n" in f.read()


def test_make_demo_asks_for_enough_calibration_samples(tmp_path):
    """The demo's --samples, after the samples it holds aside (--holdout), leaves enough for the
    few-calibration-samples guardrail (checked through qc compile on a small model with as many samples)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    _, run = _demo_compile_commands()
    samples = int(run.split("--samples ")[1].split()[0])
    holdout = run.split("--holdout ")[1].split()[0] if "--holdout " in run else None
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((64, 32)) / 8).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 32])], [w])
    model, data = str(tmp_path / "m.onnx"), str(tmp_path / "calib.npz")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    np.savez(data, x=rng.standard_normal((samples, 1, 16, 64)).astype(np.float32))
    proc = run_qc("compile", model, "--target", "x86-avx2", "--quant", "w8a8", "--calib", data,
                  *(["--holdout", holdout] if holdout else []), "-o", str(tmp_path / "q.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert f"calibration: minmax over {samples - int(holdout or 0)} samples" in proc.stdout
    assert "few-calibration-samples" not in proc.stdout
