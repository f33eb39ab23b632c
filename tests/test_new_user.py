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
