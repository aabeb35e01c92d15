"""torchmil's MIL models as baseline aggregators (``msrl-plugin[torchmil]``): ``transmil``, ``dsmil``, ``clam_sb``,
``dtfdmil``, ``patch_gcn`` (which reads each bag's patch coordinates too), for ``compare`` next to ``abmil`` and
``msrl`` (survival with our NLL head, or classification).

Each is the network of the ``abmil`` aggregator with its gated attention swapped for the torchmil model
(:mod:`msrl_plugin.nn.torchmil_encoders`): patches -> torchmil model -> case embedding ``h`` (hidden_dim) -> rho
(256, ReLU, dropout) -> task head, trained by the same loop (Adam, MCAT-style defaults). So the baselines differ
from ``abmil`` in the slide encoder alone, and the same encoder is one keyword away inside MSRL
(``--param wsi_encoder=transmil``). Without torchmil the names are still listed ("needs msrl-plugin[torchmil]")
and creating one is a one-line error.
"""
from __future__ import annotations

from numbers import Real
from typing import ClassVar

import torch
from sklearn.utils._param_validation import Interval
from torch import nn

from ..batching import BagBatch, CaseData, PatchCoords
from ..nn.abmil import ABMIL
from ..nn.torchmil_encoders import NEEDS_COORDS, TORCHMIL_MODELS, torchmil_available
from ..registry import register_aggregator
from ..wsi_encoders import TORCHMIL_EXTRA, build_wsi_encoder, check_wsi_encoder
from .base import Aggregator, store_init_args
from .params import PARAMETER_CONSTRAINTS


class EncoderMILAggregator(Aggregator):
    """A registered slide encoder + ABMIL's rho + the task head (the base of the torchmil baselines).

    Parameters
    ----------
    hidden_dim : int
        Width of the case embedding h the slide encoder returns.
    attn_dim : int or None
        Attention width of DSMIL, CLAM-SB and DTFD-MIL; None = hidden_dim // 2.
    dropout : float
        Dropout of the encoder's input map and of rho.
    aux_weight : float
        Weight of the task loss on the encoder's own one-logit scores (DSMIL's max instance, DTFD-MIL's
        pseudo-bags) through a scalar-score head, as the papers train those classifiers on the bag label.
    """

    encoder: ClassVar[str] = "abmil"
    _parameter_constraints: ClassVar[dict] = {**PARAMETER_CONSTRAINTS,
                                              "aux_weight": [Interval(Real, 0, None, closed="left")]}

    def __init__(self, hidden_dim: int = 512, attn_dim: int | None = None, dropout: float = 0.25,
                 aux_weight: float = 1.0, max_epochs: int = 20, lr: float = 2e-4, reg: float = 1e-5,
                 batch_size: int = 8, max_patches: int | None = 4096, n_bins: int = 4, alpha_surv: float = 0.0,
                 weighted_sample: bool = False, seed: int = 1, device: str = "auto", verbose: bool = False,
                 precision: str = "auto"):
        store_init_args(self, locals())

    def _warn_ignored(self) -> None:
        check_wsi_encoder(self.encoder, passes_coords=True)  # before any bag is read: without the extra, one line

    def _reads_coords(self) -> bool:
        return self.encoder in NEEDS_COORDS

    def _prepare_fit(self, cohort, scaler=None) -> CaseData:
        return self._with_coords(super()._prepare_fit(cohort, scaler))

    def _case_data(self, cohort) -> CaseData:
        return self._with_coords(super()._case_data(cohort))

    def _with_coords(self, data: CaseData) -> CaseData:
        if self._reads_coords():  # Patch-GCN: every batch carries its patches' positions
            data.coords = PatchCoords(data.bags)
            for i in range(len(data)):  # a bag without coords stops the run before any work
                data.coords[i]
        return data

    def _build_model(self, feature_dim: int, genomics_dim: int, n_outputs: int) -> nn.Module:
        pool = build_wsi_encoder(self.encoder, feature_dim, self.hidden_dim, self.attn_dim, self.dropout)
        model = ABMIL(feature_dim, n_outputs, self.hidden_dim, 0, 256, self.dropout, pool=pool)
        if self.encoder in ("dsmil", "dtfdmil"):
            model.aux_head = nn.Linear(1, n_outputs)  # a scalar score -> the task's logits
        return model

    def _forward(self, model: nn.Module, batch: BagBatch) -> torch.Tensor:
        if self._reads_coords():
            model.pool.coords = batch.coords
        return model(batch.x, batch.mask)[0]

    def _training_loss(self, model: nn.Module, batch: BagBatch) -> torch.Tensor:
        loss = self.task_.loss(self._forward(model, batch).float(), batch.targets)
        aux = getattr(model.pool, "aux_scores", None)
        if aux is not None and hasattr(model, "aux_head") and self.aux_weight > 0:
            terms = [self.task_.loss(model.aux_head(aux[:, m: m + 1].float()), batch.targets)
                     for m in range(aux.shape[1])]
            loss = loss + self.aux_weight * torch.stack(terms).mean()
        return loss


def _register(name: str) -> type:
    needs = "" if torchmil_available() else f" (needs {TORCHMIL_EXTRA})"
    doc = f"torchmil {TORCHMIL_MODELS[name]}{needs}.\n\n" + (EncoderMILAggregator.__doc__ or "").split("\n\n", 1)[1]
    cls_name = "".join(part.title() for part in name.split("_")) + "Aggregator"
    cls = type(cls_name, (EncoderMILAggregator,), {"__doc__": doc, "__module__": __name__, "encoder": name})
    globals()[cls_name] = cls  # importable and picklable under its own name
    return register_aggregator(name)(cls)


TORCHMIL_AGGREGATORS = {name: _register(name) for name in TORCHMIL_MODELS}
