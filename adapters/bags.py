"""One slide's patch-feature bag, read from what TRIDENT, CLAM, STAMP or a ``.pt`` pipeline wrote.

Formats (``BagFile.fmt``): ``trident`` (h5 ``features`` + ``coords`` with TRIDENT attributes), ``clam_h5``
(``features`` float32 + ``coords`` int32, no attributes), ``stamp`` (h5 ``feats``), ``pt`` (torch file) and
``h5`` (any other h5 with ``features``). Every problem is a :class:`BadInputError` naming the file and the fix.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..cohort import BagArrays
from ..errors import BadInputError, MSRLPluginError
from .h5_checks import REEXTRACT as _REEXTRACT
from .h5_checks import H5Problem as _Problem  # a defect found in a bag; callers attach the path
from .h5_checks import check_storage, refuse_external
from .safe_torch import load_pt_payload

FORMATS = ("trident", "clam_h5", "stamp", "pt", "h5")
PT_SUFFIXES = (".pt", ".pth")
FEATURE_KEYS = ("features", "feats")
TRIDENT_COORD_ATTRS = frozenset({"patch_size", "level0_magnification", "target_magnification"})
EMPTY_PROBLEM = "empty bag (0 patches)"
EMPTY_FIX = ("Pass --on-empty skip to leave such slides out (TRIDENT writes 0-patch files for slides with "
             "too little tissue), or re-run patching with a lower tissue threshold")


@dataclass
class BagFile:
    """Where a slide's bag lives and which writer made it (one of :data:`FORMATS`)."""

    slide_id: str
    path: Path
    fmt: str


@dataclass
class _Header:
    fmt: str
    shape: tuple[int, ...]
    dtype: np.dtype
    coords_shape: tuple[int, ...] | None = None


def is_locked(path: str | os.PathLike) -> bool:
    """True while a TRIDENT ``<file>.lock`` sibling exists (the output is still being written)."""
    return Path(f"{os.fspath(path)}.lock").exists()


def guess_format(path: str | os.PathLike) -> str:
    """``'pt'`` for torch files, ``'h5'`` otherwise (without opening the file)."""
    return "pt" if Path(path).suffix.lower() in PT_SUFFIXES else "h5"


# -- h5 structure --------------------------------------------------------------------------------
def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, and others for odd files
        try:
            signed = h5py.is_hdf5(path)
        except Exception:  # noqa: BLE001
            signed = False
        if not signed:
            raise _Problem("not an HDF5 file", "Pass the feature .h5 (or .pt) files written by TRIDENT, CLAM "
                           "or STAMP") from None
        raise _Problem(f"HDF5 file is truncated or corrupt ({_short(exc)})", _REEXTRACT) from None


def _short(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _feature_key(f: h5py.File) -> str:
    for key in FEATURE_KEYS:
        if key in f:
            refuse_external(f, key)
            if not isinstance(f[key], h5py.Dataset):
                raise _Problem(f"'{key}' is an HDF5 group, not a dataset")
            return key
    keys = sorted(f.keys())
    if "imgs" in keys:
        raise _Problem("this is a CLAM legacy patch-image file (dataset 'imgs'), not a features file",
                       "Run feature extraction (CLAM extract_features_fp.py or TRIDENT --task feat) and pass "
                       "its output")
    if "coords" in keys:
        raise _Problem("coords/patches file passed where a features file was expected (it holds only 'coords')",
                       "Pass the features folder (TRIDENT <job>/<mag>x_<ps>px_<ov>px_overlap/features_<encoder>/ "
                       "or CLAM <feat_dir>/h5_files/), not patches/")
    raise _Problem(f"no 'features' (TRIDENT/CLAM) or 'feats' (STAMP) dataset; it holds {keys[:10]}",
                   "Pass patch-feature files")


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[1:] if len(shape) == 3 and shape[0] == 1 else shape


def _h5_header(f: h5py.File) -> tuple[str, _Header]:
    key = _feature_key(f)
    ds = f[key]
    if ds.shape is None:
        raise _Problem(f"'{key}' is a null (shapeless) dataset", _REEXTRACT)
    check_storage(ds, key)
    if "coords" in f:
        refuse_external(f, "coords")
    coords = f.get("coords")
    cshape = None
    if isinstance(coords, h5py.Dataset):
        check_storage(coords, "coords")
        if coords.shape is None or coords.dtype.kind not in "iuf":
            raise _Problem(f"'coords' has dtype {coords.dtype} and shape {coords.shape}, expected (N, 2) numbers",
                           _REEXTRACT)
        cshape = tuple(coords.shape)
    if key == "feats":
        fmt = "stamp"
    elif "encoder" in ds.attrs or (cshape is not None and TRIDENT_COORD_ATTRS <= set(coords.attrs.keys())):
        fmt = "trident"
    elif cshape is not None and len(coords.attrs) == 0:
        fmt = "clam_h5"
    else:
        fmt = "h5"
    return key, _Header(fmt, tuple(ds.shape), ds.dtype, cshape)


def _check_header(h: _Header) -> None:
    """Raise :class:`_Problem` for shape/dtype defects visible without reading values."""
    shape = _squeeze(h.shape)
    if len(shape) in (1, 2) and shape[0] == 0:
        raise _Problem(EMPTY_PROBLEM, EMPTY_FIX)
    if h.dtype.kind not in "fiu":
        what = "complex" if h.dtype.kind == "c" else "non-numeric"
        raise _Problem(f"features have {what} dtype {h.dtype}", "Features must be real numbers (float32)")
    if len(shape) != 2:
        hint = " (this looks like a slide-level embedding, e.g. slide_features_*)" if len(shape) == 1 else ""
        raise _Problem(f"features have shape {h.shape}, expected 2-D (N, D) patch features{hint}",
                       "Pass patch-level features (TRIDENT features_<encoder>/)")
    if shape[1] == 0:
        raise _Problem(f"features have shape {h.shape}: feature dim is 0", _REEXTRACT)
    if h.coords_shape is not None:
        cshape = _squeeze(h.coords_shape)
        if len(cshape) != 2 or cshape[1] != 2:
            raise _Problem(f"coords have shape {h.coords_shape}, expected (N, 2)", _REEXTRACT)
        if cshape[0] != shape[0]:
            raise _Problem(f"coords have {cshape[0]} rows but features have {shape[0]}", _REEXTRACT)


def _nonfinite_problem(n_bad: int, n: int) -> _Problem:
    return _Problem(f"features contain NaN/Inf in {n_bad} of {n} rows",
                    "Re-extract this slide's features (NaN/Inf usually means a corrupt tile or float16 overflow)")


def detect_format(path: str | os.PathLike) -> str | None:
    """The writer of a bag judged from its content (:data:`FORMATS`), or None if it is not a readable bag."""
    path = Path(path)
    if guess_format(path) == "pt":
        return "pt"
    try:
        with _open_h5(path) as f:
            return _h5_header(f)[1].fmt
    except Exception:  # noqa: BLE001 - unreadable or not a bag: the reader reports it later
        return None


# -- reading ---------------------------------------------------------------------------------------
def _finish(features: np.ndarray, coords: np.ndarray | None) -> BagArrays:
    """Squeeze ``(1, N, D)``, cast to float32/int64 and check values; raises :class:`_Problem`."""
    h = _Header("", tuple(features.shape), features.dtype,
                None if coords is None else tuple(coords.shape))
    if coords is not None and coords.dtype.kind not in "iuf":
        raise _Problem(f"coords have non-numeric dtype {coords.dtype}", _REEXTRACT)
    _check_header(h)
    _warn_integer_features(features.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        feats = np.ascontiguousarray(features.reshape(_squeeze(features.shape)), dtype=np.float32)
    bad = ~np.isfinite(feats).all(axis=1)
    if bad.any():
        raise _nonfinite_problem(int(bad.sum()), len(feats))
    if coords is not None:
        coords = coords.reshape(_squeeze(coords.shape))
        if coords.dtype.kind == "f":
            if not np.isfinite(coords).all():
                raise _Problem("coords contain NaN/Inf", _REEXTRACT)
            coords = np.rint(coords)
        coords = np.ascontiguousarray(coords, dtype=np.int64)
    return BagArrays(feats, coords)


_WARNED_DTYPES: set[str] = set()


def _warn_integer_features(dtype: np.dtype) -> None:
    """Integer features are unusual (a quantised or mislabelled export): say once per dtype that they are cast."""
    if dtype.kind in "iu" and str(dtype) not in _WARNED_DTYPES:
        _WARNED_DTYPES.add(str(dtype))
        warnings.warn(f"{dtype} features are cast to float32 (integer patch features are unusual: check the "
                      "feature export)", stacklevel=4)


def _read_dataset(ds: h5py.Dataset) -> np.ndarray:
    try:
        return np.asarray(ds[()])
    except Exception as exc:  # noqa: BLE001 - a truncated file fails here, with various types
        raise _Problem(f"cannot read dataset '{ds.name.lstrip('/')}' (truncated or corrupt: {_short(exc)})",
                       _REEXTRACT) from None


def _read(path: Path, fmt: str | None) -> BagArrays:
    if not path.is_file():
        raise _Problem("bag file not found" if not path.exists() else "not a file",
                       "Check the features path and the slide ids")
    if (fmt or guess_format(path)) == "pt":
        try:
            features, coords = load_pt_payload(path)
        except MSRLPluginError as exc:
            raise _Problem(exc.problem, exc.fix) from None
        return _finish(features, coords)
    with _open_h5(path) as f:
        key, header = _h5_header(f)
        _check_header(header)
        coords = _read_dataset(f["coords"]) if header.coords_shape is not None else None
        return _finish(_read_dataset(f[key]), coords)


def read_bag(path: str | os.PathLike, fmt: str | None = None) -> BagArrays:
    """Features ``(N, D) float32`` and coords ``(N, 2) int64`` (or None) of one bag.

    ``fmt='pt'`` (or a ``.pt``/``.pth`` suffix) reads a torch file, anything else HDF5. Raises
    :class:`BadInputError` for a missing, unreadable, empty (0-patch) or malformed bag.
    """
    path = Path(path)
    try:
        return _read(path, fmt)
    except _Problem as p:
        raise BadInputError(p.problem, path, p.fix) from None
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise BadInputError(f"cannot read this bag ({type(exc).__name__}: {_short(exc)})", path,
                            _REEXTRACT) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()] if value.ndim else _jsonable(value.item())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


_UNREADABLE = object()


def _attr(ds: h5py.Dataset, name: str) -> Any:
    try:
        return _jsonable(ds.attrs[name])
    except Exception:  # noqa: BLE001 - attribute types h5py cannot decode are skipped
        return _UNREADABLE


def load_pt_bag(path: str | os.PathLike) -> np.ndarray:
    """A ``.pt`` bag's features as checked ``(N, D) float32``, loaded without running pickled code."""
    return read_bag(path, fmt="pt").features


def read_bag_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The attributes of an h5 bag's ``coords`` (``patch_size_level0``, ...) as JSON-able Python values.

    ``{}`` for ``.pt`` bags and for h5 files without coords or attributes. Unreadable attributes are skipped.
    """
    path = Path(path)
    if guess_format(path) == "pt":
        return {}
    try:
        with _open_h5(path) as f:
            coords = f.get("coords")
            if not isinstance(coords, h5py.Dataset):
                return {}
            return {name: value for name in coords.attrs if (value := _attr(coords, name)) is not _UNREADABLE}
    except _Problem as p:
        raise BadInputError(p.problem, path, p.fix) from None
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise BadInputError(f"cannot read the coords attributes ({_short(exc)})", path, _REEXTRACT) from None
