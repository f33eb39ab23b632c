"""Name -> Value lookup through enclosing graphs (used by the ONNX frontend and the text parser)."""
from __future__ import annotations

from .core import Value


class Scope:
    """The names defined in one graph, falling back to the graphs that enclose it."""

    def __init__(self, parent: Scope | None = None):
        self.parent = parent
        self.names: dict[str, Value] = {}

    def get(self, name: str) -> Value | None:
        s: Scope | None = self
        while s is not None:
            v = s.names.get(name)
            if v is not None:
                return v
            s = s.parent
        return None
