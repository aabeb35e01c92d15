"""A pre-training pool: several cohorts' bags and genomics read as one unlabelled cohort.

``msrl-plugin pretrain`` takes the pool as a manifest (CSV/TSV, one cohort per row; paths relative to the
manifest's folder) or as the usual ``--features``/``--clinical``/``--genomics`` flags for a single cohort.
Manifest columns: ``features`` (required), ``genomics``, ``clinical`` (only its ``case_id``/``slide_id``
columns are read: no labels are needed), ``name``, and TRIDENT's ``patch_encoder``, ``mag``, ``patch_size``,
``overlap``, and the clinical table's ``case_col`` / ``slide_col`` (default ``case_id`` / ``slide_id``).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..cohort import SURVIVAL, Cohort
from ..errors import BadInputError
from .loader import bag_source, load_unlabelled_cohort
from .tables import read_table

MANIFEST_COLUMNS = ("features", "genomics", "clinical", "name", "patch_encoder", "mag", "patch_size", "overlap",
                    "case_col", "slide_col")
_NUMBERS = {"mag": float, "patch_size": int, "overlap": int}


@dataclass
class PoolEntry:
    """One cohort of a pool."""

    name: str
    features: Path
    genomics: Path | None = None
    clinical: Path | None = None
    patch_encoder: str | None = None
    mag: float | None = None
    patch_size: int | None = None
    overlap: int | None = None
    case_col: str = "case_id"
    slide_col: str = "slide_id"


def read_pool_manifest(path: str | os.PathLike) -> list[PoolEntry]:
    """The manifest's cohorts, paths resolved against its folder."""
    path = Path(path)
    frame = read_table(path)
    unknown = [c for c in frame.columns if c not in MANIFEST_COLUMNS]
    if "features" not in frame.columns or unknown:
        problem = f"unknown column {unknown[0]!r}" if unknown else "no 'features' column"
        raise BadInputError(f"not a pool manifest: {problem}", path,
                            f"one row per cohort with columns from: {', '.join(MANIFEST_COLUMNS)}")
    if frame.empty:
        raise BadInputError("the pool manifest lists no cohort", path, "add one row per cohort")
    entries = []
    for i, row in frame.iterrows():
        cell = {c: row[c] for c in frame.columns if isinstance(row[c], str) and row[c].strip()}
        if "features" not in cell:
            raise BadInputError(f"row {i + 2} of the pool manifest has no features folder", path,
                                "fill in the features column of every row")
        numbers = {}
        for key, cast in _NUMBERS.items():
            if key in cell:
                try:
                    numbers[key] = cast(float(cell[key]) if cast is int else cell[key])
                except ValueError:
                    raise BadInputError(f"row {i + 2}: {key} {cell[key]!r} is not a number", path,
                                        f"write {key} as a number") from None
        where = {k: path.parent / cell[k] for k in ("features", "genomics", "clinical") if k in cell}
        columns = {k: cell[k] for k in ("case_col", "slide_col") if k in cell}
        entries.append(PoolEntry(cell.get("name", Path(cell["features"]).name), where["features"],
                                 where.get("genomics"), where.get("clinical"), cell.get("patch_encoder"),
                                 **numbers, **columns))
    names = [e.name for e in entries]
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise BadInputError(f"cohort name {dup!r} appears twice in the pool manifest", path,
                            "give each row its own name (or each cohort its own folder)")
    return entries


def load_pool(entries: list[PoolEntry], *, on_empty: str = "error", cache_bytes: int = 2**30,
              cache_dir: str | os.PathLike | None = None, cache_float16: bool = False
              ) -> tuple[Cohort, list[dict[str, Any]]]:
    """One unlabelled cohort over every case of ``entries`` and a summary row per cohort.

    Case and slide ids must be unique across the pool (a case pre-trained on twice would count twice, and
    ``train`` matches pool cases to test cases by id). Genes are matched by column name: the pool keeps those
    every cohort with genomics has (the others are left out with a warning)."""
    cohorts, summary = [], []
    for entry in entries:
        cohort = load_unlabelled_cohort(entry.features, SURVIVAL, entry.clinical, entry.genomics,
                                        patch_encoder=entry.patch_encoder, mag=entry.mag,
                                        patch_size=entry.patch_size, overlap=entry.overlap, on_empty=on_empty,
                                        case_col=entry.case_col, slide_col=entry.slide_col, cache_bytes=0)
        cohorts.append((entry, cohort))
        summary.append({"name": entry.name, "features": str(entry.features), "cases": len(cohort),
                        "with_genomics": int(cohort.has_genomics.sum())})
    _check_unique(cohorts)
    dims = {entry.name: cohort.feature_dim for entry, cohort in cohorts}
    if len(set(dims.values())) > 1:
        shown = ", ".join(f"{n}: {d}" for n, d in dims.items())
        raise BadInputError(f"the pool's cohorts have different feature dims ({shown})",
                            fix="pre-train on bags from one patch encoder (pick it with the patch_encoder column)")
    files = {s: f for _, cohort in cohorts for s, f in cohort.bags.files.items()}
    slides = {c: ss for _, cohort in cohorts for c, ss in cohort.slides.items()}
    cases = pd.concat([cohort.cases for _, cohort in cohorts])
    genomics = _common_genes([(entry.name, cohort.genomics) for entry, cohort in cohorts])
    return Cohort(cases, slides, bag_source(files, cache_bytes, cache_dir, cache_float16), SURVIVAL, genomics,
                  labelled=False), summary


def _check_unique(cohorts: list[tuple[PoolEntry, Cohort]]) -> None:
    for what, ids in (("case", lambda c: c.case_ids), ("slide", lambda c: list(c.bags.files))):
        seen: dict[str, str] = {}
        for entry, cohort in cohorts:
            for i in ids(cohort):
                if i in seen:
                    raise BadInputError(f"{what} {i!r} is in two cohorts of the pool ({seen[i]} and {entry.name})",
                                        fix=f"list each {what} in one cohort only")
                seen[i] = entry.name


def _common_genes(frames: list[tuple[str, pd.DataFrame | None]]) -> pd.DataFrame | None:
    present = [(name, f.rename(columns=str)) for name, f in frames if f is not None and f.shape[1]]
    if not present:
        return None
    common = [c for c in present[0][1].columns if all(c in f.columns for _, f in present[1:])]
    if not common:
        raise BadInputError("the pool's genomic tables share no column name",
                            fix="give every cohort's genomics the same gene names (matched by column name)")
    dropped = sorted({c for _, f in present for c in f.columns} - set(common))
    if dropped:
        warnings.warn(f"{len(dropped)} gene(s) not in every cohort of the pool are left out (e.g. {dropped[0]!r}); "
                      f"the pool keeps the {len(common)} they share", UserWarning, stacklevel=3)
    return pd.concat([f[common] for _, f in present])
