"""Pre-fitting MSRL's genomic risk head r_G (with phi_G) on the training cases' real genomics.

Inside fine-tuning, r_G sees batches of 8 noisy survival targets and stayed weak on the cases' own genomics;
fitted first on the genomics alone, where a step costs microseconds, it ranks the true risk clearly better
(``benchmarks/README.md``, "MSRL, second design"). What the buffer lends and what the WSI-only prediction is
distilled to are then a stronger signal.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

#: [D] Adam settings of the pre-fit: tuned on the quick tier's tuning seeds (more steps overfit 150 cases)
PREFIT_LR = 1e-3
PREFIT_WEIGHT_DECAY = 1e-3
PREFIT_BATCH = 1024


def prefit_genomic_teacher(gene_encoder: nn.Module, genomic_head: nn.Module, genomics: torch.Tensor,
                           targets: dict[str, torch.Tensor], loss: Callable[..., torch.Tensor], steps: int,
                           generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` Adam steps of ``loss(genomic_head(gene_encoder(genomics)), targets)`` over random batches of
    at most ``PREFIT_BATCH`` rows (the whole set when smaller); both modules are left in eval mode.

    Returns the loss of every step (detached tensors: read once by the caller, no host sync per step)."""
    modules = nn.ModuleList([gene_encoder, genomic_head]).train()
    optimiser = torch.optim.Adam(modules.parameters(), lr=PREFIT_LR, weight_decay=PREFIT_WEIGHT_DECAY)
    n = len(genomics)
    losses = []
    for _ in range(steps):
        rows = (torch.randperm(n, generator=generator)[:PREFIT_BATCH] if n > PREFIT_BATCH
                else torch.arange(n)).to(genomics.device)
        value = loss(genomic_head(gene_encoder(genomics[rows])), {k: v[rows] for k, v in targets.items()})
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
        losses.append(value.detach())
    modules.eval()
    return losses


def crossfit_genomic_risk(gene_encoder: nn.Module, genomic_head: nn.Module, genomics: torch.Tensor,
                          targets: dict[str, torch.Tensor], loss: Callable[..., torch.Tensor], steps: int,
                          generator: torch.Generator, folds: int) -> torch.Tensor:
    """Out-of-fold genomic risk logits ``(n, n_outputs)``: row i comes from a copy of the (untrained) modules
    pre-fitted on the other folds only, so what a case lends never encodes its own observed outcome.

    The modules passed in are copied, not changed; each fold's copy gets the same ``steps`` as the main teacher.
    """
    n = len(genomics)
    order = torch.randperm(n, generator=generator).to(genomics.device)
    out = torch.zeros(n, genomic_head.out_features, device=genomics.device)
    for fold in range(min(folds, n)):
        held = order[fold::folds]
        kept = torch.ones(n, dtype=torch.bool, device=genomics.device)
        kept[held] = False
        encoder, head = copy.deepcopy(gene_encoder), copy.deepcopy(genomic_head)
        prefit_genomic_teacher(encoder, head, genomics[kept], {k: v[kept] for k, v in targets.items()}, loss,
                               steps, generator)
        with torch.no_grad():
            out[held] = head(encoder(genomics[held]))
    return out
