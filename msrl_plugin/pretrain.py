"""Stage 1: self-supervised multi-view graph structure learning (method.md §4).

For each graph m in {H, G, F} over a mini-batch of training cases: a learner view
``Z_m = GCN_m(A_r, X_m * M1)`` and an anchor view ``Z_m^aug = GCN_m(A_anchor, X_m * M2)``, where the
anchor is a persistent case x case graph updated by structure bootstrapping
``A_anchor <- tau_b A_anchor + (1 - tau_b) A_r`` [S]. Losses: L_intra + L_inter + L_fused [P].
Cases without genomics take part in the pathology graph only.
"""
from __future__ import annotations

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
        terms["fused"] = (info_nce(stacks["F"].p(z_f), stacks["F"].p(z_f_aug), tau)
                          + 0.5 * (info_nce(qf, qh, tau) + info_nce(qf, qg, tau)))
    return terms


def pretrain_gsl(model: GSLPretrainModel, data: CaseData, settings: PretrainSettings, generator: torch.Generator,
                 device: torch.device, progress: bool = False) -> list[dict[str, float]]:
    """Train ``model`` in place on the given (training) cases; returns the per-epoch mean losses."""
    model.to(device).train()
    anchors = AnchorGraphs(len(data), settings, model.stacks["H"].learner.k, device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    history = []
    for _ in tqdm(range(settings.epochs), desc="GSL pre-training", disable=None if progress else True, leave=False):
        epoch = []
        for index in batches(torch.randperm(len(data), generator=generator), settings.batch_size):
            if len(index) < 2:
                continue
            batch = collate(data, index, settings.max_patches, generator).to(device)
            terms = gsl_loss(model, batch, anchors, settings, generator)
            loss = sum(terms.values())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            epoch.append({"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}})
        history.append({k: float(np.mean([e.get(k, np.nan) for e in epoch])) for k in epoch[0]} if epoch else {})
    return history
