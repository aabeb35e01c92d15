"""Self-normalising network (Klambauer et al. 2017): the gene encoder phi_G and the inductor psi."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

ACTIVATIONS = {"selu": nn.SELU, "elu": nn.ELU}


class SNN(nn.Module):
    """Blocks of Linear -> SELU/ELU -> AlphaDropout.

    Serves as the gene encoder phi_G (input: genomics) and as the inductor psi (input: the WSI representation
    h, output: a genomic placeholder g~), method.md §0.1, §5.1 and §9.2.

    Args:
        in_dim: input features D_in.
        hidden_dims: width of each block; the output dim is ``hidden_dims[-1]``.
            Default (768, 768) [P: d = 768; D: two blocks].
        dropout: AlphaDropout rate [B: 0.25, PORPOISE/MCAT].
        activation: ``"selu"`` [P: the brief says SELU] or ``"elu"`` [B: Mahmood-lab SNN_Block].

    Init: LeCun normal, weight ~ N(0, 1/fan_in), zero bias [B].

    Shapes: ``(N, in_dim) -> (N, hidden_dims[-1])``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int] = (768, 768),
        dropout: float = 0.25,
        activation: str = "selu",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if len(hidden_dims) == 0:
            raise ValueError("hidden_dims must name at least one block")
        self.in_dim = in_dim
        self.out_dim = int(hidden_dims[-1])
        blocks: list[nn.Module] = []
        dims = [in_dim, *hidden_dims]
        for d_in, d_out in pairwise(dims):
            blocks += [nn.Linear(d_in, d_out), ACTIVATIONS[activation](), nn.AlphaDropout(dropout)]
        self.net = nn.Sequential(*blocks)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=1.0 / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
