"""Dropout whose CPU mask costs a fraction of ``torch.nn.Dropout``'s (the same Bernoulli(1 - p) keep mask).

On CPUs ``F.dropout`` draws its mask with ``bernoulli_``, a large share of a profiled ABMIL training step
(``benchmarks/bench_training_speed.py --profile``; ``benchmarks/README.md``). Here the mask comes from 16
random bits per element (``random_`` on int32 words seen as int16 pairs, several times cheaper), compared with
``round((1 - p) * 2**16)``: keep probabilities are exact to 1/65536 (0.75 exactly for CLAM's p = 0.25).
Kept entries are scaled by 1 / (1 - p) as in ``nn.Dropout``; on other devices ``F.dropout`` is used as is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with a cheaper CPU mask (same distribution to 1/65536); any shape."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or p >= 1:
        return F.dropout(x, p, training)
    n = x.numel()
    words = torch.empty((n + 1) // 2, dtype=torch.int32).random_(-2**31, 2**31 - 1)  # 32 uniform bits each
    bits = words.view(torch.int16)[:n].view(x.shape)  # signed 16-bit uniforms in [-32768, 32767]
    keep = bits < round((1 - p) * 65536) - 32768
    return x * (keep * (1.0 / (1 - p))).to(x.dtype)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, no parameters, same state_dict) computed by :func:`fast_dropout` [D]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)
