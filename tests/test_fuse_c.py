"""The fusions end to end: small BERT- and Llama-shaped ONNX models in the primitive ops of a
Hugging Face export, compiled by the C backend (whose preparation runs the fuse-* passes),
against onnxruntime with graph optimizations off.

Checked: every pattern fused (the report's kernels: one attention call per block, layernorm,
residual add + layernorm,
rmsnorm, gelu, rope, no transpose copy, no softmax or float matmul left for the attention), the
outputs within float32 rounding of onnxruntime's (max error <= TOL * max|ref|; measured 3.4e-7,
the unfused C 2.4e-7), on the host
(portable C) and under qemu-aarch64 -cpu cortex-a76 (NEON kernels), and a fusion never
grows the arena.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qc.backends.c import emit_c, prepare, toolchain
from qc.backends.c.runner import build_model, run_model
from qc.frontend.onnx import import_onnx
from qc.onnx.evaluator import ort_session
from qc.targets import load_target

TOL = 4e-6
L, D, H, HKV, F = 6, 32, 4, 2, 64
HD = D // H


class _G:
    """A tiny graph builder: g.op("Add", [a, b]) -> the output name."""

    def __init__(self, rng: np.random.Generator):
        self.nodes: list = []
        self.inits: list = []
        self.rng = rng
        self.n = 0

    def const(self, value, dtype=np.float32) -> str:
        self.n += 1
        name = f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def weight(self, *shape) -> str:
        return self.const(self.rng.standard_normal(shape) / np.sqrt(shape[0]))

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        self.n += 1
        out = f"t{self.n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{self.n}", **attrs))
        return out

    def layernorm(self, x: str) -> str:
        m = self.op("ReduceMean", [x], axes=[-1], keepdims=1)
        d = self.op("Sub", [x, m])
        v = self.op("ReduceMean", [self.op("Pow", [d, self.const(2.0)])], axes=[-1], keepdims=1)
        n = self.op("Div", [d, self.op("Sqrt", [self.op("Add", [v, self.const(1e-12)])])])
        return self.op("Add", [self.op("Mul", [n, self.const(1 + 0.1 * self.rng.standard_normal(D))]),
                               self.const(0.1 * self.rng.standard_normal(D))])

    def rmsnorm(self, x: str) -> str:
        m = self.op("ReduceMean", [self.op("Pow", [x, self.const(2.0)])], axes=[-1], keepdims=1)
        r = self.op("Sqrt", [self.op("Add", [m, self.const(1e-5)])])
        return self.op("Mul", [self.op("Div", [x, r]), self.const(1 + 0.1 * self.rng.standard_normal(D))])

    def linear(self, x: str, n_in: int, n_out: int, bias: bool = True) -> str:
        y = self.op("MatMul", [x, self.weight(n_in, n_out)])
        return self.op("Add", [y, self.const(0.1 * self.rng.standard_normal(n_out))]) if bias else y

    def heads(self, x: str, heads: int) -> str:
        """[1, L, heads*HD] -> [1, L, heads, HD] (a Reshape, transposed by the caller)."""
        return self.op("Reshape", [x, self.const([1, L, heads, HD], np.int64)])

    def merge(self, ctx: str) -> str:
        t = self.op("Transpose", [ctx], perm=[0, 2, 1, 3])
        return self.op("Reshape", [t, self.const([1, L, D], np.int64)])


def _bert(g: _G, x: str, mask: str) -> str:
    h = g.layernorm(x)
    q = g.op("Transpose", [g.heads(g.linear(h, D, D), H)], perm=[0, 2, 1, 3])
    kt = g.op("Transpose", [g.heads(g.linear(h, D, D), H)], perm=[0, 2, 3, 1])
    v = g.op("Transpose", [g.heads(g.linear(h, D, D), H)], perm=[0, 2, 1, 3])
    s = g.op("Add", [g.op("Div", [g.op("MatMul", [q, kt]), g.const(np.sqrt(HD))]), mask])
    ctx = g.op("MatMul", [g.op("Softmax", [s], axis=-1), v])
    a = g.layernorm(g.op("Add", [g.linear(g.merge(ctx), D, D), h]))
    u = g.linear(a, D, F)
    erf = g.op("Erf", [g.op("Div", [u, g.const(np.sqrt(2.0))])])
    gelu = g.op("Mul", [g.op("Mul", [u, g.op("Add", [erf, g.const(1.0)])]), g.const(0.5)])
    return g.layernorm(g.op("Add", [g.linear(gelu, F, D), a]))


def _rope(g: _G, x: str, cos: str, sin: str) -> str:
    x1, x2 = f"{x}.1", f"{x}.2"
    g.nodes.append(helper.make_node("Split", [x, g.const([HD // 2, HD // 2], np.int64)], [x1, x2], axis=-1))
    r = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [r, sin])])


def _repeat_kv(g: _G, x: str) -> str:
    e = g.op("Expand", [g.op("Unsqueeze", [x, g.const([2], np.int64)]),
                        g.const([1, HKV, H // HKV, L, HD], np.int64)])
    return g.op("Reshape", [e, g.const([1, H, L, HD], np.int64)])


def _llama(g: _G, x: str, causal: str) -> str:
    h = g.rmsnorm(x)
    angles = np.arange(L)[:, None] * 10000.0 ** (-np.arange(HD // 2) / (HD // 2))[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    cos, sin = g.const(np.cos(angles)), g.const(np.sin(angles))
    q = g.op("Transpose", [g.heads(g.linear(h, D, D, False), H)], perm=[0, 2, 1, 3])
    k = g.op("Transpose", [g.heads(g.linear(h, D, HKV * HD, False), HKV)], perm=[0, 2, 1, 3])
    q, k = _rope(g, q, cos, sin), _rope(g, k, cos, sin)
    v = g.op("Transpose", [g.heads(g.linear(h, D, HKV * HD, False), HKV)], perm=[0, 2, 1, 3])
    kt = g.op("Transpose", [_repeat_kv(g, k)], perm=[0, 1, 3, 2])
    s = g.op("Mul", [g.op("MatMul", [q, kt]), g.const(1.0 / np.sqrt(HD))])
    p = g.op("Softmax", [g.op("Add", [s, causal])], axis=-1)
    ctx = g.op("MatMul", [p, _repeat_kv(g, v)])
    x = g.op("Add", [x, g.linear(g.merge(ctx), D, D, False)])
    h = g.rmsnorm(x)
    gate = g.linear(h, D, F, False)
    silu = g.op("Mul", [gate, g.op("Sigmoid", [gate])])
    return g.op("Add", [x, g.linear(g.op("Mul", [silu, g.linear(h, D, F, False)]), F, D, False)])


def _model() -> onnx.ModelProto:
    g = _G(np.random.default_rng(11))
    causal = g.const(np.where(np.tril(np.ones((L, L))) > 0, 0.0, np.finfo(np.float32).min))
    y = _llama(g, _bert(g, "x", "mask"), causal)
    graph = helper.make_graph(
        g.nodes, "fused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, L, D]),
                           helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 1, L])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, L, D])], g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    mask = np.zeros((1, 1, 1, L), np.float32)
    mask[..., -2:] = -10000.0
    return {"x": rng.standard_normal((1, L, D)).astype(np.float32), "mask": mask}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    toolchain.require_tools("host")
    model = _model()
    module = import_onnx(model)
    prepare(module, {})
    out = tmp_path_factory.mktemp("fused") / "c"
    report = emit_c(module, out, load_target("cortex-a76"), harness=True)
    ref = ort_session(model).run(None, _inputs())[0]
    return model, report, ref


def test_every_pattern_fused(compiled):
    _, report, _ = compiled
    k = report["kernels"]
    assert k.get("attention f32") == 2 and k.get("layernorm f32") == 1 and k.get("add+layernorm f32") == 2, k
    assert k.get("rmsnorm f32") == 1 and k.get("add+rmsnorm f32") == 1, k
    assert k.get("gelu f32") == 1 and k.get("silu*mul f32") == 1 and k.get("rope f32") == 2, k
    assert "silu f32" not in k and "mul f32" not in k, k
    assert not any(name.startswith(("transpose", "softmax", "expand", "reducemean", "pow", "erf", "sqrt", "neg"))
                   for name in k), k


def test_constant_causal_mask_is_the_causal_path(compiled, tmp_path):
    """The llama block's constant mask (float32 min above the diagonal) is not passed: causal = 1,
    mask NULL; the BERT block's run-time mask is."""
    model = import_onnx(compiled[0])
    prepare(model, {})
    out = tmp_path / "c"
    emit_c(model, out, load_target("cortex-a76"))
    att = [line.split(",") for line in (out / "model.c").read_text().splitlines() if "qc_attention_f32(" in line]
    # qc_attention_f32(B, H, Hkv, Lq, Lk, d, dv, scale, causal, q, qs, k, ks, v, vs, mask, ...)
    assert sorted((a[8].strip(), a[15].strip() == "NULL") for a in att) == [("0", False), ("1", True)], att


@pytest.mark.parametrize("kind,cpu", [("host", None), ("aarch64", "cortex-a76")])
def test_matches_onnxruntime(compiled, kind, cpu):
    _, report, ref = compiled
    toolchain.require_tools(kind)
    exe = build_model(report, kind, cpu)
    got = run_model(exe, report, _inputs(), kind, cpu)[0]
    err = float(np.abs(got.astype(np.float64) - ref).max())
    assert err <= TOL * float(np.abs(ref).max()), (kind, err)


def test_fusion_does_not_grow_the_arena(compiled, tmp_path):
    model, report, _ = compiled
    from qc.backends.c.prepare import FOLD_ROUND, MAX_ROUNDS
    from qc.pm import PassManager

    module = import_onnx(model)
    PassManager.parse(f"fix-shapes,fixpoint{{max-rounds={MAX_ROUNDS}}}({FOLD_ROUND})").run(module)
    unfused = emit_c(module, tmp_path / "c", load_target("cortex-a76"))
    assert report["arena_bytes"] <= unfused["arena_bytes"], (report["arena_bytes"], unfused["arena_bytes"])
    assert report["weight_bytes"] <= unfused["weight_bytes"] * 1.1
