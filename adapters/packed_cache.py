"""A packed feature cache: every bag of a cohort in one append-only file, read back with bounded RAM.

Opening each slide's h5 file on every training step is what makes MIL training IO-bound (CLAM #224; TRIDENT
writes ``features`` in chunks of one row). The first pass copies each bag once into ``<cache_dir>``; later
epochs and runs read it with one ``pread`` per bag.

Layout of ``<cache_dir>``::

    .msrl-plugin-cache      ownership marker: the cache touches only the files it made (see cache_folder)
    index.json              entries keyed by resolved source path: size + mtime_ns of the source, offsets
    features-<token>.bin    a header, then feature segments (float32, or float16 on request) and int64
                            coords, aligned
    .lock                   held while a process updates the cache (several CV folds or ranks may share it)

An entry is valid while its source file keeps the same resolved path, size and mtime_ns; a changed or new
source file is appended as a new segment (its old bytes become waste), and the file is compacted into a new
one when more than half of it is waste. Crash safety: segments are appended and fsynced *before* the index
that points at them is replaced atomically, so an index never points at unwritten bytes; an unindexed tail
left by a crash is cut off by the next update, and entries that a stale index places past the end of the data
file are re-read.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import remove_stale_temporaries, write_json
from ..cohort import BagArrays
from ..errors import BadInputError
from .bags import EMPTY_FIX, EMPTY_PROBLEM, BagFile, guess_format, is_locked, read_bag
from .cache_folder import (
    DATA_NAME,
    HEADER,
    ForeignFile,
    claim_cache_folder,
    create_data_file,
    exclusive,
    fsync,
    new_data_name,
    open_data_for_append,
    open_data_for_reading,
    read_index_text,
    remove_own_data_files,
)

INDEX = "index.json"
LOCK = ".lock"
FORMAT = "msrl-plugin-packed-cache"
VERSION = 2  # 2: data files begin with a header (cache_folder.HEADER)
_ALIGN = 64
_CHECKPOINT_BYTES = 256 << 20  # write the index every 256 MiB, so an interrupted first pass resumes
_COPY_BYTES = 64 << 20  # compaction copies in blocks of this size (bounded RAM)
_FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class PackedEntry:
    """Where one source bag lives in the data file, and which version of the source it holds."""

    source: str  # resolved path of the source bag file
    size: int  # source st_size
    mtime_ns: int  # source st_mtime_ns
    offset: int  # features: n * dim values of ``dtype`` from this byte offset
    n: int
    dim: int
    dtype: str  # "float32" | "float16"
    coords_offset: int | None  # (n, 2) int64 from this byte offset, or None

    @property
    def end(self) -> int:
        """One past the last byte of this entry's segment."""
        feats = self.offset + self.n * self.dim * np.dtype(self.dtype).itemsize
        return feats if self.coords_offset is None else self.coords_offset + self.n * 16

    @property
    def nbytes(self) -> int:
        return _aligned(self.end) - self.offset


@dataclass
class CacheUpdate:
    """What the last :func:`build_or_update_packed_cache` call did."""

    written: list[str] = field(default_factory=list)  # slide ids whose bags were (re)written
    reused: int = 0
    compacted: bool = False


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _identity(path: Path) -> tuple[str, int, int]:
    resolved = path.resolve()
    try:
        st = resolved.stat()
    except OSError:
        raise BadInputError("bag file not found", path, "Check the features path and the slide ids") from None
    return str(resolved), st.st_size, st.st_mtime_ns


# -- reading ---------------------------------------------------------------------------------------
_WIDEN_CHUNK = 32768  # torch's parallel grain size: smaller copies stay on one thread (no OpenMP hand-off)


def _widen(half: np.ndarray) -> np.ndarray:
    """float16 -> float32, exact. torch's vectorised copy is ~20x faster than numpy's ``astype`` here."""
    out = np.empty(half.shape, dtype=np.float32)
    src, dst = torch.from_numpy(half.reshape(-1)), torch.from_numpy(out.reshape(-1))
    for i in range(0, src.numel(), _WIDEN_CHUNK):
        dst[i: i + _WIDEN_CHUNK].copy_(src[i: i + _WIDEN_CHUNK])
    return out


def _pread_into(fd: int, buffer: memoryview, offset: int, lock: threading.Lock) -> None:
    """Fill ``buffer`` from byte ``offset`` of ``fd`` without moving a shared file offset (fork-safe)."""
    while len(buffer):
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [buffer], offset)
        elif hasattr(os, "pread"):
            data = os.pread(fd, len(buffer), offset)
            got = len(data)
            buffer[:got] = data
        else:  # no positional reads (Windows): no fork there either, so a lock suffices
            with lock:
                os.lseek(fd, offset, os.SEEK_SET)
                data = os.read(fd, len(buffer))
            got = len(data)
            buffer[:got] = data
        if got <= 0:
            raise OSError(f"unexpected end of file at byte {offset}")
        buffer, offset = buffer[got:], offset + got


class PackedBagSource:
    """A :class:`~msrl_plugin.cohort.BagSource` over a packed cache (:func:`build_or_update_packed_cache`).

    ``load`` reads one bag with one positional read into a fresh array: features ``(N, D) float32`` (float16
    segments are widened), coords ``(N, 2) int64`` or None. Nothing is kept in memory between calls and the
    data file is not memory-mapped, so resident memory stays at one bag however large the cohort (an
    ``np.memmap`` would keep every page it touched resident, and counted in this process, until the kernel
    evicts it). Safe to share with forked workers (positional reads) and picklable (the file is reopened).
    """

    def __init__(self, data_path: str | os.PathLike, entries: Mapping[str, PackedEntry]):
        self.data_path = Path(data_path)
        self.entries = dict(entries)
        dims = {e.dim for e in self.entries.values()}
        if len(dims) > 1:
            first = next(iter(self.entries.values()))
            odd = next(e for e in self.entries.values() if e.dim != first.dim)
            raise BadInputError(f"feature dim {odd.dim} differs from {first.dim} of the other bags: "
                                "mixed encoders?", odd.source,
                                "Use one patch encoder's features for the whole cohort (--patch-encoder)")
        self._dim = dims.pop() if dims else None
        self.last_update = CacheUpdate()
        self._open()

    def _open(self) -> None:
        self._lock = threading.Lock()
        try:
            self._fd: int | None = open_data_for_reading(self.data_path)
        except (OSError, ForeignFile) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise BadInputError(f"cannot open the packed feature cache ({why})", self.data_path,
                                "Delete the cache folder; it is rebuilt on the next run") from None

    @property
    def feature_dim(self) -> int:
        if self._dim is None:
            raise BadInputError("the packed cache holds no bag", self.data_path,
                                "Pass at least one usable bag")
        return self._dim

    @property
    def slide_ids(self) -> list[str]:
        return list(self.entries)

    @property
    def nbytes(self) -> int:
        """Bytes of features and coords stored for this source's slides."""
        return sum(e.nbytes for e in self.entries.values())

    def load(self, slide_id: str) -> BagArrays:
        """The bag of ``slide_id``: features ``(N, D) float32``, coords ``(N, 2) int64`` or None."""
        entry = self.entries.get(slide_id)
        if entry is None:
            raise BadInputError(f"slide {slide_id!r} is not in the packed feature cache", self.data_path,
                                "Build the cache with every slide of the cohort")
        if self._fd is None:
            self._open()
        stored = np.empty((entry.n, entry.dim), dtype=entry.dtype)
        _pread_into(self._fd, memoryview(stored).cast("B"), entry.offset, self._lock)
        features = stored if entry.dtype == "float32" else _widen(stored)
        coords = None
        if entry.coords_offset is not None:
            coords = np.empty((entry.n, 2), dtype=np.int64)
            _pread_into(self._fd, memoryview(coords).cast("B"), entry.coords_offset, self._lock)
        return BagArrays(features, coords)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict:
        return {"data_path": self.data_path, "entries": self.entries, "_dim": self._dim,
                "last_update": self.last_update}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __len__(self) -> int:
        return len(self.entries)


# -- index -----------------------------------------------------------------------------------------
def _read_index(cache_dir: Path) -> tuple[str, int, dict[str, PackedEntry]]:
    """(data file name, indexed bytes, entries) of the cache; an empty state if it is missing or unreadable.

    It is a cache: a corrupt or foreign index (one naming a data file the cache did not make, a link, a file
    outside the folder) is dropped with a warning and the bags are re-read, never trusted.
    """
    index = cache_dir / INDEX
    if not os.path.lexists(index):
        return new_data_name(), 0, {}
    try:
        raw = json.loads(read_index_text(index))
        if raw.get("format") != FORMAT or raw.get("version") != VERSION:
            raise ValueError("not this cache format or version")
        name, data_bytes = str(raw["data_file"]), int(raw["data_bytes"])
        entries = {k: PackedEntry(**v) for k, v in raw["entries"].items()}
        if not DATA_NAME.match(name):
            raise ValueError(f"data file {name[:60]!r} is not a name the cache generates")
        size = 0
        if os.path.lexists(cache_dir / name):
            fd = open_data_for_reading(cache_dir / name)
            size = os.fstat(fd).st_size
            os.close(fd)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ForeignFile) as exc:
        warnings.warn(f"{index}: ignoring a damaged or foreign cache index ({exc}); the bags are read again",
                      stacklevel=3)
        return new_data_name(), 0, {}
    data_bytes = min(data_bytes, size)
    # a stale index (data file replaced or cut short) must never point past the bytes that exist
    entries = {k: e for k, e in entries.items()
               if e.end <= data_bytes and e.n > 0 and e.offset >= len(HEADER)}
    return name, data_bytes, entries


def _write_index(cache_dir: Path, name: str, data_bytes: int, entries: Mapping[str, PackedEntry]) -> None:
    rows = {k: asdict(e) for k, e in entries.items()}
    write_json(cache_dir / INDEX, {"format": FORMAT, "version": VERSION, "data_file": name,
                                   "data_bytes": data_bytes, "entries": rows})


# -- writing ---------------------------------------------------------------------------------------
def _read_source(bag_file: BagFile, float16: bool) -> tuple[np.ndarray, np.ndarray | None]:
    path = bag_file.path
    if is_locked(path):
        raise BadInputError("bag is still being written (a .lock file sits next to it)", path,
                            "Wait for feature extraction to finish, or leave this slide out of the cache")
    bag = read_bag(path, bag_file.fmt)
    if bag.features.shape[0] == 0:
        raise BadInputError(EMPTY_PROBLEM, path, EMPTY_FIX)
    features = bag.features
    if float16:
        if np.abs(features).max() > _FLOAT16_MAX:
            raise BadInputError(f"feature values up to {np.abs(features).max():.3g} overflow float16", path,
                                "Build the cache without float16")
        features = features.astype(np.float16)
    return np.ascontiguousarray(features), bag.coords


def _pad(fh) -> int:
    """Zero-pad the end of the append-mode file ``fh`` to the alignment; returns the new end."""
    end = fh.seek(0, os.SEEK_END)
    fh.write(b"\0" * (_aligned(end) - end))
    return _aligned(end)


def _append(fh, features: np.ndarray, coords: np.ndarray | None, source: tuple[str, int, int]) -> PackedEntry:
    """Write one bag at the (aligned) end of ``fh``; the caller fsyncs before indexing it.

    ``fh`` is in append mode, so every write lands at the end; alignment is made by padding, never by seeking.
    """
    offset = _pad(fh)
    fh.write(memoryview(features).cast("B"))
    coords_offset = None
    if coords is not None:
        coords_offset = _pad(fh)
        fh.write(memoryview(np.ascontiguousarray(coords, dtype=np.int64)).cast("B"))
    _pad(fh)
    path, size, mtime_ns = source
    return PackedEntry(path, size, mtime_ns, offset, int(features.shape[0]), int(features.shape[1]),
                       str(features.dtype), coords_offset)


def _compact(cache_dir: Path, name: str, entries: dict[str, PackedEntry]) -> tuple[str, int, dict]:
    """Copy the live segments into a new data file, blockwise; returns its name, size and moved entries."""
    new_name = new_data_name()
    moved = {}
    with os.fdopen(open_data_for_reading(cache_dir / name), "rb") as src, \
            create_data_file(cache_dir / new_name) as dst:
        for key, e in sorted(entries.items(), key=lambda kv: kv[1].offset):
            start, length = e.offset, e.nbytes
            new_offset = dst.tell()
            src.seek(start)
            while length:
                block = src.read(min(length, _COPY_BYTES))
                if not block:
                    raise BadInputError("the packed cache's data file is shorter than its index",
                                        cache_dir / name,
                                        "Delete the cache folder; it is rebuilt on the next run")
                dst.write(block)
                length -= len(block)
            shift = new_offset - start
            moved[key] = PackedEntry(e.source, e.size, e.mtime_ns, e.offset + shift, e.n, e.dim, e.dtype,
                                     None if e.coords_offset is None else e.coords_offset + shift)
        fsync(dst)
        size = dst.tell()
    return new_name, size, moved


def _as_bag_file(slide_id: str, f: BagFile | str | os.PathLike) -> BagFile:
    return f if isinstance(f, BagFile) else BagFile(str(slide_id), Path(f), guess_format(f))


def build_or_update_packed_cache(files: Mapping[str, BagFile | str | os.PathLike],
                                 cache_dir: str | os.PathLike, float16: bool = False) -> PackedBagSource:
    """Bring ``cache_dir`` up to date with ``files`` (slide id -> bag file) and return a source over them.

    Bags whose source file (resolved path, size, mtime_ns) and storage dtype are unchanged are reused; others
    are read once and appended. Entries of other source files are kept (several cohorts may share a cache)
    unless that file no longer exists. Pass only usable bags: an empty or locked bag raises
    :class:`BadInputError`, as does any bag :func:`read_bag` refuses. ``float16`` halves the cache (values are
    returned as float32).
    """
    bag_files = {str(s): _as_bag_file(s, f) for s, f in files.items()}
    cache_dir = claim_cache_folder(Path(cache_dir), {f.path.parent for f in bag_files.values()})
    dtype = "float16" if float16 else "float32"
    update = CacheUpdate()
    with exclusive(cache_dir):
        remove_stale_temporaries(cache_dir)  # index writes a killed process left (the lock is ours)
        name, data_bytes, entries = _read_index(cache_dir)
        entries = {k: e for k, e in entries.items() if Path(k).exists()}
        chosen: dict[str, PackedEntry] = {}
        try:
            fh = open_data_for_append(cache_dir / name)
        except (OSError, ForeignFile) as exc:
            warnings.warn(f"{cache_dir / name}: not a data file the cache made ({exc}); starting a new one",
                          stacklevel=2)
            name, data_bytes, entries = new_data_name(), 0, {}
            fh = open_data_for_append(cache_dir / name)
        with fh:
            fh.truncate(max(data_bytes, len(HEADER)))  # drop an unindexed tail a crash may have left
            fh.seek(0, os.SEEK_END)
            pending = 0
            for slide_id, bag_file in bag_files.items():
                source = _identity(bag_file.path)
                old = entries.get(source[0])
                if old is not None and (old.size, old.mtime_ns, old.dtype) == (source[1], source[2], dtype):
                    chosen[slide_id] = old
                    update.reused += 1
                    continue
                features, coords = _read_source(bag_file, float16)
                entry = _append(fh, features, coords, source)
                entries[source[0]] = chosen[slide_id] = entry
                update.written.append(slide_id)
                pending += entry.nbytes
                if pending >= _CHECKPOINT_BYTES:
                    fsync(fh)
                    data_bytes = fh.tell()
                    _write_index(cache_dir, name, data_bytes, entries)
                    pending = 0
            fsync(fh)  # data first, then the index that points at it
            data_bytes = fh.tell()
        live = sum(e.nbytes for e in entries.values())
        waste = data_bytes - len(HEADER) - live
        if waste > 0 and waste > (data_bytes - len(HEADER)) / 2:
            name, data_bytes, moved = _compact(cache_dir, name, entries)
            entries = moved
            chosen = {s: moved[e.source] for s, e in chosen.items()}
            update.compacted = True
        if update.written or update.compacted or not (cache_dir / INDEX).is_file():
            _write_index(cache_dir, name, data_bytes, entries)
        remove_own_data_files(cache_dir, name)
    source = PackedBagSource(cache_dir / name, chosen)
    source.last_update = update
    return source
