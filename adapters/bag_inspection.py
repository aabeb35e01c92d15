"""``validate``'s view of one bag: its shape, dtype and problems, reported without raising."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import MSRLPluginError
from .bags import (
    _check_header,
    _finish,
    _h5_header,
    _nonfinite_problem,
    _open_h5,
    _Problem,
    _short,
    _squeeze,
    guess_format,
    is_locked,
)
from .safe_torch import load_pt_payload

_SCAN_BYTES = 1 << 24  # NaN scan block size


@dataclass
class BagReport:
    """What :func:`inspect_bag` found; ``problems`` is empty for a usable bag."""

    slide_id: str
    path: Path
    fmt: str
    n_patches: int | None = None
    dim: int | None = None
    dtype: str = ""
    problems: list[str] = field(default_factory=list)
    locked: bool = False

    @property
    def status(self) -> str:
        """``'ok'``, ``'locked'``, ``'empty'`` or ``'error: <first problem>'``."""
        if self.locked:
            return "locked"
        if self.n_patches == 0:
            return "empty"
        return f"error: {self.problems[0]}" if self.problems else "ok"


def _scan_nonfinite(ds: h5py.Dataset, shape: tuple[int, ...]) -> int:
    """Rows with NaN/Inf, read in blocks so memory stays bounded."""
    n, d = shape
    step = max(1, _SCAN_BYTES // max(1, d * ds.dtype.itemsize))
    bad = 0
    for start in range(0, n, step):
        block = ds[0, start:start + step] if len(ds.shape) == 3 else ds[start:start + step]
        with np.errstate(over="ignore", invalid="ignore"):
            block = np.asarray(block, dtype=np.float32)
        bad += int((~np.isfinite(block).all(axis=1)).sum())
    return bad


def _describe(report: BagReport, raw_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = _squeeze(raw_shape)
    if len(shape) == 2 or (len(shape) == 1 and shape[0] == 0):
        report.n_patches = shape[0]
    report.dim = shape[1] if len(shape) == 2 else None
    return shape


def _inspect(report: BagReport, scan_values: bool) -> None:
    path = report.path
    if report.fmt == "pt":
        features, coords = load_pt_payload(path)
        report.dtype = str(features.dtype)
        _describe(report, tuple(features.shape))
        _finish(features, coords)
        return
    if not path.is_file():
        raise _Problem("bag file not found")
    with _open_h5(path) as f:
        key, header = _h5_header(f)
        report.fmt, report.dtype = header.fmt, str(header.dtype)
        shape = _describe(report, header.shape)
        _check_header(header)
        if scan_values:
            n_bad = _scan_nonfinite(f[key], shape)
            if n_bad:
                raise _nonfinite_problem(n_bad, shape[0])


def inspect_bag(path: str | os.PathLike, *, scan_values: bool = True) -> BagReport:
    """Shape, dtype and problems of one bag, without raising (reads headers, plus a NaN scan if asked).

    Locked bags (still being written) are reported as such and not opened.
    """
    path = Path(path)
    report = BagReport(path.stem, path, guess_format(path), locked=is_locked(path))
    if report.locked:
        return report
    try:
        _inspect(report, scan_values)
    except _Problem as p:
        report.problems.append(p.problem)
    except MSRLPluginError as exc:
        report.problems.append(exc.problem)
    except Exception as exc:  # noqa: BLE001 - inspection must report, never raise
        report.problems.append(f"cannot read ({type(exc).__name__}: {_short(exc)})")
    return report
