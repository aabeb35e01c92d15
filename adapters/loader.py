"""Files -> :class:`~msrl_plugin.cohort.Cohort`: bags, clinical table and optional genomics wired together."""
from __future__ import annotations

import collections
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..cohort import CLASSIFICATION, Cohort
from ..errors import BadInputError
from .bag_inspection import inspect_bag
from .bag_source import FileBagSource
from .bags import EMPTY_FIX, read_bag
from .clam import read_clam_dataset_csv
from .layouts import BagIndex, find_bags
from .packed_cache import build_or_update_packed_cache
from .tables import ClinicalTable, normalise_id, read_clinical, read_genomics, read_table, strip_slide_extension

ON_EMPTY = ("error", "skip")
ON_MISSING_BAG = ("error", "skip")
PathLike = str | os.PathLike


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise BadInputError(f"{name}={value!r} is not one of {', '.join(allowed)}")


def _eg(items: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(repr(x) for x in list(items)[:n])
    return shown + (", ..." if len(items) > n else "")


def _empty_slides(table: ClinicalTable, index: BagIndex, on_empty: str) -> set[str]:
    """Slides whose bag has 0 patches. Header defects and mixed feature dims raise at once, before any output
    is written (read_bag gives the file-specific fix); NaN/Inf values are found when a bag is read."""
    wanted = sorted({s for ss in table.slides.values() for s in ss} & set(index.files))
    empty, dims = [], {}
    for slide in wanted:
        report = inspect_bag(index.files[slide].path, scan_values=False)
        if report.n_patches == 0:
            empty.append(slide)
        elif report.problems:
            read_bag(index.files[slide].path, index.files[slide].fmt)  # raises with the file-specific fix
            raise BadInputError(report.problems[0], index.files[slide].path)
        else:
            dims[slide] = report.dim
    _check_one_dim(dims, index)
    if empty and on_empty == "error":
        raise BadInputError(f"{len(empty)} bag(s) are empty (0 patches): {_eg(empty)}",
                            index.files[empty[0]].path, EMPTY_FIX)
    if empty:
        warnings.warn(f"skipping {len(empty)} empty bag(s) (0 patches): {_eg(empty)}", stacklevel=3)
    return set(empty)


def _check_one_dim(dims: dict[str, int], index: BagIndex) -> None:
    """All bags must come from one patch encoder: name a bag whose dim differs from the most common one."""
    counts = collections.Counter(dims.values())
    if len(counts) < 2:
        return
    common, n_common = counts.most_common(1)[0]
    odd = next(s for s, d in dims.items() if d != common)
    seen = ", ".join(f"{d} ({n} bag(s))" for d, n in counts.most_common())
    raise BadInputError(f"feature dim {dims[odd]} differs from {common} of {n_common} other bag(s); "
                        f"dims seen: {seen}; mixed patch encoders?", index.files[odd].path,
                        "Use one patch encoder's features for the whole cohort (--patch-encoder), and "
                        "re-extract or remove the odd bags")


def _attach_bags(table: ClinicalTable, index: BagIndex, on_empty: str,
                 on_missing_bag: str) -> dict[str, list[str]]:
    """Case id -> slides with a usable bag; applies the ``on_empty``/``on_missing_bag`` rules."""
    wanted = {s for ss in table.slides.values() for s in ss}
    extra = sorted(set(index.files) - wanted)
    if extra:
        warnings.warn(f"{len(extra)} bag(s) have no clinical row and are ignored: {_eg(extra)}", stacklevel=3)
    with_bag = {c: [s for s in ss if s in index.files] for c, ss in table.slides.items()}
    missing = {c: [s for s in ss if s not in index.files] for c, ss in table.slides.items()}
    missing = {c: ss for c, ss in missing.items() if ss}
    odd = [(s, *index.unusable[s]) for ss in missing.values() for s in ss if s in index.unusable]
    if odd and on_missing_bag == "error":
        slide, path, what = odd[0]
        raise BadInputError(f"the bag of slide {slide!r} {what}", path,
                            "Put the slide's feature file there, or pass --on-missing-bag skip to drop it")
    if missing:
        locked = {p.stem for p in index.locked} & {s for ss in missing.values() for s in ss}
        note = f"; {len(locked)} of the missing bags are locked (still being written)" if locked else ""
        case, slides = next(iter(missing.items()))
        n_slides = sum(map(len, missing.values()))
        msg = (f"{len(missing)} case(s) have no bag for {n_slides} of their slides, e.g. case {case!r} "
               f"(slide {slides[0]!r}){note}")
        if on_missing_bag == "error":
            raise BadInputError(msg, index.folder or index.root,
                                "Pass --on-missing-bag skip to drop them, or check that the slide ids match "
                                "the bag file names")
        gone = sum(1 for ss in with_bag.values() if not ss)
        warnings.warn(f"{msg}; their missing slides are dropped ({gone} case(s) with no bag left)",
                      stacklevel=3)
    empty = _empty_slides(table, index, on_empty)
    slides = {c: [s for s in ss if s not in empty] for c, ss in with_bag.items()}
    dropped = [c for c, ss in slides.items() if not ss and with_bag[c]]
    if dropped:
        warnings.warn(f"{len(dropped)} case(s) dropped: all their bags are empty ({_eg(dropped)})",
                      stacklevel=3)
    slides = {c: ss for c, ss in slides.items() if ss}
    if not slides:
        raise BadInputError("no case of the clinical table has a usable bag", table.path,
                            "Check that the slide ids match the bag file names in the features folder")
    return slides


def _match_genomics(genomics: PathLike | pd.DataFrame | None, table: ClinicalTable,
                    case_col: str | None) -> pd.DataFrame | None:
    if genomics is None:
        return None
    path = None if isinstance(genomics, pd.DataFrame) else Path(genomics)
    frame = genomics if path is None else read_genomics(path, case_col)
    frame = frame.copy()
    frame.index = frame.index.map(normalise_id)
    known = frame.index.isin(table.cases.index)
    if not known.any():
        raise BadInputError(f"none of the {len(frame)} genomics case ids match a clinical case id "
                            f"(genomics: {_eg(list(frame.index), 2)}; "
                            f"clinical: {_eg(list(table.cases.index), 2)})", path,
                            "Probably the wrong id column: choose it with --genomics-case-col")
    if not known.all():
        unknown = list(frame.index[~known])
        warnings.warn(f"{len(unknown)} genomics row(s) match no clinical case and are ignored: "
                      f"{_eg(unknown)}{_id_spelling_hint(unknown, table.cases.index)}", stacklevel=3)
    frame = frame[known]
    empty = frame.isna() & frame.notna().any(axis=1).to_numpy()[:, None]  # empty cells of rows that have values
    if empty.to_numpy().any():
        i, k = (int(x[0]) for x in empty.to_numpy().nonzero())
        warnings.warn(f"{int(empty.to_numpy().sum())} empty genomics cell(s) in {int(empty.any(axis=1).sum())} "
                      f"row(s) (e.g. case {frame.index[i]!r}, column {frame.columns[k]!r}) are imputed with the "
                      "training cases' mean of that column", stacklevel=3)
    return frame


def _id_spelling_hint(unknown: Sequence[str], clinical: Sequence[str]) -> str:
    """Ids are compared as text; say so when the unmatched ones differ from clinical ids only in leading zeros."""
    stripped = {c.lstrip("0"): c for c in clinical}
    pair = next(((u, stripped[u.lstrip("0")]) for u in unknown if u.lstrip("0") in stripped), None)
    return "" if pair is None else f" (ids are compared as text: genomics {pair[0]!r} is not clinical {pair[1]!r})"


def bag_source(files: dict, cache_bytes: int, cache_dir: PathLike | None, cache_float16: bool):
    """Bags read from their own files (LRU cache of ``cache_bytes``) or through a packed cache in ``cache_dir``."""
    if cache_dir is None:
        return FileBagSource(files, cache_bytes)
    return build_or_update_packed_cache(files, cache_dir, float16=cache_float16)


def load_cohort(features: PathLike | BagIndex, clinical: PathLike | ClinicalTable, task: str,
                genomics: PathLike | pd.DataFrame | None = None, *, patch_encoder: str | None = None,
                mag: float | None = None, patch_size: int | None = None, overlap: int | None = None,
                on_empty: str = "error", on_missing_bag: str = "error", genomics_case_col: str | None = None,
                class_names: Sequence[str] | None = None, cache_bytes: int = 2**30,
                cache_dir: PathLike | None = None, cache_float16: bool = False,
                **clinical_kwargs: Any) -> Cohort:
    """A :class:`Cohort` from a features folder (any layout :func:`find_bags` accepts) and tables.

    ``clinical_kwargs`` go to :func:`read_clinical` (``case_col``, ``time_col``, ``event_col``, ...). A
    clinical slide without a bag is an error (``on_missing_bag='skip'`` drops it), so is an empty bag
    (``on_empty='skip'`` drops it), and so are mixed feature dims; bags without a clinical row and genomics
    rows without a case are ignored with a warning.
    """
    _choice("on_empty", on_empty, ON_EMPTY)
    _choice("on_missing_bag", on_missing_bag, ON_MISSING_BAG)
    index = (features if isinstance(features, BagIndex)
             else find_bags(features, patch_encoder, mag, patch_size, overlap))
    table = (clinical if isinstance(clinical, ClinicalTable)
             else read_clinical(clinical, task, **clinical_kwargs))
    if table.task != task:
        raise BadInputError(f"the clinical table was read for {table.task}, not {task}", table.path)
    slides = _attach_bags(table, index, on_empty, on_missing_bag)
    genomics_frame = _match_genomics(genomics, table, genomics_case_col)
    bags = bag_source({s: index.files[s] for ss in slides.values() for s in ss}, cache_bytes, cache_dir,
                      cache_float16)
    return Cohort(table.cases.loc[list(slides)], slides, bags, task, genomics_frame, class_names)


def load_clam_cohort(data_root_dir: PathLike, csv_path: PathLike, *, label_col: str = "label",
                     genomics: PathLike | pd.DataFrame | None = None, **kwargs: Any) -> Cohort:
    """A classification :class:`Cohort` from CLAM's ``--data_root_dir`` (``h5_files``/``pt_files``) and its
    dataset CSV (``case_id,slide_id,label``); ``kwargs`` as for :func:`load_cohort`."""
    table = read_clam_dataset_csv(csv_path, label_col)
    return load_cohort(data_root_dir, table, CLASSIFICATION, genomics, **kwargs)


def load_unlabelled_cohort(features: PathLike, task: str, clinical: PathLike | None = None,
                           genomics: PathLike | None = None, *, patch_encoder: str | None = None,
                           mag: float | None = None, patch_size: int | None = None, overlap: int | None = None,
                           case_col: str = "case_id", slide_col: str = "slide_id", on_empty: str = "error",
                           cache_bytes: int = 2**30, cache_dir: PathLike | None = None,
                           cache_float16: bool = False) -> Cohort:
    """A cohort to *predict*: no targets needed. Without a clinical table every bag is its own case;
    with one, only its ``case_id``/``slide_id`` columns are read (several slides of a case are concatenated).
    """
    index = find_bags(features, patch_encoder, mag, patch_size, overlap)
    if clinical is None:
        slides = {s: [s] for s in sorted(index.files)}
    else:
        frame = read_table(clinical)
        if case_col not in frame:
            raise BadInputError(f"no {case_col!r} column (columns: {', '.join(map(str, frame.columns))})",
                                clinical, "choose the case id column with --case-col")
        slide_ids = (frame[slide_col] if slide_col in frame else frame[case_col]).map(normalise_id)
        slides = {}
        cases = frame[case_col].map(normalise_id)
        for case_id, slide in zip(cases, slide_ids.map(strip_slide_extension), strict=True):
            slides.setdefault(case_id, []).append(slide)
    table = ClinicalTable(pd.DataFrame(index=pd.Index(list(slides), name="case_id")), slides, task,
                          None if clinical is None else Path(clinical))
    attached = _attach_bags(table, index, on_empty, "error")
    genomics_frame = _match_genomics(genomics, table, None)
    bags = bag_source({s: index.files[s] for ss in attached.values() for s in ss}, cache_bytes, cache_dir,
                      cache_float16)
    return Cohort(table.cases.loc[list(attached)], attached, bags, task, genomics_frame, labelled=False)
