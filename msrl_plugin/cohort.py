"""A cohort: cases with their WSI bags, optional genomics and targets.

The cohort knows nothing of file layouts: bags come from a :class:`BagSource` that an adapter
provides (``msrl_plugin.adapters``), tables arrive as pandas frames.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from .errors import BadInputError

SURVIVAL = "survival"
CLASSIFICATION = "classification"
TASKS = (SURVIVAL, CLASSIFICATION)


@dataclass
class BagArrays:
    """One slide's patch features ``(N, D) float32`` and level-0 top-left coords ``(N, 2) int64`` (or None)."""

    features: np.ndarray
    coords: np.ndarray | None = None


class BagSource(Protocol):
    """Where a cohort's bags come from (files through an adapter, a packed cache, or memory)."""

    feature_dim: int

    def load(self, slide_id: str) -> BagArrays: ...


class InMemoryBags:
    """A :class:`BagSource` over arrays already in memory (tests, generated cohorts)."""

    def __init__(self, bags: Mapping[str, np.ndarray], coords: Mapping[str, np.ndarray] | None = None):
        self._bags = {k: np.asarray(v, dtype=np.float32) for k, v in bags.items()}
        self._coords = dict(coords or {})
        dims = {v.shape[1] for v in self._bags.values()}
        if len(dims) > 1:
            raise BadInputError(f"bags have different feature dims {sorted(dims)}")
        self.feature_dim = dims.pop() if dims else 0

    def load(self, slide_id: str) -> BagArrays:
        return BagArrays(self._bags[slide_id], self._coords.get(slide_id))


class Cohort:
    """Cases (rows of ``cases``, index ``case_id``), their slides, bags, optional genomics and targets.

    ``cases`` columns: survival: ``time`` (> 0) and ``censorship`` (1 = censored, the SurvPath/MCAT
    convention); classification: ``label``. Optional: ``site``.
    ``genomics``: numeric frame indexed by case_id; a case without a row has *missing genomics*.
    """

    def __init__(
        self,
        cases: pd.DataFrame,
        slides: Mapping[str, Sequence[str]],
        bags: BagSource,
        task: str,
        genomics: pd.DataFrame | None = None,
        class_names: Sequence[str] | None = None,
        labelled: bool = True,
    ):
        if task not in TASKS:
            raise BadInputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        cases = cases.copy()
        cases.index = cases.index.astype(str)
        cases.index.name = "case_id"
        if cases.index.has_duplicates:
            dup = cases.index[cases.index.duplicated()][0]
            raise BadInputError(f"duplicate case id {dup!r} in the case table")
        needed = ("time", "censorship") if task == SURVIVAL else ("label",)
        missing = [c for c in needed if c not in cases.columns] if labelled else []
        if missing:
            raise BadInputError(f"case table lacks column(s) {missing} needed for {task}")
        no_bag = [c for c in cases.index if not slides.get(c)]
        if no_bag:
            raise BadInputError(f"case {no_bag[0]!r} has no slide bag ({len(no_bag)} such cases)")
        self.cases = cases
        self.slides = {c: list(slides[c]) for c in cases.index}
        self.bags = bags
        self.task = task
        self.labelled = labelled
        if genomics is not None:
            genomics = genomics.copy()
            genomics.index = genomics.index.astype(str)
            genomics = genomics.loc[genomics.index.intersection(cases.index)]
        self.genomics = genomics
        if task == CLASSIFICATION and (labelled or class_names is not None):
            self.class_names = (list(class_names) if class_names is not None
                                else sorted(map(str, cases["label"].unique())))
        else:
            self.class_names = None

    # -- basic views -------------------------------------------------------------------------
    @property
    def case_ids(self) -> list[str]:
        return list(self.cases.index)

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def feature_dim(self) -> int:
        return int(self.bags.feature_dim)

    @property
    def genomics_dim(self) -> int:
        return 0 if self.genomics is None else self.genomics.shape[1]

    def subset(self, case_ids: Sequence[str]) -> Cohort:
        """The same cohort restricted to ``case_ids`` (order kept; class names shared)."""
        case_ids = [str(c) for c in case_ids]
        unknown = [c for c in case_ids if c not in self.cases.index]
        if unknown:
            raise BadInputError(f"case id {unknown[0]!r} is not in the cohort ({len(unknown)} unknown)")
        return Cohort(self.cases.loc[case_ids], {c: self.slides[c] for c in case_ids}, self.bags,
                      self.task, self.genomics, self.class_names, self.labelled)

    # -- data ---------------------------------------------------------------------------------
    def load_bag(self, case_id: str) -> BagArrays:
        """All slides of a case concatenated along the patch axis (as SurvPath does)."""
        parts = [self.bags.load(s) for s in self.slides[case_id]]
        if len(parts) == 1:
            return parts[0]
        feats = np.concatenate([p.features for p in parts], axis=0)
        coords = (np.concatenate([p.coords for p in parts], axis=0)
                  if all(p.coords is not None for p in parts) else None)
        return BagArrays(feats, coords)

    def genomics_matrix(self, case_ids: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(n, G) float32`` genomics and ``(n,) bool`` availability (a row with at least one value).

        Rows without genomics are zeros; empty cells of an available row stay NaN, for the scaler to impute
        with the training mean (:class:`~msrl_plugin.batching.GenomicsScaler`)."""
        ids = self.case_ids if case_ids is None else list(case_ids)
        if self.genomics is None:
            return np.zeros((len(ids), 0), np.float32), np.zeros(len(ids), bool)
        frame = self.genomics.reindex(ids)
        mask = frame.notna().any(axis=1).to_numpy() if frame.shape[1] else np.zeros(len(ids), bool)
        values = frame.to_numpy(dtype=np.float32)
        values[~mask] = 0.0
        return values, mask

    @property
    def has_genomics(self) -> np.ndarray:
        return self.genomics_matrix()[1]

    def times(self) -> np.ndarray:
        return self.cases["time"].to_numpy(dtype=np.float64)

    def censorship(self) -> np.ndarray:
        return self.cases["censorship"].to_numpy(dtype=np.int64)

    def events(self) -> np.ndarray:
        return 1 - self.censorship()

    def labels(self) -> np.ndarray:
        """Class indices into ``class_names``."""
        lookup = {name: i for i, name in enumerate(self.class_names)}
        raw = self.cases["label"].astype(str)
        unknown = sorted(set(raw) - set(lookup))
        if unknown:
            raise BadInputError(f"label(s) {unknown} were not seen in training (known: {self.class_names})")
        return raw.map(lookup).to_numpy(dtype=np.int64)

    def stratification_labels(self) -> np.ndarray:
        """What k-fold splits stratify by: the event indicator (survival) or the class."""
        return self.events() if self.task == SURVIVAL else self.labels()

    def __repr__(self) -> str:
        g = int(self.has_genomics.sum()) if self.genomics is not None else 0
        return (f"Cohort(task={self.task}, cases={len(self)}, feature_dim={self.feature_dim}, "
                f"genomics={g}/{len(self)} cases x {self.genomics_dim})")
