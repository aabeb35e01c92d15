"""A third-party aggregator: the mean of a bag's patch features -> MLP -> the task head.

Registered through the ``msrl_plugin.aggregators`` entry point (see pyproject.toml), so it needs no
change to msrl-plugin: the base class supplies training (Adam, fixed epochs), prediction, survival or
classification heads and losses, metrics, checkpoints and resume.

Its ``build_wsi_encoder`` classmethod also lends the slide encoder to MSRL under the same name: ``msrl-plugin
train --model msrl --param wsi_encoder=meanpool`` pre-trains and fine-tunes MSRL around it (the contract is in
``msrl_plugin.wsi_encoders``: ``(x (B, N, D), mask (B, N)) -> (h (B, out_dim), per-patch scores or None)``).
"""
from __future__ import annotations

import torch
from torch import nn

from msrl_plugin.aggregators.base import Aggregator, store_init_args
from msrl_plugin.batching import BagBatch


class MeanPoolMIL(nn.Module):
    """``x`` (B, N, D) + ``mask`` (B, N) -> logits (B, n_outputs): masked mean over patches, then an MLP."""

    def __init__(self, in_dim: int, n_outputs: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, n_outputs))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.mlp(pooled)


class MeanPoolEncoder(nn.Module):
    """The slide-encoder half: masked mean over patches -> Linear(D, out_dim) -> ReLU -> dropout."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Dropout(dropout))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if mask is None:
            return self.proj(x.mean(1)), None
        weights = mask.unsqueeze(-1).to(x.dtype)
        return self.proj((x * weights).sum(1) / weights.sum(1).clamp(min=1.0)), None  # no attention scores


class MeanPoolAggregator(Aggregator):
    """Mean pooling of patch features + an MLP (a bag-level baseline without attention)."""

    def __init__(self, hidden_dim: int = 128, dropout: float = 0.25, max_epochs: int = 20, lr: float = 2e-4,
                 reg: float = 1e-5, batch_size: int = 8, max_patches: int | None = 4096, n_bins: int = 4,
                 alpha_surv: float = 0.0, seed: int = 1, device: str = "auto", verbose: bool = False):
        store_init_args(self, locals())  # scikit-learn style: every keyword kept as an attribute

    def _build_model(self, feature_dim: int, genomics_dim: int, n_outputs: int) -> nn.Module:
        return MeanPoolMIL(feature_dim, n_outputs, self.hidden_dim, self.dropout)

    def _forward(self, model: nn.Module, batch: BagBatch) -> torch.Tensor:
        return model(batch.x, batch.mask)

    @classmethod
    def build_wsi_encoder(cls, in_dim: int, out_dim: int, attn_dim: int | None, dropout: float) -> nn.Module:
        """MSRL's ``wsi_encoder="meanpool"``: bags -> ``(B, out_dim)`` case embeddings (attn_dim is unused)."""
        return MeanPoolEncoder(in_dim, out_dim, dropout)
