"""Prediction tasks: targets, loss, per-case predictions and metrics for survival and classification."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
from torch.nn import functional as F

from .cohort import CLASSIFICATION, SURVIVAL, Cohort
from .errors import BadInputError
from .evaluation.metrics import concordance_index
from .survival import assign_bins, fit_bin_edges, nll_survival_loss, survival_curve


class SurvivalTask:
    """Discrete-time survival with ``n_bins`` quantile bins fitted on the training cases."""

    name = SURVIVAL

    def __init__(self, n_bins: int = 4, alpha: float = 0.0, edges: list[float] | None = None):
        self.n_bins = n_bins
        self.alpha = alpha
        self.edges = None if edges is None else np.asarray(edges, dtype=np.float64)

    @property
    def n_outputs(self) -> int:
        return self.n_bins

    def fit(self, cohort: Cohort) -> SurvivalTask:
        check_task(cohort, SURVIVAL)
        if cohort.events().sum() == 0:
            raise BadInputError("the training cases contain no events (all censored)",
                                fix="check the censorship column (1 = censored) or use --event-col")
        self.edges = fit_bin_edges(cohort.times(), cohort.censorship(), self.n_bins)
        return self

    def targets(self, cohort: Cohort) -> dict[str, torch.Tensor]:
        return {"bins": torch.as_tensor(assign_bins(cohort.times(), self.edges)),
                "censorship": torch.as_tensor(cohort.censorship(), dtype=torch.float32)}

    def sampling_classes(self, cohort: Cohort) -> np.ndarray:
        """(bin, censorship) pairs as class ids for balanced sampling (MCAT)."""
        return 2 * assign_bins(cohort.times(), self.edges) + cohort.censorship()

    def loss(self, logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        return nll_survival_loss(logits, targets["bins"], targets["censorship"], self.alpha)

    def predictions(self, logits: torch.Tensor, case_ids: list[str]) -> pd.DataFrame:
        surv = survival_curve(logits.float()).cpu().numpy()
        frame = pd.DataFrame(surv, index=pd.Index(case_ids, name="case_id"),
                             columns=[f"survival_bin{j}" for j in range(surv.shape[1])])
        frame.insert(0, "risk", -surv.sum(axis=1))
        return frame

    def evaluate(self, predictions: pd.DataFrame, cohort: Cohort) -> dict[str, float]:
        pred = predictions.loc[cohort.case_ids]
        return {"c_index": concordance_index(cohort.times(), cohort.events(), pred["risk"].to_numpy())}

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "n_bins": self.n_bins, "alpha": self.alpha,
                "edges": None if self.edges is None else [float(e) for e in self.edges]}


class ClassificationTask:
    """Cross-entropy classification over the training cohort's class names."""

    name = CLASSIFICATION

    def __init__(self, class_names: list[str] | None = None):
        self.class_names = None if class_names is None else list(class_names)

    @property
    def n_outputs(self) -> int:
        return len(self.class_names)

    def fit(self, cohort: Cohort) -> ClassificationTask:
        check_task(cohort, CLASSIFICATION)
        present = np.unique(cohort.labels())
        if len(present) < 2:
            raise BadInputError(f"the training cases hold a single class ({cohort.class_names[present[0]]!r})",
                                fix="check the label column or the split")
        self.class_names = list(cohort.class_names)
        return self

    def _aligned(self, cohort: Cohort) -> Cohort:
        if cohort.class_names != self.class_names:
            cohort = cohort.subset(cohort.case_ids)
            cohort.class_names = self.class_names
        return cohort

    def targets(self, cohort: Cohort) -> dict[str, torch.Tensor]:
        return {"label": torch.as_tensor(self._aligned(cohort).labels())}

    def sampling_classes(self, cohort: Cohort) -> np.ndarray:
        return self._aligned(cohort).labels()

    def loss(self, logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(logits, targets["label"].long())

    def predictions(self, logits: torch.Tensor, case_ids: list[str]) -> pd.DataFrame:
        probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
        frame = pd.DataFrame(probs, index=pd.Index(case_ids, name="case_id"),
                             columns=[f"prob_{c}" for c in self.class_names])
        frame["predicted"] = [self.class_names[i] for i in probs.argmax(axis=1)]
        return frame

    def evaluate(self, predictions: pd.DataFrame, cohort: Cohort) -> dict[str, float]:
        pred = predictions.loc[cohort.case_ids]
        y = self._aligned(cohort).labels()
        probs = pred[[f"prob_{c}" for c in self.class_names]].to_numpy()
        yhat = probs.argmax(axis=1)
        if len(np.unique(y)) < 2:
            auc = float("nan")
        elif probs.shape[1] == 2:
            auc = roc_auc_score(y, probs[:, 1])
        else:
            auc = roc_auc_score(y, probs, multi_class="ovr", labels=list(range(probs.shape[1])))
        return {"auc": float(auc), "balanced_accuracy": float(balanced_accuracy_score(y, yhat)),
                "accuracy": float(accuracy_score(y, yhat))}

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "class_names": self.class_names}


def make_task(cohort_task: str, n_bins: int = 4, alpha: float = 0.0):
    return SurvivalTask(n_bins, alpha) if cohort_task == SURVIVAL else ClassificationTask()


def task_from_state(state: dict[str, Any]):
    if state["name"] == SURVIVAL:
        return SurvivalTask(state["n_bins"], state["alpha"], state["edges"])
    return ClassificationTask(state["class_names"])


def check_task(cohort: Cohort, expected: str) -> None:
    if cohort.task != expected:
        raise BadInputError(f"this model was set up for {expected} but the cohort is a {cohort.task} cohort")


PRIMARY_METRIC = {SURVIVAL: "c_index", CLASSIFICATION: "auc"}
