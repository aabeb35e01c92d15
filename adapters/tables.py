"""Clinical and genomics tables (SurvPath / MCAT / PANTHER / CLAM style CSVs) read into checked frames.

Rows are reported as ``data row i (line i+1)``: ``i`` counts data rows from 1, the line number counts the
header too (what a spreadsheet shows).
"""
from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..cohort import CLASSIFICATION, SURVIVAL, TASKS
from ..errors import BadInputError
from .paths import missing_problem

SLIDE_EXTENSIONS = (".ome.tiff", ".ome.tif", ".svs", ".tiff", ".tif", ".ndpi", ".mrxs", ".svslide", ".scn",
                    ".czi", ".vsi", ".bif")
_UNNAMED = re.compile(r"^Unnamed: \d+$")
_TABLE_FIX = "Save it as a UTF-8 CSV or TSV with one header row"


@dataclass
class ClinicalTable:
    """Per-case targets and the slides of each case.

    ``cases``: index ``case_id``; survival: ``time`` float (> 0) and ``censorship`` int (1 = censored);
    classification: ``label`` str; ``site`` when the table has it. ``slides``: case id -> slide ids
    (file stems).
    """

    cases: pd.DataFrame
    slides: dict[str, list[str]]
    task: str = SURVIVAL
    path: Path | None = None

    def case_of_slide(self) -> dict[str, str]:
        """Slide id -> case id."""
        return {s: c for c, slides in self.slides.items() for s in slides}


def where(i: int) -> str:
    """Human row reference for the ``i``-th (0-based) data row."""
    return f"data row {i + 1} (line {i + 2})"


def strip_slide_extension(slide_id: str) -> str:
    """``'TCGA-x.svs'`` -> ``'TCGA-x'``: removes a known slide-file suffix (a suffix, unlike ``rstrip``)."""
    low = slide_id.lower()
    for ext in SLIDE_EXTENSIONS:
        if low.endswith(ext) and len(slide_id) > len(ext):
            return slide_id[: -len(ext)]
    return slide_id


def _separator(path: Path) -> str | None:
    name = path.name.lower()
    for comp in (".zip", ".gz", ".bz2", ".xz"):
        name = name.removesuffix(comp)
    if name.endswith((".tsv", ".tab")):
        return "\t"
    return "," if name.endswith(".csv") else None


def _parse(path: Path, sep: str | None, **kwargs) -> pd.DataFrame:
    return pd.read_csv(path, sep=sep, dtype=str, engine="c" if sep else "python", **kwargs)


def _check_header(path: Path, sep: str | None) -> None:
    """Refuse repeated column names (pandas would silently rename the second ``censorship`` to ``censorship.1``)."""
    names = [str(c).strip() for c in _parse(path, sep, header=None, nrows=1).iloc[0].tolist()]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen and name not in ("", "nan"):
            raise BadInputError(f"column {name!r} appears twice in the header (columns {seen[name] + 1} and "
                                f"{i + 1})", path, "Rename or remove one of them")
        seen.setdefault(name, i)


def _semicolon_separated(frame: pd.DataFrame, sep: str | None) -> bool:
    """One column whose name holds ';': a spreadsheet's semicolon-separated "CSV" (European locales)."""
    return sep == "," and len(frame.columns) == 1 and ";" in str(frame.columns[0])


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV/TSV (also ``.csv.zip``/``.gz``; other extensions sniffed; a ``.csv`` separated by ``;`` is
    recognised) with every cell a ``str`` or NaN. Repeated column names are refused."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(missing_problem(path, "table") if not path.exists() else "not a file", path,
                            "Check the path")
    sep = _separator(path)
    try:
        frame = _parse(path, sep)
        if _semicolon_separated(frame, sep):
            sep = ";"
            frame = _parse(path, sep)
        if len(frame.columns):
            _check_header(path, sep)
    except BadInputError:
        raise
    except pd.errors.EmptyDataError:
        raise BadInputError("the table is empty", path, _TABLE_FIX) from None
    except Exception as exc:  # noqa: BLE001 - parser, codec, zip and OS errors all mean "unreadable"
        text = " ".join(str(exc).split())[:160]
        raise BadInputError(f"cannot read this table ({type(exc).__name__}: {text})", path,
                            _TABLE_FIX) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _require(frame: pd.DataFrame, path: Path, flags: dict[str, str]) -> None:
    missing = [c for c in flags if c not in frame.columns]
    if missing:
        one = len(frame.columns) == 1 and any(ch in str(frame.columns[0]) for ch in ";\t|")
        hint = " (the header was read as a single column: is the file separated by another delimiter?)" if one else ""
        raise BadInputError(f"missing column(s) {missing}; the table has {list(frame.columns)[:30]}{hint}", path,
                            "Name the right column(s) with " + ", ".join(f"{flags[c]} NAME" for c in missing))


def normalise_id(value: str) -> str:
    """An id as text (leading zeros kept) in Unicode NFC: 'é' typed or pasted in either spelling is one id."""
    return unicodedata.normalize("NFC", str(value).strip())


def _ids(frame: pd.DataFrame, col: str, path: Path, what: str) -> list[str]:
    values = frame[col].str.strip()
    missing = values.isna() | (values == "")
    if missing.any():
        i = int(np.flatnonzero(missing.to_numpy())[0])
        raise BadInputError(f"{where(i)}, column {col!r}: missing {what}", path, f"Fill in every {what}")
    return [normalise_id(v) for v in values]


def _numbers(frame: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(frame[col].str.strip(), errors="coerce").to_numpy(dtype=np.float64)


def _first_bad(bad: np.ndarray) -> int | None:
    hits = np.flatnonzero(bad)
    return int(hits[0]) if len(hits) else None


def _binary(frame: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    values = _numbers(frame, col)
    i = _first_bad(~np.isin(values, (0.0, 1.0)))
    if i is not None:
        raise BadInputError(f"{where(i)}, column {col!r}: value {_cell(frame, col, i)} is not 0 or 1", path,
                            "Censorship/event columns must hold 0 or 1 "
                            "(censorship 1 = censored, event 1 = died)")
    return values.astype(np.int64)


def _targets(frame: pd.DataFrame, path: Path, task: str, time_col: str, censorship_col: str,
             event_col: str | None, label_col: str) -> pd.DataFrame:
    if task == CLASSIFICATION:
        labels = frame[label_col].str.strip()
        i = _first_bad((labels.isna() | (labels == "")).to_numpy())
        if i is not None:
            raise BadInputError(f"{where(i)}, column {label_col!r}: missing label", path,
                                "Give every row a label, or remove unlabelled rows")
        return pd.DataFrame({"label": labels.to_numpy()})
    times = _numbers(frame, time_col)
    i = _first_bad(~(np.isfinite(times) & (times > 0)))
    if i is not None:
        raise BadInputError(f"{where(i)}, column {time_col!r}: survival time {_cell(frame, time_col, i)} is "
                            "missing or not a number > 0", path, "Fix or remove that row")
    cens = 1 - _binary(frame, event_col, path) if event_col else _binary(frame, censorship_col, path)
    return pd.DataFrame({"time": times, "censorship": cens})


def _check_unique_slides(slides: list[str], path: Path, has_slide_col: bool) -> None:
    seen: dict[str, int] = {}
    for i, sid in enumerate(slides):
        if sid in seen:
            fix = ("List each slide once" if has_slide_col else
                   "Without a slide column each row is one case: make case ids unique or add a slide_id "
                   "column")
            raise BadInputError(f"slide id {sid!r} appears twice: {where(seen[sid])} and {where(i)}", path,
                                fix)
        seen[sid] = i


def _cell(frame: pd.DataFrame, col: str, i: int) -> str:
    """A cell as the user wrote it, for messages (an empty cell as ``''``, not ``nan``)."""
    value = frame[col].iloc[i]
    return "''" if pd.isna(value) else repr(value)


def _check_consistent(case_ids: list[str], targets: pd.DataFrame, path: Path) -> None:
    first: dict[str, int] = {}
    cols = list(targets.columns)
    rows = list(zip(*(targets[c].tolist() for c in cols), strict=True))  # python scalars: readable reprs
    for i, cid in enumerate(case_ids):
        j = first.setdefault(cid, i)
        diff = [k for k in range(len(cols)) if rows[i][k] != rows[j][k]]
        if diff:
            k = diff[0]
            raise BadInputError(f"case {cid!r} has conflicting {cols[k]!r} values across its slide rows: "
                                f"{rows[j][k]!r} in {where(j)} vs {rows[i][k]!r} in {where(i)}", path,
                                "Give every slide row of a case the same target")


def read_clinical(path: str | os.PathLike, task: str, *, case_col: str = "case_id",
                  slide_col: str | None = "slide_id", time_col: str = "survival_months",
                  censorship_col: str = "censorship", event_col: str | None = None,
                  label_col: str = "label") -> ClinicalTable:
    """Targets per case and slides per case from a clinical CSV/TSV (one row per slide, or per case).

    Survival reads ``time_col`` and ``censorship_col`` (1 = censored) or, if given, ``event_col`` (1 = event;
    censorship = 1 - event). Slide ids lose a trailing slide-file extension (``.svs``, ...); without a slide
    column (the default ``slide_id`` absent, or ``slide_col=None``) the slide id is the case id.
    """
    if task not in TASKS:
        raise BadInputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    path = Path(path)
    frame = read_table(path)
    if frame.empty:
        raise BadInputError("the table has a header but no data rows", path, "Add one row per slide or case")
    flags = {case_col: "--case-col"}
    if task == SURVIVAL:
        flags[time_col] = "--time-col"
        flags[event_col or censorship_col] = "--event-col" if event_col else "--censorship-col"
    else:
        flags[label_col] = "--label-col"
    if slide_col is not None and slide_col != "slide_id":
        flags[slide_col] = "--slide-col"
    _require(frame, path, flags)
    case_ids = _ids(frame, case_col, path, "case id")
    has_slide_col = slide_col is not None and slide_col in frame.columns
    slide_ids = ([strip_slide_extension(s) for s in _ids(frame, slide_col, path, "slide id")]
                 if has_slide_col else list(case_ids))
    _check_unique_slides(slide_ids, path, has_slide_col)
    targets = _targets(frame, path, task, time_col, censorship_col, event_col, label_col)
    _check_consistent(case_ids, targets, path)
    if "site" in frame.columns and "site" not in flags:
        targets["site"] = frame["site"].to_numpy()
    targets.index = pd.Index(case_ids, name="case_id")
    cases = targets[~targets.index.duplicated()]
    slides: dict[str, list[str]] = {}
    for cid, sid in zip(case_ids, slide_ids, strict=True):
        slides.setdefault(cid, []).append(sid)
    return ClinicalTable(cases, slides, task, path)


#: the largest genomic value standardisation handles: beyond it the float32 tensors overflow
_LARGEST_GENOMIC = float(np.finfo(np.float32).max)


def read_genomics(path: str | os.PathLike, case_col: str | None = None) -> pd.DataFrame:
    """A numeric ``(cases, features)`` float64 frame indexed by ``case_id`` (not standardised).

    The id column is ``case_col``, else ``case_id``, else the first column (SurvPath's unnamed index). Pandas
    index leftovers (``Unnamed: k`` columns) are dropped; rows with no values at all are dropped (= missing).
    """
    path = Path(path)
    frame = read_table(path)
    if case_col is not None:
        _require(frame, path, {case_col: "--genomics-case-col"})
    else:
        case_col = "case_id" if "case_id" in frame.columns else frame.columns[0]
    ids = _ids(frame, case_col, path, "case id")
    dup = pd.Index(ids).duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise BadInputError(f"case id {ids[i]!r} appears twice ({where(ids.index(ids[i]))} and {where(i)})",
                            path, "Give each case one genomics row")
    cols = [c for c in frame.columns if c != case_col and not _UNNAMED.match(c)]
    if not cols:
        raise BadInputError("no feature columns besides the case id", path, "Add one column per gene/feature")
    raw = frame[cols].apply(lambda s: s.str.strip())
    values = raw.apply(pd.to_numeric, errors="coerce").astype(np.float64)
    bad = (values.isna() & raw.notna() & (raw != "")) | np.isinf(values)
    if bad.to_numpy().any():
        i, k = (int(x[0]) for x in np.nonzero(bad.to_numpy()))
        raise BadInputError(f"{where(i)}, column {cols[k]!r}: non-numeric value {raw.iat[i, k]!r}", path,
                            "The genomics table must hold only the case id and numbers (drop text columns)")
    huge = (values.abs() > _LARGEST_GENOMIC).to_numpy()
    if huge.any():  # standardising would overflow (its squares, then float32): NaN training, not an error
        i, k = (int(x[0]) for x in np.nonzero(huge))
        raise BadInputError(f"{where(i)}, column {cols[k]!r}: value {raw.iat[i, k]} is too large to standardise "
                            f"(|x| > {_LARGEST_GENOMIC:.3g}, beyond 32-bit floats)", path,
                            "Rescale that column (e.g. log2(x + 1)) or check how the table was exported")
    values.index = pd.Index(ids, name="case_id")
    values = values.dropna(how="all")
    if values.empty:
        raise BadInputError("the genomics table holds no values", path, "Check the file")
    return values
