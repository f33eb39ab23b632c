"""Fuzz qc's two readers: the ONNX frontend and the text IR parser.

    python benchmarks/fuzz.py --cases 10000 --target onnx
    python benchmarks/fuzz.py --cases 10000 --target text --seed 1

A case is a real small model (onnx's backend test models plus a few built here: subgraphs,
local functions, sparse and external initializers) mutated at random: bit flips, byte
edits, truncation and splicing of the protobuf bytes, or a mutated field (names, op types,
dims, data types, attribute kinds, raw data, external data, opsets); or a random graph of
random ops, wired at random. For ``text``, the case is the printed IR of such a model,
mutated by line, token and character edits.

Each case goes through what ``qc show`` / ``qc opt`` do: read and import (or parse), then
verify, print, re-parse the printed text and export to ONNX. The only allowed failure is a
``QCError`` with a message; any other exception, a case taking longer than ``--timeout``
seconds, or a crash of the worker process counts as a failure and is printed with the seed
that reproduces it (``--replay SEED``). tests/test_fuzz.py runs the same cases through
hypothesis for a few hundred examples per target.
"""
from __future__ import annotations

import argparse
import functools
import os
import random
import re
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

DATA_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
MAX_SEED_BYTES = 64 << 10


# -- seeds -----------------------------------------------------------------------------------
def _built_seeds() -> list[onnx.ModelProto]:
    """Small models covering what the backend test data lacks: subgraphs, functions, sparse and
    external initializers, sequences, several domains."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.array([0.5, -0.25, 1.0], np.float32), "b")
    mlp = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
         helper.make_node("Add", ["h", "b"], ["z"], name="add"),
         helper.make_node("Relu", ["z"], ["y"], name="relu")], "mlp",
        [helper.make_tensor_value_info("x", f, [2, 4])], [helper.make_tensor_value_info("y", f, [2, 3])], [w, b]),
        opset_imports=[helper.make_opsetid("", 17)])

    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", f, [2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", f, [2])])
    body = helper.make_graph(
        [helper.make_node("Add", ["acc", "x"], ["acc2"]), helper.make_node("Identity", ["cond"], ["cond2"])],
        "body", [helper.make_tensor_value_info("i", i64, []),
                 helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("acc", f, [2])],
        [helper.make_tensor_value_info("cond2", TensorProto.BOOL, []), helper.make_tensor_value_info("acc2", f, [2])])
    control = helper.make_model(helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
         helper.make_node("Greater", ["s", "zero"], ["c"]),
         helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="if"),
         helper.make_node("Loop", ["n", "", "y"], ["z"], body=body, name="loop")], "control",
        [helper.make_tensor_value_info("x", f, [2])], [helper.make_tensor_value_info("z", f, [2])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
         numpy_helper.from_array(np.array(3, np.int64), "n")]),
        opset_imports=[helper.make_opsetid("", 17)])

    fn = helper.make_function("custom", "Scaled", ["a"], ["o"],
                              [helper.make_node("Constant", [], ["k"], value_float=2.0),
                               helper.make_node("Mul", ["a", "k"], ["o"])],
                              [helper.make_opsetid("", 17)], attributes=["alpha"])
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "sp"),
                                       numpy_helper.from_array(np.array([0, 5], np.int64)), [2, 3])
    functions = helper.make_model(helper.make_graph(
        [helper.make_node("Scaled", ["x"], ["s"], domain="custom", alpha=0.5, name="scaled"),
         helper.make_node("Add", ["s", "sp"], ["y"], name="add")], "functions",
        [helper.make_tensor_value_info("x", f, [2, 3])], [helper.make_tensor_value_info("y", f, [2, 3])],
        sparse_initializer=[sparse]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)], functions=[fn])

    seq = helper.make_model(helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x", "x"], ["s"]),
         helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=0),
         helper.make_node("Cast", ["y"], ["c"], to=TensorProto.FLOAT16),
         helper.make_node("Shape", ["c"], ["shape"]),
         helper.make_node("Reshape", ["c", "shape"], ["r"]),
         helper.make_node("Cast", ["r"], ["out"], to=f)], "seq",
        [helper.make_tensor_value_info("x", f, ["N", 3])], [helper.make_tensor_value_info("out", f, None)]),
        opset_imports=[helper.make_opsetid("", 17)])

    q = helper.make_model(helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["q"], name="q"),
         helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["y"], name="dq")], "qdq",
        [helper.make_tensor_value_info("x", f, [1, 8])], [helper.make_tensor_value_info("y", f, [1, 8])],
        [numpy_helper.from_array(np.array(0.05, np.float32), "sc"),
         numpy_helper.from_array(np.array(3, np.int8), "zp")]),
        opset_imports=[helper.make_opsetid("", 21)])
    return [mlp, control, functions, seq, q]


def external_seed(directory: str) -> bytes:
    """A model whose weight lives in ``weights.bin`` beside it (written into ``directory``)."""
    w = np.arange(64, dtype=np.float32).reshape(8, 8)
    with open(os.path.join(directory, "weights.bin"), "wb") as fh:
        fh.write(w.tobytes())
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[8, 8], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", str(w.nbytes))):
        t.external_data.add(key=k, value=v)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [t]),
        opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


@functools.lru_cache(maxsize=1)
def onnx_seeds() -> tuple[bytes, ...]:
    """Serialized seed models: the built ones, then onnx's small backend test models."""
    seeds = [m.SerializeToString() for m in _built_seeds()]
    for kind in ("simple", "pytorch-operator", "pytorch-converted", "real", "light"):
        root = os.path.join(DATA_DIR, kind)
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name, "model.onnx") if kind != "light" else os.path.join(root, name)
            if path.endswith(".onnx") and os.path.isfile(path) and os.path.getsize(path) <= MAX_SEED_BYTES:
                with open(path, "rb") as fh:
                    seeds.append(fh.read())
    return tuple(seeds)


@functools.lru_cache(maxsize=1)
def text_seeds() -> tuple[str, ...]:
    """Printed IR of the seed models: full, elided, and the FileCheck inputs of tests/filecheck."""
    import qc
    from qc.errors import QCError

    texts = []
    for data in onnx_seeds()[:40]:
        try:
            module = qc.import_onnx(onnx.load_from_string(data))
        except QCError:
            continue
        texts.append(qc.print_ir(module, elide_above=None))
        texts.append(qc.print_ir(module, elide_above=4))
    filecheck = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "filecheck")
    if os.path.isdir(filecheck):
        for name in sorted(os.listdir(filecheck)):
            if name.endswith(".qir"):
                with open(os.path.join(filecheck, name), encoding="utf-8") as fh:
                    texts.append("\n".join(line for line in fh.read().splitlines()
                                           if not line.lstrip().startswith("//")))
    return tuple(texts)


# -- protobuf mutations ------------------------------------------------------------------------
_INTERESTING_INTS = [0, 1, -1, 2, 3, 7, 8, 16, 255, 256, 2**31 - 1, -2**31, 2**32, 2**40, 2**62, -2**63, 10**12]
_NAMES = ["", "x", "y", "w", "a", "../x", "/etc/passwd", "\x00", "é", "%x", "@w", "a\"b", "a b", " "]


def mutate_bytes(data: bytes, rnd: random.Random) -> bytes:
    """Raw byte edits: flip bits, set bytes to interesting values, truncate, splice, insert."""
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        if not buf:
            buf = bytearray(rnd.randbytes(rnd.randint(0, 16)))
            continue
        kind = rnd.randrange(6)
        pos = rnd.randrange(len(buf))
        if kind == 0:
            buf[pos] ^= 1 << rnd.randrange(8)
        elif kind == 1:
            buf[pos] = rnd.choice([0, 1, 0x7F, 0x80, 0xFF, 0x08, 0x0A, 0x12, 0x1A, 0x22, 0x3A])
        elif kind == 2:
            del buf[rnd.randrange(len(buf)):]
        elif kind == 3:
            n = rnd.randint(1, 8)
            buf[pos:pos] = rnd.randbytes(n)
        elif kind == 4:
            end = min(len(buf), pos + rnd.randint(1, 64))
            chunk = buf[pos:end]
            dst = rnd.randrange(len(buf))
            buf[dst:dst] = chunk
        else:
            del buf[pos:pos + rnd.randint(1, 16)]
    return bytes(buf)


def _random_int(rnd: random.Random) -> int:
    return rnd.choice(_INTERESTING_INTS) if rnd.random() < 0.7 else rnd.randint(-1000, 1000)


def _all_graphs(model: onnx.ModelProto) -> list[onnx.GraphProto]:
    graphs, out = [model.graph], []
    while graphs:
        g = graphs.pop()
        out.append(g)
        for n in g.node:
            for a in n.attribute:
                graphs.extend([a.g] if a.HasField("g") else list(a.graphs))
    return out


def _all_tensors(model: onnx.ModelProto) -> list[TensorProto]:
    tensors = []
    for g in _all_graphs(model):
        tensors.extend(g.initializer)
        tensors.extend(sp.values for sp in g.sparse_initializer)
        tensors.extend(sp.indices for sp in g.sparse_initializer)
        for n in g.node:
            for a in n.attribute:
                if a.HasField("t"):
                    tensors.append(a.t)
                tensors.extend(a.tensors)
    return tensors


def _mutate_tensor(t: TensorProto, rnd: random.Random) -> None:
    kind = rnd.randrange(9)
    if kind == 0:
        t.data_type = rnd.choice([0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 16, 17, 21, 22, 23, 24, 25, 26, 99])
    elif kind == 1 and t.dims:
        t.dims[rnd.randrange(len(t.dims))] = _random_int(rnd)
    elif kind == 2:
        t.dims.append(_random_int(rnd))
    elif kind == 3:
        t.raw_data = (t.raw_data[: rnd.randrange(len(t.raw_data) + 1)] if t.raw_data
                      else rnd.randbytes(rnd.randint(0, 9)))
    elif kind == 4:
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        for k, v in (("location", rnd.choice(["weights.bin", "../weights.bin", "/etc/passwd", "missing.bin", "", "."])),
                     ("offset", str(_random_int(rnd))), ("length", str(_random_int(rnd)))):
            if rnd.random() < 0.85:
                t.external_data.add(key=k, value=v)
    elif kind == 5:
        t.float_data.extend([rnd.choice([float("nan"), float("inf"), 1e39, -0.0, 1.5])])
    elif kind == 6:
        t.int64_data.extend([_random_int(rnd)])
    elif kind == 7:
        t.string_data.append(rnd.randbytes(rnd.randint(0, 4)))
    else:
        t.name = rnd.choice(_NAMES)


def _mutate_type(tp: onnx.TypeProto, rnd: random.Random) -> None:
    kind = rnd.randrange(5)
    if kind == 0:
        tp.tensor_type.elem_type = rnd.choice([0, 1, 7, 9, 13, 16, 40])
    elif kind == 1 and tp.HasField("tensor_type"):
        dim = tp.tensor_type.shape.dim.add()
        if rnd.random() < 0.5:
            dim.dim_value = _random_int(rnd)
        else:
            dim.dim_param = rnd.choice(_NAMES)
    elif kind == 2:
        tp.ClearField("value") if hasattr(tp, "ClearField") else None
        tp.Clear()
    elif kind == 3:
        inner = onnx.TypeProto()
        inner.CopyFrom(tp)
        target = rnd.choice(["sequence_type", "optional_type", "sparse_tensor_type", "map_type"])
        if target == "sparse_tensor_type":
            tp.sparse_tensor_type.elem_type = rnd.choice([1, 7])
        elif target == "map_type":
            tp.map_type.key_type = rnd.choice([0, 7, 8, 1])
            tp.map_type.value_type.CopyFrom(inner)
        else:
            getattr(tp, target).elem_type.CopyFrom(inner)
    else:
        tp.tensor_type.shape.Clear()


def _mutate_attribute(a: AttributeProto, rnd: random.Random) -> None:
    kind = rnd.randrange(7)
    if kind == 0:
        a.type = rnd.choice(list(range(0, 16)) + [99])
    elif kind == 1:
        a.i = _random_int(rnd)
    elif kind == 2:
        a.ints.extend([_random_int(rnd) for _ in range(rnd.randint(1, 3))])
    elif kind == 3:
        a.name = rnd.choice(["", "axis", "to", "perm", "value", "then_branch", "body", "x"])
    elif kind == 4:
        a.ref_attr_name = rnd.choice(["", "alpha", "beta"])
    elif kind == 5:
        a.f = rnd.choice([float("nan"), float("inf"), -0.0, 1e30])
    else:
        a.s = rnd.randbytes(rnd.randint(0, 6))


def mutate_fields(model: onnx.ModelProto, rnd: random.Random) -> None:
    """One structural edit of a decoded model, in place."""
    graphs = _all_graphs(model)
    g = rnd.choice(graphs)
    nodes = list(g.node)
    kind = rnd.randrange(16)
    if kind == 0 and nodes:
        n = rnd.choice(nodes)
        if n.input:
            n.input[rnd.randrange(len(n.input))] = rnd.choice(
                [o for m in nodes for o in m.output] + [i.name for i in g.input] + _NAMES)
    elif kind == 1 and nodes:
        n = rnd.choice(nodes)
        if n.output:
            n.output[rnd.randrange(len(n.output))] = rnd.choice([o for m in nodes for o in m.output] + _NAMES)
    elif kind == 2 and nodes:
        rnd.choice(nodes).op_type = rnd.choice(["Add", "Relu", "If", "Loop", "Conv", "", "Nope", "MatMul",
                                                "Reshape", "Constant", "Scan", "QuantizeLinear", "Scaled"])
    elif kind == 3 and nodes:
        rnd.choice(nodes).domain = rnd.choice(["", "ai.onnx", "ai.onnx.ml", "com.microsoft", "custom", "x.y"])
    elif kind == 4 and nodes:
        n = rnd.choice(nodes)
        if n.attribute:
            _mutate_attribute(rnd.choice(n.attribute), rnd)
        else:
            n.attribute.add(name=rnd.choice(["axis", "x"]), type=AttributeProto.INT, i=_random_int(rnd))
    elif kind == 5:
        tensors = _all_tensors(model)
        if tensors:
            _mutate_tensor(rnd.choice(tensors), rnd)
    elif kind == 6:
        vis = list(g.input) + list(g.output) + list(g.value_info)
        if vis:
            _mutate_type(rnd.choice(vis).type, rnd)
    elif kind == 7 and nodes:
        # a cycle or a reordering
        i, j = rnd.randrange(len(nodes)), rnd.randrange(len(nodes))
        g.node[i].CopyFrom(nodes[j])
        g.node[j].CopyFrom(nodes[i])
        if rnd.random() < 0.5 and nodes[i].output and nodes[j].input:
            g.node[i].input.append(nodes[j].output[0])
    elif kind == 8 and nodes:
        del g.node[rnd.randrange(len(nodes))]
    elif kind == 9 and nodes:
        g.node.append(rnd.choice(nodes))
    elif kind == 10:
        if g.output:
            g.output[rnd.randrange(len(g.output))].name = rnd.choice(_NAMES + [n.output[0] for n in nodes if n.output])
        else:
            g.output.add(name=rnd.choice(_NAMES))
    elif kind == 11:
        if model.opset_import:
            opset = model.opset_import[rnd.randrange(len(model.opset_import))]
            opset.version = rnd.choice([0, 1, 7, 13, 17, 21, 23, 99, -1])
        model.opset_import.add(domain=rnd.choice(["", "custom", "ai.onnx.ml", "x"]), version=rnd.randint(-1, 30))
    elif kind == 12:
        model.ir_version = rnd.choice([0, 1, 3, 4, 7, 10, 99, -1])
    elif kind == 13 and g.initializer:
        g.input.add().CopyFrom(helper.make_tensor_value_info(rnd.choice(g.initializer).name, TensorProto.INT64, [1]))
    elif kind == 14 and model.functions:
        fn = rnd.choice(model.functions)
        rnd.choice([lambda: fn.input.append("x"), lambda: fn.output.append("q"),
                    lambda: fn.node.pop() if fn.node else None,
                    lambda: setattr(fn, "name", rnd.choice(_NAMES)),
                    lambda: fn.attribute_proto.add(name="alpha", type=AttributeProto.FLOAT, f=1.0)])()
    else:
        g.initializer.add().CopyFrom(numpy_helper.from_array(
            np.zeros([rnd.choice([0, 1, 3])] * rnd.randint(0, 3), np.float32), rnd.choice(_NAMES)))


def mutate_onnx(data: bytes, rnd: random.Random) -> bytes:
    """A mutated serialized model: field edits (decoded, edited, re-encoded) and/or byte edits."""
    if rnd.random() < 0.6:
        model = onnx.ModelProto()
        model.ParseFromString(data)
        for _ in range(rnd.randint(1, 4)):
            try:
                mutate_fields(model, rnd)
            except (ValueError, TypeError, IndexError):
                pass  # protobuf refused the edit itself (an enum value it does not know)
        data = model.SerializeToString()
    if rnd.random() < 0.4:
        data = mutate_bytes(data, rnd)
    return data


_RANDOM_OPS: list[tuple[str, int, dict]] = [
    ("Add", 2, {}), ("Mul", 2, {}), ("MatMul", 2, {}), ("Relu", 1, {}), ("Sigmoid", 1, {}), ("Neg", 1, {}),
    ("Concat", 2, {"axis": 0}), ("Transpose", 1, {}), ("Reshape", 2, {}), ("Softmax", 1, {"axis": -1}),
    ("Gemm", 3, {"transB": 1}), ("Conv", 2, {}), ("Identity", 1, {}), ("Cast", 1, {"to": 10}),
    ("ReduceMean", 1, {"keepdims": 1}), ("Where", 3, {}), ("Gather", 2, {"axis": 0}), ("Split", 1, {"axis": 0}),
    ("Unsqueeze", 2, {}), ("LayerNormalization", 3, {}), ("QuantizeLinear", 2, {}), ("DequantizeLinear", 2, {}),
]


def random_graph(rnd: random.Random) -> bytes:
    """A random graph of random ops wired to random earlier values (types need not agree)."""
    dtypes = [TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT8, TensorProto.BOOL,
              TensorProto.FLOAT16]
    inputs = [helper.make_tensor_value_info(f"in{i}", rnd.choice(dtypes), [rnd.choice([1, 2, 3, "N", None])
                                                                          for _ in range(rnd.randint(0, 4))])
              for i in range(rnd.randint(1, 3))]
    values = [vi.name for vi in inputs]
    inits = []
    for i in range(rnd.randint(0, 3)):
        shape = [rnd.choice([0, 1, 2, 4]) for _ in range(rnd.randint(0, 3))]
        array = np.asarray(np.random.default_rng(rnd.randrange(2**32)).standard_normal(shape)).astype(
            rnd.choice([np.float32, np.int64, np.int8, np.float16]))
        inits.append(numpy_helper.from_array(array, f"c{i}"))
        values.append(f"c{i}")
    nodes = []
    for i in range(rnd.randint(1, 12)):
        op, arity, attrs = rnd.choice(_RANDOM_OPS)
        ins = [rnd.choice(values) for _ in range(arity)]
        outs = [f"v{i}"] + ([f"v{i}b"] if op == "Split" else [])
        nodes.append(helper.make_node(op, ins, outs, name=f"n{i}", **attrs))
        values.extend(outs)
    outputs = [helper.make_tensor_value_info(v, rnd.choice([0] + dtypes), None)
               for v in rnd.sample(values, k=min(len(values), rnd.randint(1, 2)))]
    model = helper.make_model(helper.make_graph(nodes, "random", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", rnd.choice([13, 17, 21]))])
    return model.SerializeToString()


def onnx_case(rnd: random.Random) -> bytes:
    """One ONNX fuzz input: a mutated seed or (one in five) a random graph."""
    if rnd.random() < 0.2:
        data = random_graph(rnd)
        return mutate_onnx(data, rnd) if rnd.random() < 0.3 else data
    seeds = onnx_seeds()
    return mutate_onnx(rnd.choice(seeds), rnd)


# -- text mutations ----------------------------------------------------------------------------
_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|[%@][\w./\-:]+|\d+(?:\.\d+)?(?:e[-+]?\d+)?|\w+|\S')
_SNIPPETS = [
    "%x", "@w", "?", "f32[1000000000000]", "f32[1000000, 1000000]", "i4[3]", "str[2]", "seq<f32[2]>", "opt<?>",
    "map<i64, f32[1]>", "none", "_", "dense[1.0, 2.0]", "dense[]", "hex\"00ff\"", 'blob("w", offset = 0, bytes = 48)',
    'blob("w", offset = 99999999999, bytes = 4)', "nan", "inf", "-inf", "1e400", "99999999999999999999999",
    "{", "}", "(", ")", "[", "]", ",", "=", ":", "->", "return", "func", "const", "module", "graph", "onnx.If",
    'loc("x")', "q(scale = 0.5, zp = 3)", "sparse<f32[4]>(i64[1] dense[0], f32[1] dense[1.0])", "type<f32[2]>",
    'ref<float>("alpha")', "\\", "\x00", "é", "\"", "'", "#", "//", "\n", "ints[]", "-", "0x1F",
]


_TYPE_TOKEN = re.compile(r"\b(f32|f16|bf16|f64|i64|i32|i8|u8|i4|u4|bool|str)\[[^\]]*\]")
_TYPES = ["f32[2, 3]", "f32[]", "f32[*]", "i64[1]", "i8[4]", "u4[3]", "bool[2]", "str[1]", "f16[N]",
          "f32[0]", "f32[0, 5]", "f32[1000000000000]", "f32[9223372036854775807]", "?[2]", "f8e4m3fn[2]"]
_OPS = ["onnx.Add", "onnx.Relu", "onnx.If", "onnx.Loop", "onnx.Conv", "onnx.MatMul", "onnx.Reshape", "onnx.Constant",
        "onnx.Nope", "custom.Scaled", "com.microsoft.QGemm", "onnx.QuantizeLinear", "onnx.Split", "onnx.Scan"]


def mutate_text(text: str, rnd: random.Random) -> str:
    """Line, token and character edits of printed IR (mostly one, so that most cases still parse
    far enough to reach the builder and the verifier)."""
    for _ in range(rnd.choice([1, 1, 1, 2, 3])):
        kind = rnd.choice([0, 1, 2, 3, 4, 5, 6, 6, 7, 7, 8, 8, 9, 9])
        if kind == 8:  # a type for another: keeps the syntax, breaks the semantics
            types = list(_TYPE_TOKEN.finditer(text))
            if types:
                m = rnd.choice(types)
                text = text[:m.start()] + rnd.choice(_TYPES) + text[m.end():]
            continue
        if kind == 9:  # an op for another
            ops = list(re.finditer(r"\b(onnx|ai\.onnx\.ml|custom|com\.microsoft)\.\w+", text))
            if ops:
                m = rnd.choice(ops)
                text = text[:m.start()] + rnd.choice(_OPS) + text[m.end():]
            continue
        if kind <= 1:
            tokens = [(m.start(), m.end()) for m in _TOKEN.finditer(text)]
            if not tokens:
                text += rnd.choice(_SNIPPETS)
                continue
            start, end = rnd.choice(tokens)
            replacement = rnd.choice(_SNIPPETS) if kind == 0 else text[slice(*rnd.choice(tokens))]
            text = text[:start] + replacement + text[end:]
        elif kind == 2:
            tokens = [(m.start(), m.end()) for m in _TOKEN.finditer(text)]
            if tokens:
                start, end = rnd.choice(tokens)
                text = text[:start] + text[end:]
        elif kind == 3:
            lines = text.split("\n")
            i = rnd.randrange(len(lines))
            op = rnd.randrange(3)
            if op == 0:
                del lines[i]
            elif op == 1:
                lines.insert(rnd.randrange(len(lines) + 1), lines[i])
            else:
                j = rnd.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif kind == 4:
            text = text[: rnd.randrange(len(text) + 1)]
        elif kind == 5:
            pos = rnd.randrange(len(text) + 1)
            text = text[:pos] + chr(rnd.choice([rnd.randrange(32, 127), rnd.randrange(0, 0x3000)])) + text[pos:]
        elif kind == 6:
            numbers = list(re.finditer(r"\d+", text))
            if numbers:
                m = rnd.choice(numbers)
                text = text[:m.start()] + str(abs(_random_int(rnd))) + text[m.end():]
        else:
            names = sorted(set(re.findall(r"%[\w.]+", text)))
            if len(names) >= 2:
                a, b = rnd.sample(names, 2)
                text = re.sub(re.escape(a) + r"\b", b, text, count=rnd.randint(1, 3))
    return text


def text_case(rnd: random.Random) -> str:
    return mutate_text(rnd.choice(text_seeds()), rnd)


# -- what a case runs --------------------------------------------------------------------------
def _through(module) -> None:
    """What the CLI does after loading: verify, print, parse the print back, export."""
    import qc
    from qc.ir.verify import verify

    verify(module)
    text = qc.print_ir(module, elide_above=None)
    qc.parse_ir(text)
    qc.export_onnx(module).SerializeToString()


def check_onnx(data: bytes, directory: str) -> None:
    """Import ``data`` as ``directory``/model.onnx (with weights.bin beside it) and use it.
    Raises what qc raises; the caller decides what is allowed."""
    import qc

    path = os.path.join(directory, "model.onnx")
    with open(path, "wb") as fh:
        fh.write(data)
    _through(qc.import_onnx(path))


def check_text(text: str) -> None:
    import qc

    _through(qc.parse_ir(text, filename="fuzz.qir"))


class Timeout(Exception):
    """A case ran longer than allowed (a hang)."""


def run_case(check: Callable[[], None], timeout: float, tally: dict[str, int] | None = None) -> str | None:
    """None if the case passed or failed with a QCError that has a message; otherwise a description.
    ``tally`` counts the outcomes ("ok", "qc error", "failure")."""
    outcome = _outcome(check, timeout)
    if tally is not None:
        key = "ok" if outcome is None else "qc error" if outcome == "" else "failure"
        tally[key] = tally.get(key, 0) + 1
    return outcome or None


def _outcome(check: Callable[[], None], timeout: float) -> str | None:
    """None: passed; "": a QCError with a message; else what went wrong."""
    from qc.errors import QCError

    def on_alarm(signum, frame):
        raise Timeout(f"no answer within {timeout} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        check()
    except QCError as e:
        if not str(e).strip():
            return "QCError without a message"
        return ""
    except Timeout as e:
        return f"hang: {e}"
    except RecursionError:
        return "RecursionError:\n" + traceback.format_exc(limit=-6)
    except Exception:
        return traceback.format_exc(limit=-8)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return None


# -- the long run ------------------------------------------------------------------------------
def _run(target: str, seeds: range, timeout: float, verbose: bool) -> tuple[list[tuple[int, str]], dict[str, int]]:
    """(failures as (seed, description), outcome counts) of the cases ``seeds``."""
    failures, tally = [], {}
    with tempfile.TemporaryDirectory() as directory:
        ext = external_seed(directory)
        for seed in seeds:
            rnd = random.Random(seed)
            if target == "onnx":
                data = mutate_onnx(ext, rnd) if rnd.random() < 0.05 else onnx_case(rnd)
                problem = run_case(functools.partial(check_onnx, data, directory), timeout, tally)
            else:
                text = text_case(rnd)
                problem = run_case(functools.partial(check_text, text), timeout, tally)
            if problem:
                failures.append((seed, problem))
                if verbose:
                    print(f"--- seed {seed}: {problem}", flush=True)
    return failures, tally


def _worker(target: str, seeds: range, timeout: float, verbose: bool, conn) -> None:
    conn.send(_run(target, seeds, timeout, verbose))
    conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", choices=("onnx", "text"), required=True)
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="first case seed (cases use seed, seed+1, ...)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per case before it counts as a hang")
    p.add_argument("--batch", type=int, default=500, help="cases per worker process (a crash loses one batch)")
    p.add_argument("--replay", type=int, metavar="SEED", help="run one case in this process and show its error")
    p.add_argument("-v", "--verbose", action="store_true", help="print each failure as it happens")
    args = p.parse_args(argv)
    if args.replay is not None:
        failures, _ = _run(args.target, range(args.replay, args.replay + 1), args.timeout, verbose=True)
        return 1 if failures else 0

    import multiprocessing as mp

    ctx = mp.get_context("fork")
    start = time.perf_counter()
    failures: list[tuple[int, str]] = []
    tally: dict[str, int] = {}
    crashed: list[tuple[int, int]] = []
    first, end = args.seed, args.seed + args.cases
    for lo in range(first, end, args.batch):
        seeds = range(lo, min(end, lo + args.batch))
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(args.target, seeds, args.timeout, args.verbose, child))
        proc.start()
        child.close()
        try:
            batch_failures, batch_tally = parent.recv()
            failures.extend(batch_failures)
            for k, v in batch_tally.items():
                tally[k] = tally.get(k, 0) + v
        except EOFError:
            crashed.append((seeds.start, seeds.stop))
        proc.join()
        if proc.exitcode:
            crashed.append((seeds.start, seeds.stop)) if (seeds.start, seeds.stop) not in crashed else None
            print(f"worker for seeds {seeds.start}..{seeds.stop - 1} died with exit code {proc.exitcode}", flush=True)
    elapsed = time.perf_counter() - start
    kinds: dict[str, int] = {}
    for _, problem in failures:
        last = problem.strip().splitlines()[-1]
        kinds[last] = kinds.get(last, 0) + 1
    print(f"target {args.target}: {args.cases} cases (seeds {first}..{end - 1}), {len(failures)} failures, "
          f"{len(crashed)} crashed batches, {elapsed:.1f} s ({1e3 * elapsed / max(args.cases, 1):.1f} ms/case)")
    print(f"  outcomes: {tally.get('ok', 0)} imported and went through, {tally.get('qc error', 0)} refused "
          f"with a QCError, {tally.get('failure', 0)} other failures")
    for last, count in sorted(kinds.items(), key=lambda kv: -kv[1])[:20]:
        example = next(s for s, p in failures if p.strip().splitlines()[-1] == last)
        print(f"  {count:5d} x {last}  (e.g. --replay {example})")
    return 1 if failures or crashed else 0


if __name__ == "__main__":
    sys.exit(main())
