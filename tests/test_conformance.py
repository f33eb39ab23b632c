"""Conformance: ONNX -> qc IR (-> text IR) -> ONNX must not change onnxruntime's outputs, bit for bit.

Every onnx node test case and the nine light zoo models; the originals run once per module
and are shared by the ONNX and the text round trips. Cases onnxruntime cannot run in their
original form are skipped by the harness (and counted); every other case must pass.
"""
from __future__ import annotations

import pytest

from qc.testing import conformance as cf


@pytest.fixture(scope="module")
def node_set():
    return [(name, model, feeds, cf.reference(model, feeds)) for name, model, feeds in cf.node_cases()]


@pytest.fixture(scope="module")
def light_set():
    return [(name, model, feeds, cf.reference(model, feeds)) for name, model, feeds in cf.light_models()]


def _via_text(model):
    from qc import export_onnx, import_onnx, parse_ir, print_ir

    return export_onnx(parse_ir(print_ir(import_onnx(model), elide_above=None)))


def _check(cases, via) -> cf.Tally:
    tally = cf.Tally("cases", getattr(via, "__name__", "via"))
    for name, model, feeds, ref in cases:
        tally.results.append(cf.check_roundtrip(name, model, feeds, via, ref=ref))
    return tally


def _failures(tally: cf.Tally) -> str:
    lines = [f"{len(tally.failures)} failures ({tally.summary()}):"]
    lines += [f"  {r.name}: {r.reason}" for r in tally.failures]
    return "\n".join(lines)


def test_node_cases_via_onnx(node_set):
    tally = _check(node_set, cf.via_onnx)
    assert tally.runnable > 1000, tally.summary()
    assert not tally.failures, _failures(tally)


def test_node_cases_via_text(node_set):
    tally = _check(node_set, _via_text)
    assert tally.runnable > 1000, tally.summary()
    assert not tally.failures, _failures(tally)


def test_light_models_via_onnx(light_set):
    tally = _check(light_set, cf.via_onnx)
    assert tally.runnable == 9, tally.summary()
    assert not tally.failures, _failures(tally)


def test_light_models_via_text(light_set):
    tally = _check(light_set, _via_text)
    assert tally.runnable == 9, tally.summary()
    assert not tally.failures, _failures(tally)


def test_harness_sees_a_changed_output(node_set):
    """The harness is not vacuous: a round trip that changes an op is reported as a failure."""
    name, model, feeds, ref = next(c for c in node_set if c[0] == "test_relu")

    def to_neg(m):
        out = cf.via_onnx(m)
        out.graph.node[0].op_type = "Neg"
        return out

    r = cf.check_roundtrip(name, model, feeds, to_neg, ref=ref)
    assert r.status == cf.FAIL and "output 0 'y' differs" in r.reason, r


def test_harness_sees_a_changed_interface(node_set):
    """An output dim name the original did not declare (as onnx shape inference invents) fails."""
    name, model, feeds, ref = next(c for c in node_set if c[0] == "test_unique_length_1")

    def rename_dim(m):
        out = cf.via_onnx(m)
        out.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "unk__0"
        return out

    r = cf.check_roundtrip(name, model, feeds, rename_dim, ref=ref)
    assert r.status == cf.FAIL, r
    assert r.reason == "output 'Y' is tensor(int64) ['unk__0'], expected tensor(int64) [None]", r
