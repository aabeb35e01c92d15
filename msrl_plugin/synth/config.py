"""The knobs of the semi-synthetic cohort generator (``shared/benchmark.md``), one dataclass.

Defaults are the bold values of the benchmark protocol; :meth:`CohortConfig.test_tier` and
:meth:`CohortConfig.benchmark_tier` give the two sizes the protocol names.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from ..errors import MSRLPluginError

GENOMICS_FORMS = ("raw", "blocks", "projection")
GENOMICS_DISTRIBUTIONS = ("real", "gaussian_surrogate")
OUTCOMES = ("teacher", "real")
TASKS = ("survival", "classification")
NONLINEARITIES = ("none", "tanh", "cluster")
CENSORING_MODELS = ("uniform", "exponential")
SIGNAL_MODELS = ("mixture", "abundance")
HAZARD_FORMS = ("linear", "quadratic")
N_COMPONENTS = 16  # k of the benchmark: PCA components U that the teacher and the WSI latent are built from
N_HIDDEN = 4  # U[:, k_vis:k_vis+4] is the genomics-only (hidden) part of the teacher


@dataclass(frozen=True)
class CohortConfig:
    """Every knob of the generator. One ``(config, seed)`` gives one cohort, bit for bit.

    Survival times are in months; ``censorship`` = 1 means censored (SurvPath/MCAT convention).
    """

    # cohort size and outcome
    n_cases: int = 400
    task: str = "survival"  # 'survival' | 'classification' (teacher: label = 1[eta > median])
    outcome: str = "teacher"  # 'teacher' (known hazard) | 'real' (the real time/event, or real ER label)
    censoring_rate: float = 0.6  # teacher only: target fraction censored, reached by bisection
    censoring_model: str = "uniform"  # 'uniform' | 'exponential' censoring times
    weibull_shape: float = 1.0  # 1.0 = exponential event times T ~ Exp(rate e^eta)
    baseline_median_months: float = 36.0  # median event time at eta = 0
    w_hidden: float = 0.5  # weight of the genomics-only part of the teacher
    k_vis: int = 8  # visible PCA components (of 16)
    hazard_form: str = "linear"  # 'linear' in U | 'quadratic': + a U-shaped term in one visible direction
    # genomics
    genomics_source: str = "gaussian"  # 'gaussian' | 'survset:<name>[+<name>...]' | 'sksurv_breast'
    genomics_distribution: str = "real"  # 'real' rows | 'gaussian_surrogate' (same covariance)
    genomics_form: str = "projection"  # 'raw' genes | 'blocks' (50 pathway scores) | 'projection' (to d_g)
    d_g: int = 256
    n_genes: int = 200  # genes of the 'gaussian' source only
    missing_genomics_rate: float = 0.0
    # WSI
    rho: float = 0.8  # visibility of the genomic state in morphology
    nonlinearity: str = "none"  # 'none' | 'tanh' | 'cluster'
    bag_min: int = 128
    bag_max: int = 512
    feature_dim: int = 384
    n_morphotypes: int = 8
    sigma_p: float = 0.3  # patch noise
    f_needle: float = 1.0  # fraction of patches that carry the WSI latent
    shift_scale: float = 0.5  # per-coordinate size of the latent-driven patch shift B z
    case_noise: float = 0.5  # per-case morphology unrelated to genomics (so bags do not reveal z exactly)
    sigma_site: float = 0.5
    n_sites: int = 4  # sites drawn at random (sources without real study labels, or real_sites=False)
    real_sites: bool = True  # use the source's real study labels as sites when it has them
    # splits and naming
    site_held_out: bool = True  # leave-one-site-out folds; otherwise stratified k-fold
    k_folds: int = 5
    encoder_name: str = "synthetic"
    # the second signal model (``signal_model='abundance'``): how the genomic state shows in the bag
    signal_model: str = "mixture"  # 'mixture': every (needle) patch's morphotype mix and shift follow h(z);
    # 'abundance': only a rare signal morphotype carries h(z), in its count (up to abundance_max) and its shift
    abundance_max: float = 0.3
    # an external test cohort generated with this one (``SynthCohort.external``): same population and signal,
    # its own held-out sites; n_cases stays the training cohort's size
    n_external: int = 0
    n_external_sites: int = 2

    # -- tiers ---------------------------------------------------------------------------------
    @classmethod
    def test_tier(cls, **overrides: Any) -> CohortConfig:
        """Seconds to generate: 120 cases, bags of 32-128, D = 64, d_g = 32."""
        base = {"n_cases": 120, "bag_min": 32, "bag_max": 128, "feature_dim": 64, "d_g": 32}
        base.update(overrides)
        return cls(**base).validate()

    @classmethod
    def benchmark_tier(cls, **overrides: Any) -> CohortConfig:
        """Minutes to train on: 400 cases, bags of 128-512, D = 384 (the defaults)."""
        base = {"n_cases": 400, "bag_min": 128, "bag_max": 512, "feature_dim": 384}
        base.update(overrides)
        return cls(**base).validate()

    # -- (de)serialisation -----------------------------------------------------------------------
    def replace(self, **changes: Any) -> CohortConfig:
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | os.PathLike | None = None) -> CohortConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MSRLPluginError(f"unknown cohort config key(s) {unknown}", source,
                                  f"valid keys: {', '.join(sorted(known))}")
        return cls(**data).validate()

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> CohortConfig:
        """Read a YAML (or JSON) mapping of knobs; missing knobs keep their defaults."""
        import yaml

        try:
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
        except OSError as exc:
            raise MSRLPluginError(f"cannot read the cohort config ({exc.strerror})", path) from exc
        except yaml.YAMLError as exc:
            raise MSRLPluginError(f"not valid YAML ({exc})", path) from exc
        if not isinstance(data, dict):
            raise MSRLPluginError("the cohort config must be a mapping of knob: value", path)
        return cls.from_dict(data, path)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    # -- checks --------------------------------------------------------------------------------
    def validate(self) -> CohortConfig:
        """Raise :class:`MSRLPluginError` on an impossible combination; return ``self``."""

        def bad(problem: str, fix: str | None = None) -> None:
            raise MSRLPluginError(f"cohort config: {problem}", None, fix)

        def choose(name: str, value: str, options: tuple[str, ...]) -> None:
            if value not in options:
                bad(f"{name}={value!r} is not one of {', '.join(options)}")

        choose("task", self.task, TASKS)
        choose("outcome", self.outcome, OUTCOMES)
        choose("genomics_form", self.genomics_form, GENOMICS_FORMS)
        choose("genomics_distribution", self.genomics_distribution, GENOMICS_DISTRIBUTIONS)
        choose("nonlinearity", self.nonlinearity, NONLINEARITIES)
        choose("censoring_model", self.censoring_model, CENSORING_MODELS)
        choose("signal_model", self.signal_model, SIGNAL_MODELS)
        choose("hazard_form", self.hazard_form, HAZARD_FORMS)
        src = self.genomics_source
        if not (src in ("gaussian", "sksurv_breast") or (src.startswith("survset:") and len(src) > 8)):
            bad(f"genomics_source={src!r} is unknown",
                "use 'gaussian', 'sksurv_breast' or 'survset:<dataset>' (e.g. 'survset:dataOvarian1')")
        if self.n_cases < 2 * N_COMPONENTS:
            bad(f"n_cases={self.n_cases} is too small", f"use at least {2 * N_COMPONENTS} cases")
        if not 0.0 <= self.rho <= 1.0:
            bad(f"rho={self.rho} must lie in [0, 1]")
        if self.w_hidden < 0:
            bad(f"w_hidden={self.w_hidden} must be >= 0")
        if not 0.0 <= self.missing_genomics_rate < 1.0:
            bad(f"missing_genomics_rate={self.missing_genomics_rate} must lie in [0, 1)")
        if not 0.0 <= self.censoring_rate < 1.0:
            bad(f"censoring_rate={self.censoring_rate} must lie in [0, 1)")
        if not 1 <= self.k_vis <= N_COMPONENTS - N_HIDDEN:
            bad(f"k_vis={self.k_vis} must lie in 1..{N_COMPONENTS - N_HIDDEN}")
        if not 1 <= self.bag_min <= self.bag_max:
            bad(f"bag sizes {self.bag_min}..{self.bag_max} are not 1 <= bag_min <= bag_max")
        if not 0.0 < self.f_needle <= 1.0:
            bad(f"f_needle={self.f_needle} must lie in (0, 1]")
        if min(self.sigma_p, self.sigma_site, self.shift_scale, self.case_noise) < 0:
            bad("sigma_p, sigma_site, shift_scale and case_noise must be >= 0")
        if self.feature_dim < 2 or self.d_g < 1 or self.n_morphotypes < 1:
            bad("feature_dim must be >= 2, d_g >= 1 and n_morphotypes >= 1")
        if self.n_genes < N_COMPONENTS:
            bad(f"n_genes={self.n_genes} must be >= {N_COMPONENTS}")
        if self.n_sites < 1:
            bad(f"n_sites={self.n_sites} must be >= 1")
        if self.k_folds < 2:
            bad(f"k_folds={self.k_folds} must be >= 2")
        if self.weibull_shape <= 0 or self.baseline_median_months <= 0:
            bad("weibull_shape and baseline_median_months must be > 0")
        if self.outcome == "real" and (src == "gaussian" or self.genomics_distribution != "real"):
            bad("outcome='real' needs real genomic rows with their real outcome",
                "use a survset/sksurv source with genomics_distribution='real', or outcome='teacher'")
        if self.signal_model == "abundance" and self.f_needle != 1.0:
            bad("f_needle applies to signal_model='mixture'",
                "signal_model='abundance' sets each case's share of signal patches itself (up to abundance_max)")
        if not 0.0 < self.abundance_max <= 1.0:
            bad(f"abundance_max={self.abundance_max} must lie in (0, 1]")
        if self.n_external < 0 or (0 < self.n_external < 2 * N_COMPONENTS) or self.n_external_sites < 1:
            bad(f"n_external={self.n_external} must be 0 or >= {2 * N_COMPONENTS}, n_external_sites >= 1")
        if self.n_external and not (src == "gaussian" or self.genomics_distribution == "gaussian_surrogate"):
            bad("an external cohort needs a source that can draw new rows",
                "use genomics_source='gaussian' or genomics_distribution='gaussian_surrogate' (real sets are "
                "too small: use repeated folds there)")
        if not self.encoder_name or any(c in self.encoder_name for c in "/\\"):
            bad(f"encoder_name={self.encoder_name!r} must be a plain, non-empty name")
        return self
