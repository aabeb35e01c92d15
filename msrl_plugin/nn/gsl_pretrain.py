"""Stage-1 modules: pathology, gene and fused case graphs with their learners, GCNs and heads (method.md §4)."""
from __future__ import annotations

import torch
from torch import nn

from .abmil import GatedAttentionPool
from .gcn import GCN, ProjectionHead
from .graph_learner import GraphLearner
from .snn import SNN


class GraphStack(nn.Module):
    """One graph m in {H, G, F}: its learner GSL_m, encoder GCN_m, projection heads p_m (own views) and q_m
    (the shared cross-modal space) [D: each graph has its own modules]."""

    def __init__(self, node_dim: int, embed_dim: int, k: int, learner_layers: int, learner_activation: str,
                 gcn_dropout: float, dropedge: float, proj_dim: int):
        super().__init__()
        self.learner = GraphLearner(node_dim, learner_layers, k, learner_activation)
        self.gcn = GCN(node_dim, embed_dim, embed_dim, n_layers=2, dropout=gcn_dropout, dropedge=dropedge)
        self.p = ProjectionHead(embed_dim, proj_dim)
        self.q = ProjectionHead(embed_dim, proj_dim)


class GSLPretrainModel(nn.Module):
    """phi_H (a slide encoder, gated ABMIL by default), phi_G (SNN) and the graph stacks H, G, F (H only for
    ``modality='wsi'``).

    Module names match :class:`~msrl_plugin.nn.msrl.MSRLNetwork` (``wsi_encoder``, ``gene_encoder``) so
    fine-tuning copies them; the fused stack (or H for MSRL_H) provides ``graph_learner`` and ``gcn``.
    """

    def __init__(self, feature_dim: int, genomics_dim: int, embed_dim: int = 256, attn_dim: int | None = None,
                 modality: str = "fused", k: int = 10, learner_layers: int = 2, learner_activation: str = "tanh",
                 gcn_dropout: float = 0.5, dropedge: float = 0.5, dropout: float = 0.25,
                 snn_activation: str = "selu", proj_dim: int = 256, wsi_encoder: nn.Module | None = None):
        super().__init__()
        d = embed_dim
        self.modality = modality
        # the slide encoder fine-tuning will use (``wsi_encoder``, :mod:`msrl_plugin.wsi_encoders`); None = ABMIL
        self.wsi_encoder = (GatedAttentionPool(feature_dim, d, attn_dim or d // 2, dropout) if wsi_encoder is None
                            else wsi_encoder)
        fused = modality == "fused" and genomics_dim > 0
        self.gene_encoder = SNN(genomics_dim, (d, d), dropout, snn_activation) if fused else None
        args = (k, learner_layers, learner_activation, gcn_dropout, dropedge, proj_dim)
        self.stacks = nn.ModuleDict({"H": GraphStack(d, d, *args)})
        if fused:
            self.stacks["G"] = GraphStack(d, d, *args)
            self.stacks["F"] = GraphStack(2 * d, d, *args)
            # projections of the encoders' own outputs h, g into one space (the node-level half of L_inter)
            self.cross = nn.ModuleDict({"H": ProjectionHead(d, proj_dim), "G": ProjectionHead(d, proj_dim)})

    @property
    def finetune_stack(self) -> GraphStack:
        """The graph modules fine-tuning starts from: fused F for MSRL, pathology H for MSRL_H."""
        return self.stacks["F"] if "F" in self.stacks and self.modality == "fused" else self.stacks["H"]


def column_mask(x: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Zero floor(rate * D) random feature *columns* for all nodes (SUBLIME's feature masking) [S]."""
    n_drop = int(rate * x.shape[1])
    if n_drop == 0:
        return x
    keep = torch.ones(x.shape[1], device=x.device)
    keep[torch.randperm(x.shape[1], generator=generator)[:n_drop].to(x.device)] = 0
    return x * keep
