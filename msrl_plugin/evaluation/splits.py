"""Patient-level folds: deterministic stratified k-fold, or folds read from CLAM split files."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from ..cohort import SURVIVAL, Cohort
from ..errors import BadInputError


@dataclass
class Fold:
    """One split of case ids. ``val`` may be empty (fixed-epoch training, last epoch kept)."""

    k: int
    train: list[str]
    test: list[str]
    val: list[str] = field(default_factory=list)
    source: str = "kfold"

    def check(self, cohort: Cohort) -> None:
        """No unknown ids, no case in two roles (the leakage guard every run passes through), and a training
        set that can be fitted (events for survival, two classes for classification)."""
        known = set(cohort.case_ids)
        fix = "Use split files made for this clinical table and these bags"
        for role in ("train", "val", "test"):
            unknown = [c for c in getattr(self, role) if c not in known]
            if unknown:
                raise BadInputError(f"{self.source}: fold {self.k} {role} names case {unknown[0]!r} that is "
                                    f"not in the cohort ({len(unknown)} unknown; a case or slide id the "
                                    "clinical table lacks, or a case left out for a missing/empty bag)",
                                    fix=fix)
        for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
            both = set(getattr(self, a)) & set(getattr(self, b))
            if both:
                raise BadInputError(f"{self.source}: fold {self.k} has case {sorted(both)[0]!r} in both "
                                    f"{a} and {b} ({len(both)} such cases)",
                                    fix="Make patient-level splits: all slides of a case in one split")
        if not self.train or not self.test:
            raise BadInputError(f"{self.source}: fold {self.k} has an empty train or test set", fix=fix)
        if cohort.labelled:
            self._check_trainable(cohort)

    def _check_trainable(self, cohort: Cohort) -> None:
        """A training set without events (survival) or with one class cannot be fitted: say which fold."""
        train = cohort.subset(self.train)
        where = f"{self.source}: fold {self.k}"
        if cohort.task == SURVIVAL:
            n_events = int(cohort.events().sum())
            if train.events().sum() > 0:
                return
            if n_events == 0:
                raise BadInputError(f"{where}: no events: all {len(cohort)} cases are censored",
                                    fix="Check the censorship column (1 = censored) or pass --event-col")
            raise BadInputError(f"{where}: its {len(train)} training cases have no events (the cohort has "
                                f"{n_events} event(s) among {len(cohort)} cases)",
                                fix=_fewer_folds(n_events, "event"))
        labels = train.labels()
        if len(np.unique(labels)) >= 2:
            return
        counts = np.bincount(cohort.labels(), minlength=len(cohort.class_names))
        if (counts > 0).sum() < 2:
            raise BadInputError(f"{where}: the cohort holds a single class "
                                f"({cohort.class_names[labels[0]]!r})",
                                fix="Check the label column (--label-col)")
        rarest = int(counts[counts > 0].min())
        raise BadInputError(f"{where}: its {len(train)} training cases hold a single class "
                            f"({cohort.class_names[labels[0]]!r}; the rarest class has {rarest} case(s))",
                            fix=_fewer_folds(rarest, "case of the rarest class"))


def _fewer_folds(n: int, what: str) -> str:
    if n < 2:
        return (f"Use fewer folds (--k) or splits that put the cohort's only {what} in training; "
                "one is too few to cross-validate")
    return (f"Use fewer folds (--k {n} or less keeps at least one {what} in every training set), or splits "
            f"whose training sets all hold one")


def kfold_splits(cohort: Cohort, k: int = 5, seed: int = 1) -> list[Fold]:
    """Deterministic patient-level k-fold, stratified by event (survival) or class when possible."""
    if k < 2 or k > len(cohort):
        raise BadInputError(f"--k {k} folds is impossible with {len(cohort)} cases")
    ids = np.array(cohort.case_ids)
    strata = cohort.stratification_labels()
    _, counts = np.unique(strata, return_counts=True)
    splitter = (StratifiedKFold(k, shuffle=True, random_state=seed) if counts.min() >= k
                else KFold(k, shuffle=True, random_state=seed))
    folds = [Fold(i, list(ids[tr]), list(ids[te]), source=f"{k}-fold (seed {seed})")
             for i, (tr, te) in enumerate(splitter.split(ids, strata))]
    if cohort.labelled:
        for fold in folds:  # every fold, before any training: a run must not fail at fold 4 of 5
            fold._check_trainable(cohort)
    return folds


def folds_from_split_tables(cohort: Cohort, tables: list[dict[str, list[str]]],
                            sources: list[str]) -> list[Fold]:
    """Folds from CLAM/SurvPath split tables whose cells are case ids or slide ids."""
    slide_to_case = {s: c for c, slides in cohort.slides.items() for s in slides}
    folds = []
    for k, (table, source) in enumerate(zip(tables, sources, strict=True)):
        roles = {}
        for role in ("train", "val", "test"):
            ids = [str(x) for x in table.get(role, [])]
            mapped = [slide_to_case.get(x, x) for x in ids]
            roles[role] = list(dict.fromkeys(mapped))  # several slides of one case -> one case
        if not roles["test"] and roles["val"]:  # SurvPath/MCAT: ",train,val" with val held out
            roles["test"], roles["val"] = roles["val"], []
        if roles["val"] and set(roles["val"]) == set(roles["test"]):  # one held-out fold listed twice
            roles["val"] = []
        fold = Fold(k, roles["train"], roles["test"], roles["val"], source=source)
        fold.check(cohort)
        folds.append(fold)
    return folds


def select_folds(folds: list, k_start: int, k_end: int) -> list:
    """CLAM's ``--k_start``/``--k_end`` (end exclusive; -1 = from the first / to the last fold), checked."""
    n = len(folds)
    for flag, value in (("--k-start", k_start), ("--k-end", k_end)):
        if not isinstance(value, int) or value < -1:
            raise BadInputError(f"{flag} {value!r} is not a fold number", fix=f"pass {flag} 0..{n - 1}, or -1")
    start = max(k_start, 0)
    end = n if k_end < 0 else k_end
    if start >= n:
        raise BadInputError(f"--k-start {k_start} is past the last fold (folds 0..{n - 1})",
                            fix=f"pass --k-start 0..{n - 1}")
    if end > n or end <= start:
        raise BadInputError(f"--k-end {k_end} must be after --k-start {start} and at most {n} "
                            "(the fold it names is not run)", fix=f"pass --k-end {start + 1}..{n}, or -1")
    return folds[start:end]
