"""Fingerprints of a run's inputs, and what differs between two of them.

The tables are hashed in full (SHA-256; they are small). The bags by their listing: the SHA-256 of the sorted
``slide id, bytes, mtime_ns`` lines, with the listing itself kept so a difference can be named (``bags: 1
changed (e.g. 'slide_3'), 2 added``); ``hash_contents`` adds a SHA-256 of every bag file, which then decides
whether a bag changed (a copied data set keeps its contents but not its times).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .errors import MSRLPluginError

#: columns of each entry of ``inputs.bags.files``
FILE_COLUMNS = ["bytes", "mtime_ns", "sha256"]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def table_fingerprint(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """``{"path", "bytes", "sha256"}`` of a table file (tables are small: always hashed in full)."""
    if path is None:
        return None
    path = Path(path)
    try:
        return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    except OSError as exc:
        raise MSRLPluginError(f"cannot read this table to fingerprint it ({exc.strerror})", path) from None


def bag_files(cohort) -> dict[str, Path] | None:
    """Slide id -> bag file of every slide of ``cohort`` (None when its bags are not files, e.g. in memory)."""
    source = cohort.bags
    if hasattr(source, "files"):  # FileBagSource
        paths = {sid: Path(getattr(f, "path", f)) for sid, f in source.files.items()}
    elif hasattr(source, "entries"):  # PackedBagSource: the source files it was built from
        paths = {sid: Path(e.source) for sid, e in source.entries.items()}
    else:
        return None
    slides = [s for ss in cohort.slides.values() for s in ss]
    return {s: paths[s] for s in sorted(slides) if s in paths}


def bags_fingerprint(cohort, hash_contents: bool = False) -> dict[str, Any]:
    """The bags' fingerprint: count, SHA-256 of the sorted ``slide\\tbytes\\tmtime_ns`` listing and the listing
    itself (``files``: slide -> ``[bytes, mtime_ns, sha256 or null]``); ``hash_contents`` hashes every file."""
    files = bag_files(cohort)
    if files is None:
        return {"count": sum(len(s) for s in cohort.slides.values()), "source": "in memory"}
    listing, contents = {}, hashlib.sha256()
    for slide, path in files.items():
        try:
            st = path.stat()
            digest = sha256_file(path) if hash_contents else None
        except OSError as exc:
            raise MSRLPluginError(f"cannot read this bag to fingerprint it ({exc.strerror})", path) from None
        listing[slide] = [st.st_size, st.st_mtime_ns, digest]
        if digest:
            contents.update(f"{slide}\t{digest}\n".encode())
    lines = "".join(f"{s}\t{size}\t{mtime}\n" for s, (size, mtime, _) in listing.items())
    return {"count": len(listing), "listing_sha256": hashlib.sha256(lines.encode()).hexdigest(),
            "contents_sha256": contents.hexdigest() if hash_contents else None,
            "files_columns": FILE_COLUMNS, "files": listing}


def input_fingerprints(cohort, features: str | os.PathLike | None = None,
                       tables: dict[str, str | os.PathLike | None] | None = None,
                       hash_contents: bool = False) -> dict[str, Any]:
    """``{"features": path, "bags": ..., "tables": {name: ...}}`` of a cohort and the tables it was read from."""
    return {"features": None if features is None else str(Path(features).resolve()),
            "bags": bags_fingerprint(cohort, hash_contents),
            "tables": {name: table_fingerprint(p) for name, p in (tables or {}).items() if p is not None}}


def _short(digest: str | None) -> str:
    return (digest or "none")[:12]


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What differs between two :func:`input_fingerprints` (one phrase), or None when they match.

    A bag counts as changed when its content hashes differ (both recorded), else when its size or mtime
    differs; a table when its SHA-256 differs. Paths alone do not count (a moved data set is the same)."""
    changes = []
    old_tables, new_tables = old.get("tables") or {}, new.get("tables") or {}
    for name in sorted(set(old_tables) | set(new_tables)):
        before, after = old_tables.get(name), new_tables.get(name)
        if before is None or after is None:
            changes.append(f"{name} table {'added' if before is None else 'removed'}")
        elif before.get("sha256") != after.get("sha256"):
            changes.append(f"{name} table changed (sha256 {_short(before.get('sha256'))} -> "
                           f"{_short(after.get('sha256'))})")
    bags = _bag_changes(old.get("bags") or {}, new.get("bags") or {})
    if bags:
        changes.append(bags)
    return "; ".join(changes) or None


def _bag_changes(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    before, after = old.get("files"), new.get("files")
    if before is None or after is None:  # bags in memory, or a record without a listing: compare what there is
        keys = ("count", "listing_sha256", "contents_sha256")
        same = all(old.get(k) == new.get(k) for k in keys if old.get(k) is not None and new.get(k) is not None)
        return None if same else f"bags changed ({old.get('count')} -> {new.get('count')} bags)"
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(s for s in set(before) & set(after) if _file_changed(before[s], after[s]))
    if not (added or removed or changed):
        return None
    parts = [f"{len(v)} {what} (e.g. {v[0]!r})" for what, v in
             (("changed", changed), ("added", added), ("removed", removed)) if v]
    return "bags: " + ", ".join(parts)


def _file_changed(before: list, after: list) -> bool:
    old_hash, new_hash = (before[2:3] or [None])[0], (after[2:3] or [None])[0]
    if old_hash and new_hash:
        return old_hash != new_hash
    return list(before[:2]) != list(after[:2])
