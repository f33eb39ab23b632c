"""Atomic file writes (defined with the IR, at the bottom of the layers; re-exported here)."""
from qc.ir.fileio import atomic_write

__all__ = ["atomic_write"]
