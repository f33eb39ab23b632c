"""Shared fixtures: the qc CLI as a subprocess, the onnx package's light models, small models."""
from __future__ import annotations

import os
import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto, helper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def run_qc(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``qc ARGS`` in a fresh interpreter; returns the completed process (text output)."""
    return subprocess.run([sys.executable, "-m", "qc.cli", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=600)


@pytest.fixture
def qc_cli():
    return run_qc


@pytest.fixture
def light_model_path():
    return os.path.join(LIGHT_DIR, "light_squeezenet.onnx")


def small_mlp(path: str | None = None) -> onnx.ModelProto:
    """x[2,4] -> MatMul(W 4x3) -> Add(b) -> Relu -> y[2,3], with a 12-element weight."""
    import numpy as np

    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], rng.standard_normal(12).astype("float32").tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], [0.5, -0.25, 1.0])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b"], ["z"], name="add"),
             helper.make_node("Relu", ["z"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if path:
        onnx.save(model, path)
    return model


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the main graph of ``model`` has."""
    import collections

    return dict(collections.Counter(n.op_type for n in model.graph.node))


def run_and_check(model: onnx.ModelProto, spec: str) -> tuple[onnx.ModelProto, list[str]]:
    """Import ``model``, run the pipeline ``spec``, export: the checked ONNX model and the remarks."""
    import qc
    from qc.pm import PassContext

    module = qc.import_onnx(model)
    ctx = PassContext()
    qc.run_pipeline(module, spec, ctx=ctx)
    out = qc.export_onnx(module)
    onnx.checker.check_model(out, full_check=True)
    return out, ctx.remarks


@pytest.fixture(scope="session")
def minilm_fp32(tmp_path_factory):
    """all-MiniLM-L6-v2 as float32 ONNX, built once per test session from its installed package."""
    from qc.models import minilm

    path = tmp_path_factory.mktemp("minilm") / "minilm-l6-fp32.onnx"
    minilm.build_onnx(str(path))
    return path


def c_outputs_portable_and_neon(model: onnx.ModelProto, feeds: dict, tmp_path) -> dict:
    """The C backend's outputs of ``model`` on ``feeds``, built twice for the cortex-a76 target:
    {"portable": host build with the portable kernels, "neon": the target's own build run under
    qemu-aarch64 -cpu cortex-a76}. Needs the aarch64 toolchain (skips or fails as require_tools)."""
    from qc.backends.c import emit_c, prepare, toolchain
    from qc.backends.c.runner import build_model, run_model
    from qc.frontend.onnx import import_onnx
    from qc.targets import load_target

    toolchain.require_tools("aarch64")
    outs = {}
    for name, variant, arch, cpu in (("portable", "portable", "host", None), ("neon", None, "aarch64", "cortex-a76")):
        module = import_onnx(model)
        prepare(module, {})
        report = emit_c(module, tmp_path / name, load_target("cortex-a76"), harness=True,
                        **({"variant": variant} if variant else {}))
        exe = build_model(report, arch, cpu) if cpu else build_model(report, arch)
        outs[name] = run_model(exe, report, feeds, arch, cpu) if cpu else run_model(exe, report, feeds, arch)
    return outs
