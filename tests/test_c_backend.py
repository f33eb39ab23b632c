"""The C backend's code generator: ONNX node tests, models against onnxruntime, errors, determinism.

Host builds need gcc or clang (toolchain.require_tools skips without, fails under QC_REQUIRE_ARM=1).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from qc.backends.c import emit_c, toolchain
from qc.backends.c.runner import build_model, run_model
from qc.errors import QCError
from qc.frontend.onnx import import_onnx
from qc.ir import DType
from qc.runtime import ort_session
from qc.targets import load_target

ROOT = Path(__file__).resolve().parent.parent
A76 = load_target("cortex-a76")

# Why a claimed op's node test case may not compile: dtypes and modes the C backend does not
# implement. Anything else failing (or any mismatch) fails the test.
ALLOWED = re.compile(
    r"not supported by the C backend \((dtype \w+|input 0 of dtype \w+; only float32|input of dtype [iu]16|"
    r"output [iu]16|3-D|mode (reflect|edge|wrap)|"
    r"the mask output|training (mode|outputs)|the Indices output|blocked or non-constant parameters|"
    r"a non-float exponent must be a constant)\)"
    r"|dtype \w+ is not supported by the C backend|is not a tensor")


def _ort(model_path, inputs):
    sess = ort_session(str(model_path))
    return sess.run(None, inputs)


def _compile_run(model, tmp_path, shapes, inputs, target=A76, **kw):
    module = import_onnx(model if isinstance(model, onnx.ModelProto) else str(model))
    report = emit_c(module, tmp_path / "c", target, shapes=shapes, harness=True, **kw)
    exe = build_model(report, "host")
    return report, run_model(exe, report, inputs, "host")


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


# -- the ONNX backend node tests -------------------------------------------------------------------
def test_onnx_node_cases(tmp_path):
    """Every case of onnx's node tests whose ops the C backend claims: compiled in one binary, run
    on the host, compared with the expected outputs (floats: rtol 1e-3, atol 1e-5, the node tests'
    own rtol; integers and bools exactly)."""
    import sys

    toolchain.require_tools("host")
    sys.path.insert(0, str(Path(__file__).parent))
    from c_backend.nodecases import claimed_ops, driver_c, emit_cases, node_cases

    cases = node_cases(claimed_ops())
    emitted, failed = emit_cases(cases, tmp_path, A76)
    bad = {k: v for k, v in failed.items() if not ALLOWED.search(v)}
    assert not bad, bad
    assert len(emitted) >= 540, len(emitted)
    (tmp_path / "driver.c").write_text(driver_c(emitted))
    runtime = sorted({s for _, _, r, _, _ in emitted for s in r["sources"] if s.startswith("qc_")})
    exe = toolchain.build([tmp_path / "driver.c", *[tmp_path / s for s in runtime]], tmp_path / "driver", "host",
                          extra_flags=["-O0"], include_dirs=[tmp_path])
    for i, _, _, ins, _ in emitted:
        for j, a in enumerate(ins):
            (tmp_path / f"case{i}_in{j}.bin").write_bytes(np.ascontiguousarray(a).tobytes())
    proc = toolchain.run(exe, "host", None, [str(tmp_path)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    mismatches = []
    for i, name, r, _, outs in emitted:
        for j, (expected, (_, dt, shape)) in enumerate(zip(outs, r["outputs"])):
            got = np.frombuffer((tmp_path / f"case{i}_out{j}.bin").read_bytes(), DType.parse(dt).numpy).reshape(shape)
            try:
                if expected.dtype.kind == "f":
                    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), rtol=1e-3, atol=1e-5)
                else:
                    np.testing.assert_array_equal(got, expected)
            except AssertionError as e:
                mismatches.append(f"{name}: {str(e).splitlines()[3:5]}")
    assert not mismatches, mismatches


# -- small models against onnxruntime ------------------------------------------------------------------
def test_mlp_matches_onnxruntime_and_report(tmp_path):
    toolchain.require_tools("host")
    rng = np.random.RandomState(0)
    w = rng.randn(4, 8).astype(np.float32)
    b = rng.randn(8).astype(np.float32)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["z"]),
                helper.make_node("Relu", ["z"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=-1)],
               [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 4])],
               [helper.make_tensor_value_info("y", TP.FLOAT, None)],
               [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    onnx.save(m, tmp_path / "m.onnx")
    x = rng.randn(3, 4).astype(np.float32)
    report, (y,) = _compile_run(tmp_path / "m.onnx", tmp_path, {"x": (3, 4)}, {"x": x})
    np.testing.assert_allclose(y, _ort(tmp_path / "m.onnx", {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert report["weight_bytes"] == 4 * 8 * 4 + 8 * 4  # both tensors, each 16-byte aligned
    # h, z, r: three 96-byte tensors, at most two live at once -> two 96-byte slots
    assert report["arena_bytes"] == 2 * 96
    assert [k for _, k in report["calls"]] == ["matmul f32", "add f32", "relu f32", "softmax f32"]
    text = (tmp_path / "c" / "model.c").read_text()
    assert "malloc" not in text and "stdio" not in text


def test_output_is_deterministic(tmp_path):
    m = _model([helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]), helper.make_node("Sigmoid", ["t"], ["y"])],
               [helper.make_tensor_value_info("x", TP.FLOAT, [2, 3])],
               [helper.make_tensor_value_info("y", TP.FLOAT, [3, 2])])
    for d in ("a", "b"):
        emit_c(import_onnx(m), tmp_path / d, A76, harness=True)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_unsupported_op_names_the_node(tmp_path):
    m = _model([helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->ij", name="my_einsum")],
               [helper.make_tensor_value_info("x", TP.FLOAT, [2, 2])],
               [helper.make_tensor_value_info("y", TP.FLOAT, [2, 2])])
    with pytest.raises(QCError, match=r"node 'my_einsum': Einsum is not supported by the C backend"):
        emit_c(import_onnx(m), tmp_path / "c", A76)


def test_missing_shape_is_an_error(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["y"])],
               [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 4])],
               [helper.make_tensor_value_info("y", TP.FLOAT, None)])
    with pytest.raises(QCError, match=r"input 'x': input 'x' has no static shape; give it one with --shape x=Nx4"):
        emit_c(import_onnx(m), tmp_path / "c", A76)
    with pytest.raises(QCError, match=r"--shape names 'z', which is not a model input"):
        emit_c(import_onnx(m), tmp_path / "c", A76, shapes={"z": (1,)})
    with pytest.raises(QCError, match=r"does not fit the input's shape \[N, 4\]"):
        emit_c(import_onnx(m), tmp_path / "c", A76, shapes={"x": (2, 5)})


def test_minilm_float_matches_onnxruntime(tmp_path):
    """MiniLM-L6 float32 with a static sequence length of 16 (shape arithmetic folded away)."""
    toolchain.require_tools("host")
    path = ROOT / "out" / "bench" / "minilm-l6-fp32.onnx"
    if not path.exists():
        pytest.skip(f"{path} missing (qc models build minilm-l6 -o {path})")
    rng = np.random.RandomState(0)
    inputs = {"input_ids": rng.randint(0, 30000, (1, 16)).astype(np.int64),
              "attention_mask": np.ones((1, 16), np.int64)}
    report, outs = _compile_run(path, tmp_path, {"input_ids": (1, 16), "attention_mask": (1, 16)}, inputs)
    assert report["incbin"]  # 90 MB of weights go through .incbin
    for got, ref in zip(outs, _ort(path, inputs)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5)

