"""``msrl-plugin validate``: check every bag of a features folder and say whether it is usable.

:func:`validate_tree` finds every patch-feature folder below a path (each patch encoder of each TRIDENT
coords dir, each CLAM feature dir) and reports each one; :func:`validate_folder` checks one folder.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError
from .bag_inspection import BagReport, inspect_bag
from .bags import guess_format
from .layouts import feature_folder_settings, find_feature_folders, scan_bags
from .paths import missing_problem


@dataclass
class ValidationReport:
    """One :class:`BagReport` per bag (``rows``) and the verdict.

    ``usable``: at least one ok bag, no unreadable non-locked bag, one feature dim across the ok bags.
    """

    root: Path
    layout: str
    rows: list[BagReport]
    usable: bool
    reasons: list[str]
    label: str = ""

    @property
    def dims(self) -> list[int]:
        return sorted({r.dim for r in self.rows if r.status == "ok" and r.dim is not None})

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status.split(":")[0] == status)


def validate_folder(root: str | os.PathLike, patch_encoder: str | None = None, mag: float | None = None,
                    patch_size: int | None = None, overlap: int | None = None) -> ValidationReport:
    """Inspect every bag under ``root`` (bad bags are reported, not raised; a missing root raises)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # locked bags are rows of the report instead
        index = scan_bags(root, patch_encoder, mag, patch_size, overlap)
    rows = [inspect_bag(f.path) for f in index.files.values()]
    for r, f in zip(rows, index.files.values()):
        r.slide_id = f.slide_id
        if r.fmt == guess_format(f.path) and f.fmt != "h5":
            r.fmt = f.fmt
    rows += [inspect_bag(p) for p in index.locked]
    rows += [BagReport(slide, path, guess_format(path), problems=[what]) for slide, (path, what) in
             index.unusable.items()]
    rows.sort(key=lambda r: r.slide_id)
    reasons = []
    n_ok = sum(r.status == "ok" for r in rows)
    n_err = sum(r.status.startswith("error") for r in rows)
    dims = sorted({r.dim for r in rows if r.status == "ok" and r.dim is not None})
    if not n_ok:
        reasons.append("no readable non-empty bag")
    if n_err:
        reasons.append(f"{n_err} bag(s) cannot be read")
    if len(dims) > 1:
        reasons.append(f"feature dims differ {dims} (mixed encoders?)")
    return ValidationReport(Path(root), index.layout, rows, not reasons, reasons)


def format_report(report: ValidationReport) -> str:
    """An aligned table (slide, format, N, D, dtype, status) and a final verdict line."""
    header = ("slide", "format", "N", "D", "dtype", "status")
    body = [(r.slide_id, r.fmt, "" if r.n_patches is None else str(r.n_patches),
             "" if r.dim is None else str(r.dim), r.dtype, r.status) for r in report.rows]
    widths = [max(len(row[k]) for row in [header, *body]) for k in range(len(header) - 1)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths)), row[-1]]).rstrip()
             for row in [header, *body]]
    counts = ", ".join(f"{report.count(s)} {s}" for s in ("ok", "empty", "locked", "error") if report.count(s))
    lines.append(f"{report.root} ({report.layout}): {len(report.rows)} bag(s): {counts or 'none'}")
    notes = []
    if report.count("empty"):
        notes.append("empty bags need --on-empty skip")
    if report.count("locked"):
        notes.append("locked bags are still being written and will be skipped")
    if report.usable:
        dim = report.dims[0]
        lines.append(f"USABLE: feature dim {dim}" + (f" ({'; '.join(notes)})" if notes else ""))
    else:
        lines.append("NOT USABLE: " + "; ".join(report.reasons + notes))
    return "\n".join(lines)


def validate_tree(root: str | os.PathLike, patch_encoder: str | None = None, mag: float | None = None,
                  patch_size: int | None = None, overlap: int | None = None) -> list[ValidationReport]:
    """One report per patch-feature folder at or below ``root`` (a folder above several jobs, a job with
    several encoders, or one features folder); the filters keep only the matching folders."""
    root = Path(root)
    if not root.exists():
        raise BadInputError(missing_problem(root, "folder"), root, "Check the DIRECTORY argument")
    wanted = {"patch_encoder": patch_encoder, "mag": mag, "patch_size": patch_size, "overlap": overlap}
    reports = []
    for folder in find_feature_folders(root):
        settings = feature_folder_settings(folder)
        if any(v is not None and settings.get(k) not in (None, v) for k, v in wanted.items()):
            continue
        report = validate_folder(folder)
        report.label = "." if folder == root else folder.relative_to(root).as_posix()
        reports.append(report)
    if not reports and not find_feature_folders(root):
        return [validate_folder(root, patch_encoder, mag, patch_size, overlap)]  # a plain folder of bags
    if not reports:
        raise BadInputError(f"no feature folder below matches {_filters(wanted)}", root,
                            "Drop or change --patch-encoder/--mag/--patch-size/--overlap")
    return reports


def _filters(wanted: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in wanted.items() if v is not None)


def format_reports(reports: list[ValidationReport], root: str | os.PathLike) -> str:
    """One table per feature folder, then which of them are usable."""
    if len(reports) == 1:
        return format_report(reports[0])
    blocks = [f"== {r.label} ==\n{format_report(r)}" for r in reports]
    usable = [r.label for r in reports if r.usable]
    unusable = [r.label for r in reports if not r.usable]
    verdict = [f"{root}: {len(reports)} feature folders; usable: {', '.join(usable) or 'none'}"]
    if unusable:
        verdict.append(f"not usable: {', '.join(unusable)}")
    return "\n\n".join(blocks) + "\n\n" + "\n".join(verdict)
