"""Generated-genomics baselines: WSI-only at test, genomics predicted from the slide, then fused.

method.md §9.5 (G-HANet) and §9.6 (LD-CVAE).

``recon_fusion`` (G-HANet-style) regresses genomics from the WSI representation; ``cvae_fusion``
(LD-CVAE-style) generates them with a conditional VAE. Both use real genomics only as a training target
(where a training case has them) and never read genomics in ``predict``: they are the "generated genomics"
competitors of MSRL's buffer of real genomics.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from ..batching import BagBatch, batches, collate
from ..cohort import Cohort
from ..nn.fusion import FUSIONS, CVAEFusionNetwork, ReconFusionNetwork, reconstruction_loss
from ..registry import register_aggregator
from .abmil import AttentionMixin
from .base import Aggregator, store_init_args
from .multimodal import check_choice


class GeneratedGenomicsAggregator(AttentionMixin, Aggregator):
    """Shared fit loop; ``_training_loss`` logs its terms per step, averaged per epoch into ``history_``.

    Parameters
    ----------
    fusion : {"concat", "bilinear"}
        How the WSI and genomic embeddings are fused (PORPOISE).
    omic_dim : int
        Width of the genomic SNN blocks.
    n_omic_blocks : int
        Blocks of the genomic SNN.
    snn_activation : str
        Activation of the genomic SNN.
    """

    uses_genomics = True
    genomics_at_test = False

    def fit(self, cohort: Cohort, progress: bool | None = None) -> GeneratedGenomicsAggregator:
        check_choice(self.name, "fusion", self.fusion, FUSIONS)
        data = self._prepare_fit(cohort)
        self.model_ = self._build_model(self.feature_dim_, len(self.genomics_columns_),
                                        self.task_.n_outputs).to(self._device())
        self._step_log: list[dict[str, float]] = []
        self._aux_restored: list[dict[str, float]] = []  # set by a resumed run (``_resume_extra``)
        self._train(self.model_, data, self._training_loss, progress=progress)
        for row, aux in zip(self.history_, self._aux_history(), strict=False):
            row.update(aux)
        return self

    def _epoch(self) -> int:
        """0-based epoch in training: ``_train`` appends a history row per finished epoch (resume-safe)."""
        return len(self.history_)

    def _log_step(self, row: dict[str, float]) -> None:
        self._step_log.append({**row, "epoch": self._epoch()})

    def _aux_history(self) -> list[dict[str, float]]:
        """Per-epoch means of the logged loss terms: epochs restored by a resume, then this run's."""
        out = list(self._aux_restored)
        for epoch in sorted({s["epoch"] for s in self._step_log}):
            steps = [s for s in self._step_log if s["epoch"] == epoch]
            out.append({k: _nanmean([s[k] for s in steps]) for k in steps[0] if k != "epoch"})
        return out

    def _resume_extra(self) -> dict[str, Any]:
        return {"_aux_restored": self._aux_history()}

    def _forward(self, model: nn.Module, batch: BagBatch) -> torch.Tensor:
        return model(batch.x, batch.mask)[0]

    def _attention_pool(self) -> nn.Module:
        return self.model_.wsi.pool

    @torch.no_grad()
    def predict_genomics(self, cohort: Cohort) -> pd.DataFrame:
        """Genomics generated from each case's WSI, in the training table's units: ``(n cases, G)`` frame."""
        data = self._case_data(cohort)
        self.model_.eval()
        out = []
        for index in batches(torch.arange(len(data)), self.batch_size):
            batch = collate(data, index).to(self._device())
            out.append(self.model_(batch.x, batch.mask)[1].float().cpu())
        generated = torch.cat(out) if out else torch.zeros(0, len(self.genomics_columns_))
        values = generated.numpy() * self.scaler_.std + self.scaler_.mean
        index = pd.Index(data.case_ids, name="case_id")
        return pd.DataFrame(values, index=index, columns=self.genomics_columns_)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]  # steps without genomics log NaN
    return float(np.mean(finite)) if finite else float("nan")


@register_aggregator("recon_fusion")
class ReconFusionAggregator(GeneratedGenomicsAggregator):
    """G-HANet-style: WSI -> predicted genomics -> fuse [h, SNN(g^)] -> head; WSI-only inference [B outline].

    ABMIL (D -> 512, attention 256) -> rho 256 = h; decoder h -> 256 -> G (LayerNorm, ELU) = g^ (standardised
    genomics); PORPOISE fusion head on (h, g^) with ``fusion='concat'|'bilinear'``. The head is trained on
    g^ (as at test), never on real genomics. Loss = task + ``recon_weight`` (0.3 [B]) x (MSE + mean
    (1 - cos)^``cosine_exponent`` (3 [B])), the reconstruction term on training cases with genomics only.
    [D]: one MLP decoder instead of G-HANet's six family tokens and cross-attention; training defaults
    as ABMIL (MCAT: Adam 2e-4, wd 1e-5, 20 epochs). ``history_`` rows carry ``recon_loss`` (unweighted).

    Parameters
    ----------
    decoder_dim : int
        Hidden width of the genomics decoder.
    recon_weight : float
        Weight of the reconstruction loss.
    cosine_exponent : float
        Exponent of the (1 - cos) reconstruction term.
    """

    def __init__(self, fusion: str = "concat", hidden_dim: int = 512, attn_dim: int = 256,
                 omic_dim: int = 256, n_omic_blocks: int = 2, decoder_dim: int = 256, dropout: float = 0.25,
                 snn_activation: str = "elu", recon_weight: float = 0.3, cosine_exponent: float = 3.0,
                 max_epochs: int = 20, lr: float = 2e-4, reg: float = 1e-5, batch_size: int = 8,
                 max_patches: int | None = 4096, n_bins: int = 4, alpha_surv: float = 0.0,
                 weighted_sample: bool = False, seed: int = 1, device: str = "auto", verbose: bool = False):
        store_init_args(self, locals())

    def _build_model(self, feature_dim: int, genomics_dim: int, n_outputs: int) -> nn.Module:
        return ReconFusionNetwork(feature_dim, genomics_dim, n_outputs, self.fusion, self.hidden_dim,
                                  self.attn_dim, self.omic_dim, self.n_omic_blocks, self.decoder_dim,
                                  self.dropout, self.snn_activation)

    def _training_loss(self, model: nn.Module, batch: BagBatch) -> torch.Tensor:
        logits, generated = model(batch.x, batch.mask)
        loss = self.task_.loss(logits, batch.targets)
        has = batch.has_genomics
        recon_loss = float("nan")
        if bool(has.any()):  # real genomics are a target only where the case has them
            recon = reconstruction_loss(generated[has], batch.genomics[has], self.cosine_exponent)
            loss = loss + self.recon_weight * recon
            recon_loss = float(recon.detach())
        self._log_step({"recon_loss": recon_loss})
        return loss


@register_aggregator("cvae_fusion")
class CVAEFusionAggregator(GeneratedGenomicsAggregator):
    """LD-CVAE-style: a conditional VAE generates genomics from the WSI representation; then fusion [B].

    h = ABMIL -> rho 256; prior p(z|h), posterior q(z|h, g), decoder g^ = f(z, h) (``latent_dim`` 64 [D]).
    Training: z ~ q for cases with genomics, z ~ p for the others; loss = task + ``recon_weight`` x
    (MSE(g^, g) + beta_e x KL(q || p) / G) on cases with genomics (a per-gene Gaussian ELBO [D]), with
    beta_e = ``kl_weight`` x min(1, epoch / ``kl_warmup``) (warm-up 5 epochs [B]). Test: z = mean of
    p(z|h), deterministic and WSI-only. [D]: one latent instead of LD-CVAE's six function-specific ones and
    no VIB transformer; training defaults as ABMIL. ``history_`` rows carry ``recon_loss``, ``kl``, ``beta``.

    Parameters
    ----------
    latent_dim : int
        Width of the VAE latent z.
    decoder_dim : int
        Hidden width of the genomics decoder.
    recon_weight : float
        Weight of the VAE loss (reconstruction + KL).
    kl_weight : float
        Weight of the KL term after warm-up.
    kl_warmup : int
        Epochs of linear KL warm-up.
    """

    def __init__(self, fusion: str = "concat", hidden_dim: int = 512, attn_dim: int = 256,
                 omic_dim: int = 256, n_omic_blocks: int = 2, latent_dim: int = 64, decoder_dim: int = 256,
                 dropout: float = 0.25,
                 snn_activation: str = "elu", recon_weight: float = 1.0, kl_weight: float = 1.0,
                 kl_warmup: int = 5,
                 max_epochs: int = 20, lr: float = 2e-4, reg: float = 1e-5, batch_size: int = 8,
                 max_patches: int | None = 4096, n_bins: int = 4, alpha_surv: float = 0.0,
                 weighted_sample: bool = False, seed: int = 1, device: str = "auto", verbose: bool = False):
        store_init_args(self, locals())

    def _build_model(self, feature_dim: int, genomics_dim: int, n_outputs: int) -> nn.Module:
        return CVAEFusionNetwork(feature_dim, genomics_dim, n_outputs, self.fusion, self.hidden_dim,
                                 self.attn_dim, self.omic_dim, self.n_omic_blocks, self.latent_dim,
                                 self.decoder_dim, self.dropout, self.snn_activation)

    def kl_beta(self, epoch: int) -> float:
        """KL weight of epoch ``epoch`` (0-based): linear warm-up from 0 over ``kl_warmup`` epochs."""
        return self.kl_weight * (min(1.0, epoch / self.kl_warmup) if self.kl_warmup > 0 else 1.0)

    def _training_loss(self, model: nn.Module, batch: BagBatch) -> torch.Tensor:
        has = batch.has_genomics
        logits, generated, kl = model(batch.x, batch.mask, batch.genomics, has)
        loss = self.task_.loss(logits, batch.targets)
        beta = self.kl_beta(self._epoch())
        row: dict[str, float] = {"recon_loss": float("nan"), "kl": float("nan"), "beta": beta}
        if bool(has.any()):
            recon = F.mse_loss(generated[has], batch.genomics[has])
            kl_mean = kl[has].mean()
            loss = loss + self.recon_weight * (recon + beta * kl_mean / generated.shape[1])
            row.update(recon_loss=float(recon.detach()), kl=float(kl_mean.detach()))
        self._log_step(row)
        return loss
