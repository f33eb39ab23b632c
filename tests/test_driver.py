"""qc.compile, the one compile path: its pipeline, its checks before any work, and the output kind.

The CLI cases run `qc compile` in-process (qc.cli.main) because what is tested is the command's
promise: exit code 2 and one line, before the model is read or a pass runs.
"""
import os

import numpy as np
import onnx
import pytest

import qc
from conftest import small_mlp
from qc.calib import from_arrays
from qc.cli import main
from qc.onnx import ort_session
from qc.pm import Timing


@pytest.fixture()
def mlp(tmp_path):
    path = str(tmp_path / "mlp.onnx")
    small_mlp(path)
    return path


def _calib():
    return from_arrays({"x": np.random.default_rng(0).standard_normal((8, 2, 4)).astype(np.float32)})


def test_library_compile_runs_one_pipeline_with_the_target_passes(mlp, tmp_path):
    timing = Timing(stream=open(os.devnull, "w"))
    result = qc.compile(mlp, target="x86-avx2", instruments=[timing])
    assert result.pipeline == ("propagate-shapes,remove-identity,fold-constants,fold-batchnorm,cse,dce,"
                               "legalize,check-kernels{fallback=allow}")
    assert [row[0] for row in timing.rows] == ["(import)", *result.pipeline.split(",")]
    assert result.placement["units"] == 1 and result.placement["fallbacks"] == []
    out = str(tmp_path / "out.onnx")
    assert result.write(out) == out
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    want = ort_session(mlp).run(None, {"x": x})[0]
    np.testing.assert_allclose(ort_session(out).run(None, {"x": x})[0], want, rtol=1e-6)


def test_library_compile_quantized_fills_the_report_when_written(mlp, tmp_path):
    result = qc.compile(mlp, target="x86-avx2", quant="w8a8", calibration=_calib())
    assert result.report is None  # sizes and the held-aside SQNR describe the written output
    result.write(str(tmp_path / "q.onnx"))
    assert result.report["scheme"] == "w8a8" and result.report["accuracy"]["held_aside"] == 1
    assert result.report["placement"]["target"] == "x86-avx2"


def test_library_compile_takes_a_module_and_a_modelproto(mlp):
    proto = onnx.load(mlp)
    for source in (proto, qc.import_onnx(proto)):
        assert qc.compile(source, target="cortex-a76", emit="onnx").placement["target"] == "cortex-a76"


def test_bad_pass_option_fails_before_the_model_is_read(tmp_path, capsys):
    missing = str(tmp_path / "does-not-exist.onnx")
    assert main(["compile", missing, "--target", "x86-avx2", "-p", "smooth-quant{alpha=2}",
                 "-o", str(tmp_path / "o.onnx")]) == 2
    assert capsys.readouterr().err == "qc: error: smooth-quant: alpha must be in [0, 1], got 2.0\n"
    with pytest.raises(qc.QCError, match="split-outliers: max-fraction must be in"):
        qc.compile(missing, pipeline="split-outliers{max-fraction=3}")


def test_print_ir_after_a_pass_in_no_pipeline_lists_the_valid_names(mlp, tmp_path, capsys):
    assert main(["compile", mlp, "--target", "x86-avx2", "-o", str(tmp_path / "o.onnx"),
                 "--print-ir-after", "fold-qdq"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qc: error: --print-ir-after names 'fold-qdq', which is in no pass of the pipeline; "
                          "passes in the pipeline: propagate-shapes, remove-identity, fold-constants,")
    assert err.rstrip().endswith("legalize, check-kernels")
    assert not os.path.exists(tmp_path / "o.onnx")


def test_print_ir_after_all_shows_legalize_and_check_kernels(mlp, tmp_path, capsys):
    assert main(["compile", mlp, "--target", "x86-avx2", "-o", str(tmp_path / "o.onnx"), "--quiet",
                 "--print-ir-after-all"]) == 0
    err = capsys.readouterr().err
    assert "// -----// IR Dump After legalize //----- //" in err
    assert "// -----// IR Dump After check-kernels{fallback=warn} //----- //" in err


def test_onnx_path_for_a_c_target_writes_onnx_not_a_directory(mlp, tmp_path):
    out = tmp_path / "model.onnx"
    assert main(["compile", mlp, "--target", "cortex-a76", "-o", str(out), "--quiet"]) == 0
    assert out.is_file()
    onnx.checker.check_model(onnx.load(str(out)))


def test_emit_c_with_an_onnx_path_is_an_error(mlp, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["compile", mlp, "--target", "cortex-a76", "--emit", "c", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qc: error: {out}: --emit c writes a directory, and this path is for ONNX")
    assert not out.exists()


def test_directory_path_for_an_onnx_target_is_an_error(mlp, tmp_path, capsys):
    assert main(["compile", mlp, "--target", "x86-avx2", "-o", str(tmp_path / "outdir")]) == 2
    assert "target x86-avx2 emits ONNX (its backend), so the output must be a .onnx file" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["/nonexistent/dir/x.onnx", "/dev/null"])
def test_unwritable_output_fails_at_once(mlp, where, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr("qc.driver.load_model", lambda *a, **k: ran.append(a))
    assert main(["compile", mlp, "--target", "x86-avx2", "-o", where]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qc: error: {where}: ") and err.count("\n") == 1
    assert ran == []  # nothing was read, no pass ran


def test_dump_ir_dir_of_a_c_compile_holds_every_pass_of_the_one_pipeline(mlp, tmp_path):
    dump, out = tmp_path / "dump", tmp_path / "c"
    assert main(["compile", mlp, "--target", "cortex-a76", "-o", str(out), "--dump-ir-dir", str(dump), "--quiet"]) == 0
    stages = sorted(os.listdir(dump))
    names = [s.split("-", 1)[1][:-4] for s in stages if s.endswith(".qir") and not s.startswith("00-")]
    assert names[:6] == ["propagate-shapes", "remove-identity", "fold-constants", "fold-batchnorm", "cse", "dce"]
    assert names[6:11] == ["legalize", "check-kernels", "fix-shapes", "propagate-shapes", "fold-outlier-gather"]
    from qc.backends.c.prepare import FUSE

    fuse = FUSE.split(",")
    assert names[-len(fuse):] == fuse  # the fusions, once, last
    rounds = names[11:-len(fuse)]  # the fixpoint group: at least one round, each the same six passes
    assert rounds and len(rounds) % 6 == 0
    assert rounds[:6] == ["propagate-shapes", "fold-constants", "inline-if", "dce", "propagate-shapes", "fold-shapes"]
    assert (out / "model.c").is_file() and (out / "model.onnx").is_file()


@pytest.mark.parametrize("target,extra", [("x86-avx2", []), ("cortex-a76", ["--quant", "w8a8"])])
def test_the_target_file_is_read_once_per_compile(mlp, tmp_path, monkeypatch, target, extra):
    import qc.targets

    reads = []
    loads = qc.targets.tomllib.loads
    monkeypatch.setattr(qc.targets.tomllib, "loads", lambda text: reads.append(1) or loads(text))
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((8, 2, 4)).astype(np.float32))
    out = tmp_path / ("out.onnx" if target == "x86-avx2" else "out")
    argv = ["compile", mlp, "--target", target, "-o", str(out), "--quiet", *extra]
    assert main(argv + (["--calib", str(calib)] if extra else [])) == 0
    assert len(reads) == 1
