"""Checks on an h5 bag's datasets made before reading any value: where the data lives, and whether it fits.

Both raise :class:`H5Problem` (``problem``, ``fix``), which the bag readers report with the file's path.
"""
from __future__ import annotations

import math

import h5py

REEXTRACT = "Re-run feature extraction for this slide (delete the file first)"


class H5Problem(Exception):
    """A defect found in a bag; callers attach the path (``BadInputError``) or list it (``inspect_bag``)."""

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def refuse_external(f: h5py.File, key: str) -> None:
    """Data must live in the bag file itself: an external link, external storage or a virtual dataset would read
    another file (one outside the features folder, or one chosen by whoever wrote this file)."""
    link = f.get(key, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise H5Problem(f"'{key}' is an external link to {link.filename!r}: its data lives in another file",
                        "Copy the data into the bag file (h5py: f.copy) or pass the linked file itself")
    ds = f[key]
    if isinstance(ds, h5py.Dataset) and (ds.is_virtual or ds.external):
        raise H5Problem(f"'{key}' is a virtual or externally stored dataset: its data lives in other files",
                        "Copy the data into the bag file (h5py: f.copy) or pass the files it refers to")


def check_storage(ds: h5py.Dataset, key: str) -> None:
    """A declared shape the file cannot hold (cut short, unfinished, or forged) is refused without reading it."""
    if not ds.shape or 0 in ds.shape:
        return
    declared = math.prod(ds.shape) * ds.dtype.itemsize
    if ds.chunks is None:
        stored = ds.id.get_storage_size()
        if stored < declared and ds.id.get_create_plist().get_layout() != h5py.h5d.COMPACT:
            raise H5Problem(f"'{key}' declares shape {ds.shape} ({declared:,} bytes) but the file stores only "
                            f"{stored:,} bytes of it (truncated or unfinished)", REEXTRACT)
        return
    needed = math.prod(-(-n // c) for n, c in zip(ds.shape, ds.chunks))
    try:
        allocated = ds.id.get_num_chunks()
    except Exception:  # noqa: BLE001 - HDF5 builds without chunk queries: reading will tell
        return
    if allocated < needed:
        raise H5Problem(f"'{key}' declares shape {ds.shape} but the file holds data for only {allocated:,} of "
                        f"its {needed:,} chunks (truncated or unfinished)", REEXTRACT)
