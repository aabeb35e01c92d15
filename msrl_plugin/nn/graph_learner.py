"""Graph-structure learner (MSRL Algorithm 1 = SUBLIME attentive learner) and static kNN ablation graphs.

All graphs share one post-processing (method.md §1.3): top-(k+1) per row -> ReLU -> (A + A^T)/2 ->
D^-1/2 A D^-1/2. Masks are bool (N, N), True = edge allowed; forbidden entries are excluded *before* the
top-k so every row keeps k valid neighbours (method.md §12.4).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

_DEGREE_EPS = 1e-10  # [S] D = rowsum + 1e-10


class LearnedGraph(NamedTuple):
    """adj: (N, N) sparse-valued dense normalised adjacency; similarity: (N, N) dense pre-top-k similarity."""

    adj: torch.Tensor
    similarity: torch.Tensor


def topk_selection(sim: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bool (N, M) selection of the top-(k+1) entries per row (self included), never a forbidden one.

    k+1 is clamped to the number of columns; rows with fewer allowed entries keep only those. The selection
    is computed on detached values, so it is a constant for autograd.
    """
    scores = sim.detach()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    n_keep = min(k + 1, scores.shape[-1])
    idx = scores.topk(n_keep, dim=-1).indices
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)
    if mask is not None:
        keep &= mask  # rows with < k+1 allowed entries picked some -inf ones: drop them
    return keep


def symmetric_normalise(adj: torch.Tensor) -> torch.Tensor:
    """D^-1/2 A D^-1/2 with D = rowsum(A) + 1e-10; no self loops are added. (N, N) -> (N, N)."""
    inv_sqrt = (adj.sum(dim=-1) + _DEGREE_EPS).pow(-0.5)
    return inv_sqrt[..., :, None] * adj * inv_sqrt[..., None, :]


def sparsify_and_normalise(sim: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Top-(k+1) per row, ReLU, symmetrise, symmetric-normalise [S]. (N, N) similarity -> (N, N) adjacency.

    Gradients flow through the kept similarity values (the selection itself is constant).
    """
    keep = topk_selection(sim, k, mask)
    adj = F.relu(torch.where(keep, sim, torch.zeros_like(sim)))
    adj = (adj + adj.transpose(-1, -2)) / 2
    return symmetric_normalise(adj)


def cosine_similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """Row-L2-normalise then X X^T. (N, D) -> (N, N)."""
    e = F.normalize(x, p=2, dim=-1)
    return e @ e.transpose(-1, -2)


class GraphLearner(nn.Module):
    """Hadamard-weighted attentive graph learner (method.md §1) [P form, S init/depth].

    E^(l) = act(E^(l-1) * w^(l)) for l < L, E^(L) = E^(L-1) * w^(L); S = normalise(E^(L)) normalise(E^(L))^T;
    A_r = sparsify_and_normalise(S, k, mask).

    Args:
        dim: node feature dim D.
        n_layers: number of weight vectors L [S: 2].
        k: neighbours kept per row besides self [D: 10; sweep 5-20].
        activation: between layers, ``"tanh"`` [S: att learner on Citeseer/Pubmed; D default] or ``"relu"``.
        start: similarity over ``x[..., start:]`` only (``dim`` = its width) [D: 0, every feature].

    Shapes: ``forward(x (N, D), mask (N, N) bool | None) -> LearnedGraph(adj (N, N), similarity (N, N))``;
    a leading batch dim (B, N, D) builds B independent graphs.
    ``similarity`` is the raw dense cosine (may be negative), e.g. for the balanced BCE of method.md §5.3.
    """

    def __init__(self, dim: int, n_layers: int = 2, k: int = 10, activation: str = "tanh", start: int = 0):
        super().__init__()
        if activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be 'tanh' or 'relu', got {activation!r}")
        if n_layers < 1:
            raise ValueError("n_layers must be >= 1")
        self.dim, self.k, self.activation, self.start = dim, k, activation, start
        self.weights = nn.ParameterList([nn.Parameter(torch.ones(dim)) for _ in range(n_layers)])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Row-L2-normalised learner embedding E^(L) of the features ``x[..., start:]``. (N, start + dim) ->
        (N, dim). ``start`` > 0 builds the graph from a trailing block of the node features only (e.g. the WSI
        half h of concat(g, h))."""
        act = torch.tanh if self.activation == "tanh" else torch.relu
        h = x[..., self.start:]
        for i, w in enumerate(self.weights):
            h = h * w
            if i < len(self.weights) - 1:
                h = act(h)
        return F.normalize(h, p=2, dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> LearnedGraph:
        e = self.embed(x)
        sim = e @ e.transpose(-1, -2)
        return LearnedGraph(sparsify_and_normalise(sim, self.k, mask), sim)


def knn_graph(
    x: torch.Tensor, k: int, metric: str = "cosine", mask: torch.Tensor | None = None
) -> LearnedGraph:
    """Static kNN graph with the learner's post-processing (method.md §6, §12.7). (N, D) -> LearnedGraph.

    - ``"cosine"``: similarity = cosine, edge values = ReLU(cosine): the learner pipeline with w = 1, L = 1.
    - ``"euclidean"``: similarity = Gaussian kernel exp(-d^2 / median(d^2)) over off-diagonal pairs [D]. It is
      strictly decreasing in d, so the top-k equals the top-k of -distance, and its values lie in (0, 1]
      (self = 1), non-negative like ReLU(cosine).
    Gradients flow into ``x``; detach it for a fully fixed graph.
    """
    if metric == "cosine":
        sim = cosine_similarity_matrix(x)
    elif metric == "euclidean":
        sq = (x * x).sum(dim=-1)
        # cdist's sqrt has no gradient at 0, so square distances by hand
        d2 = (sq[..., :, None] + sq[..., None, :] - 2 * x @ x.transpose(-1, -2)).clamp_min(0)
        n = x.shape[-2]
        off = d2.detach()[..., ~torch.eye(n, dtype=torch.bool, device=x.device)]  # (..., N*(N-1))
        bandwidth = (off.median(dim=-1).values[..., None, None] if off.shape[-1]
                     else d2.new_ones(d2.shape[:-2] + (1, 1)))
        bandwidth = torch.where(bandwidth > 0, bandwidth, torch.ones_like(bandwidth))
        sim = torch.exp(-d2 / bandwidth)
    else:
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    return LearnedGraph(sparsify_and_normalise(sim, k, mask), sim)


class KNNGraph(nn.Module):
    """Parameter-free stand-in for :class:`GraphLearner` (same ``forward``), for the static-graph ablations.

    Args: k [D: 10, same as the learner], metric ``"cosine"`` | ``"euclidean"`` [P: both ablations], start: as
    :class:`GraphLearner` (the same features as the learned graph it replaces).
    """

    def __init__(self, k: int = 10, metric: str = "cosine", start: int = 0):
        super().__init__()
        self.k, self.metric, self.start = k, metric, start

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> LearnedGraph:
        return knn_graph(x[..., self.start:], self.k, self.metric, mask)
