"""The project's one error type: a message a user can act on, printed in one line by the CLI."""
from __future__ import annotations

from os import PathLike


class MSRLPluginError(Exception):
    """A problem with the user's input or environment (not a bug in msrl-plugin).

    The message names the file (and row/column where it applies), what is wrong and the fix.
    """

    def __init__(self, problem: str, path: str | PathLike | None = None, fix: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        parts = [f"{self.path}: {problem}" if self.path else problem]
        if fix:
            parts.append(fix[:1].upper() + fix[1:])
        text = ""
        for part in parts:
            part = part.rstrip(". ")
            text += (" " if text else "") + part + ("" if part.endswith(("?", "!")) else ".")
        # One line, always: the CLI prints it as a single ``error: ...`` line.
        super().__init__(" ".join(text.splitlines()))


class BadInputError(MSRLPluginError):
    """An input file or table is missing, malformed or inconsistent."""


class CheckpointError(MSRLPluginError):
    """A saved model cannot be loaded safely (wrong model, feature dim, or an unsafe payload)."""
