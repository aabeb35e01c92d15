"""Why a path that does not resolve is missing: gone, a dangling symbolic link, or a link loop."""
from __future__ import annotations

import errno
import os
from pathlib import Path


def missing_problem(path: Path, what: str) -> str:
    """``"<what> not found"``, or what is really wrong when ``path`` is a symbolic link that goes nowhere."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return (f"{what} is a symbolic link loop (following its links leads back to itself, "
                    "so it never reaches a folder)")
        if path.is_symlink():
            return f"{what} is a symbolic link to a missing target ({os.readlink(path)})"
    return f"{what} not found"
