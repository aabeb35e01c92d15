"""Stage 1: self-supervised multi-view graph structure learning (method.md §4).

For each graph m in {H, G, F} over a mini-batch of training cases: a learner view
``Z_m = GCN_m(A_r, X_m * M1)`` and an anchor view ``Z_m^aug = GCN_m(A_anchor, X_m * M2)``, where the
anchor is a persistent case x case graph updated by structure bootstrapping
``A_anchor <- tau_b A_anchor + (1 - tau_b) A_r`` [S]. Losses: L_intra + L_inter + L_fused [P].
Cases without genomics take part in the pathology graph only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .batching import CaseData, batches, collate
from .nn.graph_learner import knn_graph, symmetric_normalise
from .nn.gsl_pretrain import GSLPretrainModel, column_mask
from .nn.losses import info_nce


@dataclass
class PretrainSettings:
    """Stage-1 hyper-parameters [D unless noted; see method.md §4.3 and §11]."""

    epochs: int = 100
    lr: float = 1e-3                    # [D] Adam, wd 0 [S]
    batch_size: int = 128               # cases per graph (full batch when the cohort is smaller)
    maskfeat_rate_learner: float = 0.3  # [D] column masking of the learner view
    maskfeat_rate_anchor: float = 0.3   # [D] column masking of the anchor view
    anchor_tau: float = 0.999           # [S-style] bootstrapping every step
    anchor_init: str = "identity"       # [S] structure inference; "knn" = kNN on the initial features
    temperature: float = 0.2            # [S]
    max_patches: int | None = 4096
    max_anchor_cases: int = 8192        # above this the anchor is a kNN graph of the batch (memory O(N^2))
    inter_level: str = "node+graph"     # L_inter on the GCN outputs ("graph" [P/D]) and on phi_H, phi_G too [D]
    holdout: float = 0.15               # [D] share of cases with genomics kept out to score retrieval per epoch
    retrieval_k: int = 5                # [D] recall@k of WSI -> genomics retrieval on the held-out cases


class AnchorGraphs:
    """Persistent anchor adjacency per graph over all training cases, read and written by sub-block."""

    def __init__(self, n_cases: int, settings: PretrainSettings, k: int, device: torch.device):
        self.n, self.settings, self.k, self.device = n_cases, settings, k, device
        self.persistent = n_cases <= settings.max_anchor_cases
        self.graphs: dict[str, torch.Tensor] = {}

    def read(self, name: str, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.persistent:
            return knn_graph(x.detach(), self.k).adj
        if name not in self.graphs:
            self.graphs[name] = torch.eye(self.n, device=self.device)
            if self.settings.anchor_init == "knn":
                self.graphs[name][idx[:, None], idx] = knn_graph(x.detach(), self.k).adj
        return symmetric_normalise(self.graphs[name][idx[:, None], idx])

    def bootstrap(self, name: str, idx: torch.Tensor, learned: torch.Tensor) -> None:
        if self.persistent:
            tau = self.settings.anchor_tau
            block = self.graphs[name][idx[:, None], idx]
            self.graphs[name][idx[:, None], idx] = tau * block + (1 - tau) * learned.detach()


def _two_views(model: GSLPretrainModel, name: str, x: torch.Tensor, idx: torch.Tensor, anchors: AnchorGraphs,
               settings: PretrainSettings, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    stack = model.stacks[name]
    learned = stack.learner(x).adj
    z = stack.gcn(column_mask(x, settings.maskfeat_rate_learner, gen), learned)
    z_aug = stack.gcn(column_mask(x, settings.maskfeat_rate_anchor, gen), anchors.read(name, idx, x))
    anchors.bootstrap(name, idx, learned)
    return z, z_aug


def gsl_loss(model: GSLPretrainModel, batch, anchors: AnchorGraphs, settings: PretrainSettings,
             gen: torch.Generator) -> dict[str, torch.Tensor]:
    """L_intra, L_inter, L_fused for one batch of cases (the latter two need >= 2 cases with genomics)."""
    tau = settings.temperature
    h = model.wsi_encoder(batch.x, batch.mask)[0]
    z_h, z_h_aug = _two_views(model, "H", h, batch.index, anchors, settings, gen)
    stacks = model.stacks
    terms = {"intra": info_nce(stacks["H"].p(z_h), stacks["H"].p(z_h_aug), tau)}
    sub = batch.has_genomics.nonzero().squeeze(1)
    if "G" in stacks and len(sub) >= 2:
        g = model.gene_encoder(batch.genomics[sub])
        z_g, z_g_aug = _two_views(model, "G", g, batch.index[sub.cpu()], anchors, settings, gen)
        f = torch.cat([g, h[sub]], dim=1)
        z_f, z_f_aug = _two_views(model, "F", f, batch.index[sub.cpu()], anchors, settings, gen)
        qh, qg, qf = stacks["H"].q(z_h[sub]), stacks["G"].q(z_g), stacks["F"].q(z_f)
        terms["intra"] = terms["intra"] + info_nce(stacks["G"].p(z_g), stacks["G"].p(z_g_aug), tau)
        terms["inter"] = info_nce(qh, qg, tau)
        if settings.inter_level == "node+graph":  # [D] also align phi_H(X_I) with phi_G(X_G) before the graph
            terms["inter"] = terms["inter"] + info_nce(model.cross["H"](h[sub]), model.cross["G"](g), tau)
        terms["fused"] = (info_nce(stacks["F"].p(z_f), stacks["F"].p(z_f_aug), tau)
                          + 0.5 * (info_nce(qf, qh, tau) + info_nce(qf, qg, tau)))
    return terms


INTER_LEVELS = ("graph", "node+graph")
ANCHOR_INITS = ("identity", "knn")


def split_holdout(data: CaseData, settings: PretrainSettings, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the cases stage 1 trains on and of the held-out cases with genomics that score retrieval.

    No case is held out when fewer than 16 cases have genomics (retrieval over < 8 cases says little); at
    most 512 are (the retrieval graph is dense over them).
    """
    with_genomics = data.has_genomics.nonzero().squeeze(1)
    n_out = min(512, int(round(settings.holdout * len(with_genomics)))) if len(with_genomics) >= 16 else 0
    held = with_genomics[torch.randperm(len(with_genomics), generator=generator)[:n_out]].sort().values
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[held] = False
    return keep.nonzero().squeeze(1), held


@torch.no_grad()
def cross_modal_retrieval(model: GSLPretrainModel, data: CaseData, index: torch.Tensor, k: int,
                          device: torch.device, max_patches: int | None = None, node_level: bool = True) -> float:
    """Recall@k of WSI -> genomics retrieval over ``index`` (cases with genomics): for each case, is its own
    genomic embedding among the k nearest (cosine) to its WSI embedding? Chance is k / len(index).

    The space is that of the encoders fine-tuning inherits (phi_H, phi_G through the node-level L_inter
    projections) or, without them (``inter_level="graph"``), the graph-level q-space over a graph built
    over these cases alone. Eval mode."""
    was_training = model.training
    model.eval()
    hs, gs = [], []
    for part in batches(index, 32):  # bags embedded a few at a time: memory O(32 bags)
        batch = collate(data, part, max_patches).to(device)
        hs.append(model.wsi_encoder(batch.x, batch.mask)[0])
        gs.append(model.gene_encoder(batch.genomics))
    h, g = torch.cat(hs), torch.cat(gs)
    stacks = model.stacks
    if node_level:
        qh, qg = model.cross["H"](h), model.cross["G"](g)
    else:
        qh = stacks["H"].q(stacks["H"].gcn(h, stacks["H"].learner(h).adj))
        qg = stacks["G"].q(stacks["G"].gcn(g, stacks["G"].learner(g).adj))
    sim = torch.nn.functional.normalize(qh, dim=1) @ torch.nn.functional.normalize(qg, dim=1).t()
    top = sim.topk(min(k, len(index)), dim=1).indices
    model.train(was_training)
    return float((top == torch.arange(len(index), device=device)[:, None]).any(dim=1).float().mean())


def pretrain_gsl(model: GSLPretrainModel, data: CaseData, settings: PretrainSettings, generator: torch.Generator,
                 device: torch.device, progress: bool = False,
                 on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                 check_epoch: Callable[[int, list[torch.Tensor], torch.nn.Module], None] | None = None
                 ) -> list[dict[str, float]]:
    """Train ``model`` in place on the given (training) cases; returns one row per epoch: the mean of each loss
    term and, when cases were held out, ``recall_at_k`` (WSI -> genomics retrieval on them) and its ``chance``.

    ``check_epoch(epoch, losses, model)`` runs after each epoch's steps (1-based; the finite-loss guard);
    ``on_epoch(epoch, row)`` sees each row as it is made (``--log-data``).
    """
    if settings.inter_level not in INTER_LEVELS:
        raise ValueError(f"inter_level must be one of {INTER_LEVELS}, got {settings.inter_level!r}")
    if settings.anchor_init not in ANCHOR_INITS:  # a typo must not silently mean "identity"
        raise ValueError(f"anchor_init must be one of {ANCHOR_INITS}, got {settings.anchor_init!r}")
    model.to(device).train()
    train_idx, held = split_holdout(data, settings, generator)
    anchors = AnchorGraphs(len(data), settings, model.stacks["H"].learner.k, device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    history = []
    bar = tqdm(range(settings.epochs), desc="GSL pre-training", disable=None if progress else True, leave=False)
    for epoch_number in bar:
        epoch, losses = [], []
        for index in batches(train_idx[torch.randperm(len(train_idx), generator=generator)], settings.batch_size):
            if len(index) < 2:
                continue
            batch = collate(data, index, settings.max_patches, generator).to(device)
            terms = gsl_loss(model, batch, anchors, settings, generator)
            loss = sum(terms.values())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.detach())
            epoch.append({"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}})
        if check_epoch is not None:
            check_epoch(epoch_number + 1, losses, model)
        row = {k: float(np.mean([e.get(k, np.nan) for e in epoch])) for k in epoch[0]} if epoch else {}
        if len(held) >= 2 and model.gene_encoder is not None:
            row["recall_at_k"] = cross_modal_retrieval(model, data, held, settings.retrieval_k, device,
                                                       settings.max_patches, settings.inter_level != "graph")
            row["chance"] = min(1.0, settings.retrieval_k / len(held))
            bar.set_postfix(loss=f"{row.get('loss', np.nan):.3f}", recall=f"{row['recall_at_k']:.2f}")
        history.append(row)
        if on_epoch is not None:
            on_epoch(len(history), row)
    return history
