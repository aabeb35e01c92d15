"""Dropout whose CPU mask costs a fraction of ``torch.nn.Dropout``'s (the same Bernoulli(1 - p) keep mask).

On CPUs ``F.dropout`` draws its mask with ``bernoulli_``, a large share of a profiled ABMIL training step
(``benchmarks/bench_training_speed.py --profile``; ``benchmarks/README.md``). Here each element gets 8 random bits
(``random_`` on int32 words seen as four int8 values) where ``(1 - p) * 256`` is a whole number, so the keep
probability is exact (CLAM's p = 0.25: 192/256), and 16 bits otherwise (exact to 1/65536). The mask is built with
float arithmetic, ``clamp(threshold - bits, 0, 1)``: exactly 1 where ``bits < threshold`` and 0 elsewhere, as a
comparison would give, but vectorised (a bool comparison and its conversion to float cost more than the draw).
Kept entries are scaled by 1 / (1 - p) as in ``nn.Dropout``; on other devices ``F.dropout`` is used as is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _random_bits(n: int, p: float) -> tuple[torch.Tensor, int]:
    """``n`` uniform signed integers (8 bits each where that keeps Bernoulli(1 - p) exact, else 16) and the
    threshold below which an element is kept."""
    keep8 = (1 - p) * 256
    bits, dtype = (8, torch.int8) if abs(keep8 - round(keep8)) < 1e-9 else (16, torch.int16)
    per_word = 32 // bits
    words = torch.empty(-(-n // per_word), dtype=torch.int32).random_(-2**31, 2**31 - 1)  # 32 uniform bits each
    return words.view(dtype)[:n], round((1 - p) * 2**bits) - 2**(bits - 1)


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with a cheaper CPU mask (same distribution, see the module); any shape."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or p >= 1:
        return F.dropout(x, p, training)
    bits, threshold = _random_bits(x.numel(), p)
    # integers in float32 are exact: threshold - bits >= 1 where kept, <= 0 where dropped
    keep = bits.view(x.shape).to(torch.float32).neg_().add_(threshold).clamp_(0, 1).mul_(1.0 / (1 - p))
    return x * keep.to(x.dtype)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, no parameters, same state_dict) computed by :func:`fast_dropout` [D]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)
