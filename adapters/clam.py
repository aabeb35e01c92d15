"""CLAM dataset CSVs and CLAM / SurvPath / MCAT split files.

Split files come in two forms: ragged columns (header ``,train,val,test`` or ``,train,val``; an unnamed index
column; ids padded with empty cells) and CLAM's ``splits_<k>_bool.csv`` (index = slide id, True/False columns).
Cells may be slide ids (CLAM) or case ids (SurvPath/MCAT); :func:`resolve_split_ids` maps both to case ids.
"""
from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pandas as pd

from ..cohort import CLASSIFICATION
from ..errors import BadInputError
from .tables import ClinicalTable, normalise_id, read_clinical, strip_slide_extension

SPLIT_NAMES = ("train", "val", "test")
_SPLIT_FILE = re.compile(r"^splits_(\d+)(_bool)?\.csv$")
_SPLIT_FIX = "Pass a CLAM splits_<k>.csv (header ',train,val,test') or a SurvPath/MCAT one (',train,val')"


def read_clam_dataset_csv(path: str | os.PathLike, label_col: str = "label") -> ClinicalTable:
    """A CLAM dataset CSV (``case_id,slide_id,label``) as a classification :class:`ClinicalTable`."""
    return read_clinical(path, CLASSIFICATION, case_col="case_id", slide_col="slide_id", label_col=label_col)


def read_split_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """Ids per split (keys among ``train``, ``val``, ``test``), as strings in file order."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError("split file not found", path, "Check --split-dir")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as exc:  # noqa: BLE001 - any parser/codec/OS error: unreadable
        raise BadInputError(f"cannot read this split file ({type(exc).__name__})", path, _SPLIT_FIX) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    cols = [c for c in frame.columns if c in SPLIT_NAMES]
    if not cols:
        raise BadInputError(f"no train/val/test column (header: {list(frame.columns)[:10]})", path, _SPLIT_FIX)
    index_col = frame.columns[0] if frame.columns[0] not in SPLIT_NAMES else None
    cells = frame[cols].stack().str.strip()
    if index_col is not None and len(cells) and cells.str.lower().isin(("true", "false")).all():
        ids = frame[index_col].str.strip()
        if (ids.isna() | (ids == "")).any():
            raise BadInputError("a row of this True/False split file has no id", path, _SPLIT_FIX)
        return {c: [normalise_id(v) for v in ids[frame[c].str.strip().str.lower() == "true"]] for c in cols}
    return {c: [normalise_id(v) for v in frame[c].dropna().str.strip() if v] for c in cols}


def find_split_files(split_dir: str | os.PathLike) -> list[Path]:
    """``splits_<k>.csv`` files sorted by ``k`` (the ragged form preferred over ``_bool``; descriptors ignored)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise BadInputError("split folder not found", split_dir, "Check --split-dir")
    by_k: dict[int, Path] = {}
    for path in split_dir.iterdir():
        m = _SPLIT_FILE.match(path.name)
        if m is None or not path.is_file():
            continue
        k = int(m[1])
        if k not in by_k or (m[2] is None and by_k[k].name.endswith("_bool.csv")):
            by_k[k] = path
    if not by_k:
        raise BadInputError("no splits_<k>.csv files in this folder", split_dir, _SPLIT_FIX)
    return [by_k[k] for k in sorted(by_k)]


def resolve_split_ids(split: dict[str, list[str]], clinical: ClinicalTable,
                      split_path: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Case ids per split: cells that are slide ids are mapped to their case (deduplicated, order kept).

    Raises :class:`BadInputError` for an id the clinical table does not know, or a case in two splits.
    """
    known = set(clinical.cases.index)
    case_of = clinical.case_of_slide()
    out: dict[str, list[str]] = {}
    for name, ids in split.items():
        cases: dict[str, None] = {}
        for raw in ids:
            sid = str(raw).strip()
            case = sid if sid in known else case_of.get(sid, case_of.get(strip_slide_extension(sid)))
            if case is None:
                raise BadInputError(f"the {name} split lists {sid!r}, which is neither a case id nor a slide id "
                                    "of the clinical table", split_path,
                                    "Use split files made for this clinical table")
            cases[case] = None
        out[name] = list(cases)
    for a, b in itertools.combinations(out, 2):
        in_b = set(out[b])
        both = [c for c in out[a] if c in in_b]
        if both:
            raise BadInputError(f"case {both[0]!r} is in both the {a} and the {b} split ({len(both)} such cases)",
                                split_path, "Make patient-level splits: all slides of a case in one split")
    return out
