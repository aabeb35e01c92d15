"""Atomic file writes: write to a temporary sibling, fsync, then rename over the target.

An interrupted run therefore never leaves a truncated file that a later run would trust, and a write that fails
(disk full, quota, permissions) is one :class:`MSRLPluginError` naming the file, with the temporary removed.
Temporaries are named ``.<target name>.<pid>-<host>.<8 random chars>[suffix].tmp`` (the target name shortened
with a hash when the whole would pass the file system's 255-byte name limit): :func:`remove_stale_temporaries`
deletes only those a dead process left behind, never the live temporary of another process writing into the same
folder (fold jobs side by side). The writer holds no lock of its own on the temporary: HDF5 locks the files it
writes itself and would refuse one already locked; a temporary some process does hold a lock on is kept.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import MSRLPluginError
from .locking import is_locked_by_another

#: the longest file name (bytes) most file systems take (ext4, XFS, btrfs, APFS, NTFS in UTF-16 units)
NAME_MAX = 255
#: a temporary whose writer cannot be asked (another machine, a reused pid) counts as stale after this long
#: without a write (a live write touches it continuously and lasts seconds to minutes)
STALE_AFTER_S = 3600.0
#: which machine wrote a temporary: results folders on a shared file system see several hosts' pids
_HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:6]
#: bytes a temporary adds to its stem: "." stem "." pid (<= 10 digits) "-" host "." random(8) suffix ".tmp"
_OVERHEAD = 1 + 1 + 10 + 1 + len(_HOST) + 1 + 8 + 4
# tempfile.mkstemp's random part: 8 characters of [a-z0-9_]
_OWNED = re.compile(r"^\.(?P<stem>.+)\.(?P<pid>\d{1,10})-(?P<host>[0-9a-f]{6})\.[a-z0-9_]{8}"
                    r"(?P<suffix>\.[A-Za-z0-9]+)?\.tmp$")
# what earlier versions made (no owner): no process of this version makes them, so they are always stale
_LEGACY = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}(?P<suffix>\.[A-Za-z0-9]+)?\.tmp$")


def name_limit(folder: Path) -> int:
    """The file system's name limit in bytes for ``folder`` (255 when it cannot be asked)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return min(NAME_MAX, int(os.pathconf(folder, "PC_NAME_MAX")))
    return NAME_MAX


def check_name_length(target: str | os.PathLike) -> None:
    """Refuse, before anything is written, an output name the file system cannot hold."""
    target = Path(target)
    size = len(os.fsencode(target.name))
    folder = next((p for p in (target.parent, *target.parent.parents) if p.is_dir()), Path("."))
    limit = name_limit(folder)
    if size > limit:
        raise MSRLPluginError(f"the file name is {size} bytes long, over the file system's limit of {limit} "
                              "bytes; nothing was written", target, "choose a shorter output name (e.g. --out)")


def temporary_stem(target_name: str, suffix: str = "") -> str:
    """The part of a temporary's name taken from its target: the whole name when the temporary stays within
    :data:`NAME_MAX` bytes, else its longest UTF-8-whole prefix that does, with ``~`` and a hash of the name."""
    budget = NAME_MAX - _OVERHEAD - len(os.fsencode(suffix))
    raw = os.fsencode(target_name)
    if len(raw) <= budget:
        return target_name
    digest = hashlib.sha1(raw).hexdigest()[:8]
    head = raw[: budget - len(digest) - 1].decode("utf-8", "ignore")  # never half a character
    return f"{head}~{digest}"


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
    check_name_length(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target.parent, target.name)  # a killed earlier write of this file
        stem = temporary_stem(target.name, suffix)
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.{os.getpid()}-{_HOST}.", suffix=suffix + ".tmp",
                                   dir=target.parent)
    except OSError as exc:
        raise MSRLPluginError(f"cannot write here ({exc.strerror})", target.parent,
                              "choose a writable results directory") from exc
    tmp_path = Path(tmp)
    try:
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
        os.close(fd)


@contextlib.contextmanager
def atomic_paths(*targets: tuple[str | os.PathLike, str]) -> Iterator[list[Path]]:
    """Temporaries for several files that belong together (``(target, suffix)`` pairs), renamed into place
    only after every one was written: a failure while writing any leaves none of them. Every name is checked
    against the file system's limit before anything is written."""
    for target, _ in targets:
        check_name_length(target)
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_path(target, suffix)) for target, suffix in targets]


def remove_stale_temporaries(folder: str | os.PathLike, target_name: str | None = None) -> list[Path]:
    """Delete the temporaries of :func:`atomic_path` in ``folder`` (only those of ``target_name`` when given)
    that their writer left behind; returns them.

    A temporary is stale when no process holds a lock on it and its writer process (on this machine) is gone,
    or, for another machine's (or a reused pid's), when it was last written :data:`STALE_AFTER_S` ago. Another
    live process's temporary is never touched.
    """
    removed = []
    with contextlib.suppress(OSError):
        for path in Path(folder).iterdir():
            match = _OWNED.match(path.name) or _LEGACY.match(path.name)
            if match is None or (target_name is not None and match["stem"] != temporary_stem(
                    target_name, match["suffix"] or "")):
                continue
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink() and _is_stale(path, match):
                    path.unlink()
                    removed.append(path)
    return removed


def _is_stale(path: Path, match: re.Match) -> bool:
    if "pid" not in match.groupdict():
        return True  # a temporary of an earlier version: no process of this version writes such a name
    if is_locked_by_another(path):
        return False
    pid, old = int(match["pid"]), time.time() - path.stat().st_mtime > STALE_AFTER_S
    if match["host"] != _HOST:
        return old
    if pid == os.getpid():
        return False  # this process: its writes remove their own temporaries
    return old or not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # pragma: no cover - os.kill(pid, 0) would end the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


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
