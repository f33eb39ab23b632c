"""User-facing errors: one clear line, exit code 2 from the CLI."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class QCError(Exception):
    """An error in the user's input or request, reported without a traceback.

    The message reads ``where: what is wrong[; what to do]`` where *where* is a file
    (optionally ``file:line:col``) or a node.
    """

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.where = where
        self.hint = hint
        self.bare_message = message
        text = f"{where}: {message}" if where else message
        if hint:
            text = f"{text}; {hint}"
        super().__init__(text)


class ParseError(QCError):
    """A syntax or semantic error in text IR, located as ``file:line:col``."""

    def __init__(self, message: str, *, file: str, line: int, col: int, hint: str | None = None):
        self.file, self.line, self.col = file, line, col
        super().__init__(message, where=f"{file}:{line}:{col}", hint=hint)


class VerifyError(QCError):
    """The IR breaks an invariant (use-def, order, types)."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"did you mean 'x'? "`` for the closest of ``known`` to a misspelt ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.6)
    if not close:
        return ""
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "? "
