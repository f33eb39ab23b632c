"""The public API in qc/__init__.py is a promise: this test fails when it changes."""
import inspect

import onnx

import qc
from conftest import small_mlp

EXPECTED = {"CompileResult", "ParseError", "QCError", "VerifyError", "__version__", "compile", "export_onnx",
            "import_onnx",
            "parse_ir", "print_ir", "run_pipeline", "save_onnx"}


def test_all_is_exactly_the_promised_api():
    assert set(qc.__all__) == EXPECTED
    for name in qc.__all__:
        assert hasattr(qc, name), name


def test_signatures():
    assert list(inspect.signature(qc.print_ir).parameters)[:2] == ["module", "elide_above"]
    assert inspect.signature(qc.print_ir).parameters["elide_above"].default == 16
    assert list(inspect.signature(qc.parse_ir).parameters)[:2] == ["text", "weights"]
    assert inspect.signature(qc.parse_ir).parameters["weights"].default is None
    assert list(inspect.signature(qc.run_pipeline).parameters)[:2] == ["module", "spec"]


def test_api_round_trip_works_on_path_and_proto(tmp_path):
    path = str(tmp_path / "mlp.onnx")
    proto = small_mlp(path)
    for source in (path, proto):
        module = qc.import_onnx(source)
        assert isinstance(module, qc.ir.Module)
        text = qc.print_ir(module, elide_above=None)
        assert "onnx.MatMul(%x, @w)" in text
        again = qc.parse_ir(text)
        assert qc.print_ir(again, elide_above=None) == text
        out = qc.export_onnx(qc.run_pipeline(again, ""))
        assert isinstance(out, onnx.ModelProto)
        onnx.checker.check_model(out, full_check=True)


def test_elide_above_prints_references():
    module = qc.import_onnx(small_mlp())
    assert 'blob("w", bytes = 48)' in qc.print_ir(module, elide_above=4)
    assert "dense[0.5, -0.25, 1.0]" in qc.print_ir(module, elide_above=4)
