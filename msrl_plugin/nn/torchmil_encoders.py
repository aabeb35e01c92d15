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
- Patch-GCN reads each bag's patch coordinates: its graph links every patch to its 8 nearest patches on the
  slide (symmetric, D^-1/2 A D^-1/2 normalised; Chen et al. 2021 build the same 8-NN graph), passed as
  ``coords (B, N, 2)`` next to the bag. Only its baseline aggregator passes them; MSRL's graph forward does not.
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
    "patch_gcn": "Patch-GCN (Chen et al. 2021): a 4-layer GCN over the patches' 8-NN slide graph, attention pool",
}
#: encoders that read patch coordinates (``coords``) as well as features
NEEDS_COORDS = frozenset({"patch_gcn"})
PATCH_GCN_NEIGHBOURS = 8


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
    if name == "patch_gcn":
        return models.PatchGCN((in_dim,), hidden_dim=out_dim, att_dim=attn_dim, dropout=dropout, feat_ext=ext)
    raise ValueError(f"unknown torchmil model {name!r}; choose one of {sorted(TORCHMIL_MODELS)}")


class TorchMILEncoder(nn.Module):
    """A torchmil model as a slide encoder: ``x (B, N, D)``, ``mask (B, N)`` bool or None -> ``(h (B, d), None)``.

    Args:
        name: one of :data:`TORCHMIL_MODELS`. in_dim: D. out_dim: d. attn_dim: attention width of DSMIL,
        CLAM-SB and DTFD-MIL. dropout: of the input map (and TransMIL's layers, DSMIL's value branch).
    After a forward, ``aux_scores`` holds the model's own one-logit scores ``(B, M)`` (DSMIL, DTFD-MIL) or None.
    Patch-GCN reads ``coords (B, N, 2)``, set on the module before each forward by the model that owns it.
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
        self.coords: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if self.name in NEEDS_COORDS and (self.coords is None or self.coords.shape[:2] != x.shape[:2]):
            raise ValueError(f"{self.name} needs the batch's patch coordinates (B, N, 2) set as .coords")
        hs, aux = [], []
        for b in range(x.shape[0]):
            keep = slice(None) if mask is None else mask[b]
            bag = x[b: b + 1, keep]
            h, a = self._one(bag, None if self.coords is None else self.coords[b, keep])
            hs.append(h.reshape(1, -1))
            if a is not None:
                aux.append(a.reshape(1, -1))
        # DTFD-MIL splits a bag of n < n_groups patches into n pseudo-bags: cycle its scores to the widest row
        width = max((a.shape[1] for a in aux), default=0)
        self.aux_scores = torch.cat([a.repeat(1, -(-width // a.shape[1]))[:, :width] for a in aux]) if aux else None
        return torch.cat(hs), None

    def _one(self, bag: torch.Tensor, coords: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.name == "patch_gcn":
            return self.model(bag, neighbour_graph(coords, PATCH_GCN_NEIGHBOURS)[None]), None
        if self.name == "dsmil":
            h, inst = self.model(bag, return_inst_pred=True)
            return h, inst.max(dim=1).values
        if self.name == "dtfdmil":
            ones = torch.ones(bag.shape[:2], dtype=torch.bool, device=bag.device)  # its max-min needs a mask
            return self.model(bag, ones, return_pseudo_pred=True)
        return self.model(bag), None


def neighbour_graph(coords: torch.Tensor, k: int) -> torch.Tensor:
    """``(n, n)``: each patch linked to its ``k`` nearest other patches (Euclidean, on the slide), symmetrised and
    normalised as D^-1/2 A D^-1/2, without self-loops (torchmil's GCN layer adds each node's own features)."""
    n = coords.shape[0]
    dist = torch.cdist(coords.float(), coords.float())
    dist.fill_diagonal_(float("inf"))
    adj = torch.zeros(n, n, device=coords.device)
    if n > 1:
        adj.scatter_(1, dist.topk(min(k, n - 1), largest=False).indices, 1.0)
    adj = ((adj + adj.t()) > 0).float()
    scale = adj.sum(1).clamp(min=1).rsqrt()
    return scale[:, None] * adj * scale[None, :]
