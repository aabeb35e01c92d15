"""The packed cache's folder: which files the cache owns, and opening them without following links.

A ``--cache-dir`` may be a shared scratch folder, so the cache touches only files it created:

* the folder carries an ownership marker (``.msrl-plugin-cache``); a folder that holds other files and no
  marker gets the cache in its ``msrl-plugin-cache/`` subfolder, and a folder of bags is refused;
* data files have generated names (``features-<16 hex>.bin``) and begin with a magic header; a file without
  it (a user's file, a planted link target) is never opened for writing, truncated or deleted;
* files are opened with ``O_NOFOLLOW`` and must be regular files with a single link, inside the folder.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import BadInputError

MARKER = ".msrl-plugin-cache"
SUBFOLDER = "msrl-plugin-cache"
HEADER = b"MSRL-PLUGIN-PACKED-CACHE\n".ljust(64, b"\0")  # 64 bytes: segments stay aligned after it
DATA_NAME = re.compile(r"^features-[0-9a-f]{16}\.bin$")
# what a cache folder holds (a cache made before the marker existed holds only these)
_CACHE_NAMES = re.compile(r"^(index\.json|\.lock|\.msrl-plugin-cache|features-[0-9a-f]{16}\.bin|"
                          r"\.index\.json\.[a-z0-9_]{8}\.tmp)$")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)


class ForeignFile(Exception):
    """A file at a cache name that the cache did not create (a link, a user's file, a damaged header)."""


def new_data_name() -> str:
    return f"features-{secrets.token_hex(8)}.bin"


def claim_cache_folder(cache_dir: Path, feature_folders: Iterable[Path]) -> Path:
    """The (resolved) folder the cache lives in, created and marked as the cache's own if needed.

    Raises :class:`BadInputError` when it is a folder of bags (the cache never writes next to them), or is not
    usable.
    """
    folder = cache_dir.resolve()
    if folder in {Path(f).resolve() for f in feature_folders}:
        raise BadInputError("the cache folder is the features folder; the cache never writes next to your bags",
                            cache_dir, "Choose a separate --cache-dir, e.g. a scratch "
                                "folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if _owns(folder):
            return folder
        if all(_CACHE_NAMES.match(p.name) for p in folder.iterdir()):  # new, or a cache from before the marker
            _mark(folder)
            return folder
        sub = folder / SUBFOLDER
        if sub.is_symlink() or (sub.exists() and not sub.is_dir()):
            raise BadInputError(f"{SUBFOLDER} here is not a folder the cache made", sub,
                                "Choose an empty or new --cache-dir")
        sub.mkdir(exist_ok=True)
        if not _owns(sub) and any(sub.iterdir()):
            raise BadInputError("this folder holds files the cache did not make", sub,
                                "Choose an empty or new --cache-dir")
        _mark(sub)
        return sub
    except OSError as exc:
        raise BadInputError(f"cannot use the feature cache folder ({exc.strerror})", cache_dir,
                            "Choose a writable --cache-dir") from None


def _owns(folder: Path) -> bool:
    with contextlib.suppress(OSError):
        return stat.S_ISREG(os.lstat(folder / MARKER).st_mode)
    return False


def _mark(folder: Path) -> None:
    with contextlib.suppress(FileExistsError):
        fd = os.open(folder / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
        with os.fdopen(fd, "w") as fh:
            fh.write("This folder is an msrl-plugin packed feature cache; it may be deleted at any time.\n")


def _check_own(fd: int, path: Path) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        raise ForeignFile(f"{path.name} is not a plain file the cache made")
    if st.st_size < len(HEADER) or _head(fd) != HEADER:
        raise ForeignFile(f"{path.name} does not start with the cache's header")


def _head(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, len(HEADER))


def _open_checked(path: Path, flags: int) -> int:
    """An fd on ``path`` (a data file of the cache), refusing links and files the cache did not make."""
    if not DATA_NAME.match(path.name):
        raise ForeignFile(f"{path.name!r} is not a name the cache generates")
    try:
        fd = os.open(path, flags | _NOFOLLOW | _BINARY)
    except OSError as exc:
        if os.path.islink(path):
            raise ForeignFile(f"{path.name} is a symbolic link") from None
        raise exc
    try:
        _check_own(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_data_for_reading(path: Path) -> int:
    return _open_checked(path, os.O_RDONLY)


def open_data_for_append(path: Path):
    """The data file opened for appending (``"ab+"``); created with its header when it does not exist."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY, 0o666)
        os.write(fd, HEADER)
    except FileExistsError:
        fd = _open_checked(path, os.O_RDWR | os.O_APPEND)
    return os.fdopen(fd, "ab+")


def create_data_file(path: Path):
    """A new data file (``"wb"``, positioned after the header); never an existing one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY, 0o666)
    fh = os.fdopen(fd, "wb")
    fh.write(HEADER)
    return fh


def open_lock(folder: Path):
    try:
        fd = os.open(folder / ".lock", os.O_WRONLY | os.O_CREAT | _NOFOLLOW, 0o666)
    except OSError as exc:
        raise BadInputError(f"cannot open the cache's .lock file ({exc.strerror}; a link is never followed)",
                            folder / ".lock", "Delete that .lock file, or choose another --cache-dir") from None
    return os.fdopen(fd, "a")


def read_index_text(path: Path) -> str:
    """The index file's text, refusing a symbolic link."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    with os.fdopen(fd, "r", encoding="utf-8") as fh:
        return fh.read()


def remove_own_data_files(folder: Path, keep: str) -> None:
    """Delete data files the cache made that no index points at (left by a crash or replaced by a compaction)."""
    for path in folder.iterdir():
        if path.name == keep or not DATA_NAME.match(path.name):
            continue
        try:
            os.close(open_data_for_reading(path))
        except (ForeignFile, OSError):
            continue  # not ours: never deleted
        with contextlib.suppress(OSError):  # still open by a reader on Windows: next time
            path.unlink()


@contextlib.contextmanager
def exclusive(cache_dir: Path) -> Iterator[None]:
    """An advisory inter-process lock on the cache (no-op where ``fcntl`` is unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows: one writer at a time is the user's responsibility
        yield
        return
    with open_lock(cache_dir) as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def fsync(fh) -> None:
    fh.flush()
    os.fsync(fh.fileno())
