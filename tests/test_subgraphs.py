"""Models whose compute sits inside If / Loop bodies, and weights stored as Constant nodes
(issue 18, bugs 4 and 5): shaped like the exporters' output (Silero VAD: an If on the sample
rate whose branches hold the Convs; torch.onnx: weights as Constant nodes)."""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qc
from conftest import run_qc
from qc.calib.data import from_arrays
from qc.pm import PassContext

RNG = np.random.default_rng(18)
F = TensorProto.FLOAT


def _w(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _constant(out: str, tensor: onnx.TensorProto) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [out], value=tensor, name=out + ".const")


def if_model() -> onnx.ModelProto:
    """x[2, 16], flag -> If(flag): then: MatMul(x, @W_outer) -> Gemm(@G_then initializer of the branch)
    else: MatMul(x, @W_outer) -> Relu -> Conv over a reshape with a Constant-node weight.
    @W_outer (16 x 16) is an initializer of the main graph read by both branches."""
    then_nodes = [helper.make_node("MatMul", ["x", "W_outer"], ["t_h"], name="then_mm"),
                  helper.make_node("Gemm", ["t_h", "G_then"], ["t_y"], name="then_gemm", transB=1)]
    then_branch = helper.make_graph(then_nodes, "then", [], [helper.make_tensor_value_info("t_y", F, [2, 8])],
                                    [_w("G_then", 8, 16)])
    else_nodes = [helper.make_node("MatMul", ["x", "W_outer"], ["e_h"], name="else_mm"),
                  helper.make_node("Relu", ["e_h"], ["e_r"], name="else_relu"),
                  _constant("e_shape", numpy_helper.from_array(np.array([2, 16, 1], np.int64), "s")),
                  helper.make_node("Reshape", ["e_r", "e_shape"], ["e_img"], name="else_reshape"),
                  _constant("C_else", _w("C_else", 8, 16, 1)),
                  helper.make_node("Conv", ["e_img", "C_else"], ["e_c"], name="else_conv"),
                  _constant("e_flat", numpy_helper.from_array(np.array([2, 8], np.int64), "s2")),
                  helper.make_node("Reshape", ["e_c", "e_flat"], ["e_y"], name="else_flatten")]
    else_branch = helper.make_graph(else_nodes, "else", [], [helper.make_tensor_value_info("e_y", F, [2, 8])])
    nodes = [helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)]
    graph = helper.make_graph(nodes, "if_model", [helper.make_tensor_value_info("x", F, [2, 16]),
                                                  helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", F, [2, 8])], [_w("W_outer", 16, 16)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def loop_model(static: bool) -> onnx.ModelProto:
    """x[2, 16] -> Loop (trip count 3, or the input n) carrying h: h = Tanh(MatMul(h, @W_loop)),
    @W_loop a Constant node of the body; output h and the stacked per-iteration MatMul results."""
    body_nodes = [_constant("W_loop", _w("W_loop", 16, 16)),
                  helper.make_node("MatMul", ["h_in", "W_loop"], ["b_mm"], name="body_mm"),
                  helper.make_node("Tanh", ["b_mm"], ["h_out"], name="body_tanh"),
                  helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
                  helper.make_node("Identity", ["b_mm"], ["scan_mm"], name="body_scan")]
    body = helper.make_graph(body_nodes, "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("h_in", F, [2, 16])],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("h_out", F, [2, 16]),
                              helper.make_tensor_value_info("scan_mm", F, [2, 16])])
    inits = [numpy_helper.from_array(np.array(True), "true")]
    inputs = [helper.make_tensor_value_info("x", F, [2, 16])]
    if static:
        inits.append(numpy_helper.from_array(np.array(3, np.int64), "n"))
    else:
        inputs.append(helper.make_tensor_value_info("n", TensorProto.INT64, []))
    nodes = [helper.make_node("Loop", ["n", "true", "x"], ["h", "steps"], name="loop", body=body)]
    graph = helper.make_graph(nodes, "loop_model", inputs,
                              [helper.make_tensor_value_info("h", F, [2, 16]),
                               helper.make_tensor_value_info("steps", F, ["T", 2, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort(model: onnx.ModelProto, feed: dict, outputs: list[str] | None = None) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(outputs, feed)


def transposed_weight_model() -> onnx.ModelProto:
    """Both If branches read Transpose(@W) of one main-graph weight (as Silero's branches each
    reorder the same LSTM weights): folding must leave one transposed copy, not one per branch."""
    def branch(name: str, act: str) -> onnx.GraphProto:
        nodes = [helper.make_node("Transpose", ["W"], [f"{name}_wt"], name=f"{name}_transpose", perm=[1, 0]),
                 helper.make_node("MatMul", ["x", f"{name}_wt"], [f"{name}_mm"], name=f"{name}_mm"),
                 helper.make_node(act, [f"{name}_mm"], [f"{name}_y"], name=f"{name}_act")]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", F, [2, 64])])

    nodes = [helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=branch("then", "Relu"),
                              else_branch=branch("else", "Tanh"))]
    graph = helper.make_graph(nodes, "transposed", [helper.make_tensor_value_info("x", F, [2, 64]),
                                                    helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", F, [2, 64])], [_w("W", 64, 64)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
