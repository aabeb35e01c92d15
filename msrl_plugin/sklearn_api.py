"""scikit-learn estimators over cohorts: MSRLSurvival, MSRLClassifier, ABMILSurvival, ABMILClassifier.

Each is its aggregator (same explicit keyword hyper-parameters, so ``get_params``/``set_params``/``clone``
work unchanged) with the estimator contract on top: ``fit(X, y=None) -> self``, ``predict`` (survival: risk,
higher = earlier event, as scikit-survival; classification: class labels), ``predict_proba``, ``score``
(Harrell's c-index / accuracy). ``X`` is a :class:`CohortCases`: a thin sequence of case ids over a
:class:`~msrl_plugin.cohort.Cohort` that scikit-learn's splitters can index (``X[train_idx]``), so
``cross_val_score`` and ``GridSearchCV`` work. ``y`` may be None (targets come from the cohort), a
structured ``(event, time)`` array (``sksurv.util.Surv.from_arrays`` or :func:`survival_y`) or labels.
MSRL still reads genomics from the cohort during ``fit`` and needs only the WSI in ``predict``.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.metrics import accuracy_score

from .aggregators.abmil import ABMILAggregator
from .aggregators.base import Aggregator
from .aggregators.msrl import MSRLAggregator
from .cohort import CLASSIFICATION, SURVIVAL, Cohort
from .errors import BadInputError
from .evaluation.metrics import concordance_index

_Y_FIX = "Pass y=None (targets from the cohort), sksurv.util.Surv.from_arrays(event, time) or survival_y(...)"


def survival_y(event: Sequence[bool], time: Sequence[float]) -> np.ndarray:
    """A scikit-survival style structured array with fields ``event`` (bool) and ``time`` (float)."""
    out = np.empty(len(time), dtype=[("event", bool), ("time", np.float64)])
    out["event"], out["time"] = np.asarray(event, dtype=bool), np.asarray(time, dtype=np.float64)
    return out


def survival_arrays(y: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(event bool (n,), time float (n,))`` from a structured survival array (its bool field: the event)."""
    arr = np.asarray(y)
    names = arr.dtype.names
    if not names or len(names) != 2:
        raise BadInputError(f"survival y must be a structured array with an event and a time field, got "
                            f"dtype {arr.dtype}", fix=_Y_FIX)
    bools = [n for n in names if arr.dtype[n] == np.bool_]
    named = next((n for n in names if n.lower() in ("event", "status")), names[0])
    event = bools[0] if len(bools) == 1 else named
    time = names[1] if event == names[0] else names[0]
    return arr[event].astype(bool), arr[time].astype(np.float64)


class CohortCases(Sequence):
    """Case ids of a cohort as a 1-D, integer-indexable sequence (scikit-learn's ``X``).

    ``X[i]`` is a case id; ``X[index_array]`` / ``X[bool_mask]`` / ``X[slice]`` is a smaller
    :class:`CohortCases` over the same cohort. ``shape`` is ``(n,)``. ``targets()`` gives the matching ``y``.
    """

    def __init__(self, cohort: Cohort, case_ids: Sequence[str] | None = None):
        self.base = cohort
        self.case_ids = list(cohort.case_ids if case_ids is None else map(str, case_ids))
        self._cohort: Cohort | None = None

    @property
    def shape(self) -> tuple[int]:
        return (len(self.case_ids),)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):  # scikit-learn indexes array-likes as X[idx, ...]
            rest = [k for k in key[1:] if k is not Ellipsis]
            if rest:
                raise IndexError("CohortCases is 1-D")
            key = key[0]
        if isinstance(key, numbers.Integral):
            return self.case_ids[key]
        if isinstance(key, slice):
            return CohortCases(self.base, self.case_ids[key])
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean index of shape {idx.shape} for {len(self)} cases")
            idx = np.flatnonzero(idx)
        elif idx.dtype.kind not in "iu":
            raise IndexError(f"CohortCases takes integer or boolean indices, not {idx.dtype}")
        return CohortCases(self.base, [self.case_ids[i] for i in idx.reshape(-1).tolist()])

    @property
    def cohort(self) -> Cohort:
        """The cohort restricted to these cases (built once)."""
        if self._cohort is None:
            self._cohort = (self.base if self.case_ids == self.base.case_ids
                            else self.base.subset(self.case_ids))
        return self._cohort

    def targets(self) -> np.ndarray:
        """``y`` from the cohort: a structured ``(event, time)`` array (survival) or label strings."""
        cohort = self.cohort
        if not cohort.labelled:
            raise BadInputError("this cohort has no targets (it was loaded for prediction only)")
        if cohort.task == SURVIVAL:
            return survival_y(cohort.events().astype(bool), cohort.times())
        return cohort.cases["label"].astype(str).to_numpy()

    def __repr__(self) -> str:
        return f"CohortCases({len(self)} of {len(self.base)} cases, task={self.base.task})"


def as_cases(X: Any) -> CohortCases:
    if isinstance(X, CohortCases):
        return X
    if isinstance(X, Cohort):
        return CohortCases(X)
    raise BadInputError(f"X must be a CohortCases (or a Cohort), got {type(X).__name__}",
                        fix="wrap a cohort: X = CohortCases(load_cohort(...))")


def _check_length(y: Any, n: int) -> None:
    if len(y) != n:
        raise BadInputError(f"y has {len(y)} rows but X has {n} cases", fix="pass y aligned with X")


class _CohortEstimator:
    """The estimator contract over an :class:`Aggregator`: subclasses set ``_task``."""

    _task: str

    def _training_cohort(self, X: Any, y: Any) -> Cohort:
        cases = as_cases(X)
        cohort = cases.cohort
        if y is None:
            if not cohort.labelled:
                raise BadInputError("no targets: the cohort is unlabelled and y is None", fix=_Y_FIX)
            if cohort.task != self._task:
                raise BadInputError(f"{type(self).__name__} needs a {self._task} cohort, got {cohort.task}",
                                    fix=f"use the {cohort.task} estimator, or pass y")
            return cohort
        _check_length(y, len(cases))
        return self._cohort_with_targets(cohort, y)

    def _cohort_with_targets(self, cohort: Cohort, y: Any) -> Cohort:
        raise NotImplementedError

    def fit(self, X: Any, y: Any = None) -> _CohortEstimator:
        """Train on the cases of ``X`` (targets from ``y`` when given); returns ``self``."""
        super().fit(self._training_cohort(X, y), progress=False)
        return self

    def predict_frame(self, X: Any) -> pd.DataFrame:
        """The aggregator's per-case prediction table (risk + survival curve, or class probabilities)."""
        return Aggregator.predict(self, as_cases(X).cohort)

    def evaluate(self, cohort: Cohort, predictions: pd.DataFrame | None = None) -> dict[str, float]:
        predictions = self.predict_frame(cohort) if predictions is None else predictions
        return self.task_.evaluate(predictions, cohort)


class _SurvivalEstimator(_CohortEstimator):
    _task = SURVIVAL

    def _cohort_with_targets(self, cohort: Cohort, y: Any) -> Cohort:
        event, time = survival_arrays(y)
        cases = pd.DataFrame({"time": time, "censorship": (~event).astype(np.int64)},
                             index=pd.Index(cohort.case_ids, name="case_id"))
        return Cohort(cases, cohort.slides, cohort.bags, SURVIVAL, cohort.genomics)

    def predict(self, X: Any) -> np.ndarray:
        """Risk ``(n,)``: higher means an earlier event (scikit-survival's convention)."""
        return self.predict_frame(X)["risk"].to_numpy()

    def predict_survival_function(self, X: Any) -> np.ndarray:
        """``(n, n_bins)`` survival probability at the end of each training-quantile time bin."""
        frame = self.predict_frame(X)
        return frame[[c for c in frame.columns if c.startswith("survival_bin")]].to_numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Harrell's c-index of ``predict(X)`` against ``y`` (or the cohort's survival)."""
        cases = as_cases(X)
        if y is None:
            event, time = cases.cohort.events().astype(bool), cases.cohort.times()
        else:
            _check_length(y, len(cases))
            event, time = survival_arrays(y)
        return float(concordance_index(time, event.astype(np.int64), self.predict(cases)))


class _ClassifierEstimator(_CohortEstimator):
    _task = CLASSIFICATION

    def _cohort_with_targets(self, cohort: Cohort, y: Any) -> Cohort:
        y = np.asarray(y)
        cases = pd.DataFrame({"label": [str(v) for v in y]}, index=pd.Index(cohort.case_ids, name="case_id"))
        # class order = np.unique(y), so predict_proba's columns follow classes_
        return Cohort(cases, cohort.slides, cohort.bags, CLASSIFICATION, cohort.genomics,
                      [str(c) for c in np.unique(y)])

    def fit(self, X: Any, y: Any = None) -> _ClassifierEstimator:
        super().fit(X, y)
        #: class labels in the column order of ``predict_proba`` (y's own values when y was given)
        self.classes_ = (np.unique(np.asarray(y)) if y is not None
                         else np.asarray(self.task_.class_names, dtype=object))
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """``(n, n_classes)`` probabilities, columns in ``classes_`` order."""
        frame = self.predict_frame(X)
        return frame[[f"prob_{c}" for c in self.task_.class_names]].to_numpy()

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def score(self, X: Any, y: Any = None) -> float:
        """Accuracy of ``predict(X)`` against ``y`` (or the cohort's labels)."""
        cases = as_cases(X)
        if y is None:
            y = cases.targets()
        else:
            _check_length(y, len(cases))
        predicted = self.predict(cases)
        if predicted.dtype == object:
            y, predicted = np.asarray(y).astype(str), predicted.astype(str)
        return float(accuracy_score(y, predicted))


class MSRLSurvival(_SurvivalEstimator, MSRLAggregator):
    """MSRL for survival as a scikit-learn estimator (hyper-parameters: :class:`MSRLAggregator`)."""


class MSRLClassifier(_ClassifierEstimator, ClassifierMixin, MSRLAggregator):
    """MSRL for classification as a scikit-learn classifier (hyper-parameters: :class:`MSRLAggregator`)."""


class ABMILSurvival(_SurvivalEstimator, ABMILAggregator):
    """ABMIL for survival as a scikit-learn estimator (hyper-parameters: :class:`ABMILAggregator`)."""


class ABMILClassifier(_ClassifierEstimator, ClassifierMixin, ABMILAggregator):
    """ABMIL for classification as a scikit-learn classifier (hyper-parameters: :class:`ABMILAggregator`)."""


__all__ = ["ABMILClassifier", "ABMILSurvival", "CohortCases", "MSRLClassifier", "MSRLSurvival",
           "survival_arrays", "survival_y"]
