"""The optimiser every aggregator trains with."""
from __future__ import annotations

import torch


def make_adam(params: list, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam(lr, weight_decay), the fused kernel where every parameter allows it [D: same update rule; the
    default per-parameter loop showed in the profile of small-bag steps, ``benchmarks/README.md``]."""
    tensors = [p for group in params for p in group["params"]] if params and isinstance(params[0], dict) \
        else params
    fused = bool(tensors) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors) \
        and len({p.device for p in tensors}) == 1
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
