"""Genomic rows for the generator: real survival sets (SurvSet, scikit-survival) or a fixed Gaussian.

Everything returned here is standardised gene by gene. Real sets with study labels are standardised
*within each study*: study batch effects would otherwise dominate the PCA, and a site shift in the WSI
would then carry the genomic state (and the teacher's risk) even at rho = 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import MSRLPluginError

DAYS_PER_MONTH = 365.25 / 12
_MONTHS_PER = {"days": 1.0 / DAYS_PER_MONTH, "months": 1.0, "years": 12.0}

# Gene-expression sets shipped inside survset 0.2.11 and the unit of their `time` column
# (read off each set's documentation and its range: days reach thousands, years stay below ~25).
SURVSET_TIME_UNITS = {
    "dataOvarian1": "days", "AML_Bull": "days",
    "chop": "years", "DBCD": "years", "DLBCL": "years", "nki70": "years", "vdv": "years",
    "MCLcleaned": "years",
    "gse1992": "months", "gse4335": "months", "gse3143": "months", "NSBCD": "months",
}
_SURVSET_STUDY_COLUMNS = ("fac_group", "fac_study", "fac_site")
_SURVSET_ER = {
    "gse1992": ("fac_er_positive", {"1": 1, "0": 0}),
    "gse4335": ("fac_er_status", {"1": 1, "0": 0}),
    "nki70": ("fac_ER", {"Positive": 1, "Negative": 0}),
}
_CLINICAL_NUMERIC = {"age", "size", "diam", "time", "time2"}  # numeric columns that are not genes
GAUSSIAN_SOURCE_SEED = 20240611  # the Gaussian source's covariance is one fixed population
_BENCHMARK_EXTRA = "install the benchmark extra: pip install 'msrl-plugin[benchmark]'"


@dataclass
class GenomicPool:
    """Rows a cohort is drawn from. ``genes`` ``(n, p) float64`` standardised (within study when known)."""

    name: str
    genes: np.ndarray
    gene_names: list[str]
    time_months: np.ndarray | None = None  # (n,) float64 > 0
    event: np.ndarray | None = None  # (n,) int64, 1 = event observed
    study: np.ndarray | None = None  # (n,) str study / site labels
    er: np.ndarray | None = None  # (n,) int64 0/1, -1 where unknown

    def __len__(self) -> int:
        return self.genes.shape[0]


# -- loading -------------------------------------------------------------------------------------
def load_pool(source: str) -> GenomicPool:
    """Real rows of ``'survset:<name>[+<name>...]'`` or ``'sksurv_breast'``, standardised."""
    if source == "sksurv_breast":
        return _load_sksurv_breast()
    if source.startswith("survset:"):
        names = [n for n in source[len("survset:"):].split("+") if n]
        return _load_survset(names)
    raise MSRLPluginError(f"genomics source {source!r} has no real rows",
                          None, "use 'survset:<dataset>' or 'sksurv_breast'")


def _load_survset(names: list[str]) -> GenomicPool:
    unknown = [n for n in names if n not in SURVSET_TIME_UNITS]
    if unknown or not names:
        raise MSRLPluginError(f"survset dataset(s) {unknown or names} are not supported gene-expression sets",
                              None, f"choose from {', '.join(sorted(SURVSET_TIME_UNITS))}")
    try:
        from SurvSet.data import SurvLoader
    except ImportError as exc:
        raise MSRLPluginError("genomics_source 'survset:...' needs the survset package",
                              None, _BENCHMARK_EXTRA) from exc
    loader = SurvLoader()
    parts = []  # (gene names, values, time in months, event, er, study) per dataset
    for name in names:
        df = loader.load_dataset(name)["df"]
        if "time2" in df.columns and df["time2"].notna().any():
            raise MSRLPluginError(f"survset dataset {name!r} has time-varying rows", None,
                                  "choose a dataset without a time2 column")
        genes = [c for c in df.columns if c.startswith("num_") and c[4:].lower() not in _CLINICAL_NUMERIC]
        values = np.column_stack([pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)
                                  if not pd.api.types.is_numeric_dtype(df[c]) else df[c].to_numpy(np.float64)
                                  for c in genes])
        time = pd.to_numeric(df["time"], errors="coerce").to_numpy(np.float64) * _MONTHS_PER[
            SURVSET_TIME_UNITS[name]]
        event = pd.to_numeric(df["event"], errors="coerce").to_numpy(np.float64)
        er_col, er_map = _SURVSET_ER.get(name, (None, None))
        er = (df[er_col].astype(str).map(er_map).fillna(-1).to_numpy(np.int64) if er_col in df.columns
              else np.full(len(df), -1, np.int64))
        study_col = next((c for c in _SURVSET_STUDY_COLUMNS if c in df.columns), None)
        if len(names) > 1:  # several sets: each set is a study (different platforms, labs, countries)
            study = np.full(len(df), name, dtype=object)
        elif study_col is not None:
            study = np.array([f"study_{v}" for v in df[study_col].astype(str)], dtype=object)
        else:
            study = None
        parts.append(([c[4:] for c in genes], values, time, event, er, study))
    shared = set.intersection(*(set(p[0]) for p in parts))
    gene_names = [g for g in parts[0][0] if g in shared]
    columns = [{g: j for j, g in enumerate(p[0])} for p in parts]
    values = np.concatenate([p[1][:, [col[g] for g in gene_names]] for p, col in zip(parts, columns)])
    time, event, er = (np.concatenate([p[i] for p in parts]) for i in (2, 3, 4))
    study = None if parts[0][5] is None else np.concatenate([p[5] for p in parts])
    ok = np.isfinite(time) & np.isin(event, (0, 1))
    return _make_pool("survset:" + "+".join(names), pd.DataFrame(values[ok], columns=gene_names), time[ok],
                      event[ok], None if study is None else study[ok], er[ok])


def _load_sksurv_breast() -> GenomicPool:
    try:
        from sksurv.datasets import load_breast_cancer
    except ImportError as exc:
        raise MSRLPluginError("genomics_source 'sksurv_breast' needs scikit-survival",
                              None, _BENCHMARK_EXTRA) from exc
    X, y = load_breast_cancer()
    # the 76 probe columns; age, size, er and grade are clinical
    probes = [c for c in X.columns if c.lower() not in _CLINICAL_NUMERIC | {"er", "grade"}]
    genes = X[probes].apply(pd.to_numeric, errors="coerce")
    er = X["er"].astype(str).map({"positive": 1, "negative": 0}).fillna(-1).to_numpy()
    time = np.asarray(y["t.tdm"], dtype=np.float64) / DAYS_PER_MONTH
    event = np.asarray(y["e.tdm"], dtype=np.int64)
    return _make_pool("sksurv_breast", genes, time, event, None, er)


def _make_pool(name, genes: pd.DataFrame, time, event, study, er) -> GenomicPool:
    values = genes.to_numpy(dtype=np.float64)
    if np.isnan(values).any():  # a handful of missing probe values in some sets: the column median
        med = np.nanmedian(values, axis=0)
        rows, cols = np.nonzero(np.isnan(values))
        values[rows, cols] = np.nan_to_num(med[cols])
    values, keep = standardise(values, study)
    names = [str(c) for c, k in zip(genes.columns, keep) if k]
    # a zero time happens in a few sets (death on the day of diagnosis): floor at one day
    time = np.maximum(np.asarray(time, dtype=np.float64), 1.0 / DAYS_PER_MONTH)
    return GenomicPool(name, values, names, time, np.asarray(event, dtype=np.int64),
                       None if study is None else np.asarray(study, dtype=object),
                       np.asarray(er, dtype=np.int64))


def gaussian_rows(n: int, n_genes: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, n_genes)`` rows of one fixed Gaussian population (low-rank-plus-noise covariance).

    The covariance comes from a constant seed, so different cohort seeds sample the same population.
    """
    world = np.random.default_rng(GAUSSIAN_SOURCE_SEED)
    rank = 20
    loadings = world.standard_normal((n_genes, rank)) * (3.0 / np.sqrt(np.arange(1, rank + 1)))
    noise_sd = 0.5 + world.random(n_genes)
    factors = rng.standard_normal((n, rank))
    return factors @ loadings.T + rng.standard_normal((n, n_genes)) * noise_sd


# -- transforms ----------------------------------------------------------------------------------
def standardise(values: np.ndarray, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Zero mean, unit variance per column (within each group when given).

    Returns the standardised ``(n, p')`` matrix and the ``(p,) bool`` mask of kept (non-constant) columns.
    """
    out = np.array(values, dtype=np.float64)
    groups = np.zeros(len(out), dtype=int) if groups is None else np.asarray(groups)
    for g in pd.unique(groups):
        rows = groups == g
        block = out[rows]
        sd = block.std(axis=0, ddof=1) if rows.sum() > 1 else np.zeros(out.shape[1])
        out[rows] = (block - block.mean(axis=0)) / np.where(sd > 1e-12, sd, np.inf)
    sd = out.std(axis=0)
    keep = sd > 1e-12
    out = out[:, keep]
    return out / out.std(axis=0, ddof=1), keep


def principal_components(values: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` PCA scores with unit variance (numpy SVD); each sign fixed by its largest loading."""
    centred = values - values.mean(axis=0)
    left, _, vt = np.linalg.svd(centred, full_matrices=False)
    if left.shape[1] < k:
        raise MSRLPluginError(f"only {left.shape[1]} principal components available, {k} needed",
                              None, "use more cases or a source with more genes")
    left, vt = left[:, :k], vt[:k]
    signs = np.sign(vt[np.arange(k), np.abs(vt).argmax(axis=1)])
    return left * signs * np.sqrt(len(values) - 1)


def gaussian_surrogate(values: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, p)`` Gaussian rows whose covariance is that of ``values`` (exact in expectation)."""
    centred = values - values.mean(axis=0)
    return rng.standard_normal((n, len(values))) @ centred / np.sqrt(len(values) - 1)


def genomics_features(values: np.ndarray, gene_names: list[str], form: str, d_g: int,
                      rng: np.random.Generator, n_blocks: int = 50) -> pd.DataFrame:
    """The emitted genomics: standardised genes (``raw``), pathway-like block means, or a projection."""
    if form == "raw":
        return pd.DataFrame(values.astype(np.float32), columns=gene_names)
    p = values.shape[1]
    if form == "blocks":
        if p < n_blocks:
            raise MSRLPluginError(f"{p} genes cannot fill {n_blocks} pathway blocks", None,
                                  "use genomics_form='raw' or 'projection'")
        member = rng.permutation(np.arange(p) % n_blocks)  # a fixed random gene -> block map
        scores = np.stack([values[:, member == b].mean(axis=1) for b in range(n_blocks)], axis=1)
        return pd.DataFrame(scores.astype(np.float32), columns=[f"pathway_{b:02d}" for b in range(n_blocks)])
    proj = rng.standard_normal((p, d_g)) / np.sqrt(p)
    return pd.DataFrame((values @ proj).astype(np.float32), columns=[f"g{j:04d}" for j in range(d_g)])


@dataclass
class Projector:
    """A reference cohort's gene standardisation and its ``k`` PCA axes, applied to new rows of the same
    population (an external cohort, a pan-cancer pool): the components mean the same thing in every cohort.

    Fitted on rows without study labels (one standardisation for all, as :func:`standardise` with no groups).
    """

    mean: np.ndarray  # (p,)
    sd: np.ndarray  # (p,)
    keep: np.ndarray  # (p,) bool
    rescale: np.ndarray  # (p',)
    centre: np.ndarray  # (p',)
    axes: np.ndarray  # (k, p') unit rows, signs as in principal_components
    scale: np.ndarray  # (k,) sqrt(n - 1) / singular value

    @classmethod
    def fit(cls, raw: np.ndarray, k: int) -> Projector:
        mean, sd = raw.mean(axis=0), raw.std(axis=0, ddof=1)
        first = (raw - mean) / np.where(sd > 1e-12, sd, np.inf)
        keep = first.std(axis=0) > 1e-12
        rescale = first[:, keep].std(axis=0, ddof=1)
        values = first[:, keep] / rescale
        centre = values.mean(axis=0)
        _, s, vt = np.linalg.svd(values - centre, full_matrices=False)
        vt, s = vt[:k], s[:k]
        signs = np.sign(vt[np.arange(k), np.abs(vt).argmax(axis=1)])
        return cls(mean, sd, keep, rescale, centre, vt * signs[:, None], np.sqrt(len(raw) - 1) / s)

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        """``(n, p')`` rows on the reference cohort's gene scale."""
        return ((raw - self.mean) / np.where(self.sd > 1e-12, self.sd, np.inf))[:, self.keep] / self.rescale

    def components(self, values: np.ndarray) -> np.ndarray:
        """``(n, k)`` scores of standardised rows on the reference axes (unit variance on the reference)."""
        return (values - self.centre) @ self.axes.T * self.scale
