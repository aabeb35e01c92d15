"""Atomic file writes: write to a temporary sibling, fsync, then rename over the target.

An interrupted run therefore never leaves a truncated file that a later run would trust, and a write that fails
(disk full, quota, permissions) is one :class:`MSRLPluginError` naming the file, with the temporary removed.
Temporaries are named ``.<target name>.<8 random chars>[suffix].tmp``; :func:`remove_stale_temporaries` deletes
the ones a killed process left behind.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import MSRLPluginError

# tempfile.mkstemp's random part: 8 characters of [a-z0-9_]
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?\.tmp$")


def _creation_mode(target: Path) -> int:
    """The mode ``open(target, 'w')`` would give: the existing file's, else 0o666 minus the umask."""
    with contextlib.suppress(OSError):
        return target.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_failed(exc: OSError, target: Path) -> MSRLPluginError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space (or choose another output folder) and run again; train continues with --resume"
    else:
        fix = "check that the folder is writable and has free space, then run again"
    return MSRLPluginError(f"cannot write this file ({exc.strerror or exc}); nothing partial was left", target, fix)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed to ``target``.

    An ``OSError`` while writing becomes one :class:`MSRLPluginError` naming ``target``; the temporary is removed
    on every failure (including Ctrl-C), so nothing partial is left.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target.parent, target.name)  # a killed earlier write of this file
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    except OSError as exc:
        raise MSRLPluginError(f"cannot write here ({exc.strerror})", target.parent,
                              "choose a writable results directory") from exc
    tmp_path = Path(tmp)
    try:
        os.close(fd)
        os.chmod(tmp_path, _creation_mode(target))  # mkstemp makes 0600; a results file is made like any other
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except OSError as exc:
        raise _write_failed(exc, target) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def remove_stale_temporaries(folder: str | os.PathLike, target_name: str | None = None) -> list[Path]:
    """Delete the temporaries of :func:`atomic_path` that a killed process left in ``folder`` (only those of
    ``target_name`` when given); returns them."""
    removed = []
    pattern = _TEMPORARY if target_name is None else re.compile(
        rf"^\.{re.escape(target_name)}\.[a-z0-9_]{{8}}(\.[A-Za-z0-9]+)?\.tmp$")
    with contextlib.suppress(OSError):
        for path in Path(folder).iterdir():
            if pattern.match(path.name) and path.is_file() and not path.is_symlink():
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
    return removed


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_torch(target: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically. Saving into an open file makes a full disk an ``OSError`` (a path would give
    torch's ``RuntimeError``), so it is reported like any other failed write."""
    import torch

    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        try:
            torch.save(obj, fh)
        except RuntimeError as exc:  # a signal mid-save: torch's zip writer then fails on closing the file
            stop = _stopping_exception(exc)
            if stop is not None:
                raise stop from None
            raise


def _stopping_exception(exc: BaseException) -> BaseException | None:
    """The SystemExit / KeyboardInterrupt an exception was raised while handling, if any."""
    seen = exc.__context__
    while seen is not None:
        if isinstance(seen, SystemExit | KeyboardInterrupt):
            return seen
        seen = seen.__context__
    return None


def write_csv(target: str | os.PathLike, frame, index: bool = False) -> None:
    """Write a pandas DataFrame atomically, with spreadsheet formulas neutralised (see :func:`csv_safe`)."""
    with atomic_path(target, suffix=".csv") as tmp:
        csv_safe(frame).to_csv(tmp, index=index)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_QUOTED_FORMULA = re.compile(r"^'+[=+\-@\t\r]")


def _neutralise(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    formula = value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.match(value)
    # an id that already starts with quotes before a formula character gets one more, so the prefix is reversible
    return "'" + value if formula or _QUOTED_FORMULA.match(value) else value


def restore_neutralised(value: Any) -> Any:
    """Undo :func:`csv_safe` on a cell read back from a file msrl-plugin wrote (e.g. a case id on resume)."""
    return value[1:] if isinstance(value, str) and _QUOTED_FORMULA.match(value) else value


def csv_safe(frame):
    """A copy of ``frame`` whose *string* cells (index and column names too) that start like a spreadsheet
    formula (``= + - @``, tab, CR) are prefixed with ``'`` (OWASP's CSV-injection advice). Numbers, negative
    ones included, are left as numbers."""
    import pandas as pd

    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or isinstance(out[col].dtype, pd.StringDtype):
            out[col] = out[col].map(_neutralise)
    out.index = out.index.map(_neutralise) if out.index.dtype == object else out.index
    out.columns = out.columns.map(_neutralise) if out.columns.dtype == object else out.columns
    return out
