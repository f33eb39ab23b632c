"""User-facing errors (defined with the IR, at the bottom of the layers; re-exported here)."""
from qc.ir.errors import ParseError, QCError, VerifyError, did_you_mean

__all__ = ["ParseError", "QCError", "VerifyError", "did_you_mean"]
