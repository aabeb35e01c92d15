"""MSRL's fine-tuning network: WSI encoder, inductor, graph forward over [case; buffer], task head.

Graph forward [P core, D masking]: every current case is plugged into its *own* graph over the node
set [case; K buffer rows]. method.md §5.2 forbids current<->current edges, but with symmetrisation,
degree normalisation and a 2-layer GCN, cases that share a buffer still influence each other through
buffer degrees and 2-hop paths; separate graphs (built in one batched call) make a case's prediction
exactly independent of the other cases in its batch, in training and at test time alike.

Scalable graph forward (``buffer_candidates=m``): the dense per-case graph costs O(K^2) memory and time, which
breaks at K ~ 1e4-1e5 buffer rows. With candidates, each case first retrieves its top-m buffer rows exactly in
the graph's own similarity space (blockwise ``torch.topk`` over cached key embeddings; FAISS as an option),
and its graph is built over [case; those m rows] only: O(K d) memory, O(K d + m^2) time per case. Retrieval
only *selects* candidates; the learned graph still decides the edges (ecosystem.md §4.4). With m >= K every
row is a candidate, the rows keep buffer order, and the result equals the dense path.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .abmil import GatedAttentionPool
from .buffer import FeatureBuffer
from .gcn import GCN
from .graph_learner import GraphLearner, KNNGraph, LearnedGraph, sparsify_and_normalise
from .retrieval import KEY_DTYPES, blockwise_topk, faiss_candidates, import_faiss, shortlist_topk
from .snn import SNN

__all__ = ["MSRLNetwork", "CandidateGraph", "blockwise_topk", "per_case_masks", "candidate_masks"]

GRAPHS = ("learned", "knn_cosine", "knn_euclidean")
READOUTS = ("node", "node+wsi", "node+case")
BORROW = ("none", "genomic_risk")
SIMILARITIES = ("fused", "wsi")
CANDIDATE_SEARCH = ("torch", "faiss")
PROPAGATIONS = ("dense", "pyg")
_EMBED_BLOCK = 8192  # buffer rows embedded at a time when the retrieval keys are (re)built


class CandidateGraph(NamedTuple):
    """Per-case graphs over [case; m candidate buffer rows].

    adj, similarity: (B, 1+m, 1+m) as in :class:`LearnedGraph`; rows: (B, m) int64 buffer row of each
    candidate node, ascending (node j+1 of case b is buffer row ``rows[b, j]``).
    """

    adj: torch.Tensor
    similarity: torch.Tensor
    rows: torch.Tensor


def per_case_masks(buffer_valid: torch.Tensor, exclusion: torch.Tensor) -> torch.Tensor:
    """Allowed edges of each case's graph over [case; buffer]: ``(K,), (B, K) -> (B, 1+K, 1+K)`` bool.

    Only valid rows that do not hold the case itself take part: they link to the case and to each other. The
    case's own rows keep just their self loop, so they are out of its graph in effect: no edge, no 2-hop path
    through another row, no share of another row's degree (the graph equals the one without them). A test
    case is never in the buffer, so training sees the graph that inference sees.
    """
    b, k = exclusion.shape
    return candidate_masks(buffer_valid[None, :].expand(b, -1), exclusion)


def candidate_masks(row_valid: torch.Tensor, row_excluded: torch.Tensor) -> torch.Tensor:
    """:func:`per_case_masks` over each case's own candidate rows: ``(B, m), (B, m) -> (B, 1+m, 1+m)``."""
    b, m = row_valid.shape
    usable = ~row_excluded & row_valid
    mask = torch.zeros(b, 1 + m, 1 + m, dtype=torch.bool, device=row_valid.device)
    mask[:, 0, 1:] = usable
    mask[:, 1:, 0] = usable
    mask[:, 1:, 1:] = usable[:, :, None] & usable[:, None, :]
    idx = torch.arange(1 + m, device=row_valid.device)
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
        readout: what the head reads: the case's post-graph node embedding z (``"node"`` [P]), concat(z, h)
            (``"node+wsi"``) or concat(z, f) with f the case's own pre-graph node features (``"node+case"``
            [D]: a skip connection; in each case's graph the case node keeps only ~0.15 of its own weight
            against ~0.75 on its neighbours, so a head on z alone reads mostly neighbours).
        borrow: ``"none"`` [P] or ``"genomic_risk"`` [D]: a genomic risk head r_G reads the *real* genomic half
            g_j of every buffer row; the case adds the edge-weighted mean of its buffer neighbours' r_G(g_j) to
            its logits. This is the supervised path "neighbour's real genomics -> risk" that the shuffled-buffer
            control tests (only for ``modality="fused"``).
        similarity: what the graph's edges are computed from: all node features (``"fused"`` [P]) or the WSI
            half h only (``"wsi"`` [D]): cases are linked by morphology and borrow their neighbours' real
            genomics. With ``"fused"`` a case whose g~ is aligned with real g links to cases of similar
            genomics, so permuting the buffer's g halves leaves what it borrows unchanged: the
            shuffled-buffer control cannot see borrowing through such a graph.
        buffer_candidates: None = dense graph over [case; all K rows] (O(K^2) per case). m = each case's graph
            is built over its exact top-m buffer rows in the graph's similarity space (O(K d)); equals the
            dense path when m >= K. [D: None up to K ~ 2e3, then 64-256]
        propagation: how the GCN (torch-geometric ``GCNConv`` layers) propagates over each case's graph:
            ``"dense"`` [D] evaluates the same layers as batched products (buffer rows transformed once per
            batch, last layer at the case node only; equal to ``"pyg"`` within float error, tested), ``"pyg"``
            runs ``GCNConv``'s own message passing over the block-diagonal batch (slower on CPU).
        candidate_search: ``"torch"`` (blockwise exact ``topk``) or ``"faiss"`` (exact ``IndexFlatIP`` search,
            used without gradients, for the learned and cosine graphs; needs ``msrl-plugin[faiss]``).
        candidate_keys: how the cached retrieval keys are stored: ``"float16"`` [D: retrieval at K = 1e5 is
            bound by memory bandwidth; half the bytes, then the 2m-row shortlist is re-scored exactly in
            float32, so the top-m is exact unless a true top-m row misses a shortlist of 2m (tested)] or
            ``"float32"`` (every score exact). Only the torch search of inner-product graphs
            (learned, cosine kNN) uses float16; Euclidean kNN and FAISS keep float32 keys.
        wsi_encoder: phi_H, a slide encoder ``(B, N, D) -> (B, d)`` (:mod:`msrl_plugin.wsi_encoders`); None =
            gated-attention ABMIL [B: method.md §9.1, width d, attention attn_dim].
    """

    def __init__(self, feature_dim: int, genomics_dim: int, n_outputs: int, embed_dim: int = 256,
                 attn_dim: int | None = None, modality: str = "fused", graph: str = "learned", k: int = 10,
                 learner_layers: int = 2, learner_activation: str = "tanh", gcn_dropout: float = 0.25,
                 dropout: float = 0.25, snn_activation: str = "selu", buffer_size: int = 256,
                 readout: str = "node", buffer_candidates: int | None = None,
                 candidate_search: str = "torch", propagation: str = "dense", borrow: str = "none",
                 similarity: str = "fused", candidate_keys: str = "float16", lend_stored: bool = False,
                 wsi_encoder: nn.Module | None = None):
        super().__init__()
        if candidate_keys not in KEY_DTYPES:
            raise ValueError(f"candidate_keys must be one of {KEY_DTYPES}, got {candidate_keys!r}")
        self.candidate_keys = candidate_keys
        if propagation not in PROPAGATIONS:
            raise ValueError(f"propagation must be one of {PROPAGATIONS}, got {propagation!r}")
        self.propagation = propagation
        if buffer_candidates is not None and int(buffer_candidates) < 1:
            raise ValueError(f"buffer_candidates must be None or >= 1, got {buffer_candidates}")
        if candidate_search not in CANDIDATE_SEARCH:
            raise ValueError(f"candidate_search must be one of {CANDIDATE_SEARCH}, got {candidate_search!r}")
        if candidate_search == "faiss":
            import_faiss()
        self.buffer_candidates = None if buffer_candidates is None else int(buffer_candidates)
        self.candidate_search = candidate_search
        self._keys_cache: tuple | None = None
        if modality not in ("fused", "wsi"):
            raise ValueError(f"modality must be 'fused' or 'wsi', got {modality!r}")
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
        d = embed_dim
        self.modality = modality
        self.wsi_encoder = (GatedAttentionPool(feature_dim, d, attn_dim or d // 2, dropout) if wsi_encoder is None
                            else wsi_encoder)
        self.gene_encoder = (SNN(genomics_dim, (d, d), dropout, snn_activation)
                             if genomics_dim and modality == "fused" else None)
        self.inductor = SNN(d, (d, d), dropout, snn_activation) if modality == "fused" else None
        node_dim = 2 * d if modality == "fused" else d
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        start = d if similarity == "wsi" and modality == "fused" else 0
        self.graph_learner = (GraphLearner(node_dim - start, learner_layers, k, learner_activation, start)
                              if graph == "learned" else KNNGraph(k, graph.removeprefix("knn_"), start))
        self.gcn = GCN(node_dim, d, d, n_layers=2, dropout=gcn_dropout)
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if borrow not in BORROW:
            raise ValueError(f"borrow must be one of {BORROW}, got {borrow!r}")
        self.readout = readout
        self.embed_dim = d
        self.head = nn.Linear(d + {"node": 0, "node+wsi": d, "node+case": node_dim}[readout], n_outputs)
        # r_G: logits from a real genomic embedding (buffer rows' g half, or phi_G(X_G) of training cases)
        self.genomic_head = (nn.Linear(d, n_outputs) if borrow == "genomic_risk" and modality == "fused"
                             else None)
        # lend_stored: each buffer row lends a stored genomic risk (cross-fitted, so never its own memorised
        # outcome) instead of r_G of its genomic half
        lent_dim = n_outputs if lend_stored and self.genomic_head is not None else 0
        self.buffer = FeatureBuffer(buffer_size, node_dim, lent_dim)

    # -- node features ---------------------------------------------------------------------------
    def encode_wsi(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, N, D)`` bags -> ``(B, d)`` h."""
        return self.wsi_encoder(x, mask)[0]

    def online_nodes(self, h: torch.Tensor, genomics: torch.Tensor | None = None,
                     use_genomics: torch.Tensor | None = None) -> torch.Tensor:
        """f = concat(g~, h) with g~ = inductor(h) (WSI only); ``use_genomics`` rows take phi_G(genomics)."""
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
    def graph_forward(self, f: torch.Tensor, case_ids: list[str] | None = None,
                      candidates: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, LearnedGraph | CandidateGraph, torch.Tensor]:
        """Each case's graph over [case; buffer]: ``f (B, F)`` -> ``z (B, d)``, graphs, allowed-edge masks.

        Dense (``buffer_candidates=None`` and no ``candidates``): graphs and masks ``(B, 1+K, 1+K)``.
        Candidates: a :class:`CandidateGraph` and masks ``(B, 1+m, 1+m)`` over [case; its m retrieved rows];
        ``candidates`` (B, m) buffer rows overrides the retrieval, e.g. to build the target branch's graph
        over the online branch's node sets so that the two graphs are comparable entry by entry.
        """
        if candidates is not None or self.buffer_candidates is not None:
            return self._candidate_forward(f, case_ids, candidates)
        buf, _, valid = self.buffer.snapshot()
        b = f.shape[0]
        exclusion = self._exclusion(case_ids, b, f.device)
        mask = per_case_masks(valid, exclusion)
        if isinstance(self.graph_learner, GraphLearner):
            graph = self._shared_buffer_graph(f, buf, mask)
        else:  # static kNN ablations: the Euclidean kernel's bandwidth depends on each case's whole node set
            graph = self.graph_learner(torch.cat([f[:, None, :], buf[None].expand(b, -1, -1)], dim=1), mask)
        if self.propagation == "pyg":  # torch-geometric's own message passing over the block-diagonal batch
            nodes = torch.cat([f[:, None, :], buf[None].expand(b, -1, -1)], dim=1)
            return self.gcn(nodes, graph.adj)[:, 0], graph, mask
        w1 = self.gcn.layers[0].lin.weight
        # every case's graph holds the same K buffer rows: transform them once, not once per case
        xw = torch.cat([(f @ w1.t())[:, None, :], (buf @ w1.t())[None].expand(b, -1, -1)], dim=1)
        return self.gcn.node0(xw, graph.adj), graph, mask

    def _shared_buffer_graph(self, f: torch.Tensor, buf: torch.Tensor, mask: torch.Tensor) -> LearnedGraph:
        """``GraphLearner(nodes, mask)`` over each case's [case; buffer], the buffer<->buffer block of the
        similarity computed once per batch: ``(B, F), (K, F), (B, 1+K, 1+K) -> (B, 1+K, 1+K)`` graphs."""
        learner = self.graph_learner
        e_c, e_b = learner.embed(f), learner.embed(buf)  # row-wise, so embedding rows apart is exact
        s_cb = e_c @ e_b.t()  # (B, K)
        s_cc = (e_c * e_c).sum(dim=1)  # (B,)
        b, k = s_cb.shape
        top = torch.cat([s_cc[:, None], s_cb], dim=1)[:, None, :]  # (B, 1, 1+K)
        bottom = torch.cat([s_cb[:, :, None], (e_b @ e_b.t())[None].expand(b, -1, -1)], dim=2)  # (B, K, 1+K)
        sim = torch.cat([top, bottom], dim=1)
        return LearnedGraph(sparsify_and_normalise(sim, learner.k, mask), sim)

    def _exclusion(self, case_ids: list[str] | None, n: int, device: torch.device) -> torch.Tensor:
        if case_ids is not None:
            return self.buffer.exclusion_mask(case_ids)
        return torch.zeros(n, self.buffer.size, dtype=torch.bool, device=device)

    def _candidate_forward(self, f: torch.Tensor, case_ids: list[str] | None, rows: torch.Tensor | None
                           ) -> tuple[torch.Tensor, CandidateGraph, torch.Tensor]:
        buf, valid = self.buffer.features, self.buffer.valid  # no K x d clone: only gathered rows are used
        exclusion = self._exclusion(case_ids, f.shape[0], f.device)
        if rows is None:
            rows = self.retrieve(f, exclusion)
        elif rows.dim() != 2 or rows.shape[0] != f.shape[0]:
            raise ValueError(f"candidates must be ({f.shape[0]}, m) buffer rows, got {tuple(rows.shape)}")
        # gathered rows are copies, so a later enqueue cannot modify what autograd holds
        nodes = torch.cat([f[:, None, :], buf[rows]], dim=1)
        mask = candidate_masks(valid[rows], exclusion.gather(1, rows))
        graph = self.graph_learner(nodes, mask)
        z = (self.gcn(nodes, graph.adj)[:, 0] if self.propagation == "pyg"
             else self.gcn.node0(nodes @ self.gcn.layers[0].lin.weight.t(), graph.adj))
        return z, CandidateGraph(graph.adj, graph.similarity, rows), mask

    @torch.no_grad()
    def retrieve(self, f: torch.Tensor, exclusion: torch.Tensor | None = None) -> torch.Tensor:
        """Each case's exact top-m buffer rows in the graph's similarity space, ascending: ``(B, min(m, K))``.

        Learned graph: cosine of the learner embeddings; ``knn_cosine``: cosine of the features;
        ``knn_euclidean``: Euclidean distance. Empty rows and the case's own rows (``exclusion`` (B, K)) are
        ranked last, so they are picked (and then masked out of the graph) only when fewer than m rows remain.
        """
        m = self.buffer_candidates or self.buffer.size
        valid = self.buffer.valid
        allowed = valid[None, :].expand(f.shape[0], -1)
        if exclusion is not None:
            allowed = allowed & ~exclusion
        keys = self._candidate_keys()
        q = self.similarity_embedding(f)
        if isinstance(self.graph_learner, KNNGraph) and self.graph_learner.metric == "euclidean":
            rows = blockwise_topk(q, keys, m, allowed, "euclidean")
        else:
            rows = None
            if self.candidate_search == "faiss" and not torch.is_grad_enabled():
                index, valid_rows = self._faiss_index(keys)
                rows = faiss_candidates(q, index, valid_rows, allowed, min(m, keys.shape[0]))
            if rows is None and keys.dtype != torch.float32:  # compact keys: shortlist, then exact re-score
                buf = self.buffer.features
                rows = shortlist_topk(q, keys, m, allowed, lambda r: self.similarity_embedding(buf[r]))
            if rows is None:
                rows = blockwise_topk(q, keys, m, allowed, "ip")
        return rows.sort(dim=1).values  # buffer order: with m >= K the node order equals the dense path's

    def _cache_key(self) -> tuple:
        tensors = [self.buffer.features, self.buffer.valid, *self.graph_learner.parameters()]
        return (self._key_dtype(), *((t.data_ptr(), t._version) for t in tensors))

    @torch.no_grad()
    def _candidate_keys(self) -> torch.Tensor:
        """Buffer rows in the retrieval space (:meth:`similarity_embedding`), ``(K, F')``.

        Recomputed only when the buffer or the learner changes: the cache key is each tensor's storage and
        in-place version counter, which optimiser steps, EMA updates, ``enqueue`` and ``load_state_dict`` all
        bump.
        """
        key = self._cache_key()
        if self._keys_cache is not None and self._keys_cache[0] == key:
            return self._keys_cache[1]
        buf = self.buffer.features
        self._keys_cache = None  # free the old keys before allocating the new ones
        keys = buf.new_empty(len(buf), buf.shape[1] - self.graph_learner.start, dtype=self._key_dtype())
        for i in range(0, len(buf), _EMBED_BLOCK):  # small blocks: temporaries stay O(block d)
            keys[i: i + _EMBED_BLOCK] = self.similarity_embedding(buf[i: i + _EMBED_BLOCK])
        self._keys_cache = (key, keys, None)
        return keys

    def _key_dtype(self) -> torch.dtype:
        """float16 for the torch search of inner-product graphs with ``candidate_keys="float16"``, else float32
        (Euclidean keys are raw features, whose squared norms may overflow float16; FAISS indexes float32)."""
        euclidean = isinstance(self.graph_learner, KNNGraph) and self.graph_learner.metric == "euclidean"
        compact = self.candidate_keys == "float16" and self.candidate_search == "torch" and not euclidean
        return torch.float16 if compact else torch.float32

    def similarity_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Node features in the space the graph ranks neighbours in: the learner embedding (unit rows), the
        unit-normalised features (cosine kNN) or the features (Euclidean kNN), of ``x[..., start:]``."""
        learner = self.graph_learner
        if isinstance(learner, GraphLearner):
            return learner.embed(x)
        x = x[..., learner.start:]
        return x if learner.metric == "euclidean" else F.normalize(x, p=2, dim=-1)

    def _faiss_index(self, keys: torch.Tensor):
        """An exact inner-product FAISS index over the valid rows (rebuilt with the key cache)."""
        if self._keys_cache[2] is None:
            faiss = import_faiss()
            valid_rows = self.buffer.valid.nonzero().squeeze(1)
            index = faiss.IndexFlatIP(keys.shape[1])
            index.add(keys[valid_rows].float().cpu().contiguous().numpy())  # rows are L2-normalised already
            self._keys_cache = (*self._keys_cache[:2], (index, valid_rows))
        return self._keys_cache[2]

    def neighbour_weights(self, graph: LearnedGraph | CandidateGraph) -> torch.Tensor:
        """Edge weight of each case to each buffer row, ``(B, K)`` in buffer row order (0 = no edge).

        Works for dense and candidate graphs (``graph.adj[:, 0, 1:]`` is only buffer-ordered for dense ones).
        """
        row = graph.adj[:, 0, 1:]
        if not isinstance(graph, CandidateGraph):
            return row
        out = row.new_zeros(row.shape[0], self.buffer.size)
        return out.scatter(1, graph.rows, row)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, genomics: torch.Tensor | None = None,
                use_genomics: torch.Tensor | None = None, case_ids: list[str] | None = None) -> torch.Tensor:
        """Logits ``(B, n_outputs)`` from bags (WSI-only unless ``use_genomics`` marks rows)."""
        h = self.encode_wsi(x, mask)
        f = self.online_nodes(h, genomics, use_genomics)
        z, graph, _ = self.graph_forward(f, case_ids)
        return self.logits(z, f, h, graph)

    def logits(self, z: torch.Tensor, f: torch.Tensor, h: torch.Tensor,
               graph: LearnedGraph | CandidateGraph) -> torch.Tensor:
        """The head on the readout; when borrowing, the mean of it and the borrowed genomic risk of the case's
        neighbours (two predictors, each trained on the task by itself: see the aggregator's loss)."""
        out = self.head(self.readout_features(z, f, h))
        return out if self.genomic_head is None else (out + self.borrowed_logits(graph)) / 2

    def readout_features(self, z: torch.Tensor, f: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.readout == "node":
            return z
        return torch.cat([z, h if self.readout == "node+wsi" else f], dim=1)

    def borrowed_logits(self, graph: LearnedGraph | CandidateGraph) -> torch.Tensor:
        """Edge-weighted mean of r_G(g_j) (or of row j's stored, cross-fitted risk) over each case's buffer
        neighbours j: ``(B, n_outputs)``.

        The weights are the case's row of its own normalised graph (gradients reach the graph learner); a case
        with no buffer neighbour borrows nothing (zeros).
        """
        w = graph.adj[:, 0, 1:]
        w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        candidate = isinstance(graph, CandidateGraph)
        if self.buffer.lent_dim:  # the rows' stored (cross-fitted) risks
            lent = self.buffer.lent[graph.rows] if candidate else self.buffer.lent[None]
        else:
            g = self.buffer.features[graph.rows, : self.embed_dim] if candidate \
                else self.buffer.features[None, :, : self.embed_dim]
            lent = self.genomic_head(g)
        return torch.einsum("bm,bmo->bo", w, lent.expand(w.shape[0], -1, -1))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_keys_cache"] = None  # deepcopy (EMA target) and pickling must not share or carry the cache
        return state

    def target_modules(self) -> list[str]:
        """Modules with an EMA target copy (phi_G has none: it stays frozen at its pre-trained weights)."""
        return ["wsi_encoder", "graph_learner", "gcn", "head"]
