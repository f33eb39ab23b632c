"""Numeric tests of the built-in passes: original vs rewritten model in onnxruntime.

Every model is built with onnx.helper, imported, rewritten by one pass, exported, checked with
``onnx.checker`` (full check) and run in onnxruntime with graph optimizations disabled next to
the original. fold-constants, dce, cse and remove-identity must be bit-identical (they do not
change arithmetic); fold-batchnorm changes the rounding and is compared with a tolerance.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import qc
import qc.pm
from qc.onnx.evaluator import ort_session

RNG_SEED = 1234


# -- helpers ---------------------------------------------------------------------------------
def make_model(nodes, inputs, outputs, inits=(), *, opset=17, ir_version=10, functions=(), extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets],
                              functions=list(functions))
    model.ir_version = ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


session = ort_session


def run(model, feeds):
    return session(model).run(None, feeds)


def apply(model, pipeline, ctx=None):
    """import -> pipeline -> export, with the onnx full check; returns (module, exported proto)."""
    module = qc.import_onnx(model)
    qc.run_pipeline(module, pipeline, **({"ctx": ctx} if ctx is not None else {}))
    out = qc.export_onnx(module)
    onnx.checker.check_model(out, full_check=True)
    return module, out


def assert_bit_identical(a_list, b_list):
    assert len(a_list) == len(b_list)
    for i, (a, b) in enumerate(zip(a_list, b_list)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, f"output {i}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        if a.dtype == object:
            assert a.tolist() == b.tolist(), f"output {i} differs"
        else:
            assert a.tobytes() == b.tobytes(), f"output {i} differs:\n{a}\n{b}"


def check_exact(model, pipeline, feeds_list, ctx=None):
    """Run the pass; the rewritten model must give bit-identical outputs for every feed."""
    module, out = apply(model, pipeline, ctx)
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    s0, s1 = session(model), session(out)
    for feeds in feeds_list:
        assert_bit_identical(s0.run(None, feeds), s1.run(None, feeds))
    return module, out


def op_types(proto_or_graph):
    g = proto_or_graph.graph if isinstance(proto_or_graph, onnx.ModelProto) else proto_or_graph
    return [n.op_type for n in g.node]


def rand(*shape, dtype=np.float32, seed=RNG_SEED):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# -- fold-constants --------------------------------------------------------------------------
def test_fold_constants_chain_is_bit_identical():
    a, b, c = rand(4, 5, seed=1), rand(5, 3, seed=2), rand(3, seed=3)
    nodes = [
        helper.make_node("Constant", [], ["half"], value_float=0.5),
        helper.make_node("Constant", [], ["axes"], value_ints=[0]),
        helper.make_node("MatMul", ["A", "B"], ["ab"]),
        helper.make_node("Add", ["ab", "C"], ["abc"]),
        helper.make_node("Mul", ["abc", "half"], ["h"]),
        helper.make_node("Erf", ["h"], ["e"]),
        helper.make_node("Softmax", ["e"], ["sm"], axis=-1),
        helper.make_node("ReduceSum", ["sm", "axes"], ["rs"], keepdims=1),
        helper.make_node("Tanh", ["rs"], ["t"]),
        helper.make_node("Cast", ["t"], ["t16"], to=T.FLOAT16),
        helper.make_node("Cast", ["t16"], ["t32"], to=T.FLOAT),
        helper.make_node("Mul", ["x", "t32"], ["y"]),
        # integer shape arithmetic
        helper.make_node("Shape", ["Z"], ["shp"]),
        helper.make_node("ReduceProd", ["shp"], ["numel"], keepdims=1),
        helper.make_node("Reshape", ["x", "numel"], ["flat"]),
    ]
    model = make_model(nodes, [vi("x", T.FLOAT, [4, 3])], [vi("y", T.FLOAT, [4, 3]), vi("flat", T.FLOAT, [12])],
                       [init("A", a), init("B", b), init("C", c), init("Z", np.zeros((4, 3), np.float32))])
    _, out = check_exact(model, "fold-constants", [{"x": rand(4, 3, seed=s)} for s in (5, 6)])
    assert op_types(out) == ["Mul", "Reshape"]


def test_fold_constants_output_that_folds_keeps_name_and_value():
    nodes = [helper.make_node("Constant", [], ["k"], value_floats=[1.5, -2.0]),
             helper.make_node("Exp", ["k"], ["ek"]),
             helper.make_node("Add", ["x", "ek"], ["y"])]
    model = make_model(nodes, [vi("x", T.FLOAT, [2])], [vi("y", T.FLOAT, [2]), vi("ek", T.FLOAT, [2])])
    _, out = check_exact(model, "fold-constants", [{"x": rand(2)}])
    assert op_types(out) == ["Add"]
    assert "ek" in {i.name for i in out.graph.initializer}


def test_fold_constants_bfloat16_and_int4_results():
    nodes = [helper.make_node("Cast", ["A"], ["bf"], to=T.BFLOAT16),
             helper.make_node("Cast", ["bf"], ["back"], to=T.FLOAT),
             helper.make_node("Cast", ["I"], ["i4"], to=T.INT4),
             helper.make_node("Cast", ["i4"], ["i4f"], to=T.FLOAT),
             helper.make_node("Add", ["x", "back"], ["y0"]),
             helper.make_node("Add", ["y0", "i4f"], ["y"])]
    model = make_model(nodes, [vi("x", T.FLOAT, [5])], [vi("y", T.FLOAT, [5])],
                       [init("A", rand(5, seed=9)), init("I", np.array([-8, -1, 0, 3, 7], np.int32))], opset=21)
    module, out = check_exact(model, "fold-constants{max-size=64}", [{"x": rand(5)}])
    assert op_types(out) == ["Add", "Add"]


def test_fold_constants_float16_stays_bit_identical():
    # onnxruntime's CPU provider computes Mul/Exp/Add on float16 in float32 without rounding
    # between them: folding Mul -> Exp into a float16 const would change the last bits of y.
    # Cast and Transpose have float16 kernels: their results are exact float16 and fold.
    a, b = rand(1000, seed=1).astype(np.float16), rand(1000, seed=2).astype(np.float16)
    nodes = [helper.make_node("Mul", ["A", "B"], ["ab"]),
             helper.make_node("Exp", ["ab"], ["e"]),
             helper.make_node("Add", ["x", "e"], ["y"]),
             helper.make_node("Cast", ["F"], ["f16"], to=T.FLOAT16),
             helper.make_node("Transpose", ["f16"], ["f16t"]),
             helper.make_node("Add", ["y", "f16t"], ["y2"])]
    model = make_model(nodes, [vi("x", T.FLOAT16, [1000])], [vi("y2", T.FLOAT16, [1000])],
                       [init("A", a), init("B", b), init("F", rand(1000, seed=5))])
    _, out = check_exact(model, "fold-constants", [{"x": rand(1000, seed=s).astype(np.float16)} for s in (3, 4)])
    assert op_types(out) == ["Mul", "Exp", "Add", "Add"]


def test_fold_constants_leaves_what_it_must_not_fold():
    k = np.array([2.0, 3.0], np.float32)
    nodes = [
        # an overridable initializer (also a graph input, IR >= 4): not a constant
        helper.make_node("Mul", ["W", "K"], ["wk"]),
        helper.make_node("Add", ["x", "wk"], ["y1"]),
        # seeded randomness: deterministic here, but never folded
        helper.make_node("RandomUniform", [], ["r"], shape=[2], seed=3.0),
        helper.make_node("Add", ["x", "r"], ["y2"]),
        # a result above max-size
        helper.make_node("ConstantOfShape", ["S"], ["big"],
                         value=numpy_helper.from_array(np.array([0.25], np.float32))),
        helper.make_node("ReduceSum", ["big"], ["sum"], keepdims=0),
        helper.make_node("Add", ["x", "sum"], ["y3"]),
    ]
    model = make_model(nodes, [vi("x", T.FLOAT, [2]), vi("W", T.FLOAT, [2])],
                       [vi("y1", T.FLOAT, [2]), vi("y2", T.FLOAT, [2]), vi("y3", T.FLOAT, [2])],
                       [init("W", k), init("K", k), init("S", np.array([64], np.int64))])
    module, out = check_exact(model, "fold-constants{max-size=16}",
                              [{"x": rand(2)}, {"x": rand(2), "W": np.array([7.0, -1.0], np.float32)}])
    # ReduceSum's scalar result is small enough, but its input (64 elements) is not computed.
    assert sorted(op_types(out)) == sorted(["Mul", "Add", "RandomUniform", "Add", "ConstantOfShape",
                                            "ReduceSum", "Add"])
    # with the default max-size the generator and the reduction fold
    _, out = check_exact(model, "fold-constants", [{"x": rand(2)}])
    assert "ConstantOfShape" not in op_types(out) and "ReduceSum" not in op_types(out)


def test_fold_constants_in_if_branch_and_function():
    then = helper.make_graph([helper.make_node("Constant", [], ["k"], value_float=3.0),
                              helper.make_node("Sqrt", ["k"], ["sk"]),
                              helper.make_node("Mul", ["x", "sk"], ["t"])],
                             "then", [], [vi("t", T.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [vi("e", T.FLOAT, [2])])
    fn = helper.make_function("my.dom", "AddSqrt2", ["a"], ["o"],
                              [helper.make_node("Constant", [], ["two"], value_float=2.0),
                               helper.make_node("Sqrt", ["two"], ["s2"]),
                               helper.make_node("Add", ["a", "s2"], ["o"])],
                              [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("If", ["b"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("AddSqrt2", ["y"], ["z"], domain="my.dom")]
    model = make_model(nodes, [vi("x", T.FLOAT, [2]), vi("b", T.BOOL, [])], [vi("z", T.FLOAT, [2])],
                       functions=[fn], extra_opsets=[helper.make_opsetid("my.dom", 1)])
    x = rand(2)
    _, out = check_exact(model, "fold-constants", [{"x": x, "b": np.array(True)}, {"x": x, "b": np.array(False)}])
    then_out = out.graph.node[0].attribute[[a.name for a in out.graph.node[0].attribute].index("then_branch")].g
    assert op_types(then_out) == ["Mul"] and len(then_out.initializer) == 1
    assert [n.op_type for n in out.functions[0].node] == ["Constant", "Add"]


def test_fold_constants_falls_back_to_the_reference_evaluator():
    # onnxruntime has no int16 Max kernel: the reference evaluator computes it.
    a, b = np.array([1, -7, 300], np.int16), np.array([2, -9, 100], np.int16)
    nodes = [helper.make_node("Max", ["A", "B"], ["m"]),
             helper.make_node("Cast", ["m"], ["mf"], to=T.FLOAT),
             helper.make_node("Add", ["x", "mf"], ["y"])]
    model = make_model(nodes, [vi("x", T.FLOAT, [3])], [vi("y", T.FLOAT, [3])], [init("A", a), init("B", b)])
    ctx = qc.pm.PassContext()
    module, out = apply(model, "fold-constants", ctx)
    assert op_types(out) == ["Add"]
    assert any("reference evaluator" in r for r in ctx.remarks)
    x = rand(3)
    (y,) = run(out, {"x": x})
    assert y.tobytes() == (x + np.maximum(a, b).astype(np.float32)).tobytes()


# -- dce -------------------------------------------------------------------------------------
def test_dce():
    then = helper.make_graph([helper.make_node("Sin", ["v"], ["dead_in"]),
                              helper.make_node("Cos", ["x"], ["c"])], "then", [], [vi("c", T.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["n"])], "else", [], [vi("n", T.FLOAT, [2])])
    nodes = [helper.make_node("Exp", ["x"], ["v"]),          # used only by a dead op inside the branch
             helper.make_node("Relu", ["x"], ["d1"]),        # dead chain
             helper.make_node("Add", ["d1", "U"], ["d2"]),
             helper.make_node("Split", ["x"], ["s0", "s1"], axis=0),   # one result used
             helper.make_node("Concat", ["s0", "s0"], ["cc"], axis=0),
             helper.make_node("If", ["b"], ["i"], then_branch=then, else_branch=other),
             helper.make_node("Add", ["cc", "i"], ["y"])]
    model = make_model(nodes, [vi("x", T.FLOAT, [2]), vi("b", T.BOOL, []), vi("G", T.FLOAT, [2])],
                       [vi("y", T.FLOAT, [2])],
                       [init("U", np.ones(2, np.float32)), init("G", np.ones(2, np.float32))])
    x = rand(2)
    _, out = check_exact(model, "dce", [{"x": x, "b": np.array(True)}, {"x": x, "b": np.array(False)}])
    assert op_types(out) == ["Split", "Concat", "If", "Add"]
    attrs = out.graph.node[2].attribute
    assert op_types(attrs[[a.name for a in attrs].index("then_branch")].g) == ["Cos"]
    # @U is gone; @G (a graph input) stays
    assert [i.name for i in out.graph.initializer] == ["G"]


def test_dce_ir3_drops_unused_initializer_inputs():
    nodes = [helper.make_node("Add", ["x", "A"], ["y"])]
    model = make_model(nodes, [vi("x", T.FLOAT, [2]), vi("A", T.FLOAT, [2]), vi("B", T.FLOAT, [2])],
                       [vi("y", T.FLOAT, [2])], [init("A", np.ones(2, np.float32)), init("B", np.ones(2, np.float32))],
                       opset=9, ir_version=3)
    _, out = check_exact(model, "dce", [{"x": rand(2)}])
    assert [i.name for i in out.graph.input] == ["x", "A"] and [i.name for i in out.graph.initializer] == ["A"]


# -- cse -------------------------------------------------------------------------------------
def test_cse():
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Relu", ["x"], ["a2"]),
             helper.make_node("Add", ["a", "a2"], ["s1"]),
             helper.make_node("Add", ["a2", "a"], ["s2"]),            # Add(a, a) after merging a2: merged too
             helper.make_node("Sub", ["a", "x"], ["d1"]),
             helper.make_node("Sub", ["x", "a"], ["d2"]),             # operand order differs: kept
             helper.make_node("LeakyRelu", ["x"], ["l1"], alpha=0.1),
             helper.make_node("LeakyRelu", ["x"], ["l2"], alpha=0.2),   # attribute differs: kept
             helper.make_node("Reshape", ["x", "K1"], ["r1"]),
             helper.make_node("Reshape", ["x", "K2"], ["r2"]),          # equal consts: merged
             helper.make_node("RandomUniformLike", ["x"], ["u1"], seed=1.0),
             helper.make_node("RandomUniformLike", ["x"], ["u2"], seed=1.0),   # never merged
             helper.make_node("Add", ["s1", "s2"], ["t1"]),
             helper.make_node("Add", ["l1", "l2"], ["t2"]),
             helper.make_node("Sub", ["u1", "u2"], ["t3"]),
             helper.make_node("Mul", ["d1", "d2"], ["t4"]),
             helper.make_node("Exp", ["x"], ["o1"]),
             helper.make_node("Exp", ["x"], ["o2"])]                     # both graph outputs: kept
    model = make_model(nodes, [vi("x", T.FLOAT, [6])],
                       [vi(n, T.FLOAT, [6]) for n in ("t1", "t2", "t3", "t4")]
                       + [vi(n, T.FLOAT, [2, 3]) for n in ("r1", "r2")]
                       + [vi(n, T.FLOAT, [6]) for n in ("o1", "o2")],
                       [init("K1", np.array([2, 3], np.int64)), init("K2", np.array([2, 3], np.int64))])
    _, out = check_exact(model, "cse", [{"x": rand(6)}])
    types = op_types(out)
    assert types.count("Relu") == 1 and types.count("LeakyRelu") == 2 and types.count("Reshape") == 2
    assert types.count("RandomUniformLike") == 2 and types.count("Exp") == 2 and types.count("Add") == 3
    assert types.count("Sub") == 3
    assert [i.name for i in out.graph.initializer] == ["K1"]


def test_cse_ir3_merges_initializer_inputs():
    nodes = [helper.make_node("Add", ["x", "A"], ["a"]), helper.make_node("Add", ["x", "B"], ["b"]),
             helper.make_node("Mul", ["a", "b"], ["y"])]
    one = np.ones(2, np.float32)
    model = make_model(nodes, [vi("x", T.FLOAT, [2]), vi("A", T.FLOAT, [2]), vi("B", T.FLOAT, [2])],
                       [vi("y", T.FLOAT, [2])], [init("A", one), init("B", one)], opset=9, ir_version=3)
    _, out = check_exact(model, "cse", [{"x": rand(2)}])
    assert op_types(out) == ["Add", "Mul"]
    assert [i.name for i in out.graph.input] == ["x", "A"] and [i.name for i in out.graph.initializer] == ["A"]


# -- remove-identity -------------------------------------------------------------------------
def test_remove_identity():
    nodes = [helper.make_node("Identity", ["x"], ["i"]),
             helper.make_node("Relu", ["i"], ["r"]),
             helper.make_node("Dropout", ["r", "ratio"], ["d1"]),
             helper.make_node("Dropout", ["d1", "ratio", "no"], ["d2", "m2"]),   # mask unused
             helper.make_node("Exp", ["d2"], ["e"]),
             helper.make_node("Dropout", ["e", "ratio"], ["d3", "m3"]),          # mask used: kept
             helper.make_node("Cast", ["m3"], ["m3f"], to=T.FLOAT),
             helper.make_node("Add", ["d3", "m3f"], ["n"]),
             helper.make_node("Identity", ["n"], ["out"]),                       # output: renamed onto Add
             helper.make_node("Identity", ["x"], ["passthrough"])]               # output of an input: kept
    model = make_model(nodes, [vi("x", T.FLOAT, [4])], [vi("out", T.FLOAT, [4]), vi("passthrough", T.FLOAT, [4])],
                       [init("ratio", np.array(0.5, np.float32)), init("no", np.array(False))])
    _, out = check_exact(model, "remove-identity", [{"x": rand(4)}])
    assert op_types(out) == ["Relu", "Exp", "Dropout", "Cast", "Add", "Identity"]
    assert out.graph.node[4].output[0] == "out"


def test_remove_identity_keeps_training_dropout():
    nodes = [helper.make_node("Dropout", ["x", "ratio", "yes"], ["d"], seed=7),
             helper.make_node("Identity", ["d"], ["y"])]
    model = make_model(nodes, [vi("x", T.FLOAT, [4])], [vi("y", T.FLOAT, [4])],
                       [init("ratio", np.array(0.0, np.float32)), init("yes", np.array(True))])
    _, out = check_exact(model, "remove-identity", [{"x": rand(4)}])   # ratio 0: deterministic
    assert op_types(out) == ["Dropout"]


# -- fold-batchnorm --------------------------------------------------------------------------
def bn_inits(prefix, n, seed):
    rng = np.random.default_rng(seed)
    return [init(f"{prefix}s", rng.uniform(0.5, 2.0, n).astype(np.float32)),
            init(f"{prefix}b", rng.standard_normal(n).astype(np.float32)),
            init(f"{prefix}m", rng.standard_normal(n).astype(np.float32)),
            init(f"{prefix}v", rng.uniform(0.1, 3.0, n).astype(np.float32))]


def bn(x, y, prefix, **kw):
    return helper.make_node("BatchNormalization", [x, f"{prefix}s", f"{prefix}b", f"{prefix}m", f"{prefix}v"], [y],
                            **kw)


def assert_close(ref, got):
    """Folding rounds each folded weight once more (relative error <= 2**-24) and a conv/gemm sums
    K products, so the difference is a few float32 ulps of the largest partial sums. 1e-5
    relative to the largest |output| is ~80 ulps of headroom and far below any real bug (a wrong
    channel or a missing bias shifts outputs by O(1))."""
    for r, g in zip(ref, got):
        scale = max(float(np.max(np.abs(r))), 1e-30)
        err = float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64))))
        assert err <= 1e-5 * scale, f"max error {err} vs max |y| {scale}"


def test_fold_batchnorm_conv_gemm_matmul():
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),            # no bias
             bn("c1", "y1", "a", epsilon=1e-3),
             helper.make_node("Conv", ["x", "W2", "B2"], ["c2"], group=2),                 # grouped, with bias
             bn("c2", "y2", "b"),
             helper.make_node("Gemm", ["g", "G1", "C1"], ["g1"], alpha=0.5, beta=2.0, transB=1),
             bn("g1", "z1", "c"),
             helper.make_node("Gemm", ["g", "G2"], ["g2"]),                                # no C, transB = 0
             bn("g2", "z2", "c"),
             helper.make_node("MatMul", ["g", "M"], ["m"]),
             bn("m", "z3", "c"),
             # not folded: the Conv result has a second use
             helper.make_node("Conv", ["x", "W1"], ["c3"], pads=[1, 1, 1, 1]),
             bn("c3", "y3", "a"),
             helper.make_node("Relu", ["c3"], ["y4"])]
    inits = [init("W1", rng.standard_normal((6, 4, 3, 3)).astype(np.float32)),
             init("W2", rng.standard_normal((4, 2, 1, 1)).astype(np.float32)),
             init("B2", rng.standard_normal(4).astype(np.float32)),
             init("G1", rng.standard_normal((5, 8)).astype(np.float32)),
             init("C1", rng.standard_normal((3, 1)).astype(np.float32)),
             init("G2", rng.standard_normal((8, 5)).astype(np.float32)),
             init("M", rng.standard_normal((8, 5)).astype(np.float32)),
             *bn_inits("a", 6, 1), *bn_inits("b", 4, 2), *bn_inits("c", 5, 3)]
    outs = [vi("y1", T.FLOAT, [2, 6, 5, 5]), vi("y2", T.FLOAT, [2, 4, 5, 5]), vi("z1", T.FLOAT, [3, 5]),
            vi("z2", T.FLOAT, [3, 5]), vi("z3", T.FLOAT, [3, 5]), vi("y3", T.FLOAT, [2, 6, 5, 5]),
            vi("y4", T.FLOAT, [2, 6, 5, 5])]
    model = make_model(nodes, [vi("x", T.FLOAT, [2, 4, 5, 5]), vi("g", T.FLOAT, [3, 8])], outs, inits)
    _, out = apply(model, "fold-batchnorm")
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    assert op_types(out).count("BatchNormalization") == 1
    feeds = {"x": rand(2, 4, 5, 5, seed=11), "g": rand(3, 8, seed=12)}
    assert_close(run(model, feeds), run(out, feeds))


def test_fold_batchnorm_leaves_training_mode_and_non_const_weights():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),      # weight is a graph input
             bn("c", "y", "a")]
    model = make_model(nodes, [vi("x", T.FLOAT, [1, 2, 3, 3]), vi("w", T.FLOAT, [6, 2, 1, 1])],
                       [vi("y", T.FLOAT, [1, 6, 3, 3])], bn_inits("a", 6, 1))
    feeds = {"x": rand(1, 2, 3, 3), "w": rand(6, 2, 1, 1, seed=3)}
    _, out = check_exact(model, "fold-batchnorm", [feeds])
    assert op_types(out) == ["Conv", "BatchNormalization"]


# -- propagate-shapes ------------------------------------------------------------------------
def test_propagate_shapes_fills_missing_types_only():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Reshape", ["r", "S"], ["rs"]),
             helper.make_node("Shape", ["rs"], ["sh"]),
             helper.make_node("Relu", ["u"], ["ru"])]
    model = make_model(nodes, [vi("x", T.FLOAT, [2, 4]), vi("u", T.FLOAT, ["N", 3])],
                       [vi("rs", T.FLOAT, ["a", "b"]), vi("sh", T.INT64, ["c"]), vi("ru", T.FLOAT, ["N", 3])],
                       [init("S", np.array([4, 2], np.int64))])
    module = qc.import_onnx(model, infer_shapes=False)
    by_name = {r.name: r for op in module.graph for r in op.results}
    by_name["ru"].type = qc.ir.types.TensorType(qc.ir.dtypes.DType.f32, (7, 3))  # more specific: must stay
    qc.run_pipeline(module, "propagate-shapes")
    assert by_name["r"].type.shape == (2, 4)
    assert by_name["rs"].type.shape == (4, 2)
    assert by_name["sh"].type.shape == (2,)
    assert by_name["ru"].type.shape == (7, 3)
    # a second run changes nothing
    pm = qc.pm.PassManager.parse("propagate-shapes")
    assert pm.passes[0].run(module, qc.pm.PassContext()) is False
    out = qc.export_onnx(module)
    onnx.checker.check_model(out, full_check=True)
    feeds = {"x": rand(2, 4), "u": rand(7, 3)}
    assert_bit_identical(run(model, feeds), run(out, feeds))


# -- the default pipeline over the onnx light models -----------------------------------------
LIGHT = sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "*.onnx")))


@pytest.mark.parametrize("path", LIGHT, ids=[os.path.basename(p)[len("light_"):-len(".onnx")] for p in LIGHT])
def test_default_pipeline_on_light_models(path):
    model = onnx.load(path)
    _, out = apply(model, "default")
    assert len(out.graph.node) < len(model.graph.node)
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    inits = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(RNG_SEED)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.graph.input if i.name not in inits}
    assert_close(run(model, feeds), run(out, feeds))


def test_light_models_found():
    assert len(LIGHT) == 9


def test_fold_constants_does_not_grow_the_model():
    """A big ConstantOfShape result stays an op unless max-growth allows storing it."""
    nodes = [helper.make_node("ConstantOfShape", ["S"], ["w"],
                              value=numpy_helper.from_array(np.array([0.5], np.float32))),
             helper.make_node("Add", ["x", "w"], ["y"])]
    model = make_model(nodes, [vi("x", T.FLOAT, [1, 256])], [vi("y", T.FLOAT, [512, 256])],
                       [init("S", np.array([512, 256], np.int64))])
    _, out = check_exact(model, "fold-constants", [{"x": rand(1, 256)}])
    assert "ConstantOfShape" in op_types(out) and out.ByteSize() < 2000
    _, out = check_exact(model, "fold-constants{max-growth=200000}", [{"x": rand(1, 256)}])
    assert "ConstantOfShape" not in op_types(out) and out.ByteSize() > 512 * 256 * 4
