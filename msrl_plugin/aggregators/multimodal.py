"""Multimodal references that read genomics at test: ``snn`` (genomics only) and ``fusion`` (PORPOISE MMF).

They are the upper references of the benchmark (method.md §9.2, §9.3), not WSI-only models: every case they
predict needs a genomics row. Training keeps the cases that have genomics (the others are dropped with a
warning, as PORPOISE trains on complete cases); prediction refuses cases without genomics rather than
silently guessing (``fusion`` can opt into mean imputation with ``missing_genomics='impute_mean'``).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..batching import BagBatch, CaseData
from ..cohort import Cohort
from ..errors import BadInputError
from ..nn.abmil import init_xavier
from ..nn.fusion import FUSIONS, LateFusionNetwork
from ..nn.snn import SNN
from ..registry import register_aggregator
from .abmil import AttentionMixin
from .base import Aggregator, store_init_args
from .params import MISSING_GENOMICS


def check_choice(model: str, key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise BadInputError(f"model {model!r}: {key}={value!r} is not one of {', '.join(choices)}",
                            fix=f"pass --param {key}={choices[0]}")


class GenomicsRequiredMixin:
    """Training drops cases without genomics (with a warning); prediction raises on them.

    ``missing_genomics='impute_mean'`` (where a model offers it) keeps them instead, with standardised
    genomics of zero, i.e. the training mean.
    """

    def _imputes(self) -> bool:
        return getattr(self, "missing_genomics", "error") == "impute_mean"

    def fit(self, cohort: Cohort, progress: bool | None = None) -> Aggregator:
        policy = getattr(self, "missing_genomics", "error")
        check_choice(self.name, "missing_genomics", policy, MISSING_GENOMICS)
        return super().fit(self._complete_cases(cohort), progress)

    def _complete_cases(self, cohort: Cohort) -> Cohort:
        has = cohort.has_genomics
        if self._imputes() or has.all() or not has.any():  # none at all: _prepare_fit names the fix
            return cohort
        missing = [c for c, h in zip(cohort.case_ids, has, strict=True) if not h]
        warnings.warn(f"model {self.name!r} needs genomics: {len(missing)} of {len(cohort)} training case(s) "
                      f"without a genomics row are left out of training (e.g. {missing[0]!r})", stacklevel=3)
        return cohort.subset([c for c, h in zip(cohort.case_ids, has, strict=True) if h])

    def _case_data(self, cohort: Cohort) -> CaseData:
        fix = ("pass --genomics with a row for every case, or predict these cases with a WSI-only model "
               "(abmil, msrl, recon_fusion, cvae_fusion)")
        if "missing_genomics" in self._get_param_names():
            fix += ", or retrain with --param missing_genomics=impute_mean"
        if cohort.genomics is None and not self._imputes():
            raise BadInputError(f"model {self.name!r} reads genomics at test time but the cohort has no "
                                f"genomics table: all {len(cohort)} case(s) lack genomics", fix=fix)
        data = super()._case_data(cohort)
        lacking = [c for c, h in zip(data.case_ids, data.has_genomics.tolist(), strict=True) if not h]
        if lacking and not self._imputes():
            raise BadInputError(f"model {self.name!r} reads genomics at test time; {len(lacking)} of "
                                f"{len(data)} case(s) lack a complete genomics row (e.g. {lacking[0]!r})",
                                fix=fix)
        return data


@register_aggregator("snn")
class SNNAggregator(GenomicsRequiredMixin, Aggregator):
    """Genomics-only self-normalising network (Klambauer et al. 2017) as in PORPOISE [B].

    ``n_blocks`` blocks of Linear ``hidden_dim`` -> ELU -> AlphaDropout(0.25) (PORPOISE 'small' = 2 x 256,
    ELU as the Mahmood-lab ``SNN_Block``), then Linear -> n_outputs. Training defaults as ABMIL (MCAT, §8).
    The WSI is not read; needs genomics for every case at training and at test.

    Parameters
    ----------
    hidden_dim : int
        Width of each SNN block.
    n_blocks : int
        SNN blocks.
    dropout : float
        AlphaDropout rate of each block.
    activation : str
        Activation of the blocks.
    """

    uses_genomics = True
    genomics_at_test = True

    def __init__(self, hidden_dim: int = 256, n_blocks: int = 2, dropout: float = 0.25,
                 activation: str = "elu", max_epochs: int = 20, lr: float = 2e-4, reg: float = 1e-5,
                 batch_size: int = 8, max_patches: int | None = 4096, n_bins: int = 4,
                 alpha_surv: float = 0.0, weighted_sample: bool = False, seed: int = 1, device: str = "auto",
                 verbose: bool = False):
        store_init_args(self, locals())

    def _build_model(self, feature_dim: int, genomics_dim: int, n_outputs: int) -> nn.Module:
        encoder = SNN(genomics_dim, [self.hidden_dim] * self.n_blocks, self.dropout, self.activation)
        classifier = nn.Linear(encoder.out_dim, n_outputs)
        init_xavier(classifier)
        return nn.Sequential(encoder, classifier)

    def _forward(self, model: nn.Module, batch: BagBatch) -> torch.Tensor:
        return model(batch.genomics)


@register_aggregator("fusion")
class LateFusionAggregator(GenomicsRequiredMixin, AttentionMixin, Aggregator):
    """ABMIL + SNN late fusion (PORPOISE MMF) [B], ``fusion='concat'`` or ``'bilinear'``.

    WSI: gated ABMIL (D -> 512, attention 256) -> rho 256. Genomics: SNN 2 x 256 (ELU, AlphaDropout 0.25).
    ``concat``: [h_path; h_omic] -> 256 -> 256 -> classifier. ``bilinear``: gated Kronecker fusion with dims
    scaled by 8 (33 x 33 outer product), skip connection, -> 256 -> classifier. Training defaults as ABMIL.
    ``missing_genomics``: ``'error'`` [D] (training drops cases without genomics with a warning; prediction
    raises on them) or ``'impute_mean'`` (they get the training mean of every genomic column, at training
    and at test: a degraded mode, not a WSI-only model).

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
    missing_genomics : {"error", "impute_mean"}
        Cases without genomics: dropped at training and an error at test, or given the training mean.
    """

    uses_genomics = True
    genomics_at_test = True

    def __init__(self, fusion: str = "concat", hidden_dim: int = 512, attn_dim: int = 256,
                 omic_dim: int = 256, n_omic_blocks: int = 2, dropout: float = 0.25,
                 snn_activation: str = "elu", missing_genomics: str = "error",
                 max_epochs: int = 20, lr: float = 2e-4, reg: float = 1e-5, batch_size: int = 8,
                 max_patches: int | None = 4096, n_bins: int = 4, alpha_surv: float = 0.0,
                 weighted_sample: bool = False, seed: int = 1, device: str = "auto", verbose: bool = False):
        store_init_args(self, locals())

    def fit(self, cohort: Cohort, progress: bool | None = None) -> LateFusionAggregator:
        check_choice(self.name, "fusion", self.fusion, FUSIONS)
        return super().fit(cohort, progress)

    def _build_model(self, feature_dim: int, genomics_dim: int, n_outputs: int) -> nn.Module:
        return LateFusionNetwork(feature_dim, genomics_dim, n_outputs, self.fusion, self.hidden_dim,
                                 self.attn_dim, self.omic_dim, self.n_omic_blocks, self.dropout,
                                 self.snn_activation)

    def _forward(self, model: nn.Module, batch: BagBatch) -> torch.Tensor:
        return model(batch.x, batch.mask, batch.genomics)

    def _attention_pool(self) -> nn.Module:
        return self.model_.wsi.pool
