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
