"""Advisory locks for files that several processes update together (fold jobs sharing one results folder).

The lock is taken on the folder itself (``flock`` on its descriptor): no lock file is made, so nothing is left
behind by a killed process and a user's folder listing does not change. Where ``fcntl`` is missing (Windows) the
lock is a no-op, which is what the code did before it existed.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (blocking) for the ``with`` block."""
    fd = None
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fd = os.open(Path(folder), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if fd is not None:
            with contextlib.suppress(OSError):  # a file system without flock: proceed as before
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def is_locked_by_another(path: str | os.PathLike) -> bool:
    """True when some process holds a ``flock`` on ``path`` (False when it is free, gone, or cannot be told)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False
