"""ABMIL baseline: gated attention MIL (CLAM 'small' sizes) with a survival or classification head."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..batching import BagBatch, collate
from ..cohort import Cohort
from ..errors import MSRLPluginError
from ..nn.abmil import ABMIL
from ..registry import register_aggregator
from .base import Aggregator, store_init_args


class AttentionMixin:
    """Per-patch attention for aggregators whose model has ``.pool`` (a GatedAttentionPool)."""

    def _attention_pool(self) -> nn.Module:
        return self.model_.pool

    @torch.no_grad()
    def attention_scores(self, cohort: Cohort) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """``case_id -> (softmax attention (N,), coords (N, 2) or None)`` in the bag's patch order."""
        data = self._case_data(cohort)
        pool = self._attention_pool()
        self.model_.eval()
        out = {}
        for i, case_id in enumerate(data.case_ids):
            batch = collate(data, torch.tensor([i])).to(self._device())
            _, scores = pool(batch.x, batch.mask)
            if scores is None:
                raise MSRLPluginError(f"model {self.name!r}: its slide encoder has no per-patch attention",
                                      fix="attention heatmaps need wsi_encoder=abmil")
            coords = cohort.load_bag(case_id).coords
            out[case_id] = (torch.softmax(scores[0], dim=0).cpu().numpy(), coords)
        return out


@register_aggregator("abmil")
class ABMILAggregator(AttentionMixin, Aggregator):
    """Gated-attention ABMIL (Ilse et al. 2018; CLAM small: D -> 512 -> attention 256, dropout 0.25).

    Defaults follow MCAT's training conventions (Adam lr 2e-4, weight decay 1e-5, 20 epochs, NLL
    alpha 0); bags are trained in mini-batches of ``batch_size`` (padding costs no compute) with a random
    subsample of at most ``max_patches`` patches per bag per step (the full bag at inference);
    ``precision='auto'`` trains under bfloat16 autocast where the hardware runs it natively, else float32.

    Parameters
    ----------
    hidden_dim : int
        Width of the layer after the patch features (CLAM small: 512).
    attn_dim : int
        Width of the gated-attention branches (CLAM small: 256).
    dropout : float
        Dropout rate after the first layer and in the attention.
    batch_patches : int or None
        At most this many patches (after the ``max_patches`` cap) in one float32 forward/backward pass, twice as
        many under bf16: a larger batch runs in chunks whose gradients add up to the batch's (the same loss, one
        optimiser step per batch), so realistic bags (thousands of 1024-d patches) never build a step far past
        the CPU caches while small bags still batch whole; None = the whole batch at once.
    """

    def __init__(self, hidden_dim: int = 512, attn_dim: int = 256, dropout: float = 0.25,
                 max_epochs: int = 20, lr: float = 2e-4, reg: float = 1e-5, batch_size: int = 8,
                 max_patches: int | None = 4096, n_bins: int = 4, alpha_surv: float = 0.0,
                 weighted_sample: bool = False, seed: int = 1, device: str = "auto", verbose: bool = False,
                 precision: str = "auto", batch_patches: int | None = 2048):
        store_init_args(self, locals())

    def _build_model(self, feature_dim: int, genomics_dim: int, n_outputs: int) -> nn.Module:
        return ABMIL(feature_dim, n_outputs, self.hidden_dim, self.attn_dim, dropout=self.dropout)

    def _forward(self, model: nn.Module, batch: BagBatch) -> torch.Tensor:
        return model(batch.x, batch.mask)[0]
