"""Small in-memory cohorts for fast tests (no files)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from msrl_plugin import Cohort, InMemoryBags


def easy_survival_cohort(n: int = 120, dim: int = 16, seed: int = 0, signal: float = 2.0,
                         genomics_dim: int = 0, missing_genomics: float = 0.0) -> Cohort:
    """Risk visible in a quarter of each bag's patches (feature 0); optional genomics carrying the risk."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    bags = {}
    for i in range(n):
        x = rng.normal(size=(int(rng.integers(20, 60)), dim)).astype(np.float32)
        x[: len(x) // 4, 0] += signal * risk[i]
        bags[f"s{i}"] = x
    times = 20 * np.exp(-risk + 0.3 * rng.normal(size=n)) + 0.1
    cens = (rng.random(n) < 0.4).astype(int)
    ids = [f"c{i}" for i in range(n)]
    cases = pd.DataFrame({"time": times, "censorship": cens}, index=ids)
    genomics = None
    if genomics_dim:
        g = rng.normal(size=(n, genomics_dim))
        g[:, 0] = risk + 0.1 * rng.normal(size=n)
        genomics = pd.DataFrame(g, index=ids, columns=[f"g{j}" for j in range(genomics_dim)])
        keep = rng.random(n) >= missing_genomics
        genomics = genomics[keep]
    return Cohort(cases, {c: [f"s{i}"] for i, c in enumerate(ids)}, InMemoryBags(bags), "survival", genomics)


def easy_classification_cohort(n: int = 100, dim: int = 16, seed: int = 0) -> Cohort:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    bags = {}
    for i in range(n):
        x = rng.normal(size=(int(rng.integers(20, 50)), dim)).astype(np.float32)
        x[:5, 1] += 2.5 * labels[i]
        bags[f"s{i}"] = x
    ids = [f"c{i}" for i in range(n)]
    cases = pd.DataFrame({"label": np.where(labels == 1, "tumor", "normal")}, index=ids)
    return Cohort(cases, {c: [f"s{i}"] for i, c in enumerate(ids)}, InMemoryBags(bags), "classification")


def labelled_genomics_cohort(n: int = 90, seed: int = 4, genomics_dim: int = 6) -> Cohort:
    """``easy_classification_cohort`` plus genomics whose first column carries the label."""
    base = easy_classification_cohort(n=n, seed=seed)
    g = np.random.default_rng(0).normal(size=(n, genomics_dim))
    g[:, 0] += 2.0 * base.labels()
    genomics = pd.DataFrame(g, index=base.case_ids, columns=[f"g{j}" for j in range(genomics_dim)])
    return Cohort(base.cases, base.slides, base.bags, base.task, genomics)
