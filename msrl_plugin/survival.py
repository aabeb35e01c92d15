"""Discrete-time survival (MCAT / PORPOISE / SurvPath convention) and Harrell's c-index (scikit-survival's).

Sign convention, stated once: ``risk = -sum_j S_j``; **higher risk = earlier event** (scikit-survival's
convention). lifelines' ``concordance_index`` expects predicted *times*, so it must be given ``-risk``.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import BadInputError

EDGE_EPS = 1e-6


def fit_bin_edges(times: np.ndarray, censorship: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """Quantile edges ``(n_bins + 1,)`` of the *uncensored* times, outer edges widened to all times.

    Fit on training cases only; test times outside the range fall into the first/last bin.
    """
    times = np.asarray(times, dtype=np.float64)
    uncensored = times[np.asarray(censorship) == 0]
    if len(uncensored) < n_bins:
        raise BadInputError(f"only {len(uncensored)} events among the training cases; "
                            f"{n_bins} survival bins need at least {n_bins}",
                            fix="use fewer bins (--param n_bins=2) or a cohort with more events")
    edges = np.quantile(uncensored, np.linspace(0.0, 1.0, n_bins + 1))
    edges[0] = times.min() - EDGE_EPS
    edges[-1] = times.max() + EDGE_EPS
    if np.any(np.diff(edges) <= 0):
        raise BadInputError(f"event times have too few distinct values for {n_bins} quantile bins",
                            fix="use fewer bins (--param n_bins=2)")
    return edges


def assign_bins(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index per time: left-closed, right-open intervals; out-of-range times are clipped."""
    idx = np.searchsorted(edges, np.asarray(times, dtype=np.float64), side="right") - 1
    return np.clip(idx, 0, len(edges) - 2).astype(np.int64)


def survival_curve(logits: torch.Tensor) -> torch.Tensor:
    """``(B, n_bins)`` logits -> survival ``S_j = prod_{i<=j} (1 - sigmoid(logit_i))``."""
    return torch.cumprod(1.0 - torch.sigmoid(logits), dim=1)


def risk_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """``(B,)`` risk = -sum of the survival curve; higher = worse prognosis."""
    return -survival_curve(logits).sum(dim=1)


def nll_survival_loss(logits: torch.Tensor, bins: torch.Tensor, censorship: torch.Tensor,
                      alpha: float = 0.0, eps: float = 1e-7) -> torch.Tensor:
    """Discrete-time NLL (Zadeh & Schmid 2020), mean over the batch.

    ``logits`` (B, n_bins); ``bins`` (B,) int; ``censorship`` (B,) with 1 = censored.
    loss = (1 - alpha) * (censored + uncensored) + alpha * uncensored.
    """
    bins = bins.long().view(-1, 1)
    c = censorship.float().view(-1, 1)
    hazards = torch.sigmoid(logits)
    surv = torch.cumprod(1.0 - hazards, dim=1)
    surv_pad = torch.cat([torch.ones_like(c), surv], dim=1)
    s_before = torch.gather(surv_pad, 1, bins).clamp_min(eps)
    h_at = torch.gather(hazards, 1, bins).clamp_min(eps)
    s_at = torch.gather(surv_pad, 1, bins + 1).clamp_min(eps)
    uncensored = -(1.0 - c) * (torch.log(s_before) + torch.log(h_at))
    censored = -c * torch.log(s_at)
    loss = (1.0 - alpha) * (censored + uncensored) + alpha * uncensored
    return loss.mean()
