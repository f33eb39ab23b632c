"""Files: inputs are never modified, outputs appear whole or not at all (also when the process
is killed during export), and the same input and options give byte-identical output."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import REPO, run_qc

F = TensorProto.FLOAT


def mlp(hidden: int = 64, layers: int = 3, seed: int = 0) -> onnx.ModelProto:
    """x[4, hidden] through ``layers`` MatMul + Add + Relu blocks."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits += [numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32) / 8, f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"h{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", F, [4, hidden])],
                              [helper.make_tensor_value_info(x, F, [4, hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def digest(paths) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of each file."""
    out = {}
    for p in paths:
        with open(p, "rb") as f:
            out[str(p)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def external_model(tmp_path):
    """mlp() saved with its weights as external data in weights.bin; the paths of both files."""
    directory = tmp_path / "in"
    directory.mkdir()
    path = str(directory / "model.onnx")
    onnx.save(mlp(), path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path, str(directory / "weights.bin")


def test_inputs_are_never_modified(tmp_path, external_model):
    model, weights = external_model
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).standard_normal((4, 4, 64)).astype(np.float32))
    inputs = [model, weights, str(calib)]
    before = digest(inputs)
    out = tmp_path / "out"
    out.mkdir()
    ok(run_qc("show", model, "--full"))
    ok(run_qc("show", model, "-o", str(out / "m.qir")))
    ok(run_qc("opt", model, "-p", "fold-constants,cse,dce", "-o", str(out / "o.onnx")))
    ok(run_qc("compile", model, "--target", "x86-avx2", "-o", str(out / "c.onnx"), "--quiet"))
    ok(run_qc("compile", model, "--target", "x86-avx2", "--quant", "w8a8", "--calib", str(calib),
              "-o", str(out / "q.onnx"), "--quiet"))
    qir = [str(out / "m.qir"), str(out / "m.qir.weights")]
    qir_before = digest(qir)
    ok(run_qc("compile", qir[0], "--target", "x86-avx2", "--quant", "w8", "-o", str(out / "w8.onnx"), "--quiet"))
    assert digest(inputs) == before
    assert digest(qir) == qir_before


def test_output_over_an_input_is_refused(tmp_path, external_model):
    model, weights = external_model
    before = digest([model, weights])
    proc = run_qc("opt", model, "-p", "", "-o", model)
    assert proc.returncode == 2 and "the output would overwrite the input" in proc.stderr
    assert digest([model, weights]) == before


def test_failed_compile_keeps_the_old_output(tmp_path):
    out = tmp_path / "o.onnx"
    out.write_bytes(b"previous output")
    bad = tmp_path / "bad.onnx"
    model = mlp(layers=1)
    model.graph.node[0].op_type = "Frobnicate"
    onnx.save(model, str(bad))
    proc = run_qc("compile", str(bad), "--target", "x86-avx2", "-o", str(out))
    assert proc.returncode == 2
    assert out.read_bytes() == b"previous output"
    assert sorted(os.listdir(tmp_path)) == ["bad.onnx", "o.onnx"]


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    from qc.fileio import atomic_write

    target = tmp_path / "t.bin"
    with atomic_write(str(target)) as f:
        f.write(b"one")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(str(target)) as f:
            f.write(b"two")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"one"
    assert os.listdir(tmp_path) == ["t.bin"]
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture(scope="module")
def large_model(tmp_path_factory) -> str:
    """A 192 MB model (one weight inline): exporting it takes long enough to interrupt."""
    path = str(tmp_path_factory.mktemp("large") / "large.onnx")
    w = np.random.default_rng(0).standard_normal((7000, 7000), dtype=np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "large",
                              [helper.make_tensor_value_info("x", F, [1, 7000])],
                              [helper.make_tensor_value_info("y", F, [1, 7000])], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _writing_into(pid: int, directory: str) -> bool:
    """Whether process ``pid`` has a file open in ``directory`` (the output being exported)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(directory + os.sep):
            return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_export_leaves_no_output(tmp_path, large_model, sig):
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to see when the export starts")
    out_dir = str(tmp_path / "out")
    os.mkdir(out_dir)
    out = os.path.join(out_dir, "o.onnx")
    proc = subprocess.Popen([sys.executable, "-m", "qc.cli", "compile", large_model, "--target", "x86-avx2", "-p", "",
                             "-o", out, "--quiet", "--external-data", "never"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not _writing_into(proc.pid, out_dir) and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "the compile ended before its export could be interrupted"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    if sig == signal.SIGINT and proc.returncode == 0:
        # Python saw the signal only after the last write returned (a long C call): then the
        # output must be whole, and nothing else left behind
        assert os.listdir(out_dir) == ["o.onnx"]
        onnx.checker.check_model(out)
        return
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted; no output was written" in stderr, stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    assert os.listdir(out_dir) == []


def _compile_twice(tmp_path, model: str, *options: str, ext: str = ".onnx") -> list[list[bytes]]:
    """The output files (sorted by name) of two runs, each into its own directory under the same
    name (an external data file is named after its model)."""
    outputs = []
    for i in range(2):
        directory = tmp_path / f"run{i}"
        directory.mkdir()
        out = str(directory / f"out{ext}")
        if ext == ".qir":
            ok(run_qc("opt", model, "-p", "fold-constants,cse,dce", "-o", out, *options))
        else:
            ok(run_qc("compile", model, "--target", "x86-avx2", "-o", out, "--quiet", *options))
        outputs.append([(directory / f).read_bytes() for f in sorted(os.listdir(directory))])
    return outputs


@pytest.mark.parametrize("options", [(), ("--quant", "w8a8", "--calib", "CALIB"), ("--quant", "w4"),
                                     ("--quant", "dyn8", "--external-data", "always")],
                         ids=["plain", "w8a8-calibrated", "w4", "dyn8-external"])
def test_same_input_same_bytes(tmp_path, options):
    model = str(tmp_path / "m.onnx")
    onnx.save(mlp(), model)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).standard_normal((8, 4, 64)).astype(np.float32))
    first, second = _compile_twice(tmp_path, model, *[str(calib) if o == "CALIB" else o for o in options])
    assert len(first) == (2 if "--external-data" in options else 1)
    assert first == second


def test_same_input_same_text_ir(tmp_path):
    model = str(tmp_path / "m.onnx")
    onnx.save(mlp(), model)
    first, second = _compile_twice(tmp_path, model, ext=".qir")
    assert len(first) == 2  # the .qir and its .weights sidecar
    assert first == second
