"""Pad in the C backend: modes constant / reflect / edge / wrap, float32 and int8 / uint8, ranks 1-4,
pads from a constant input (and ``axes``, opset 18), negative pads (cropping). Built for
cortex-a76 and run under qemu-aarch64, against onnxruntime (graph optimizations off) and, for
onnx's own node cases, against their expected outputs."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from qc.backends.c import toolchain
from qc.errors import QCError
from qc.frontend.onnx import import_onnx
from qc.ir import DType
from qc.onnx.evaluator import ort_session
from qc.targets import load_target

sys.path.insert(0, str(Path(__file__).parent))
from c_backend.nodecases import build_and_run, emit_cases, node_cases

A76 = load_target("cortex-a76")
_TP = {np.float32: TP.FLOAT, np.int8: TP.INT8, np.uint8: TP.UINT8}


def _pad_model(shape, dtype, mode, pads, axes=None, value=None, opset=19):
    """y = Pad(x, pads[, value][, axes]) with every parameter an initializer (as exporters write it)."""
    inits = [numpy_helper.from_array(np.array(pads, np.int64), "pads")]
    names = ["x", "pads"]
    if value is not None or axes is not None:
        names.append("value" if value is not None else "")
        if value is not None:
            inits.append(numpy_helper.from_array(np.array(value, dtype), "value"))
    if axes is not None:
        names.append("axes")
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
    node = helper.make_node("Pad", names, ["y"], mode=mode)
    g = helper.make_graph([node], "pad", [helper.make_tensor_value_info("x", _TP[dtype], list(shape))],
                          [helper.make_tensor_value_info("y", _TP[dtype], None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _data(rng, shape, dtype):
    if dtype == np.float32:
        return rng.randn(*shape).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.randint(info.min, info.max + 1, size=shape).astype(dtype)


# (shape, mode, pads, axes): every mode at ranks 1-4, pads on one or all axes, pads as long as
# the axis allows (reflect: up to n - 1, onnxruntime's limit), axes (opset 18, negative too),
# negative pads that crop before padding
_CASES = [
    ((5,), "reflect", [2, 4], None),
    ((5,), "edge", [3, 6], None),
    ((5,), "wrap", [4, 7], None),
    ((4, 6), "reflect", [1, 2, 3, 5], None),
    ((4, 6), "edge", [0, 3, 2, 0], None),
    ((4, 6), "wrap", [2, 1, 1, 4], None),
    ((2, 3, 5), "reflect", [0, 2, 4, 0, 1, 1], None),
    ((2, 3, 5, 4), "reflect", [0, 0, 2, 3, 0, 0, 4, 1], None),
    ((2, 3, 5, 4), "edge", [1, 0, 2, 3, 0, 2, 1, 1], None),
    ((2, 3, 5, 4), "wrap", [0, 1, 2, 3, 1, 0, 4, 2], None),
    ((2, 3, 5, 4), "reflect", [2, 3, 1, 3], [-2, 3]),
    ((3, 7), "edge", [4, 1], [1]),
    ((3, 7), "reflect", [-1, 2, 1, -2], None),
    ((3, 7), "wrap", [0, -3, 0, 5], None),
    ((3, 7), "edge", [-2, 0, 0, -4], None),
    ((3, 7), "constant", [-1, 2, 1, -3], None),
]


def _cases(rng):
    out = []
    for dtype in (np.float32, np.int8, np.uint8):
        for k, (shape, mode, pads, axes) in enumerate(_CASES):
            value = {np.float32: 1.5, np.int8: -7, np.uint8: 200}[dtype] if mode == "constant" else None
            m = _pad_model(shape, dtype, mode, pads, axes, value, opset=19 if axes is None else 18)
            x = _data(rng, shape, dtype)
            y = ort_session(m).run(None, {"x": x})[0]
            out.append((f"{np.dtype(dtype).name}_{mode}_{k}", m, [x], [y], 0, 0))
    # silero-vad's STFT front end: 512 samples, the right 64 reflected (then Unsqueeze, Conv)
    m = _pad_model((1, 512), np.float32, "reflect", [0, 0, 0, 64])
    x = rng.randn(1, 512).astype(np.float32)
    out.append(("silero_stft_reflect", m, [x], ort_session(m).run(None, {"x": x}), 0, 0))
    return out


def _run_a76(cases, tmp_path):
    """Every case in one cortex-a76 binary under qemu; returns {name: [outputs]}, every case emitted."""
    emitted, failed = emit_cases(cases, tmp_path, A76)
    assert not failed, failed
    build_and_run(emitted, tmp_path, "aarch64", "cortex-a76")
    got = {}
    for i, name, r, _, _ in emitted:
        got[name] = [np.frombuffer((tmp_path / f"case{i}_out{j}.bin").read_bytes(), DType.parse(dt).numpy)
                     .reshape(shape) for j, (_, dt, shape) in enumerate(r["outputs"])]
        assert any(k.startswith("pad") for k in r["kernels"]), (name, r["kernels"])
    return got


def test_pad_under_qemu_matches_onnxruntime(tmp_path):
    """onnx's pad node cases (constant, axes, negative axes, edge, reflect, wrap) against their
    expected outputs and onnxruntime; 48 generated cases and silero's STFT pad against
    onnxruntime. Data movement: every element must be exactly the one onnxruntime picks."""
    toolchain.require_tools("aarch64")
    onnx_cases = node_cases({"Pad"})
    names = sorted(c[0] for c in onnx_cases)
    assert names == ["test_constant_pad", "test_constant_pad_axes", "test_constant_pad_negative_axes",
                     "test_edge_pad", "test_reflect_pad", "test_wrap_pad"], names
    cases = onnx_cases + _cases(np.random.RandomState(0))
    got = _run_a76(cases, tmp_path)
    assert set(got) == {c[0] for c in cases}
    for name, model, ins, outs, _, _ in cases:
        feeds = {v.name: a for v, a in zip(model.graph.input, ins)}
        ref = ort_session(model).run(None, feeds)
        for g, expected, r in zip(got[name], outs, ref):
            assert g.dtype == expected.dtype and g.shape == expected.shape, name
            np.testing.assert_array_equal(g, expected, err_msg=name)
            np.testing.assert_array_equal(g, r, err_msg=name)


def test_pad_kernels_in_the_report(tmp_path):
    """Each mode is its own qc_pad_nd call (cropping constant pads too); non-negative constant
    pads stay a fill and a place."""
    from qc.backends.c import emit_c, prepare

    kernels = {}
    for mode, pads in (("reflect", [1, 1]), ("edge", [1, 1]), ("wrap", [1, 1]), ("constant", [-1, 2]),
                       ("constant", [1, 2])):
        module = import_onnx(_pad_model((4,), np.float32, mode, pads))
        prepare(module, {})
        kernels[f"{mode} {pads}"] = emit_c(module, tmp_path / f"{mode}{pads[0]}", A76)["kernels"]
        text = (tmp_path / f"{mode}{pads[0]}" / "model.c").read_text()
        assert ("qc_pad_nd(" in text) == (pads[0] < 0 or mode != "constant"), (mode, text)
    assert kernels == {"reflect [1, 1]": {"pad reflect": 1}, "edge [1, 1]": {"pad edge": 1},
                       "wrap [1, 1]": {"pad wrap": 1}, "constant [-1, 2]": {"pad constant": 1},
                       "constant [1, 2]": {"pad": 2}}


def test_pad_refusals_name_the_node(tmp_path):
    from qc.backends.c import emit_c, prepare

    m = _pad_model((3, 4), np.float32, "reflect", [0, -4, 0, 1])
    m.graph.node[0].name = "crop_all"
    module = import_onnx(m)
    prepare(module, {})
    with pytest.raises(QCError, match=r"node 'crop_all': Pad is not supported by the C backend "
                                      r"\(mode reflect on an axis with no elements \(after cropping\)\)"):
        emit_c(module, tmp_path / "c", A76)
    # pads computed at run time: not a constant
    node = helper.make_node("Pad", ["x", "p"], ["y"], mode="edge", name="runtime_pads")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TP.FLOAT, [3]),
                                        helper.make_tensor_value_info("p", TP.INT64, [2])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [5])])
    module = import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)]))
    prepare(module, {})
    with pytest.raises(QCError, match=r"node 'runtime_pads': Pad is not supported by the C backend "
                                      r"\(pads must be a constant\)"):
        emit_c(module, tmp_path / "c2", A76)
