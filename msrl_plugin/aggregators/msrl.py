"""MSRL: GSL pre-training, dual-branch EMA fine-tuning with a real-feature buffer, WSI-only inference.

The named forms (``msrl_paper``, variants and ablations over both) are in :mod:`.msrl_forms`; the keywords'
constraints and combination checks in :mod:`.msrl_params`.
"""
from __future__ import annotations

import json
from typing import Any, ClassVar

import torch
from torch import nn

from .. import distributed
from ..batching import BagBatch, CaseData
from ..cohort import Cohort
from ..nn.ema import make_target
from ..nn.losses import balanced_bce, info_nce, info_nce_with_bank
from ..nn.msrl import MSRLNetwork
from ..registry import register_aggregator
from ..wsi_encoders import check_wsi_encoder
from .abmil import AttentionMixin
from .base import Aggregator, store_init_args
from .msrl_fitted import BufferCoverageMixin
from .msrl_params import MSRL_CONSTRAINTS, warn_ignored
from .msrl_parts import PartsMixin
from .msrl_stage1 import Stage1Mixin

#: the values that checkpoints written before these keywords existed were trained with (they load unchanged)
LEGACY_PARAMS = {"borrow": "none", "similarity": "fused", "f_align": "paper", "pretrain_inter_level": "graph",
                 "genomic_teacher_weight": 1.0, "distill_weight": 0.0, "pretrain_holdout": 0.0,
                 "genomic_teacher_steps": 0, "pretrain_transfer": "all", "teacher_crossfit": 0,
                 "wsi_encoder": "abmil", "graph_forward": "per_case", "buffer_update": "fifo", "target_update": "ema"}


@register_aggregator("msrl")
class MSRLAggregator(PartsMixin, Stage1Mixin, BufferCoverageMixin, AttentionMixin, Aggregator):
    """MSRL, the project's design: trains on WSI + genomics, predicts from the WSI by borrowing real genomics.

    Stage 1 (``pretrain_epochs`` > 0, on the training cases only, or ``pretrained`` = a checkpoint from
    ``msrl-plugin pretrain``): GSL pre-training. Stage 2: online branch (phi_H + inductor -> graph forward with
    the buffer -> head) and EMA target branch (real genomics), losses L_f_align + L_g_align + L_s_align
    (weighted by ``align_weight``) + L_task; the buffer is initialised with real training-case features and
    updated FIFO with target features. Inference reads the WSI only.

    This class is the ``msrl`` form; ``msrl_paper`` is the paper's form, and every variant and ablation is a
    named form over both (``aggregators/msrl_forms.py``, ``msrl-plugin list-models``). Each default carries
    its provenance tag ([P] paper, [S] SUBLIME, [B] baseline repos, [D] ours; ``list-models --params``).
    Where the project's design departs from the paper, the paper's value stays one keyword away (or
    ``--model msrl_paper``). Why each departure, in words (the measurements, with their commands and seeds,
    are in ``benchmarks/README.md``, sections "MSRL, second design" and "Method benchmark"):

    - ``readout="node+case"`` (paper ``"node"``): the case node keeps a small share of its own weight in its
      graph, so a head on z alone reads mostly neighbours; the skip connection keeps the case's own features.
    - ``borrow="genomic_risk"`` (paper ``"none"``): a genomic risk head r_G scores every buffer row's real
      genomics and the case adds the edge-weighted mean over its buffer neighbours; the prediction is the mean
      of the head's logits and the borrowed ones, each trained on the task alone (trained jointly, the head
      cancelled the borrowed term). This is the path the shuffled-buffer control tests.
    - ``f_align="genomic"`` (paper ``"paper"``: InfoNCE over concat(g, h), which the h halves satisfy alone):
      the inductor's g~ against the case's real g^, the buffer's other real genomics as negatives.
    - ``similarity="wsi"`` (paper ``"fused"``): edges from h only, so a case borrows the real genomics of
      cases that look alike; over the fused features a shuffled buffer borrowed the same values.
    - ``distill_weight=1`` (paper 0): the WSI-only logits follow the case's own genomic-risk logits.
    - ``genomic_teacher_steps=300`` (paper: no teacher): phi_G and r_G are fitted on the training cases' real
      genomics before fine-tuning (the winner of the equal-budget tuning on seeds 0-4), then kept fixed for
      WSI-only inference (``train_gene_encoder=None``: fine-tuned only when the case's own genomics are read
      at test, ``msrl_multi``), the setting whose borrowing survived its control on fresh seeds.
    - Stage 1: ``pretrain_inter_level="node+graph"`` (paper ``"graph"``; the graph-level term alone did not
      move on small cohorts), ``pretrain_batch_size=32`` for enough optimiser steps, ``pretrain_holdout``
      cases that score WSI -> genomics retrieval every epoch (``pretrain_history_``).
    - ``embed_dim=256`` (paper 768), fine-tuning lr 1e-3 / batch 8 (method.md 1e-4 / 32 left MSRL untrained
      on cohorts of ~100 cases): CPU-sized training.

    A training case's own buffer row is out of its graph (no edge, no 2-hop path), in both branches, so
    training sees the graph that inference sees; the buffer holds one row per case.

    ``buffer_candidates=m`` builds each case's graph over its exact top-m buffer rows (memory O(K d) instead
    of O(K^2); equal to the dense graph when m >= K) for buffers of 1e4+ rows.

    Architecture parameters
    -----------------------
    wsi_encoder : str
        The slide encoder phi_H by name (``msrl_plugin.wsi_encoders``: abmil, or transmil, dsmil, clam_sb, dtfdmil
        with msrl-plugin[torchmil], or a plugin's); stage 1 pre-trains the same encoder.
    graph_forward : {"per_case", "none"}
        Each case's graph over [case; buffer] (the paper's graph forward), or none: MSRL with borrowing switched
        off, the encoder's h through ABMIL's rho to the head (equals the abmil aggregator).
    embed_dim : int
        Width d of the WSI and genomic embeddings (graph nodes are 2d when fused).
    attn_dim : int or None
        Width of the gated-attention branches; None = embed_dim // 2.
    k : int
        Neighbours per node in the case graph.
    learner_layers : int
        Layers of the graph learner (learned graph only).
    learner_activation : {"tanh", "relu"}
        Activation between the graph learner's layers (learned graph only).
    gcn_dropout : float
        Dropout inside the graph convolution.
    dropout : float
        Dropout of the WSI encoder, the genomic encoder and the inductor.
    snn_activation : {"selu", "elu"}
        Activation of the genomic SNN encoder and the inductor.
    readout : {"node", "node+wsi", "node+case"}
        What the task head reads: the post-graph node embedding z, concat(z, h), or concat(z, f) with the
        case's own node features f (a skip connection).
    borrow : {"genomic_risk", "none"}
        Add the edge-weighted genomic risk of the case's buffer neighbours (their real genomics) to the head.
    similarity : {"wsi", "fused"}
        Graph edges from the WSI half of the node features only, or from all of them (the paper).

    Stage 2 (fine-tuning) parameters
    --------------------------------
    buffer_size : int
        Rows of real training-case features kept in the buffer.
    ema_momentum : float
        Momentum of the EMA target branch.
    buffer_update : {"fifo", "frozen"}
        How the buffer takes each step's target features: FIFO (the paper), or kept as initialised.
    target_update : {"ema", "frozen", "copy"}
        How the target branch follows the online one after a step: EMA with ema_momentum (the paper), kept at
        its pre-trained weights, or a copy.
    temperature : float
        InfoNCE temperature of the alignment losses.
    align_weight : float
        Weight of the three alignment losses against the task loss.
    f_align : {"genomic", "paper"}
        L_f_align between the inductor's genomics and the case's real ones (buffer negatives), or the paper's
        InfoNCE over the whole node features.
    genomic_teacher_weight : float
        Weight of the task loss of the genomic risk head on the training cases' real genomics (borrow only).
    genomic_teacher_steps : int
        Before fine-tuning, fit phi_G and r_G on the training cases' real genomics alone for this many Adam
        steps (borrow only); 0 = no teacher.
    distill_weight : float
        Weight of the MSE of the WSI-only logits to the case's own genomic-risk logits (borrow only); 0 = off.
    train_gene_encoder : bool or None
        Fine-tune the genomic encoder (the target branch follows it by EMA), or keep it as pre-trained (and
        pre-fitted); None = fine-tune only when the case's own genomics are read at test (``msrl_multi``).
    teacher_crossfit : int
        With a fixed teacher, each buffer row lends (and each case is distilled to) a genomic risk from a
        teacher pre-fitted on the other of this many folds, never its own outcome; 0 = one teacher on all.

    Stage 1 (graph-structure pre-training) parameters
    -------------------------------------------------
    pretrain_epochs : int
        Epochs of stage-1 graph-structure pre-training per fit; 0 = none.
    pretrain_lr : float
        Learning rate of stage-1 pre-training.
    pretrain_batch_size : int
        Cases per stage-1 pre-training batch.
    maskfeat_rate_learner, maskfeat_rate_anchor : float
        Feature-masking rates of the learner and anchor views in pre-training.
    dropedge : float
        Edge-dropout rate in pre-training.
    anchor_tau : float
        Structure-bootstrapping rate of the anchor graph in pre-training.
    anchor_init : {"identity", "knn"}
        Initial anchor graph of pre-training.
    pretrain_holdout : float
        Share of the cases with genomics held out of pre-training to score WSI -> genomics retrieval.
    pretrain_inter_level : {"node+graph", "graph"}
        Where pre-training aligns the modalities: the encoders' outputs and the graph outputs, or the latter.
    pretrain_transfer : {"all", "graph", "wsi+graph"}
        What fine-tuning inherits from stage 1: the encoders, the graph learner and the GCN (the paper), only
        the graph learner and the GCN, or those and the WSI encoder (phi_G starts at random).
    pretrained : str or None
        A stage-1 checkpoint from ``msrl-plugin pretrain`` to start from instead of pre-training (genes
        matched by name, read with the pool's genomics scaler [D]).

    Scaling parameters
    ------------------
    buffer_candidates : int or None
        Build each case's graph over its top-m buffer rows only (for buffers of 1e4+ rows); None = all.
    candidate_search : {"torch", "faiss"}
        How the top-m candidates are searched (exact either way; faiss when installed).
    propagation : {"dense", "pyg"}
        How the GCN propagates: batched dense products, or torch-geometric's message passing (equal results).
    candidate_keys : {"float16", "float32"}
        Storage of the cached retrieval keys of ``buffer_candidates``: float16 (a shortlist of 2m rows, then
        exact float32 re-scoring) or float32 (every score exact).
    """

    _parameter_constraints: ClassVar[dict] = MSRL_CONSTRAINTS
    modality = "fused"          # nodes concat(g, h); "wsi" for MSRL_H
    graph = "learned"           # or a static kNN graph (ablations)
    buffer_source = "target"    # "online" for the online-buffer ablation
    use_pretraining = True      # False for the random-GSL ablation
    uses_genomics = True
    change: ClassVar[str | None] = None  # the component a named form changes against its base (msrl_forms)

    def __init__(self, embed_dim: int = 256, attn_dim: int | None = None, k: int = 10, learner_layers: int = 2,
                 learner_activation: str = "tanh", gcn_dropout: float = 0.25, dropout: float = 0.25,
                 snn_activation: str = "selu", buffer_size: int = 256, ema_momentum: float = 0.99,
                 temperature: float = 0.2, align_weight: float = 1.0, readout: str = "node+case",
                 borrow: str = "genomic_risk", f_align: str = "genomic", genomic_teacher_weight: float = 1.0,
                 distill_weight: float = 1.0, similarity: str = "wsi", genomic_teacher_steps: int = 300,
                 train_gene_encoder: bool | None = None, teacher_crossfit: int = 5,
                 pretrain_epochs: int = 100, pretrain_lr: float = 1e-3, pretrain_batch_size: int = 32,
                 maskfeat_rate_learner: float = 0.3, maskfeat_rate_anchor: float = 0.3, dropedge: float = 0.5,
                 anchor_tau: float = 0.999, anchor_init: str = "identity", pretrain_holdout: float = 0.15,
                 pretrain_inter_level: str = "node+graph", pretrain_transfer: str = "all",
                 pretrained: str | None = None,
                 max_epochs: int = 30, lr: float = 1e-3, reg: float = 1e-5, batch_size: int = 8,
                 max_patches: int | None = 4096, n_bins: int = 4, alpha_surv: float = 0.0,
                 weighted_sample: bool = False, seed: int = 1, device: str = "auto", verbose: bool = False,
                 buffer_candidates: int | None = None, candidate_search: str = "torch",
                 propagation: str = "dense", candidate_keys: str = "float16", precision: str = "auto",
                 wsi_encoder: str = "abmil", graph_forward: str = "per_case", buffer_update: str = "fifo",
                 target_update: str = "ema"):
        store_init_args(self, locals())

    def _warn_ignored(self) -> None:
        check_wsi_encoder(self.wsi_encoder)  # before any bag is read: unknown, or its extra not installed
        warn_ignored(self)

    # -- modules -------------------------------------------------------------------------------
    def _build_model(self, feature_dim: int, genomics_dim: int, n_outputs: int) -> nn.Module:
        if not self._borrows():
            return self._plain_network(feature_dim, n_outputs)
        return MSRLNetwork(feature_dim, genomics_dim if self.modality == "fused" else 0, n_outputs,
                           self.embed_dim, self.attn_dim, self.modality, self.graph, self.k, self.learner_layers,
                           self.learner_activation, self.gcn_dropout, self.dropout, self.snn_activation,
                           getattr(self, "buffer_rows_", self.buffer_size), self.readout,
                           self.buffer_candidates, self.candidate_search, self.propagation,
                           self.borrow if self.modality == "fused" else "none", self.similarity,
                           getattr(self, "candidate_keys", "float16"), self._lends_stored(),
                           self._encoder(feature_dim))

    # -- fit -----------------------------------------------------------------------------------
    def _eligible(self, has_genomics: torch.Tensor) -> torch.Tensor:
        """Cases that may enter the target branch and the buffer: those with real genomics."""
        return has_genomics if self.modality == "fused" else torch.ones_like(has_genomics)

    def fit(self, cohort: Cohort, progress: bool | None = None) -> MSRLAggregator:
        data = self._prepare_fit(*self._pretrained_inputs(cohort))  # genes aligned to a pre-trained file's
        if not self._borrows():
            return self._fit_without_graph(data, progress)
        device = self._device()
        eligible = self._eligible(data.has_genomics).nonzero().squeeze(1)
        self.buffer_rows_ = max(1, min(self.buffer_size, len(eligible)))
        net = self._build_model(self.feature_dim_, len(self.genomics_columns_), self.task_.n_outputs).to(device)
        resuming = self.has_training_state()  # the saved state holds the pre-trained weights and buffer
        if resuming:
            self.pretrain_history_ = []
        elif self.use_pretraining and (self.pretrained or self.pretrain_epochs > 0):
            pre = self._load_pretrained() if self.pretrained else self.pretrain(data, progress)
            self._transfer(pre, net, self.graph == "learned")
        else:
            self.pretrain_history_ = []
        if net.gene_encoder is not None:
            if net.genomic_head is not None and self.genomic_teacher_steps > 0 and not resuming:
                self._prefit_teacher(net, data)
            net.gene_encoder.requires_grad_(self._trains_gene_encoder())
            if net.genomic_head is not None and self.genomic_teacher_steps > 0:
                net.genomic_head.requires_grad_(self._trains_gene_encoder())
        if not resuming:
            self._initialise_buffer(net, data, eligible)
        target = make_target(net)  # its own phi_G copy: frozen [D], or the EMA of a trained online phi_G
        target.buffer = net.buffer        # one buffer, read by both branches
        self.model_ = net
        pending: dict[str, Any] = {}
        self._train(net, data, lambda model, batch: self._step_loss(net, target, batch, pending),
                    progress=progress, after_step=lambda batch: self._after_step(net, target, pending),
                    params=[p for p in net.parameters() if p.requires_grad],
                    extra_modules={"target": target})
        self._fit_coverage(data)
        return self

    def _trains_gene_encoder(self) -> bool:
        return self.genomics_at_test if self.train_gene_encoder is None else bool(self.train_gene_encoder)

    def _lends_stored(self) -> bool:
        """Buffer rows lend a cross-fitted risk (a fixed teacher with ``teacher_crossfit`` folds)."""
        return (self.modality == "fused" and self.borrow == "genomic_risk" and self.genomic_teacher_steps > 0
                and getattr(self, "teacher_crossfit", 0) > 0 and not self._trains_gene_encoder())

    def _prefit_teacher(self, net: MSRLNetwork, data: CaseData) -> None:
        from ..nn.genomic_teacher import PREFIT_LR, crossfit_genomic_risk, prefit_genomic_teacher

        rows = data.has_genomics.nonzero().squeeze(1)
        device = self._device()
        genomics = data.genomics[rows].to(device)
        targets = {k: v[rows].to(device) for k, v in data.targets.items()}
        if self._lends_stored():  # from the untrained modules: each fold's teacher starts where the main one does
            lent = crossfit_genomic_risk(net.gene_encoder, net.genomic_head, genomics, targets, self.task_.loss,
                                         self.genomic_teacher_steps, self._generator, self.teacher_crossfit)
            net.buffer.set_lent_table([data.case_ids[i] for i in rows.tolist()], lent)
        losses = prefit_genomic_teacher(net.gene_encoder, net.genomic_head, genomics, targets, self.task_.loss,
                                        self.genomic_teacher_steps, self._generator)
        # its Adam settings are fixed, so a divergence here comes from the genomics' scale
        self._check_finite(1, losses + ([] if not self._lends_stored() else [lent.sum()]),
                           [net.gene_encoder, net.genomic_head], data, "genomic-teacher pre-fit",
                           "the fixed pre-fit lr", PREFIT_LR)
        self.teacher_history_ = [float(v) for v in losses]
        if self._epoch_log is not None:
            self._epoch_log.teacher_steps(self.teacher_history_)

    def _step_loss(self, net: MSRLNetwork, target: MSRLNetwork, batch: BagBatch,
                   pending: dict[str, Any]) -> torch.Tensor:
        if net.gene_encoder is not None and not self._trains_gene_encoder():
            net.gene_encoder.eval()  # a fixed teacher lends and distils without AlphaDropout noise
        # the patch-level encoders run under the caller's autocast (precision='bf16'); the graph and the
        # losses always in float32
        h = net.encode_wsi(batch.x, batch.mask).float()
        sub = self._eligible(batch.has_genomics).nonzero().squeeze(1)
        h_t = None
        if len(sub) >= 2:
            with torch.no_grad():
                target.eval()
                h_t = target.encode_wsi(batch.x[sub], batch.mask[sub]).float()
        with torch.autocast(batch.x.device.type, enabled=False):
            return self._graph_loss(net, target, batch, h, sub, h_t, pending)

    def _graph_loss(self, net: MSRLNetwork, target: MSRLNetwork, batch: BagBatch, h: torch.Tensor,
                    sub: torch.Tensor, h_t: torch.Tensor | None, pending: dict[str, Any]) -> torch.Tensor:
        ids = batch.case_ids
        use_real = batch.has_genomics if self.genomics_at_test else None
        f = net.online_nodes(h, batch.genomics, use_real)
        z, graph, mask = net.graph_forward(f, ids)
        terms: dict[str, torch.Tensor] = {}  # for --log-data
        if net.genomic_head is None:
            logits = net.logits(z, f, h, graph)
            loss = terms["task"] = self.task_.loss(logits, batch.targets)
        else:  # the head and the borrowed risk each learn the task alone, so neither cancels the other
            own, borrowed = net.head(net.readout_features(z, f, h)), net.borrowed_logits(graph)
            logits = (own + borrowed) / 2
            terms["task"], terms["task_borrowed"] = (self.task_.loss(own, batch.targets),
                                                     self.task_.loss(borrowed, batch.targets))
            loss = terms["task"] + terms["task_borrowed"]
            if self._epoch_log is not None:  # how much of the prediction's magnitude is borrowed
                terms["borrowed_share"] = (borrowed.abs().mean() /
                                           (own.abs().mean() + borrowed.abs().mean() + 1e-12)).detach()
        pending.clear()
        has_real = batch.has_genomics.nonzero().squeeze(1)
        if net.genomic_head is not None and len(has_real):
            # r_G learns risk from real genomic embeddings, the kind of rows the buffer holds
            teacher = net.genomic_head(net.gene_encoder(batch.genomics[has_real]))
            targets = {k: v[has_real] for k, v in batch.targets.items()}
            terms["teacher"] = self.task_.loss(teacher, targets)
            loss = loss + self.genomic_teacher_weight * terms["teacher"]
            if self.distill_weight > 0:  # the WSI-only prediction follows the case's own genomic risk [D]
                own_risk = (net.buffer.lent_of([batch.case_ids[i] for i in has_real.tolist()])
                            if net.buffer.lent_dim else teacher.detach())  # cross-fitted: not its own label
                terms["distill"] = torch.nn.functional.mse_loss(logits[has_real], own_risk)
                loss = loss + self.distill_weight * terms["distill"]
        if h_t is not None:
            sub_ids = [ids[i] for i in sub.tolist()]
            with torch.no_grad():
                f_t = target.real_nodes(h_t, batch.genomics[sub])
                # the target graph over the same node sets as the online one, so the two compare entry by entry
                rows = getattr(graph, "rows", None)
                z_t, graph_t, _ = target.graph_forward(f_t, sub_ids, None if rows is None else rows[sub])
            l_f = self._f_align(net, f[sub], f_t, sub_ids)
            l_g = info_nce(z[sub], z_t, self.temperature)
            # structure: each current node's row of the online dense similarity vs the target's edges
            l_s = balanced_bce(graph.similarity[sub, 0], graph_t.adj[:, 0], valid=mask[sub, 0])
            loss = loss + self.align_weight * (l_f + l_g + l_s)
            terms.update(f_align=l_f, g_align=l_g, s_align=l_s)
            pending["features"] = (f_t if self.buffer_source == "target" else f[sub]).detach()
            pending["ids"] = sub_ids
        if self._epoch_log is not None:
            self._epoch_log.add_terms(terms)
        return loss

    def _f_align(self, net: MSRLNetwork, f: torch.Tensor, f_t: torch.Tensor, ids: list[str]) -> torch.Tensor:
        """L_f_align. ``"paper"`` [P]: InfoNCE(f, f^) over concat(g, h), which the h halves (one encoder and its
        EMA copy on the same bag) satisfy alone. ``"genomic"`` [D]: the inductor's placeholder g~ against the
        real g^ of the same case, with the buffer's real genomic rows of other cases as extra negatives, so
        g~ must pick out its own case's genomics: the alignment the graph's neighbour choice relies on."""
        if self.f_align == "paper" or self.modality != "fused":
            return info_nce(f, f_t, self.temperature)
        d = self.embed_dim
        buffer = net.buffer
        allowed = buffer.valid[None, :] & ~buffer.exclusion_mask(ids)
        return info_nce_with_bank(f[:, :d], f_t[:, :d], buffer.features[:, :d], allowed, self.temperature)

    def _after_step(self, net: MSRLNetwork, target: MSRLNetwork, pending: dict[str, Any]) -> None:
        self._update_target(target, net, self._ema_modules(net))
        feats, ids = pending.pop("features", None), pending.pop("ids", [])
        if distributed.is_distributed():  # every rank enqueues every rank's rows, in rank order
            empty = net.buffer.features.new_zeros(0, net.buffer.features.shape[1])
            feats = distributed.gather_rows(empty if feats is None else feats)
            ids = [i for part in distributed.gather_objects(ids) for i in part]
        if ids:
            self._update_buffer(net.buffer, feats, ids)

    def _ema_modules(self, net: MSRLNetwork) -> list[str]:
        trained_gene_encoder = self._trains_gene_encoder() and net.gene_encoder is not None
        return net.target_modules() + (["gene_encoder"] if trained_gene_encoder else [])

    # -- inference -----------------------------------------------------------------------------
    def _forward(self, model: nn.Module, batch: BagBatch) -> torch.Tensor:
        if not isinstance(model, MSRLNetwork):  # graph_forward="none": the ABMIL network over the encoder
            return model(batch.x, batch.mask)[0]
        use_real = batch.has_genomics if self.genomics_at_test else None
        # the case ids make a case that sits in the buffer skip its own row
        return model(batch.x, batch.mask, batch.genomics, use_real, batch.case_ids)

    def _attention_pool(self) -> nn.Module:
        return self.model_.wsi_encoder if isinstance(self.model_, MSRLNetwork) else self.model_.pool

    def _extra_state(self) -> dict[str, Any]:
        return {"buffer_rows": int(self.buffer_rows_), "coverage_threshold": float(self.coverage_threshold_)}

    def _resume_extra(self) -> dict[str, Any]:
        return {"pretrain_history_": self.pretrain_history_}

    def _set_extra_state(self, extra: dict[str, Any]) -> None:
        self.buffer_rows_ = int(extra["buffer_rows"])
        self.coverage_threshold_ = float(extra.get("coverage_threshold", float("nan")))

    @classmethod
    def _from_checkpoint(cls, ckpt: dict[str, Any], path, device: str | None) -> MSRLAggregator:
        """Checkpoints written before a keyword existed load with the behaviour they were trained with."""
        params = {**LEGACY_PARAMS, **json.loads(ckpt["params"])}
        return super()._from_checkpoint({**ckpt, "params": json.dumps(params)}, path, device)
