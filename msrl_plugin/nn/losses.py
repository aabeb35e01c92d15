"""Contrastive (InfoNCE) and structure-alignment (balanced BCE) losses, method.md §3 and §5.3."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Symmetric InfoNCE over N paired rows; row i of ``a`` and row i of ``b`` are the positive pair.

    Cosine logits / temperature, cross-entropy with the positive *included* in the denominator [D, matches
    the MSRL formula], mean over rows, averaged over the a->b and b->a directions. temperature [S: 0.2].

    Shapes: ``a, b (N, d) -> ()``.
    """
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t() / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def balanced_bce(
    prob: torch.Tensor,
    target_adj: torch.Tensor,
    eps: float = 1e-6,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-balanced BCE between online edge probabilities and the target graph's edge pattern [P].

    Y = 1[target_adj > 0]; c1 = #{Y = 1}, c0 = #{Y = 0} (per call, over the valid entries);
    alpha0 = (c0 + c1) / (2 c0), alpha1 = (c0 + c1) / (2 c1);
    L = -mean(alpha1 Y log P + alpha0 (1 - Y) log(1 - P)), P clamped to [eps, 1 - eps] [D: 1e-6].
    A class with no entries has its term dropped (no NaN). Passing a raw cosine as ``prob`` acts as
    ReLU + clamp (negative values are clamped to eps).

    Args:
        prob: (B, M) online edge probabilities, e.g. the dense learner similarity [D].
        target_adj: (B, M) target adjacency; only its sign pattern is used (no gradient).
        valid: optional (B, M) bool; entries outside it (e.g. edges forbidden by the graph masks) are ignored.
    Returns a scalar.
    """
    if prob.shape != target_adj.shape:
        raise ValueError(
            f"prob and target_adj shapes differ: {tuple(prob.shape)} vs {tuple(target_adj.shape)}"
        )
    y = (target_adj.detach() > 0).to(prob.dtype)
    w = torch.ones_like(y) if valid is None else valid.to(prob.dtype)
    c1 = (y * w).sum()
    c0 = ((1 - y) * w).sum()
    n = c0 + c1
    alpha1 = torch.where(c1 > 0, n / (2 * c1.clamp_min(1)), torch.zeros_like(c1))
    alpha0 = torch.where(c0 > 0, n / (2 * c0.clamp_min(1)), torch.zeros_like(c0))
    p = prob.clamp(eps, 1 - eps)
    per_entry = alpha1 * y * torch.log(p) + alpha0 * (1 - y) * torch.log1p(-p)
    return -(per_entry * w).sum() / n.clamp_min(1)


def info_nce_with_bank(query: torch.Tensor, positive: torch.Tensor, bank: torch.Tensor,
                       bank_allowed: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """One-directional InfoNCE of ``query`` against its ``positive`` with extra negatives from a memory bank.

    Row i's logits are cos(q_i, p_j) / t over the batch's positives j and cos(q_i, bank_r) / t over the bank
    rows r with ``bank_allowed[i, r]`` (MoCo-style negatives, e.g. the buffer's real genomic embeddings of
    other cases); cross-entropy with target i [D]. With no allowed bank row this is the a -> b half of
    :func:`info_nce`.

    Shapes: ``query, positive (N, d), bank (K, d), bank_allowed (N, K) bool -> ()``.
    """
    q = F.normalize(query, dim=1)
    batch_logits = q @ F.normalize(positive, dim=1).t() / temperature
    bank_logits = (q @ F.normalize(bank, dim=1).t() / temperature).masked_fill(~bank_allowed, float("-inf"))
    labels = torch.arange(query.shape[0], device=query.device)
    return F.cross_entropy(torch.cat([batch_logits, bank_logits], dim=1), labels)
