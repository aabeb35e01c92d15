"""MSRL's fine-tuning network: WSI encoder, inductor, graph forward over [case; buffer], task head.

Graph forward [P core, D masking]: every current case is plugged into its *own* graph over the node
set [case; K buffer rows]. method.md §5.2 forbids current<->current edges, but with symmetrisation,
degree normalisation and a 2-layer GCN, cases that share a buffer still influence each other through
buffer degrees and 2-hop paths; separate graphs (built in one batched call) make a case's prediction
exactly independent of the other cases in its batch, in training and at test time alike.
"""
from __future__ import annotations

import torch
from torch import nn

from .abmil import GatedAttentionPool
from .buffer import FeatureBuffer
from .gcn import GCN
from .graph_learner import GraphLearner, KNNGraph, LearnedGraph
from .snn import SNN

GRAPHS = ("learned", "knn_cosine", "knn_euclidean")


def per_case_masks(buffer_valid: torch.Tensor, exclusion: torch.Tensor) -> torch.Tensor:
    """Allowed edges of each case's graph over [case; buffer]: ``(K,), (B, K) -> (B, 1+K, 1+K)`` bool.

    case<->buffer row allowed when the row is valid and does not hold the case itself (no self-leakage);
    buffer<->buffer allowed between valid rows; every node keeps its self loop.
    """
    b, k = exclusion.shape
    dev = exclusion.device
    mask = torch.zeros(b, 1 + k, 1 + k, dtype=torch.bool, device=dev)
    cur_buf = ~exclusion & buffer_valid[None, :]
    mask[:, 0, 1:] = cur_buf
    mask[:, 1:, 0] = cur_buf
    mask[:, 1:, 1:] = (buffer_valid[:, None] & buffer_valid[None, :])[None]
    idx = torch.arange(1 + k, device=dev)
    mask[:, idx, idx] = True
    return mask


class MSRLNetwork(nn.Module):
    """The online branch (the only one used at inference) plus the buffer it reads.

    Args:
        feature_dim: patch feature dim D. genomics_dim: G (0 for MSRL_H). n_outputs: head size.
        embed_dim: d of phi_H, phi_G, inductor and GCN [P: 768; D default 256 keeps CPU training fast].
        attn_dim: ABMIL attention width [D: d/2, as 1536 -> 768 / 384 in method.md §0.1].
        modality: ``"fused"`` (nodes = concat(g, h), 2d) or ``"wsi"`` (MSRL_H: nodes = h, d).
        graph: ``"learned"`` (GraphLearner) or a static ``"knn_cosine"`` / ``"knn_euclidean"`` ablation.
        k, learner_layers, learner_activation: graph learner [D: 10; S: 2, tanh].
        gcn_dropout [D: 0.25 in fine-tuning], dropout (encoders) [B: 0.25], buffer_size K [D: 256].
        readout: the head reads the case's post-graph node embedding z (``"node"`` [P]) or
            concat(z, h) (``"node+wsi"`` [D]: keeps the case's own WSI evidence undiluted by its neighbours).
    """

    def __init__(self, feature_dim: int, genomics_dim: int, n_outputs: int, embed_dim: int = 256,
                 attn_dim: int | None = None, modality: str = "fused", graph: str = "learned", k: int = 10,
                 learner_layers: int = 2, learner_activation: str = "tanh", gcn_dropout: float = 0.25,
                 dropout: float = 0.25, snn_activation: str = "selu", buffer_size: int = 256,
                 readout: str = "node"):
        super().__init__()
        if modality not in ("fused", "wsi"):
            raise ValueError(f"modality must be 'fused' or 'wsi', got {modality!r}")
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
        d = embed_dim
        self.modality = modality
        self.wsi_encoder = GatedAttentionPool(feature_dim, d, attn_dim or d // 2, dropout)
        self.gene_encoder = (SNN(genomics_dim, (d, d), dropout, snn_activation)
                             if genomics_dim and modality == "fused" else None)
        self.inductor = SNN(d, (d, d), dropout, snn_activation) if modality == "fused" else None
        node_dim = 2 * d if modality == "fused" else d
        self.graph_learner = (GraphLearner(node_dim, learner_layers, k, learner_activation) if graph == "learned"
                              else KNNGraph(k, graph.removeprefix("knn_")))
        self.gcn = GCN(node_dim, d, d, n_layers=2, dropout=gcn_dropout)
        if readout not in ("node", "node+wsi"):
            raise ValueError(f"readout must be 'node' or 'node+wsi', got {readout!r}")
        self.readout = readout
        self.head = nn.Linear(d if readout == "node" else 2 * d, n_outputs)
        self.buffer = FeatureBuffer(buffer_size, node_dim)

    # -- node features ---------------------------------------------------------------------------
    def encode_wsi(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, N, D)`` bags -> ``(B, d)`` h."""
        return self.wsi_encoder(x, mask)[0]

    def online_nodes(self, h: torch.Tensor, genomics: torch.Tensor | None = None,
                     use_genomics: torch.Tensor | None = None) -> torch.Tensor:
        """f = concat(g~, h) with g~ = inductor(h) (WSI only); ``use_genomics`` rows take phi_G(real genomics)."""
        if self.modality == "wsi":
            return h
        g = self.inductor(h)
        if use_genomics is not None and use_genomics.any():
            g = torch.where(use_genomics[:, None], self.gene_encoder(genomics), g)
        return torch.cat([g, h], dim=1)

    def real_nodes(self, h: torch.Tensor, genomics: torch.Tensor) -> torch.Tensor:
        """f^ = concat(phi_G(real genomics), h) (target branch, buffer)."""
        return h if self.modality == "wsi" else torch.cat([self.gene_encoder(genomics), h], dim=1)

    # -- graph forward ---------------------------------------------------------------------------
    def graph_forward(self, f: torch.Tensor, case_ids: list[str] | None = None
                      ) -> tuple[torch.Tensor, LearnedGraph, torch.Tensor]:
        """Each case's graph over [case; buffer]: ``f (B, F)`` -> ``z (B, d)``, graphs ``(B, 1+K, 1+K)``, masks."""
        buf, _, valid = self.buffer.snapshot()
        exclusion = (self.buffer.exclusion_mask(case_ids) if case_ids is not None
                     else torch.zeros(f.shape[0], buf.shape[0], dtype=torch.bool, device=f.device))
        mask = per_case_masks(valid, exclusion)
        nodes = torch.cat([f[:, None, :], buf[None].expand(f.shape[0], -1, -1)], dim=1)
        graph = self.graph_learner(nodes, mask)
        z = self.gcn(nodes, graph.adj)[:, 0]
        return z, graph, mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, genomics: torch.Tensor | None = None,
                use_genomics: torch.Tensor | None = None, case_ids: list[str] | None = None) -> torch.Tensor:
        """Logits ``(B, n_outputs)`` from bags (WSI-only unless ``use_genomics`` marks rows)."""
        h = self.encode_wsi(x, mask)
        z = self.graph_forward(self.online_nodes(h, genomics, use_genomics), case_ids)[0]
        return self.head(self.readout_features(z, h))

    def readout_features(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return z if self.readout == "node" else torch.cat([z, h], dim=1)

    def target_modules(self) -> list[str]:
        """Modules with an EMA target copy (phi_G has none: it stays frozen at its pre-trained weights)."""
        return ["wsi_encoder", "graph_learner", "gcn", "head"]
