"""Patient-level folds: deterministic stratified k-fold, or folds read from CLAM split files."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from .cohort import Cohort
from .errors import BadInputError


@dataclass
class Fold:
    """One split of case ids. ``val`` may be empty (fixed-epoch training, last epoch kept)."""

    k: int
    train: list[str]
    test: list[str]
    val: list[str] = field(default_factory=list)
    source: str = "kfold"

    def check(self, cohort: Cohort) -> None:
        """No unknown ids and no case in two roles (the leakage guard every run passes through)."""
        known = set(cohort.case_ids)
        for role in ("train", "val", "test"):
            unknown = [c for c in getattr(self, role) if c not in known]
            if unknown:
                raise BadInputError(f"{self.source}: fold {self.k} {role} names case {unknown[0]!r} "
                                    f"that is not in the cohort ({len(unknown)} unknown)")
        for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
            both = set(getattr(self, a)) & set(getattr(self, b))
            if both:
                raise BadInputError(f"{self.source}: fold {self.k} has case {sorted(both)[0]!r} in both "
                                    f"{a} and {b} ({len(both)} such cases)")
        if not self.train or not self.test:
            raise BadInputError(f"{self.source}: fold {self.k} has an empty train or test set")


def kfold_splits(cohort: Cohort, k: int = 5, seed: int = 1) -> list[Fold]:
    """Deterministic patient-level k-fold, stratified by event (survival) or class when possible."""
    if k < 2 or k > len(cohort):
        raise BadInputError(f"--k {k} folds is impossible with {len(cohort)} cases")
    ids = np.array(cohort.case_ids)
    strata = cohort.stratification_labels()
    _, counts = np.unique(strata, return_counts=True)
    splitter = (StratifiedKFold(k, shuffle=True, random_state=seed) if counts.min() >= k
                else KFold(k, shuffle=True, random_state=seed))
    return [Fold(i, list(ids[tr]), list(ids[te]), source=f"{k}-fold (seed {seed})")
            for i, (tr, te) in enumerate(splitter.split(ids, strata))]


def folds_from_split_tables(cohort: Cohort, tables: list[dict[str, list[str]]], sources: list[str]) -> list[Fold]:
    """Folds from CLAM/SurvPath split tables whose cells are case ids or slide ids."""
    slide_to_case = {s: c for c, slides in cohort.slides.items() for s in slides}
    folds = []
    for k, (table, source) in enumerate(zip(tables, sources)):
        roles = {}
        for role in ("train", "val", "test"):
            ids = [str(x) for x in table.get(role, [])]
            mapped = [slide_to_case.get(x, x) for x in ids]
            roles[role] = list(dict.fromkeys(mapped))  # several slides of one case -> one case
        if not roles["test"] and roles["val"]:  # SurvPath/MCAT: ",train,val" with val held out
            roles["test"], roles["val"] = roles["val"], []
        fold = Fold(k, roles["train"], roles["test"], roles["val"], source=source)
        fold.check(cohort)
        folds.append(fold)
    return folds
