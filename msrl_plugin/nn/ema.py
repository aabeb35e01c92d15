"""Exponential moving average of an online module into its target copy (method.md §5.1)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_target(online: nn.Module) -> nn.Module:
    """A deep copy of ``online`` with every parameter frozen (``requires_grad=False``)."""
    target = copy.deepcopy(online)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """theta_t <- m * theta_t + (1 - m) * theta_o for every parameter, in place.

    Floating-point buffers (e.g. running statistics) are copied from ``online``; integer/bool buffers
    (counters, flags) are left alone. Parameters and buffers are matched by name, so both modules must
    have the same structure. ``momentum`` default lives with the caller [D: 0.99].
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    t_params, o_params = dict(target.named_parameters()), dict(online.named_parameters())
    if t_params.keys() != o_params.keys():
        raise ValueError("target and online modules have different parameters")
    for name, p_t in t_params.items():
        p_t.mul_(momentum).add_(o_params[name].detach(), alpha=1.0 - momentum)
    t_bufs, o_bufs = dict(target.named_buffers()), dict(online.named_buffers())
    if t_bufs.keys() != o_bufs.keys():
        raise ValueError("target and online modules have different buffers")
    for name, b_t in t_bufs.items():
        if b_t.is_floating_point():
            b_t.copy_(o_bufs[name])
