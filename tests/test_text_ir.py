"""The text IR: round trip, elision and the weights sidecar, every attribute kind, parse errors."""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import qc
from conftest import LIGHT_DIR, small_mlp
from qc.cli import write_qir
from qc.ir import DType, Tensor
from qc.testing.conformance import run_onnx

SUBGRAPH_MODEL = """\
module @branchy {ir_version = 10, opset_import = {"" = 21, local = 1}, producer_name = "hand"} {
  const @big : f32[2, 3] = dense[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
  func @main(%cond: bool[], %x: f32[2, 3], @big: f32[2, 3]) -> (f32[2, 3], f32[N, ?]) {
    %y = onnx.If(%cond) {else_branch = graph @else_() -> (f32[2, 3]) {
      %e = onnx.Sub(%x, @big) : f32[2, 3]
      return %e
    }, then_branch = graph @then_() -> (f32[2, 3]) {
      const @one : f32[] = dense[1.0]
      %t = onnx.Add(%x, @one) : f32[2, 3]
      return %t
    }} : f32[2, 3] loc("the if")
    %z = local.Twice(%y) : f32[N, ?]
    return %y, %z
  }
  func @Twice(%a) -> (?) attributes {domain = "local", opset_import = {"" = 21}} {
    %b = onnx.Add(%a, %a) : ?
    return %b
  }
}
"""


def test_round_trip_of_a_hand_written_module_with_subgraphs_and_functions():
    m = qc.parse_ir(SUBGRAPH_MODEL)
    text = qc.print_ir(m, elide_above=None)
    assert qc.print_ir(qc.parse_ir(text), elide_above=None) == text
    assert text == SUBGRAPH_MODEL
    proto = qc.export_onnx(m)
    onnx.checker.check_model(proto, full_check=True)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y, z = run_onnx(proto, {"cond": np.array(True), "x": x})
    np.testing.assert_array_equal(y, x + 1)
    np.testing.assert_array_equal(z, 2 * (x + 1))


def test_every_attribute_kind_round_trips():
    t = helper.make_tensor("t", TensorProto.FLOAT16, [2], [1.5, -2.0])
    sparse = helper.make_sparse_tensor(helper.make_tensor("v", TensorProto.FLOAT, [2], [3.0, 4.0]),
                                       helper.make_tensor("i", TensorProto.INT64, [2], [1, 5]), [2, 3])
    node = helper.make_node("Custom", ["x"], ["y", ""], domain="my.ops", i=-3, f=0.1, s=b"a\"b\n\xff",
                            ints=[1, 2], floats=[0.5, 1e-20], strings=[b"p", b"q"], t=t, tensors=[t, t],
                            sparse=sparse, g=helper.make_graph([], "empty", [], []))
    node.attribute.extend([helper.make_attribute("empty_ints", [], attr_type=onnx.AttributeProto.INTS),
                           helper.make_attribute("tp", helper.make_sequence_type_proto(
                               helper.make_tensor_type_proto(TensorProto.INT4, ["B", None])))])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("my.ops", 1)])
    text = qc.print_ir(qc.import_onnx(model, infer_shapes=False), elide_above=None)
    for fragment in ('i = -3', 'f = 0.1', r's = "a\"b\n\xff"', '"ints" = [1, 2]', '"floats" = [0.5, 1e-20]',
                     '"strings" = ["p", "q"]', 't = f16[2] dense[1.5, -2.0]', 'empty_ints = ints[]',
                     '"sparse" = sparse<f32[2, 3]>(f32[2] dense[3.0, 4.0], i64[2] dense[1, 5])',
                     'g = graph @empty() -> () {', 'tp = type<seq<i4[B, ?]>>', '%y, _ = my.ops.Custom(%x)',
                     'func @main(%x: f32[*]) -> (f32[])'):
        assert fragment in text, fragment
    again = qc.print_ir(qc.parse_ir(text), elide_above=None)
    assert again == text
    back = qc.export_onnx(qc.parse_ir(text)).graph.node[0]
    assert {a.name: a for a in back.attribute}["s"].s == b"a\"b\n\xff"


@pytest.mark.parametrize("dtype,values", [
    (DType.f32, [0.0, -0.0, 1e-45, 3.4028235e38, float("inf"), float("nan")]),
    (DType.f16, [65504.0, -0.0, 6e-08]),
    (DType.bf16, [1.0, -3.0e38, 0.0078125]),
    (DType.f8e4m3fn, [448.0, -0.5]),
    (DType.i4, [-8, 7, 0]),
    (DType.u4, [15, 0, 3]),
    (DType.bool, [True, False]),
    (DType.u64, [2**64 - 1, 0]),
    (DType.c64, [1 + 2j]),
])
def test_dense_payloads_are_bit_exact(dtype, values):
    t = Tensor.from_array(np.array(values, dtype=dtype.numpy), dtype)
    m = qc.parse_ir("module @m {ir_version = 10, opset_import = {\"\" = 21}} {\n"
                    "  func @main() -> () {\n    return\n  }\n}\n")
    m.graph.add_const("c", t)
    text = qc.print_ir(m, elide_above=None)
    back = qc.parse_ir(text).graph.consts["c"].const
    assert back.dtype == dtype and back.raw_bytes() == t.raw_bytes()
    assert qc.print_ir(qc.parse_ir(text), elide_above=None) == text


def test_nan_payload_falls_back_to_hex():
    a = np.array([0x7FC00001], dtype=np.uint32).view(np.float32)
    m = qc.parse_ir('module @m {ir_version = 10, opset_import = {"" = 21}} {\n'
                    '  func @main() -> () {\n    return\n  }\n}\n')
    m.graph.add_const("c", Tensor.from_array(a))
    text = qc.print_ir(m, elide_above=None)
    assert 'hex"0100c07f"' in text
    assert qc.parse_ir(text).graph.consts["c"].const.raw_bytes() == a.tobytes()


def test_sidecar_reloads_completely_and_missing_sidecar_is_an_error(tmp_path):
    path = str(tmp_path / "squeeze.qir")
    module = qc.import_onnx(os.path.join(LIGHT_DIR, "light_squeezenet.onnx"))
    write_qir(module, path, elide_above=16)
    with open(path) as f:
        text = f.read()
    assert text.startswith('weights "squeeze.qir.weights"\n')
    assert 'blob("conv1_b_0", offset = 0, bytes = 256)' in text
    reloaded = qc.parse_ir(text, filename=path)
    full = qc.print_ir(qc.import_onnx(os.path.join(LIGHT_DIR, "light_squeezenet.onnx")), elide_above=None)
    assert qc.print_ir(reloaded, elide_above=None) == full
    os.rename(path + ".weights", path + ".moved")
    missing = "the weights sidecar 'squeeze.qir.weights' named on its first line is missing"
    with pytest.raises(qc.QCError, match=missing):
        qc.parse_ir(text, filename=path)
    reloaded = qc.parse_ir(text, weights=path + ".moved")
    assert qc.print_ir(reloaded, elide_above=None) == full


def test_elided_tensor_fails_loudly_only_when_read():
    text = qc.print_ir(qc.import_onnx(small_mlp()), elide_above=4)
    m = qc.parse_ir(text)
    assert qc.print_ir(m, elide_above=4) == text
    with pytest.raises(qc.QCError, match="the data of tensor 'w' was elided when the IR was printed"):
        qc.export_onnx(m)


@pytest.mark.parametrize("source,message", [
    ("module @m {} {\n  func @main(%x: f32[2]) -> (f32[2]) {\n    %y = onnx.Relu(%x : f32[2]\n    return %y\n  }\n}\n",
     "<input>:3:23: unexpected ':'"),
    ("module @m {} {\n  func @main(%x: f32[2]) -> (f32[2]) {\n    %y = onnx.Relu(%q) : f32[2]\n    return %y\n  }\n}\n",
     "<input>:3:20: use of undefined value %q"),
    ("module @m {} {\n  func @main(%x: f32[2]) -> (f32[2]) {\n    %x = onnx.Relu(%x) : f32[2]\n    return %x\n  }\n}\n",
     "<input>:3:5: '%x' is defined twice"),
    ("module @m {} {\n  const @c : f32[3] = dense[1.0, 2.0]\n  func @main() -> () {\n    return\n  }\n}\n",
     "<input>:2:9: c: 2 values for a tensor of 3 elements"),
    ("module @m {} {\n  func @main(%x: q99[2]) -> () {\n    return\n  }\n}\n",
     "<input>:2:18: unexpected"),
    ("module @m {} {\n  func @main() -> () {\n    return\n  }\n",
     "<input>:4:3: unexpected end of input, expected one of 'const', 'func', '}'"),
    ("module @m {} {\n  func @main(%x: i8[4] q(scale = @x.scale, zp = 0)) -> () {\n    return\n  }\n}\n",
     "<input>:2:34: the scale of %x is @x.scale, which names no const or value"),
])
def test_parse_errors_read_file_line_col(source, message):
    with pytest.raises(qc.ParseError) as e:
        qc.parse_ir(source)
    assert str(e.value).startswith(message), str(e.value)


def test_names_that_need_quotes_round_trip():
    nodes = [helper.make_node("Relu", ["in put"], ["out:0"], name="n"),
             helper.make_node("Neg", ["out:0"], ["x,y"], name="m")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("in put", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("x,y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    text = qc.print_ir(qc.import_onnx(model))
    assert '%"in put"' in text and "%out:0" in text and '%"x,y"' in text
    proto = qc.export_onnx(qc.parse_ir(text))
    assert [i.name for i in proto.graph.input] == ["in put"] and [o.name for o in proto.graph.output] == ["x,y"]


FILECHECK_DIR = os.path.join(os.path.dirname(__file__), "filecheck")


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(FILECHECK_DIR) if f.endswith(".qir")))
def test_every_text_test_file_round_trips(name):
    path = os.path.join(FILECHECK_DIR, name)
    with open(path) as f:
        printed = qc.print_ir(qc.parse_ir(f.read(), filename=path), elide_above=None)
    assert qc.print_ir(qc.parse_ir(printed), elide_above=None) == printed


def test_consts_in_a_function_body_print_parse_and_export_as_constant_nodes():
    text = ('module @m {ir_version = 10, opset_import = {"" = 21, local = 1}} {\n'
            '  func @main(%x: f32[2]) -> (f32[2]) {\n    %y = local.AddK(%x) : f32[2]\n    return %y\n  }\n'
            '  func @AddK(%a) -> (?) attributes {domain = "local", opset_import = {"" = 21}} {\n'
            '    const @k : f32[2] = dense[1.0, 2.0]\n    %b = onnx.Add(%a, @k) : ?\n    return %b\n  }\n}\n')
    m = qc.parse_ir(text)
    assert qc.print_ir(m) == text
    proto = qc.export_onnx(m)
    assert [n.op_type for n in proto.functions[0].node] == ["Constant", "Add"]
    onnx.checker.check_model(proto, full_check=True)
    y, = run_onnx(proto, {"x": np.array([10.0, 20.0], np.float32)})
    np.testing.assert_array_equal(y, [11.0, 22.0])


QUANTIZED = """\
module @q {ir_version = 10, opset_import = {"" = 21}} {
  const @w : i8[4, 3] q(scale = @w.scale, zp = @w.zp, axis = 1) = dense[1, -2, 3, 4, 5, -6, 7, 8, 9, 10, -11, 12]
  const @w.scale : f32[3] = dense[0.02, 0.01, 0.05]
  const @w.zp : i8[3] = dense[0, 1, -1]
  func @main(%x: f32[2, 4]) -> (f32[2, 4], f32[2, 3]) {
    %x.q, %x.s, %x.z = onnx.DynamicQuantizeLinear(%x) : (u8[2, 4] q(scale = @x.s, zp = @x.z), f32[], u8[])
    %x.dq = onnx.DequantizeLinear(%x.q, %x.s, %x.z) : f32[2, 4]
    %w.dq = onnx.DequantizeLinear(@w, @w.scale, @w.zp) {axis = 1} : f32[4, 3]
    %y = onnx.MatMul(%x.dq, %w.dq) : f32[2, 3]
    return %x.dq, %y
  }
}
"""


def test_quantization_parameters_refer_to_values():
    from qc.ir.verify import verify

    m = qc.parse_ir(QUANTIZED)
    consts = m.graph.consts
    quant = consts["w"].type.quant
    assert quant.scale is consts["w.scale"] and quant.zero_point is consts["w.zp"]   # declared after @w
    dynamic = m.graph.ops[0]
    assert dynamic.results[0].type.quant.scale is dynamic.results[1]                 # a later result of the op
    verify(m)
    assert qc.print_ir(m) == QUANTIZED
    consts["w.scale"].name = "w.scales"           # the type follows its Value, not a name
    assert "q(scale = @w.scales, zp = @w.zp, axis = 1)" in qc.print_ir(m)


def test_quantization_parameters_resolve_in_enclosing_graphs():
    text = QUANTIZED.replace("    return %x.dq, %y\n", """\
    %c = onnx.Constant() {value = bool[] dense[true]} : bool[]
    %z = onnx.If(%c) {then_branch = graph @then() -> (i8[4, 3] q(scale = @w.scale, zp = @w.zp, axis = 1)) {
      %t = onnx.Identity(@w) : i8[4, 3] q(scale = @w.scale, zp = @w.zp, axis = 1)
      return %t
    }, else_branch = graph @else() -> (i8[4, 3] q(scale = @w.scale, zp = @w.zp, axis = 1)) {
      return @w
    }} : i8[4, 3]
    return %x.dq, %y
""")
    m = qc.parse_ir(text)
    then = next(op for op in m.graph if op.op_type == "If").attr("then_branch")
    assert then.ops[0].results[0].type.quant.scale is m.graph.consts["w.scale"]
    assert qc.print_ir(m) == text
