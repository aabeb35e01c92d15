"""Pre-fitting MSRL's genomic risk head r_G (with phi_G) on the training cases' real genomics.

Inside fine-tuning, r_G sees batches of 8 noisy survival targets and stayed weak on the cases' own genomics
(Spearman ~0.5 with the true risk on the quick tier); fitted first on the genomics alone, where a step costs
microseconds, it reaches ~0.68 (``benchmarks/README.md``). What the buffer lends and what the WSI-only
prediction is distilled to are then a stronger signal.
"""
from __future__ import annotations

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
