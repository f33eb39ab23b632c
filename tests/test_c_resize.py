"""The C backend's Resize / Upsample and ConvTranspose against onnxruntime (host, qemu-aarch64
cortex-a76, one Cortex-M run), and its one error for every node it cannot lower.

Each model holds many nodes reading one input (one compile and one run cover them all), shaped
like exporter output: NCHW feature maps, Resize with empty roi / scales inputs, QDQ around it.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from qc.backends.c import emit_c, prepare, toolchain
from qc.backends.c.runner import build_model, run_model
from qc.errors import QCError
from qc.frontend.onnx import import_onnx
from qc.onnx.evaluator import ort_session
from qc.targets import load_target

F = TP.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=19):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _c_outputs(model, tmp_path, inputs, target="cortex-a76", kind="host", cpu=None):
    """Compile *model* for *target*, build for *kind* (portable kernels on the host), run it."""
    module = import_onnx(model)
    prepare(module, {})
    report = emit_c(module, tmp_path / f"c-{kind}", load_target(target), harness=True,
                    variant="portable" if kind == "host" else None)
    exe = build_model(report, kind, cpu)
    return report, run_model(exe, report, inputs, kind, cpu, timeout=300)


def _compare(model, got, inputs, rtol=1e-5, atol=1e-5):
    ref = ort_session(model).run(None, inputs)
    names = [o.name for o in model.graph.output]
    bad = []
    for name, g, r in zip(names, got, ref):
        try:
            assert g.shape == r.shape, (g.shape, r.shape)
            if r.dtype.kind == "f":
                np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)
            else:
                np.testing.assert_array_equal(g, r)
        except AssertionError as e:
            bad.append(f"{name}: {str(e).strip().splitlines()[:4]}")
    assert not bad, bad


# -- Resize ---------------------------------------------------------------------------------------------
# (output name, attributes, scales or None, sizes or None) on x[1, 2, 5, 7]
RESIZE_CASES = [
    ("n_up2", {"mode": "nearest"}, [1, 1, 2, 2], None),  # YOLO's neck: nearest x2, half_pixel, round_prefer_floor
    ("n_up2_asym_floor", {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
     [1, 1, 2, 2], None),  # torch.nn.Upsample(scale_factor=2) as exported
    ("n_up_frac_ceil", {"mode": "nearest", "nearest_mode": "ceil"}, [1, 1, 1.7, 2.3], None),
    ("n_up_pref_ceil", {"mode": "nearest", "nearest_mode": "round_prefer_ceil"}, [1, 1, 3, 1.5], None),
    ("n_down", {"mode": "nearest"}, [1, 1, 0.5, 0.5], None),
    ("n_sizes_align", {"mode": "nearest", "coordinate_transformation_mode": "align_corners"}, None, [1, 2, 9, 4]),
    ("n_tf_nn", {"mode": "nearest", "coordinate_transformation_mode": "tf_half_pixel_for_nn"}, None, [1, 2, 8, 11]),
    ("n_pytorch", {"mode": "nearest", "coordinate_transformation_mode": "pytorch_half_pixel"}, None, [1, 2, 1, 13]),
    ("n_axes", {"mode": "nearest", "axes": [3, 2]}, [3.0, 2.0], None),
    ("n_not_larger", {"mode": "nearest", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}, None, [7, 8]),
    ("l_up2", {"mode": "linear"}, [1, 1, 2, 2], None),
    ("l_align", {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, None, [1, 2, 11, 6]),
    ("l_pytorch_down", {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, None, [1, 2, 3, 4]),
    ("l_asym", {"mode": "linear", "coordinate_transformation_mode": "asymmetric"}, [1, 1, 1.5, 2.5], None),
    ("l_sym", {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"}, [1, 1, 1.3, 0.6], None),
    ("l_width_only", {"mode": "linear"}, None, [1, 2, 5, 16]),
    ("c_up", {"mode": "cubic"}, [1, 1, 2, 2], None),
    ("c_excl", {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}, [1, 1, 0.6, 1.4], None),
    ("c_align", {"mode": "cubic", "coordinate_transformation_mode": "align_corners"}, None, [1, 2, 8, 3]),
    ("same", {"mode": "linear"}, [1, 1, 1, 1], None),
]
CROP = {"coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": -7.5}
ROI = {"crop_n": [0, 0, -0.2, 0.1, 1, 1, 0.8, 1.3], "crop_l": [0, 0, 0.1, -0.3, 1, 1, 1.2, 0.7],
       "crop_c": [0.4, 0.9, 0.2, 0.8]}  # crop_c: axes 2, 3 only
RESIZE_CASES += [("crop_n", {"mode": "nearest", **CROP}, None, [1, 2, 6, 5]),
                 ("crop_l", {"mode": "linear", **CROP}, None, [1, 2, 4, 9]),
                 ("crop_c", {"mode": "cubic", "axes": [2, 3], **CROP}, [1.6, 0.8], None)]


def _resize_nodes(src: str, cases, inits):
    nodes, outputs = [], []
    for name, attrs, scales, sizes in cases:
        ins = [src, ""]
        if name in ROI:
            inits.append(numpy_helper.from_array(np.array(ROI[name], np.float32), f"{name}_roi"))
            ins[1] = f"{name}_roi"
        if scales is not None:
            inits.append(numpy_helper.from_array(np.array(scales, np.float32), f"{name}_scales"))
            ins.append(f"{name}_scales")
        else:
            inits.append(numpy_helper.from_array(np.array(sizes, np.int64), f"{name}_sizes"))
            ins += ["", f"{name}_sizes"]
        nodes.append(helper.make_node("Resize", ins, [name], name=name, **attrs))
        outputs.append(helper.make_tensor_value_info(name, F, None))
    return nodes, outputs


def resize_model():
    """x f32[1, 2, 5, 7] -> every case of RESIZE_CASES; xq u8 -> nearest x2 (any dtype); and a
    quantized detector's neck: DQ(u8) -> Resize -> Q(u8) (the float kernel between them)."""
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z")]
    nodes, outputs = _resize_nodes("x", RESIZE_CASES, inits)
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up2"))
    nodes += [helper.make_node("Resize", ["xq", "", "up2"], ["u8_nearest"], name="u8_nearest", mode="nearest",
                               coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
              helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
              helper.make_node("Resize", ["xd", "", "up2"], ["xr"], name="qdq_linear", mode="linear"),
              helper.make_node("QuantizeLinear", ["xr", "s", "z"], ["qdq_linear"])]
    outputs += [helper.make_tensor_value_info("u8_nearest", TP.UINT8, None),
                helper.make_tensor_value_info("qdq_linear", TP.UINT8, None)]
    return _model(nodes, [helper.make_tensor_value_info("x", F, [1, 2, 5, 7]),
                          helper.make_tensor_value_info("xq", TP.UINT8, [1, 2, 5, 7])], outputs, inits)


def _resize_inputs():
    rng = np.random.RandomState(0)
    return {"x": rng.randn(1, 2, 5, 7).astype(np.float32), "xq": rng.randint(0, 256, (1, 2, 5, 7)).astype(np.uint8)}


def test_resize_matches_onnxruntime_host_and_cortex_a76(tmp_path):
    """Every mode / coordinate transform / nearest rounding of RESIZE_CASES, nearest on uint8 and
    linear between DQ and Q, on the host and under qemu -cpu cortex-a76: nearest exact, linear
    and cubic within float32 rounding of onnxruntime (rtol 1e-5, atol 1e-5; the C computes
    separably, one axis at a time), the QDQ output at most 1 LSB off."""
    toolchain.require_tools("host")
    m = resize_model()
    inputs = _resize_inputs()
    report, got = _c_outputs(m, tmp_path, inputs)
    kernels = report["kernels"]
    assert kernels["resize nearest"] >= 10 and kernels["resize linear f32"] >= 11 and kernels["resize cubic f32"] >= 4
    _compare(m, got[:len(RESIZE_CASES) + 1], inputs)
    ref_q = ort_session(m).run(["qdq_linear"], inputs)[0]
    assert np.abs(got[-1].astype(int) - ref_q.astype(int)).max() <= 1
    toolchain.require_tools("aarch64")
    _, a76 = _c_outputs(m, tmp_path, inputs, kind="aarch64", cpu="cortex-a76")
    _compare(m, a76[:len(RESIZE_CASES) + 1], inputs)


def test_resize_cortex_m_under_qemu(tmp_path):
    """A nearest and a bilinear x2 Resize (a detector's neck) built for cortex-m4 and run under
    qemu-system-arm: the same as onnxruntime."""
    toolchain.require_tools("cortex-m")
    inits: list = []
    nodes, outputs = _resize_nodes("x", [c for c in RESIZE_CASES if c[0] in ("n_up2", "l_up2", "c_excl")], inits)
    m = _model(nodes, [helper.make_tensor_value_info("x", F, [1, 2, 5, 7])], outputs, inits)
    inputs = {"x": _resize_inputs()["x"]}
    _, got = _c_outputs(m, tmp_path, inputs, target="cortex-m4", kind="cortex-m", cpu="cortex-m4")
    _compare(m, got, inputs)


@pytest.mark.parametrize("opset,op", [(9, "Upsample"), (10, "Resize")])
def test_old_upsample_and_resize10_match_onnxruntime(tmp_path, opset, op):
    """Upsample-9 and Resize-10 (x, scales): asymmetric coordinates, onnxruntime's nearest
    (floor up, ceil down) and linear."""
    toolchain.require_tools("host")
    scales = {"up": [1, 1, 2, 3], "down": [1, 1, 0.5, 0.7]}
    inits = [numpy_helper.from_array(np.array(s, np.float32), k) for k, s in scales.items()]
    nodes, outputs = [], []
    for mode in ("nearest", "linear"):
        for k in scales if op == "Resize" else ["up"]:
            nodes.append(helper.make_node(op, ["x", k], [f"{mode}_{k}"], mode=mode))
            outputs.append(helper.make_tensor_value_info(f"{mode}_{k}", F, None))
    m = _model(nodes, [helper.make_tensor_value_info("x", F, [1, 2, 5, 7])], outputs, inits, opset=opset)
    inputs = {"x": _resize_inputs()["x"]}
    _, got = _c_outputs(m, tmp_path, inputs)
    _compare(m, got, inputs)


def test_resize_refusals_name_the_reason(tmp_path):
    inits = [numpy_helper.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "sc")]
    for attrs, ins, why in [({"mode": "linear", "antialias": 1}, ["x", "", "sc"], r"antialias"),
                            ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"},
                             ["x", "", "sc"], r"tf_crop_and_resize without a roi of 2 values per axis"),
                            ({"mode": "linear"}, ["xq", "", "sc"], r"mode linear on u8 data; only float32")]:
        m = _model([helper.make_node("Resize", ins, ["y"], name="r", **attrs)],
                   [helper.make_tensor_value_info("x", F, [1, 2, 4, 4]),
                    helper.make_tensor_value_info("xq", TP.UINT8, [1, 2, 4, 4])],
                   [helper.make_tensor_value_info("y", F if ins[0] == "x" else TP.UINT8, None)], inits)
        module = import_onnx(m)
        prepare(module, {})
        with pytest.raises(QCError, match=r"node 'r': Resize is not supported by the C backend \(" + why):
            emit_c(module, tmp_path / "c", load_target("cortex-a76"))


def exported_neck(path):
    """A detector / U-Net neck as torch.onnx writes it: symbolic dims, the scales in a Constant
    node, F.interpolate(size=skip.shape[2:]) as Shape -> Slice -> Concat -> Resize(sizes), then a
    ConvTranspose up-convolution and a Concat with a skip connection."""
    rng = np.random.RandomState(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="/backbone/conv"),
        helper.make_node("Constant", [], ["scales"], name="/neck/Constant",
                         value=numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32))),
        helper.make_node("Resize", ["c", "", "scales"], ["up"], name="/neck/Resize", mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Shape", ["skip"], ["ss"], name="/neck/Shape"),
        helper.make_node("Slice", ["ss", "two", "four"], ["hw"], name="/neck/Slice"),
        helper.make_node("Shape", ["c"], ["cs"], name="/neck/Shape_1"),
        helper.make_node("Slice", ["cs", "zero", "two"], ["nc"], name="/neck/Slice_1"),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0, name="/neck/Concat"),
        helper.make_node("Resize", ["c", "", "", "sizes"], ["up2"], name="/neck/Resize_1", mode="linear",
                         coordinate_transformation_mode="pytorch_half_pixel"),
        helper.make_node("ConvTranspose", ["up2", "wt", "bt"], ["dec"], strides=[2, 2], name="/decoder/up"),
        helper.make_node("Concat", ["up", "skip4"], ["cat"], axis=1, name="/neck/Concat_1")]
    inits = [numpy_helper.from_array(rng.randn(4, 3, 3, 3).astype(np.float32) * 0.2, "w"),
             numpy_helper.from_array(np.array([2], np.int64), "two"),
             numpy_helper.from_array(np.array([4], np.int64), "four"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(rng.randn(4, 2, 2, 2).astype(np.float32) * 0.3, "wt"),
             numpy_helper.from_array(rng.randn(2).astype(np.float32), "bt")]
    m = _model(nodes, [helper.make_tensor_value_info("x", F, ["batch", 3, "height", "width"]),
                       helper.make_tensor_value_info("skip", F, ["batch", 4, "h2", "w2"]),
                       helper.make_tensor_value_info("skip4", F, ["batch", 4, "h3", "w3"])],
               [helper.make_tensor_value_info("cat", F, None), helper.make_tensor_value_info("dec", F, None)],
               inits, opset=17)
    onnx.save(m, path)
    return m


def test_exported_neck_through_qc_compile(tmp_path):
    """qc compile --emit c --shape on the exported neck: the Constant scales and the Shape
    arithmetic of the sizes fold to constants, and the C (host) matches onnxruntime on the
    original model."""
    import qc
    from qc.backends.c.runner import load_report

    toolchain.require_tools("host")
    m = exported_neck(tmp_path / "neck.onnx")
    shapes = {"x": (1, 3, 6, 8), "skip": (1, 4, 9, 11), "skip4": (1, 4, 12, 16)}
    qc.compile(str(tmp_path / "neck.onnx"), target="cortex-a76", shapes=shapes).write(str(tmp_path / "c"),
                                                                                      harness=True)
    report = load_report(tmp_path / "c")
    assert report["kernels"]["resize nearest"] == 1 and report["kernels"]["resize linear f32"] == 2
    rng = np.random.RandomState(3)
    inputs = {k: rng.randn(*s).astype(np.float32) for k, s in shapes.items()}
    got = run_model(build_model(report, "host"), report, inputs)
    _compare(m, got, inputs)


def test_exported_neck_w8a8_under_qemu_cortex_a76(tmp_path):
    """The neck quantized by qc (w8a8 for cortex-a76): the Conv becomes an int8 unit (qc_gemm_s8
    dotprod), Resize and ConvTranspose stay float32 between its dequantized output and the
    rest (qc's schemes quantize neither); under qemu the C matches onnxruntime on model.onnx."""
    import qc
    from qc.backends.c.runner import load_report

    toolchain.require_tools("aarch64")
    exported_neck(tmp_path / "neck.onnx")
    shapes = {"x": (1, 3, 6, 8), "skip": (1, 4, 9, 11), "skip4": (1, 4, 12, 16)}
    rng = np.random.RandomState(0)
    np.savez(tmp_path / "calib.npz", **{k: rng.randn(8, *s).astype(np.float32) for k, s in shapes.items()})
    qc.compile(str(tmp_path / "neck.onnx"), target="cortex-a76", quant="w8a8", calibration=str(tmp_path / "calib.npz"),
               shapes=shapes).write(str(tmp_path / "c"), harness=True)
    report = load_report(tmp_path / "c")
    kernels = report["kernels"]
    # the one int8 conv: the direct SDOT conv (after im2row, or 1x1) or the fused int8 GEMM
    int8_convs = sum(n for k, n in kernels.items() if k.startswith(("conv im2row s8", "conv 1x1 s8", "gemm s8")))
    assert int8_convs == 1 and kernels["resize nearest"] == 1
    assert kernels["resize linear f32"] == 2 and kernels["convtranspose2d f32"] == 1
    inputs = {k: rng.randn(*s).astype(np.float32) for k, s in shapes.items()}
    got = run_model(build_model(report, "aarch64", "cortex-a76"), report, inputs, "aarch64", "cortex-a76")
    _compare(onnx.load(str(tmp_path / "c" / "model.onnx")), got, inputs)


# -- ConvTranspose ------------------------------------------------------------------------------------------
# (output name, input, weight shape [C, OC/group, k...], attributes, bias)
CONVT_CASES = [
    ("plain", "x", [4, 3, 3, 3], {}, False),
    ("stride2_pads", "x", [4, 2, 3, 3], {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True),
    ("unet_up", "x", [4, 3, 2, 2], {"strides": [2, 2]}, True),  # a U-Net's / decoder's up-convolution
    ("outpad", "x", [4, 3, 3, 3], {"strides": [2, 3], "pads": [1, 0, 1, 1], "output_padding": [1, 2]}, True),
    ("dil", "x", [4, 2, 3, 2], {"dilations": [2, 3], "strides": [1, 2]}, False),
    ("group2", "x", [4, 3, 3, 3], {"group": 2, "strides": [2, 1]}, True),
    ("depthwise", "x", [4, 1, 4, 4], {"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]}, True),
    ("same_upper", "x", [4, 2, 3, 3], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, False),
    ("same_lower", "x", [4, 2, 4, 3], {"strides": [2, 2], "auto_pad": "SAME_LOWER"}, True),
    ("out_shape", "x", [4, 2, 3, 3], {"strides": [3, 2], "output_shape": [16, 12]}, False),
    ("oned", "x1", [4, 3, 5], {"strides": [2], "pads": [1, 2], "output_padding": [1]}, True),
    ("oned_group", "x1", [4, 2, 3], {"group": 2, "dilations": [2]}, False),
]


def convt_model():
    rng = np.random.RandomState(1)
    inits, nodes, outputs = [], [], []
    for name, src, wshape, attrs, bias in CONVT_CASES:
        inits.append(numpy_helper.from_array(rng.randn(*wshape).astype(np.float32) * 0.3, f"{name}_w"))
        ins = [src, f"{name}_w"]
        if bias:
            oc = wshape[1] * attrs.get("group", 1)
            inits.append(numpy_helper.from_array(rng.randn(oc).astype(np.float32), f"{name}_b"))
            ins.append(f"{name}_b")
        nodes.append(helper.make_node("ConvTranspose", ins, [name], name=name, **attrs))
        outputs.append(helper.make_tensor_value_info(name, F, None))
    # quantized (qc insert-qdq quantizes ConvTranspose's input and weight): through float
    inits += [numpy_helper.from_array(np.array(0.02, np.float32), "sx"),
              numpy_helper.from_array(np.array(0, np.int8), "zx"),
              numpy_helper.from_array(rng.randint(-127, 128, (4, 3, 2, 2)).astype(np.int8), "wq"),
              numpy_helper.from_array((rng.rand(3) * 0.01 + 0.002).astype(np.float32), "sw"),
              numpy_helper.from_array(np.zeros(3, np.int8), "zw")]
    nodes += [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
              helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xdq"]),
              helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wdq"], axis=1),
              helper.make_node("ConvTranspose", ["xdq", "wdq"], ["qdq"], name="qdq", strides=[2, 2])]
    outputs.append(helper.make_tensor_value_info("qdq", F, None))
    return _model(nodes, [helper.make_tensor_value_info("x", F, [2, 4, 5, 6]),
                          helper.make_tensor_value_info("x1", F, [2, 4, 9])], outputs, inits, opset=21)


def test_conv_transpose_matches_onnxruntime_host_and_cortex_a76(tmp_path):
    """ConvTranspose 2-D and 1-D: strides, pads, output_padding, dilations, groups (depthwise),
    auto_pad, output_shape, bias; and a QDQ int8 one (the weight dequantized at compile time, the
    activation by qc_dequantize: float32 ConvTranspose). Within float32 rounding of onnxruntime."""
    toolchain.require_tools("host")
    m = convt_model()
    rng = np.random.RandomState(2)
    inputs = {"x": rng.randn(2, 4, 5, 6).astype(np.float32), "x1": rng.randn(2, 4, 9).astype(np.float32)}
    report, got = _c_outputs(m, tmp_path, inputs)
    assert report["kernels"]["convtranspose2d f32"] == len(CONVT_CASES) + 1
    _compare(m, got, inputs, rtol=1e-5, atol=1e-5)
    toolchain.require_tools("aarch64")
    _, a76 = _c_outputs(m, tmp_path, inputs, kind="aarch64", cpu="cortex-a76")
    _compare(m, a76, inputs, rtol=1e-5, atol=1e-5)


# -- every node the C backend cannot lower, in one error -----------------------------------------------------
def _three_unsupported(path):
    """A detector's tail as exporters write it: Einsum x2, TopK, NonZero (a data-dependent shape),
    all after a supported Conv."""
    inits = [numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.array([3], np.int64), "k")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Einsum", ["c", "c"], ["e1"], name="attn_einsum_0", equation="nchw,nchw->nchw"),
             helper.make_node("Einsum", ["e1", "c"], ["e2"], name="attn_einsum_1", equation="nchw,nchw->nchw"),
             helper.make_node("Flatten", ["e2"], ["f"], name="flat"),
             helper.make_node("TopK", ["f", "k"], ["vals", "idx"], name="topk"),
             helper.make_node("NonZero", ["vals"], ["nz"], name="nonzero"),
             helper.make_node("Relu", ["vals"], ["r"], name="relu"),
             helper.make_node("Reshape", ["c", "shape"], ["rs"], name="reshape_by_input")]
    m = _model(nodes, [helper.make_tensor_value_info("x", F, [1, 4, 3, 3]),
                       helper.make_tensor_value_info("shape", TP.INT64, [2])],
               [helper.make_tensor_value_info(n, t, None) for n, t in (("nz", TP.INT64), ("r", F), ("rs", F))],
               inits, opset=17)
    onnx.save(m, path)
    return path


def test_all_unsupported_nodes_in_one_error(tmp_path, capsys):
    """Three op types without a lowering (Einsum x2, TopK, NonZero) and a Reshape whose target
    shape is a model input (not known at compile time), after a supported Conv: qc compile
    names all five nodes in one qc: error (exit 2, no traceback), the reasons and both hints,
    and writes no C; the nodes after a failed one (Relu reads TopK's values) are still checked."""
    from qc.cli import main

    src = _three_unsupported(tmp_path / "m.onnx")
    before = src.read_bytes()
    assert main(["compile", str(src), "--target", "cortex-a76", "-o", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    print(err)
    assert err.count("qc: error:") == 1 and "Traceback" not in err
    assert "5 nodes are not supported by the C backend: " in err
    assert "Einsum x2 (op type not supported): 'attn_einsum_0', 'attn_einsum_1'" in err
    assert "TopK (op type not supported): 'topk'" in err
    assert "NonZero (op type not supported): 'nonzero'" in err
    assert "Reshape (output 'rs' has no static shape (f32" in err and "it is not known at compile time)" in err
    assert "Relu" not in err and "'conv'" not in err
    assert "compile with --emit onnx" in err and "qc compile --emit c (qc.backends.c.prepare) folds" in err
    assert not (tmp_path / "c" / "model.c").exists() and src.read_bytes() == before


def test_if_with_branch_dependent_shape_is_control_flow(tmp_path):
    """An If whose branches give different shapes (as exporters write data-dependent post-processing):
    reported as what it is (lower_control's message: the branches' shapes, the run-time
    condition), not as a missing --shape, in the one-node form of the message."""
    then_g = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", F, None)])
    else_g = helper.make_graph([helper.make_node("Concat", ["x", "x"], ["e"], axis=0)], "else", [],
                               [helper.make_tensor_value_info("e", F, None)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
             helper.make_node("Relu", ["y"], ["r"], name="relu")]
    m = _model(nodes, [helper.make_tensor_value_info("x", F, [2, 3])], [helper.make_tensor_value_info("r", F, None)],
               [numpy_helper.from_array(np.array(0, np.float32), "zero")], opset=17)
    module = import_onnx(m)
    prepare(module, {})
    with pytest.raises(QCError) as e:
        emit_c(module, tmp_path / "c", load_target("cortex-a76"))
    msg = str(e.value)
    assert msg.startswith("node 'branch': If output 0 ('y') has different shapes in its branches: "
                          "then_branch f32[2, 3], else_branch f32[4, 3]"), msg
    assert "--shape NAME=AxB" not in msg and "the condition 'cond' is a run-time value" in msg, msg


# -- Pad reflect / edge / wrap (a gather, like nearest Resize) --------------------------------------------------
def test_pad_modes_match_onnxruntime(tmp_path):
    """Pad reflect (silero VAD's STFT padding on [1, 1, T]), edge (open_nsfw's NCHW padding), wrap,
    with axes and with negative pads (a crop), and edge on uint8: exact against onnxruntime."""
    toolchain.require_tools("host")
    cases = [("reflect_stft", "a", "reflect", [0, 0, 8, 0, 0, 8], None),
             ("edge_nchw", "x", "edge", [0, 0, 1, 2, 0, 0, 2, 1], None),
             ("wrap_axes", "x", "wrap", [3, -1, 2, 4], [2, -1]),
             ("reflect_crop", "x", "reflect", [0, 0, -1, 3, 0, 0, 2, -2], None),
             ("edge_u8", "q", "edge", [0, 1, 2, 0, 1, 0, 0, 3], None)]
    inits, nodes, outputs = [], [], []
    for name, src, mode, pads, axes in cases:
        inits.append(numpy_helper.from_array(np.array(pads, np.int64), f"{name}_pads"))
        ins = [src, f"{name}_pads"]
        if axes is not None:
            inits.append(numpy_helper.from_array(np.array(axes, np.int64), f"{name}_axes"))
            ins += ["", f"{name}_axes"]
        nodes.append(helper.make_node("Pad", ins, [name], name=name, mode=mode))
        outputs.append(helper.make_tensor_value_info(name, TP.UINT8 if src == "q" else F, None))
    m = _model(nodes, [helper.make_tensor_value_info("a", F, [1, 1, 40]),
                       helper.make_tensor_value_info("x", F, [1, 2, 5, 7]),
                       helper.make_tensor_value_info("q", TP.UINT8, [1, 2, 5, 7])], outputs, inits)
    rng = np.random.RandomState(4)
    inputs = {"a": rng.randn(1, 1, 40).astype(np.float32), "x": rng.randn(1, 2, 5, 7).astype(np.float32),
              "q": rng.randint(0, 256, (1, 2, 5, 7)).astype(np.uint8)}
    report, got = _c_outputs(m, tmp_path, inputs)
    assert report["kernels"]["pad reflect"] == 2 and report["kernels"]["pad edge"] == 2
    _compare(m, got, inputs, rtol=0, atol=0)
