"""How the genomic state U becomes a risk (the teacher) and a bag of patches (the world), for every cohort of a seed.

Two signal models (``shared/benchmark.md``: a default chosen on one generator is checked on another):

- ``hazard_form='linear'`` (default): ``eta = beta_v . U_vis + w_hidden * beta_h . U_hidden``, scaled to sd 0.8;
  ``'quadratic'`` adds ``(a . U_vis)^2 - 1`` (both extremes of one visible programme are bad), scaled with it.
- ``signal_model='mixture'`` (default): every (needle) patch's morphotype mixture ``softmax(W h + b)`` and a
  ``B h`` shift follow the WSI latent h(z); ``'abundance'``: only one rare signal morphotype carries h(z), through
  its share of the bag (up to ``abundance_max``) and its ``B h`` shift; the rest of the bag knows nothing of U.

The world (prototypes, W, b, B, lift, site shifts) is drawn from the seed's ``world`` stream in one fixed order, so
every cohort of a seed (training, external, a pan-cancer pool) shows the genomic state the same way.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .config import N_HIDDEN, CohortConfig

ETA_SD = 0.8
LATENT_DIM = 32  # patch latent before the lift to feature_dim
NUISANCE_SD = 1.0  # case-level morphotype variation unrelated to the genomic state
QUADRATIC_WEIGHT = 1.0  # the quadratic term's sd against the linear visible term's (both 1 before scaling)


def rng(seed: int, stream: str) -> np.random.Generator:
    """An independent, named random stream: changing one part of the generator leaves the others alone."""
    return np.random.default_rng([int(seed), zlib.crc32(stream.encode())])


@dataclass
class Teacher:
    """A log-hazard over the 16 components U; ``scale`` fixes sd(eta) = 0.8 on the cohort it was fitted on."""

    beta_v: np.ndarray  # (k_vis,) unit
    beta_h: np.ndarray  # (4,) unit
    w_hidden: float
    quad: np.ndarray | None = None  # (k_vis,) unit direction of the quadratic term, or None (linear)
    scale: float = 1.0

    @classmethod
    def draw(cls, cfg: CohortConfig, seed: int, stream: str = "teacher") -> Teacher:
        r = rng(seed, stream)
        beta_v = r.standard_normal(cfg.k_vis)
        beta_v /= np.linalg.norm(beta_v)
        beta_h = r.standard_normal(N_HIDDEN)
        beta_h /= np.linalg.norm(beta_h)
        quad = None
        if cfg.hazard_form == "quadratic":  # its own stream: the linear weights stay those of the linear form
            quad = rng(seed, stream + "/quadratic").standard_normal(cfg.k_vis)
            quad /= np.linalg.norm(quad)
        return cls(beta_v, beta_h, cfg.w_hidden, quad)

    def raw(self, U: np.ndarray) -> np.ndarray:
        k = len(self.beta_v)
        raw = U[:, :k] @ self.beta_v + self.w_hidden * (U[:, k:k + N_HIDDEN] @ self.beta_h)
        if self.quad is not None:
            raw = raw + QUADRATIC_WEIGHT * ((U[:, :k] @ self.quad) ** 2 - 1.0) / np.sqrt(2.0)
        return raw

    def fit_scale(self, U: np.ndarray) -> Teacher:
        self.scale = ETA_SD / self.raw(U).std(ddof=1)
        return self

    def eta(self, U: np.ndarray) -> np.ndarray:
        return self.raw(U) * self.scale

    def eta_wsi(self, z: np.ndarray, rho: float) -> np.ndarray:
        """E[eta | z]: U_vis | z ~ N(sqrt(rho) z, (1 - rho) I) and E[U_hidden | z] = 0."""
        out = self.scale * np.sqrt(rho) * (z @ self.beta_v)
        if self.quad is not None:  # E[(a.U)^2 | z] = rho (a.z)^2 + 1 - rho
            out = out + self.scale * QUADRATIC_WEIGHT * rho * ((z @ self.quad) ** 2 - 1.0) / np.sqrt(2.0)
        return out


@dataclass
class World:
    """The morphology of a seed: fixed random maps from h(z) to patch features (shapes in the field comments)."""

    centres: np.ndarray  # (M, k_vis) cluster centres of nonlinearity='cluster'
    prototypes: np.ndarray  # (M, L) morphotype prototypes
    W: np.ndarray  # (M, k_vis) mixture weights of the latent
    b: np.ndarray  # (M,) mixture bias
    B: np.ndarray  # (L, k_vis) latent-driven shift
    marker: np.ndarray  # (L,) what makes signal ("needle") patches look different
    lift: np.ndarray  # (L, D) to feature_dim
    site_shift: dict[str, np.ndarray]  # site -> (L,)
    signal_prototype: np.ndarray | None = None  # (L,) the abundance model's signal morphotype
    abundance_weights: np.ndarray | None = None  # (k_vis,) how h(z) sets its share of the bag

    @classmethod
    def draw(cls, cfg: CohortConfig, seed: int, site_names: list[str]) -> World:
        """The draw order is part of the generator's output: do not reorder (cohorts would change)."""
        world = rng(seed, "world")
        L, M, k = min(LATENT_DIM, cfg.feature_dim), cfg.n_morphotypes, cfg.k_vis
        centres = world.standard_normal((M, k))
        prototypes = world.standard_normal((M, L))
        W = world.standard_normal((M, k))
        b = world.normal(0.0, 0.5, M)
        B = world.standard_normal((L, k)) * cfg.shift_scale / np.sqrt(k)
        marker = world.standard_normal(L)
        lift = world.standard_normal((L, cfg.feature_dim)) / np.sqrt(L)
        shifts = world.standard_normal((len(site_names), L)) * cfg.sigma_site
        out = cls(centres, prototypes, W, b, B, marker, lift, dict(zip(site_names, shifts)))
        if cfg.signal_model == "abundance":
            extra = rng(seed, "world/abundance")
            out.signal_prototype = extra.standard_normal(L)
            a = extra.standard_normal(k)
            out.abundance_weights = a / np.linalg.norm(a)
        return out

    def add_sites(self, names: list[str], sigma_site: float, r: np.random.Generator) -> None:
        """Shifts of sites unseen so far (an external cohort's, a pool's), from their own stream."""
        new = [s for s in names if s not in self.site_shift]
        for s, shift in zip(new, r.standard_normal((len(new), self.prototypes.shape[1])) * sigma_site):
            self.site_shift[s] = shift

    def nonlinearity(self, z: np.ndarray, cfg: CohortConfig) -> tuple[np.ndarray, np.ndarray | None]:
        """h(z) the bag generator sees, and cluster ids for 'cluster' (else None)."""
        if cfg.nonlinearity == "tanh":
            return np.tanh(1.5 * z), None
        if cfg.nonlinearity == "cluster":
            cluster = ((z[:, None, :] - self.centres[None]) ** 2).sum(-1).argmin(axis=1)
            return self.centres[cluster], cluster
        return z, None


def draw_bags(h: np.ndarray, site: np.ndarray, slide_ids: np.ndarray, cfg: CohortConfig, world: World,
              r: np.random.Generator, grid_coords, offset: np.ndarray | None = None):
    """slide_id -> (features (N, D) float32, coords (N, 2) int64), and level-0 slide sizes.

    ``offset``: an optional ``(n, L)`` per-case latent shift (a pan-cancer pool's tissue of origin).
    """
    M, D = cfg.n_morphotypes, cfg.feature_dim
    bags, dims = {}, {}
    for i, slide in enumerate(slide_ids):
        n = int(r.integers(cfg.bag_min, cfg.bag_max + 1))
        nuisance = r.standard_normal(M) * NUISANCE_SD
        if cfg.signal_model == "abundance":
            latent, needle = _abundance_latent(h[i], n, nuisance, cfg, world, r)
        else:
            latent, needle = _mixture_latent(h[i], n, nuisance, cfg, world, r)
        latent += world.site_shift[site[i]]  # two in-place sums: the float order of the first generator
        latent += cfg.case_noise * r.standard_normal(latent.shape[1])
        if offset is not None:
            latent += offset[i]
        latent[needle] += world.B @ h[i] + world.marker
        feats = latent @ world.lift + cfg.sigma_p * r.standard_normal((n, D))
        coords, dims[slide] = grid_coords(n, r)
        bags[slide] = (feats.astype(np.float32), coords)
    return bags, dims


def _mixture_latent(h_i, n, nuisance, cfg: CohortConfig, world: World, r: np.random.Generator):
    M = cfg.n_morphotypes
    n_needle = n if cfg.f_needle >= 1.0 else max(1, round(cfg.f_needle * n))
    needle = np.zeros(n, dtype=bool)
    needle[r.permutation(n)[:n_needle]] = True
    u = r.random(n)
    m_signal = np.searchsorted(np.cumsum(_softmax(world.W @ h_i + world.b + nuisance)), u * (1 - 1e-12))
    m_background = np.searchsorted(np.cumsum(_softmax(world.b + nuisance)), u * (1 - 1e-12))
    morph = np.where(needle, m_signal, m_background).clip(0, M - 1)
    return world.prototypes[morph], needle


def _abundance_latent(h_i, n, nuisance, cfg: CohortConfig, world: World, r: np.random.Generator):
    """A background mixture that knows nothing of h; a share ``abundance_max * sigmoid(1.5 a.h)`` of signal
    patches (the signal morphotype, shifted by ``B h`` in :func:`draw_bags`)."""
    M = cfg.n_morphotypes
    share = cfg.abundance_max / (1.0 + np.exp(-1.5 * float(world.abundance_weights @ h_i)))
    needle = np.zeros(n, dtype=bool)
    needle[r.permutation(n)[:max(1, round(share * n))]] = True
    u = r.random(n)
    morph = np.searchsorted(np.cumsum(_softmax(world.b + nuisance)), u * (1 - 1e-12)).clip(0, M - 1)
    latent = world.prototypes[morph]
    latent[needle] = world.signal_prototype
    return latent, needle


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()
