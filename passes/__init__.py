"""Built-in passes (imported as qc.passes)."""
