"""What the generator and the external / pan-cancer cohorts share: the cohort and truth records, case ids,
sites, survival times, genomic rows and patch coords of one semi-synthetic population."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import MSRLPluginError
from .config import N_COMPONENTS, CohortConfig
from .genomics import gaussian_rows, gaussian_surrogate, load_pool
from .signal import Teacher
from .signal import rng as _rng

PATCH_LEVEL0 = 512  # 256 px at 20x on a 40x slide


@dataclass
class CohortTruth:
    """What the generator knows and a model must not see (indexed by case_id)."""

    components: pd.DataFrame  # U, (n, 16)
    latent: pd.DataFrame  # z, (n, k_vis) WSI latent before the nonlinearity
    eta: pd.Series | None = None  # teacher log-hazard (risk); None for a real outcome
    eta_wsi: pd.Series | None = None  # E[eta | WSI latent]: the best any WSI-only model can rank by
    oracle_cindex: float | None = None  # c-index of eta (AUC for classification)
    wsi_oracle_cindex: float | None = None  # c-index of eta_wsi (AUC for classification)


@dataclass
class SynthCohort:
    """A generated cohort in memory; :func:`~msrl_plugin.synth.writer.write_cohort` puts it on disk.

    ``cases``: one row per case: ``case_id, slide_id, survival_months, censorship`` (1 = censored)
    or ``case_id, slide_id, label``, then ``site``. ``genomics``: float32 frame indexed by case_id
    (rows of missing-genomics cases dropped). ``bags``: slide_id -> (features ``(N, D) float32``,
    coords ``(N, 2) int64``, level-0 top-left x, y). ``folds``: (train case_ids, test case_ids).
    """

    config: CohortConfig
    seed: int
    cases: pd.DataFrame
    genomics: pd.DataFrame
    bags: dict[str, tuple[np.ndarray, np.ndarray]]
    folds: list[tuple[np.ndarray, np.ndarray]]
    truth: CohortTruth
    slide_dims: dict[str, tuple[int, int]] = field(default_factory=dict)  # level-0 (width, height)
    external: SynthCohort | None = None  # the external test cohort (``n_external`` > 0), no folds

    @property
    def case_ids(self) -> list[str]:
        return self.cases["case_id"].tolist()

    def to_cohort(self):
        """This cohort as a :class:`msrl_plugin.cohort.Cohort` over in-memory bags (no files)."""
        from ..cohort import Cohort, InMemoryBags

        table = self.cases.set_index("case_id")
        if self.config.task == "survival":
            table = table.rename(columns={"survival_months": "time"})
        slides = {c: [s] for c, s in zip(table.index, table["slide_id"])}
        bags = InMemoryBags({s: f for s, (f, _) in self.bags.items()},
                            {s: c for s, (_, c) in self.bags.items()})
        return Cohort(table.drop(columns="slide_id"), slides, bags, self.config.task, self.genomics)

    def __repr__(self) -> str:
        return (f"SynthCohort(seed={self.seed}, cases={len(self.cases)}, task={self.config.task}, "
                f"D={self.config.feature_dim}, genomics={self.genomics.shape}, folds={len(self.folds)})")


def case_and_slide_ids(prefix: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(4, len(str(n - 1)))
    case_ids = np.array([f"{prefix}-{i:0{width}d}" for i in range(n)], dtype=object)
    return case_ids, np.array([f"{c}-DX1" for c in case_ids], dtype=object)


def training_sites(cfg: CohortConfig, seed: int, study: np.ndarray | None) -> np.ndarray:
    """The source's study labels (``real_sites``), else ``n_sites`` balanced sites independent of everything."""
    if study is not None and cfg.real_sites:
        return np.asarray(study, dtype=object)
    order = _rng(seed, "sites").permutation(np.arange(cfg.n_cases) % cfg.n_sites)
    return np.array([f"site_{k}" for k in order], dtype=object)


def make_truth(cases: pd.DataFrame, U: np.ndarray, z: np.ndarray, cluster: np.ndarray | None,
               teacher: Teacher | None, cfg: CohortConfig) -> CohortTruth:
    index = pd.Index(cases["case_id"].to_numpy(), name="case_id")
    truth = CohortTruth(components=pd.DataFrame(U, index=index, columns=[f"U{j}" for j in range(N_COMPONENTS)]),
                        latent=pd.DataFrame(z, index=index, columns=[f"z{j}" for j in range(z.shape[1])]))
    if teacher is not None:
        eta = teacher.eta(U)
        eta_wsi = teacher.eta_wsi(z, cfg.rho)
        if cluster is not None:  # the WSI only sees the cluster: E[eta | cluster]
            eta_wsi = pd.Series(eta_wsi).groupby(cluster).transform("mean").to_numpy()
        truth.eta = pd.Series(eta, index=index, name="eta")
        truth.eta_wsi = pd.Series(eta_wsi, index=index, name="eta_wsi")
        truth.oracle_cindex = _score(cases, eta, cfg.task)
        truth.wsi_oracle_cindex = _score(cases, eta_wsi, cfg.task)
    return truth


def _genomic_rows(cfg: CohortConfig, seed: int):
    """Rows ``(n, p)``, gene names, study labels (or None) and the real outcome of the chosen rows."""
    n, rng = cfg.n_cases, _rng(seed, "genomics")
    if cfg.genomics_source == "gaussian":
        values = gaussian_rows(n, cfg.n_genes, rng)
        return values, [f"gene_{j:04d}" for j in range(cfg.n_genes)], None, {}
    pool = load_pool(cfg.genomics_source)
    rows = np.arange(len(pool))
    if cfg.outcome == "real" and cfg.task == "classification":
        rows = rows[pool.er >= 0]
        if len(rows) == 0:
            raise MSRLPluginError(f"{pool.name} has no ER status for a real classification label", None,
                                  "use outcome='teacher', or a source with ER (gse1992, gse4335, nki70, "
                                  "sksurv_breast)")
    if cfg.genomics_distribution == "gaussian_surrogate":
        return gaussian_surrogate(pool.genes, n, rng), pool.gene_names, None, {}
    if n > len(rows):
        raise MSRLPluginError(
            f"{pool.name} has {len(rows)} usable rows but n_cases={n}", None,
            f"set n_cases <= {len(rows)} (real rows are never repeated) or use "
            "genomics_distribution='gaussian_surrogate'")
    pick = rng.permutation(rows)[:n]  # random order: no case-id leaks the source's row order
    real = {"time": pool.time_months[pick], "event": pool.event[pick], "er": pool.er[pick]}
    study = None if pool.study is None else pool.study[pick]
    return pool.genes[pick], pool.gene_names, study, real


def survival_times(eta: np.ndarray, cfg: CohortConfig, rng: np.random.Generator,
                   baseline_median_months: float | None = None):
    """Event times (months) with S(t | eta) = exp(-(t / lam)^k e^eta), censored to the target rate."""
    k = cfg.weibull_shape
    median = cfg.baseline_median_months if baseline_median_months is None else baseline_median_months
    lam = median / np.log(2.0) ** (1.0 / k)
    t_event = lam * (rng.exponential(size=len(eta)) * np.exp(-eta)) ** (1.0 / k)
    draws = rng.random(len(eta)) if cfg.censoring_model == "uniform" else rng.exponential(size=len(eta))
    if cfg.censoring_rate > 0:
        # censoring time = c * draw: the censored fraction falls as c grows; bisect log(c)
        lo, hi = np.log(t_event.min()) - 20.0, np.log(t_event.max()) + 20.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if np.mean(np.exp(mid) * draws < t_event) > cfg.censoring_rate:
                lo = mid
            else:
                hi = mid
        t_cens = np.exp(hi) * draws
    else:
        t_cens = np.full(len(eta), np.inf)
    event = (t_event <= t_cens).astype(np.int64)
    time = np.maximum(np.minimum(t_event, t_cens), 1.0 / 30.4375)  # at least one day
    return time, event


def _grid_coords(n: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """Row-major (y outer, x inner) level-0 top-left corners on a 512-px grid inside a tissue rectangle."""
    side = int(np.ceil(np.sqrt(n)))
    cols = int(rng.integers(side, 2 * side + 1))
    rows = int(np.ceil(np.ceil(1.3 * n) / cols))
    cells = np.sort(rng.choice(rows * cols, n, replace=False))  # ~23% background holes
    r, c = np.divmod(cells, cols)
    x0, y0 = (int(v) for v in rng.integers(0, 16384, 2))
    coords = np.stack([x0 + c * PATCH_LEVEL0, y0 + r * PATCH_LEVEL0], axis=1).astype(np.int64)
    width = x0 + cols * PATCH_LEVEL0 + int(rng.integers(512, 4096))
    height = y0 + rows * PATCH_LEVEL0 + int(rng.integers(512, 4096))
    return coords, (width, height)


def _score(cases: pd.DataFrame, risk: np.ndarray, task: str) -> float:
    """Harrell's c-index of a risk (higher = earlier event); AUC (the binary c-index) for classification."""
    if task == "classification":
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(cases["label"], risk))
    from ..evaluation.metrics import concordance_index

    return concordance_index(cases["survival_months"].to_numpy(), 1 - cases["censorship"].to_numpy(),
                             np.asarray(risk))
