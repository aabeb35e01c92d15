"""The finite-loss guard of every training loop: a loss or weight that stops being finite ends the fit.

A diverged run (too high a learning rate, inputs of an extreme scale) used to train on in NaN, save NaN training
states and end in a traceback from the c-index. The guard checks once per epoch (one host sync, not one per
step) that every loss of the epoch and every trained weight is finite; a non-finite gradient shows up as a
non-finite weight after the optimiser step. Nothing of the diverged epoch is saved.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .errors import MSRLPluginError

#: a patch feature beyond this magnitude is named as the likely cause (encoders emit values of order 1-100)
EXTREME_FEATURE = 1e4
#: learning rates above this are named as the likely cause (the usual range is 1e-5 .. 1e-2)
HIGH_LR = 0.1
#: bags scanned for the feature scale when naming the cause (the error path must stay fast)
SCANNED_BAGS = 256


class TrainingDivergedError(MSRLPluginError):
    """Training produced a non-finite loss or weight. ``fold`` is filled in by the cross-validation."""

    def __init__(self, model: str, stage: str, epoch: int, cause: str, fold: int | None = None,
                 fix: str | None = None):
        self.model, self.stage, self.epoch, self.cause, self.fold = model, stage, epoch, cause, fold
        where = f"fold {fold}, " if fold is not None else ""
        super().__init__(f"training diverged: {model!r} {stage} reached a non-finite loss or weight (NaN/Inf) in "
                         f"{where}epoch {epoch}; likely cause: {cause}",
                         fix=fix or "lower the learning rate or rescale the inputs, then run again")

    def in_fold(self, fold: int, fix: str) -> TrainingDivergedError:
        return TrainingDivergedError(self.model, self.stage, self.epoch, self.cause, fold, fix)


def all_finite(losses: Sequence[torch.Tensor], modules: Iterable[torch.nn.Module] = (),
               params: Iterable[torch.Tensor] = ()) -> bool:
    """True when every loss, parameter and floating buffer is finite (one host sync)."""
    checks = [torch.isfinite(torch.stack([v.detach().float().reshape(()) for v in losses])).all()] if losses \
        else []
    tensors = list(params)
    for module in modules:
        tensors += list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]
    checks += [torch.isfinite(t.detach()).all() for t in tensors if t.is_floating_point() and t.numel()]
    if not checks:
        return True
    device = checks[0].device
    return bool(torch.stack([c.to(device) for c in checks]).all())


def likely_cause(lr: float, lr_flag: str, bags: Sequence[torch.Tensor] | None = None,
                 case_ids: Sequence[str] | None = None) -> str:
    """Name the learning rate or the input scale, whichever looks wrong (both when neither stands out)."""
    causes = []
    setting = f"{lr_flag}={lr:g}" if lr_flag.startswith("--param") else f"{lr_flag} {lr:g}"
    if lr > HIGH_LR:
        causes.append(f"the learning rate {setting} is far above the usual 1e-5 to 1e-2")
    largest, where = 0.0, None
    for i in range(min(len(bags or ()), SCANNED_BAGS)):
        bag = bags[i]
        value = float(bag.abs().max()) if bag.numel() else 0.0
        if not value <= largest:  # NaN/Inf counts as largest
            largest, where = value, (case_ids[i] if case_ids is not None else str(i))
    if not largest <= EXTREME_FEATURE:
        causes.append(f"the patch features reach |x| = {largest:.3g} (case {where!r}); rescale or re-extract them")
    if not causes:
        causes.append(f"the learning rate ({setting}) or the scale of the inputs")
    return " and ".join(causes)
