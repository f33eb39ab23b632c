"""qc: a quantizing compiler for ONNX models aimed at Arm edge devices.

The public API (guarded by tests/test_public_api.py; docs/api.md)::

    result = qc.compile("model.onnx", target="cortex-a76", quant="w8a8", calibration="calib.npz")
    result.write("out/")                            # what the target runs: C sources, or a .onnx file
    module = qc.import_onnx("model.onnx")          # or a ModelProto
    text = qc.print_ir(module, elide_above=16)      # text IR; None prints every tensor
    module = qc.parse_ir(text)                      # and back
    module = qc.run_pipeline(module, "fold-constants,dce")
    proto = qc.export_onnx(module)                  # onnx.ModelProto
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import passes as _passes  # noqa: F401  (registers the built-in passes)
from .driver import CompileResult, compile
from .errors import ParseError, QCError, VerifyError
from .frontend.onnx import import_onnx
from .ir.parser import parse_ir
from .ir.printer import print_ir


def export_onnx(module):
    """The module as an ``onnx.ModelProto`` (tensors inline; see ``save_onnx`` for files)."""
    from .backends.onnx import export_onnx as _export

    return _export(module)


def save_onnx(module, path: str, **kwargs) -> None:
    """Write the module to an .onnx file atomically (external data when over 2 GB)."""
    from .backends.onnx import save_onnx as _save

    _save(module, path, **kwargs)


def run_pipeline(module, spec: str, **kwargs):
    """Run a pipeline string such as ``"fold-constants,cse,dce"`` on ``module`` in place."""
    from .pm import PassManager

    return PassManager.parse(spec, **kwargs).run(module)


__all__ = [
    "CompileResult", "ParseError", "QCError", "VerifyError", "__version__", "compile", "export_onnx", "import_onnx",
    "parse_ir", "print_ir", "run_pipeline", "save_onnx",
]
