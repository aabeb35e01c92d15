"""torchmil's MIL models as slide encoders: bag ``(B, N, D)`` -> case embedding ``h (B, d)`` (needs ``torchmil``).

Each model is torchmil's own (torchmil 1.0.2, used as a dependency, never copied) with its final bag classifier
replaced by the identity, so its forward returns the vector that classifier read: TransMIL's class token,
DSMIL's attention-weighted bag vector, CLAM-SB's attention-pooled vector, DTFD-MIL's tier-2 vector. Our task
head (survival NLL or cross-entropy) then sits on ``h``.

- Input: CLAM-SB, DSMIL and DTFD-MIL first map patches through ``feat_ext`` = Linear(D, d), ReLU, Dropout (CLAM's
  ``fc``), so ``h`` is d-wide; TransMIL maps D -> d with its own ``fc1`` (``att_dim = d``).
- Padding: torchmil's models do not all honour a mask (TransMIL has none, DSMIL's critical instance is an
  arg-max over padded rows too), so each bag runs alone over its real patches: ``(1, n_b, D)``.
- Label-driven internals: DSMIL's instance classifier (which picks the critical instance) and DTFD-MIL's tier-1
  classifier (which scores pseudo-bags and drives their Grad-CAM distillation) each give one logit. The wrapper
  keeps them and exposes those logits as ``aux_scores`` ``(B, M)``: DSMIL the max instance logit (M = 1, its
  max-pooling stream), DTFD-MIL one per pseudo-bag (M = n_groups). The aggregator trains them on the task through
  a scalar-score head, as the papers train them on the bag label. Inside MSRL (``wsi_encoder``) these scores
  are not trained yet: those classifiers keep their initial weights there. CLAM-SB's instance-clustering loss
  needs a binary bag label and is not used (the bag path alone trains).
- Patch-GCN is not offered: it needs each bag's patch coordinates, which mini-batches do not carry yet.
"""
from __future__ import annotations

import importlib.util

import torch
from torch import nn

#: torchmil model name -> what it is (the registered names of the encoders and baselines)
TORCHMIL_MODELS = {
    "transmil": "TransMIL (Shao et al. 2021): Nystrom-attention transformer with PPEG, class-token embedding",
    "dsmil": "DSMIL (Li et al. 2021): dual-stream MIL, attention to the critical instance",
    "clam_sb": "CLAM-SB (Lu et al. 2021): single-branch attention pooling (no instance-clustering loss)",
    "dtfdmil": "DTFD-MIL (Zhang et al. 2022): double-tier feature distillation over pseudo-bags",
}


def torchmil_available() -> bool:
    return importlib.util.find_spec("torchmil") is not None


def _feat_ext(in_dim: int, out_dim: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Dropout(dropout))


def _torchmil_model(name: str, in_dim: int, out_dim: int, attn_dim: int, dropout: float) -> nn.Module:
    from torchmil import models

    if name == "transmil":
        return models.TransMIL((in_dim,), att_dim=out_dim, dropout=dropout)
    ext = _feat_ext(in_dim, out_dim, dropout)
    if name == "dsmil":
        return models.DSMIL((in_dim,), att_dim=attn_dim, dropout=dropout, feat_ext=ext)
    if name == "clam_sb":
        return models.CLAM_SB((in_dim,), att_dim=attn_dim, gated=True, feat_ext=ext)
    if name == "dtfdmil":
        return models.DTFDMIL((in_dim,), att_dim=attn_dim, feat_ext=ext)
    raise ValueError(f"unknown torchmil model {name!r}; choose one of {sorted(TORCHMIL_MODELS)}")


class TorchMILEncoder(nn.Module):
    """A torchmil model as a slide encoder: ``x (B, N, D)``, ``mask (B, N)`` bool or None -> ``(h (B, d), None)``.

    Args:
        name: one of :data:`TORCHMIL_MODELS`. in_dim: D. out_dim: d. attn_dim: attention width of DSMIL,
        CLAM-SB and DTFD-MIL. dropout: of the input map (and TransMIL's layers, DSMIL's value branch).
    After a forward, ``aux_scores`` holds the model's own one-logit scores ``(B, M)`` (DSMIL, DTFD-MIL) or None.
    """

    def __init__(self, name: str, in_dim: int, out_dim: int = 256, attn_dim: int | None = None,
                 dropout: float = 0.25):
        super().__init__()
        self.name = name
        self.model = _torchmil_model(name, in_dim, out_dim, attn_dim or out_dim // 2, dropout)
        final = "bag_classifier" if name == "dsmil" else "u_classifier" if name == "dtfdmil" else "classifier"
        setattr(self.model, final, nn.Identity())  # the model now returns what its classifier read
        self.out_dim = out_dim
        self.aux_scores: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        hs, aux = [], []
        for b in range(x.shape[0]):
            bag = x[b: b + 1] if mask is None else x[b: b + 1, mask[b]]
            h, a = self._one(bag)
            hs.append(h.reshape(1, -1))
            if a is not None:
                aux.append(a.reshape(1, -1))
        # DTFD-MIL splits a bag of n < n_groups patches into n pseudo-bags: cycle its scores to the widest row
        width = max((a.shape[1] for a in aux), default=0)
        self.aux_scores = torch.cat([a.repeat(1, -(-width // a.shape[1]))[:, :width] for a in aux]) if aux else None
        return torch.cat(hs), None

    def _one(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.name == "dsmil":
            h, inst = self.model(bag, return_inst_pred=True)
            return h, inst.max(dim=1).values
        if self.name == "dtfdmil":
            ones = torch.ones(bag.shape[:2], dtype=torch.bool, device=bag.device)  # its max-min needs a mask
            return self.model(bag, ones, return_pseudo_pred=True)
        return self.model(bag), None
