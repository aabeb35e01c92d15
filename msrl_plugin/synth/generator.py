"""One ``(CohortConfig, seed)`` -> one semi-synthetic multimodal cohort, in memory (``shared/benchmark.md``).

Genomic state U (16 unit-variance PCA scores of real or Gaussian rows) drives both the outcome and the WSI:

- teacher: ``eta = beta_v . U[:, :k_vis] + w_hidden * beta_h . U[:, k_vis:k_vis+4]``, scaled to sd 0.8;
  ``T ~ Weibull(shape, scale e^-eta)`` (exponential by default), so a higher eta is a higher risk;
- WSI latent ``z = sqrt(rho) U[:, :k_vis] + sqrt(1 - rho) noise``; each bag is a mixture of morphotypes
  ``softmax(W h(z) + b + nuisance)`` plus a ``B h(z)`` shift on the "needle" patches, a site shift, noise,
  lifted to D by a fixed projection. Bag size, coords, site and missing genomics are drawn independently
  of U, so at rho = 0 the WSI carries no outcome information.

The second signal model (``hazard_form='quadratic'``, ``signal_model='abundance'``) is in :mod:`.signal`; an
external test cohort and a pan-cancer pool of the same population in :mod:`.external`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import MSRLPluginError
from .config import N_COMPONENTS, CohortConfig
from .genomics import (
    genomics_features,
    principal_components,
    standardise,
)
from .parts import (
    SynthCohort,
    _genomic_rows,
    _grid_coords,
    case_and_slide_ids,
    make_truth,
    survival_times,
    training_sites,
)
from .signal import ETA_SD, Teacher, World, draw_bags  # noqa: F401 (ETA_SD: kept importable here)
from .signal import rng as _rng


def generate_cohort(config: CohortConfig, seed: int = 0) -> SynthCohort:
    """Generate the cohort of ``(config, seed)``; the same pair always gives identical arrays.

    With ``n_external`` > 0 the cohort also carries ``external``: a test cohort of that many cases from the same
    population and signal at held-out sites (:mod:`.external`); the training cohort is the same either way.
    """
    cfg = config.validate()
    n = cfg.n_cases
    if seed < 0:
        raise MSRLPluginError(f"seed={seed} must be >= 0")

    raw, gene_names, study, real = _genomic_rows(cfg, seed)
    values, keep = standardise(raw, study)
    gene_names = [g for g, k in zip(gene_names, keep) if k]
    U = principal_components(values, N_COMPONENTS)
    case_ids, slide_ids = case_and_slide_ids("SYN", n)
    site = training_sites(cfg, seed, study)

    cases = pd.DataFrame({"case_id": case_ids, "slide_id": slide_ids})
    teacher = None
    if cfg.outcome == "teacher":
        teacher = Teacher.draw(cfg, seed).fit_scale(U)
        eta = teacher.eta(U)
        if cfg.task == "survival":
            time, event = survival_times(eta, cfg, _rng(seed, "times"))
            cases["survival_months"], cases["censorship"] = time, 1 - event
        else:
            cases["label"] = (eta > np.median(eta)).astype(np.int64)
    elif cfg.task == "survival":
        cases["survival_months"], cases["censorship"] = real["time"], 1 - real["event"]
    else:
        cases["label"] = real["er"]
    cases["site"] = site

    world = World.draw(cfg, seed, sorted(set(site)))
    z = np.sqrt(cfg.rho) * U[:, :cfg.k_vis] + np.sqrt(1 - cfg.rho) * _rng(seed, "latent").standard_normal(
        (n, cfg.k_vis))
    h, cluster = world.nonlinearity(z, cfg)
    bags, dims = draw_bags(h, site, slide_ids, cfg, world, _rng(seed, "bags"), _grid_coords)

    genomics = genomics_features(values, gene_names, cfg.genomics_form, cfg.d_g, _rng(seed, "form"))
    genomics.index = pd.Index(case_ids, name="case_id")
    n_missing = round(cfg.missing_genomics_rate * n)
    if n_missing:
        gone = _rng(seed, "missing").choice(n, n_missing, replace=False)
        genomics = genomics.drop(index=case_ids[np.sort(gone)])

    folds = _folds(cases, cfg, _rng(seed, "folds"))
    truth = make_truth(cases, U, z, cluster, teacher, cfg)
    synth = SynthCohort(cfg, int(seed), cases, genomics, bags, folds, truth, dims)
    if cfg.n_external:
        from .external import external_cohort

        synth.external = external_cohort(synth, raw, gene_names, teacher, world)
    return synth


# -- pieces ------------------------------------------------------------------------------------


def _folds(cases: pd.DataFrame, cfg: CohortConfig, rng: np.random.Generator):
    ids = cases["case_id"].to_numpy()
    if cfg.site_held_out:
        sites = sorted(cases["site"].unique())
        if len(sites) < 2:
            raise MSRLPluginError("site-held-out folds need at least 2 sites", None,
                                  "set n_sites >= 2 or site_held_out=False")
        return [(ids[(cases["site"] != s).to_numpy()], ids[(cases["site"] == s).to_numpy()]) for s in sites]
    from sklearn.model_selection import StratifiedKFold

    strata = 1 - cases["censorship"].to_numpy() if cfg.task == "survival" else cases["label"].to_numpy()
    if np.bincount(strata).min() < cfg.k_folds:  # too few of a class to stratify: plain shuffled folds
        strata = np.zeros_like(strata)
    splitter = StratifiedKFold(cfg.k_folds, shuffle=True, random_state=int(rng.integers(2**31 - 1)))
    return [(ids[tr], ids[te]) for tr, te in splitter.split(ids, strata)]
