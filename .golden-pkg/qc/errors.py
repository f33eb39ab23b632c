"""User-facing errors (defined with the IR, at the bottom of the layers; re-exported here)."""
from qc.ir.errors import ParseError, QCError, VerifyError

__all__ = ["ParseError", "QCError", "VerifyError"]
