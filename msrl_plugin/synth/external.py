"""More cases of one seed's population: an external test cohort and a pan-cancer pool (``shared/benchmark.md``).

- **External cohort** (``CohortConfig.n_external``): new genomic rows of the training cohort's population, put on
  its gene scale and its 16 PCA axes, the same teacher and the same morphology, at ``n_external_sites`` sites
  that the training cohort never saw (their own stain shift). Train small, test big.
- **Pan-cancer pool** (:func:`generate_pancancer_pool`): ``n_types - 1`` other cancer types (type 0 is the
  evaluated cohort and is never in the pool), sharing the genomic programme (the same population and axes) and
  how it shows in morphology (the same world), each with its own hazard weights, baseline median survival,
  tissue-of-origin look and sites. Every case is a fresh draw from streams of its own, so neither the evaluated
  cohort nor its external test cases are in it. Written with :func:`~.writer.write_cohort`, it is a cohort
  folder for ``msrl-plugin pretrain``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..errors import MSRLPluginError
from . import parts
from .config import N_COMPONENTS, CohortConfig
from .genomics import Projector, gaussian_rows, gaussian_surrogate, genomics_features, load_pool
from .parts import CohortTruth, SynthCohort
from .signal import LATENT_DIM, Teacher, World, draw_bags
from .signal import rng as _rng

BASELINE_MEDIAN_RANGE = (12.0, 96.0)  # months: each pool type's baseline median, log-uniform in this range


def _new_rows(cfg: CohortConfig, seed: int, n: int, stream: str) -> np.ndarray:
    """``(n, p)`` fresh raw rows of the cohort's population (Gaussian source or a real set's surrogate)."""
    if cfg.genomics_source != "gaussian" and cfg.genomics_distribution != "gaussian_surrogate":
        raise MSRLPluginError("new cases of this population need a source that can draw new rows",
                              None, "use genomics_source='gaussian' or genomics_distribution='gaussian_surrogate'")
    if cfg.genomics_source == "gaussian":
        return gaussian_rows(n, cfg.n_genes, _rng(seed, stream))
    return gaussian_surrogate(load_pool(cfg.genomics_source).genes, n, _rng(seed, stream))


def _balanced(names: list[str], n: int, r: np.random.Generator) -> np.ndarray:
    return np.array([names[k] for k in r.permutation(np.arange(n) % len(names))], dtype=object)


def external_cohort(train: SynthCohort, raw: np.ndarray, gene_names: list[str], teacher: Teacher | None,
                    world: World) -> SynthCohort:
    """The external test cohort of ``train`` (its ``n_external`` cases); ``raw`` are the training cohort's raw
    genomic rows (they fix the gene scale and the axes)."""
    cfg, seed, n = train.config, train.seed, train.config.n_external
    proj = Projector.fit(raw, N_COMPONENTS)
    values = proj.standardise(_new_rows(cfg, seed, n, "genomics/external"))
    U = proj.components(values)
    case_ids, slide_ids = parts.case_and_slide_ids("EXT", n)
    site = _balanced([f"external_site_{k}" for k in range(cfg.n_external_sites)], n, _rng(seed, "sites/external"))
    world.add_sites(sorted(set(site)), cfg.sigma_site, _rng(seed, "sites/external/shift"))
    cases = pd.DataFrame({"case_id": case_ids, "slide_id": slide_ids})
    if teacher is not None:
        eta = teacher.eta(U)
        if cfg.task == "survival":
            time, event = parts.survival_times(eta, cfg, _rng(seed, "times/external"))
            cases["survival_months"], cases["censorship"] = time, 1 - event
        else:  # the training cohort's threshold: one label definition for both cohorts
            cases["label"] = (eta > np.median(train.truth.eta.to_numpy())).astype(np.int64)
    cases["site"] = site
    z = np.sqrt(cfg.rho) * U[:, :cfg.k_vis] + np.sqrt(1 - cfg.rho) * _rng(seed, "latent/external").standard_normal(
        (n, cfg.k_vis))
    h, cluster = world.nonlinearity(z, cfg)
    bags, dims = draw_bags(h, site, slide_ids, cfg, world, _rng(seed, "bags/external"), parts._grid_coords)
    genomics = genomics_features(values, gene_names, cfg.genomics_form, cfg.d_g, _rng(seed, "form"))
    genomics.index = pd.Index(case_ids, name="case_id")
    ext_cfg = dataclasses.replace(cfg, n_cases=n, n_external=0, n_sites=cfg.n_external_sites)
    return SynthCohort(ext_cfg, seed, cases, genomics, bags, [], parts.make_truth(cases, U, z, cluster, teacher, cfg),
                       dims)


def generate_pancancer_pool(config: CohortConfig, seed: int = 0, n_types: int = 5, n_cases: int = 3000,
                            tissue_shift: float = 0.5) -> SynthCohort:
    """``n_cases`` cases of cancer types 1..n_types-1 for the evaluated cohort ``(config, seed)`` (type 0).

    Each type: hazard weights from its own stream (``hazard_form`` as configured), a baseline median survival
    log-uniform in 12-96 months, ``n_sites`` sites of its own and a tissue-of-origin shift of the patch latent
    (sd ``tissue_shift``). ``cases`` carries a ``cancer_type`` column; ``folds`` is empty (a pre-training pool).
    """
    cfg = config.validate()
    if n_types < 2 or n_cases < 2 * N_COMPONENTS * (n_types - 1):
        raise MSRLPluginError(f"a pool of {n_cases} cases over {n_types - 1} other type(s) is too small",
                              None, f"use n_types >= 2 and n_cases >= {2 * N_COMPONENTS} per type")
    raw_train, gene_names, study, _ = parts._genomic_rows(cfg, seed)
    if study is not None:
        raise MSRLPluginError("a pan-cancer pool needs a source that can draw new rows", None,
                              "use genomics_source='gaussian' or genomics_distribution='gaussian_surrogate'")
    proj = Projector.fit(raw_train, N_COMPONENTS)
    gene_names = [g for g, k in zip(gene_names, proj.keep) if k]
    world = World.draw(cfg, seed, sorted(set(parts.training_sites(cfg, seed, None))))

    values = proj.standardise(_new_rows(cfg, seed, n_cases, "genomics/pool"))
    U = proj.components(values)
    ctype = 1 + _rng(seed, "pool/types").permutation(np.arange(n_cases) % (n_types - 1))
    case_ids, slide_ids = parts.case_and_slide_ids("PAN", n_cases)
    site_draw = _rng(seed, "pool/sites").integers(0, cfg.n_sites, n_cases)
    site = np.array([f"type{t}_site_{k}" for t, k in zip(ctype, site_draw)], dtype=object)
    world.add_sites(sorted(set(site)), cfg.sigma_site, _rng(seed, "sites/pool"))
    L = min(LATENT_DIM, cfg.feature_dim)
    tissue = _rng(seed, "pool/tissue").standard_normal((n_types, L)) * tissue_shift
    z = np.sqrt(cfg.rho) * U[:, :cfg.k_vis] + np.sqrt(1 - cfg.rho) * _rng(seed, "latent/pool").standard_normal(
        (n_cases, cfg.k_vis))
    h, cluster = world.nonlinearity(z, cfg)

    cases = pd.DataFrame({"case_id": case_ids, "slide_id": slide_ids})
    eta, eta_wsi = np.zeros(n_cases), np.zeros(n_cases)
    time, event, label = np.zeros(n_cases), np.zeros(n_cases, np.int64), np.zeros(n_cases, np.int64)
    for t in range(1, n_types):
        rows = ctype == t
        teacher = Teacher.draw(cfg, seed, f"teacher/type{t}").fit_scale(U[rows])
        eta[rows], eta_wsi[rows] = teacher.eta(U[rows]), teacher.eta_wsi(z[rows], cfg.rho)
        lo, hi = np.log(BASELINE_MEDIAN_RANGE)
        median = float(np.exp(_rng(seed, f"baseline/type{t}").uniform(lo, hi)))
        time[rows], event[rows] = parts.survival_times(eta[rows], cfg, _rng(seed, f"times/type{t}"), median)
        label[rows] = eta[rows] > np.median(eta[rows])
    if cfg.task == "survival":
        cases["survival_months"], cases["censorship"] = time, 1 - event
    else:
        cases["label"] = label
    cases["site"] = site
    cases["cancer_type"] = [f"type{t}" for t in ctype]
    bags, dims = draw_bags(h, site, slide_ids, cfg, world, _rng(seed, "bags/pool"), parts._grid_coords,
                           offset=tissue[ctype])
    genomics = genomics_features(values, gene_names, cfg.genomics_form, cfg.d_g, _rng(seed, "form"))
    genomics.index = pd.Index(case_ids, name="case_id")
    index = pd.Index(case_ids, name="case_id")
    truth = CohortTruth(pd.DataFrame(U, index=index, columns=[f"U{j}" for j in range(N_COMPONENTS)]),
                        pd.DataFrame(z, index=index, columns=[f"z{j}" for j in range(cfg.k_vis)]),
                        pd.Series(eta, index=index, name="eta"), pd.Series(eta_wsi, index=index, name="eta_wsi"))
    pool_cfg = dataclasses.replace(cfg, n_cases=n_cases, n_external=0)
    return SynthCohort(pool_cfg, int(seed), cases, genomics, bags, [], truth, dims)


def with_external(synth: SynthCohort) -> tuple[SynthCohort, list[str], list[str]]:
    """One cohort holding the training and the external cases (for ``compare``-style scoring), the training
    case ids and the external case ids."""
    ext = synth.external
    if ext is None:
        raise MSRLPluginError("this cohort has no external test cohort", None, "generate it with n_external > 0")
    cases = pd.concat([synth.cases, ext.cases], ignore_index=True)
    truth = CohortTruth(pd.concat([synth.truth.components, ext.truth.components]),
                        pd.concat([synth.truth.latent, ext.truth.latent]),
                        None if synth.truth.eta is None else pd.concat([synth.truth.eta, ext.truth.eta]),
                        None if synth.truth.eta is None else pd.concat([synth.truth.eta_wsi, ext.truth.eta_wsi]))
    both = SynthCohort(synth.config, synth.seed, cases, pd.concat([synth.genomics, ext.genomics]),
                       {**synth.bags, **ext.bags}, [], truth, {**synth.slide_dims, **ext.slide_dims})
    return both, synth.case_ids, ext.case_ids
