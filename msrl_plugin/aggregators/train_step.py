"""One training step's forward and backward, whole or in patch-budget chunks, and the timed probe that decides
``precision="auto"`` on the fit's own step (:mod:`msrl_plugin.precision`).

``batch_patches`` [D, issue 23]: a batch of ``batch_size`` bags whose patches (after the ``max_patches`` cap)
exceed the budget is collated and run in consecutive chunks within the budget; each chunk's loss is weighted by
its share of the batch's bags and back-propagated at once, so the gradients add up to the whole batch's (the
loss is the same mean over the batch's bags, one optimiser step per batch) while no pass holds more than the
budget: 8 realistic bags x 4096 x 1024 floats were a 128 MiB step, far past the caches. The budget counts
float32 passes; a bf16 pass holds twice as many patches (:func:`pass_budget`: its activations take half the
bytes; measured at the benchmark tier, 2,048-patch chunks made fp32 epochs ~9% faster and bf16 ones ~20% slower
than whole 8-bag batches). Only for losses that are a mean over bags (ABMIL's); MSRL's graph couples the bags of a
batch.
"""
from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..batching import BagBatch, CaseData, bag_sizes, batches, collate, patch_chunks
from ..errors import BadInputError
from ..precision import PRECISIONS, PROBE_STEPS, PrecisionChoice, choose_precision, probe_key, time_steps

LossFn = Callable[[nn.Module, BagBatch], torch.Tensor]
logger = logging.getLogger("msrl_plugin.aggregators")


def collate_step(data: CaseData, index: torch.Tensor, max_patches: int | None, generator: torch.Generator | None,
                 budget: int | None, sizes: list[int] | None, device: torch.device) -> list[BagBatch]:
    """The batch ``index`` as one :class:`BagBatch`, or as chunks of at most ``budget`` patches (same draws of
    the subsample: the bags are collated in the same order with the same generator)."""
    groups = [index] if not budget or sizes is None else patch_chunks(index, sizes, max_patches, budget)
    return [collate(data, group, max_patches, generator).to(device) for group in groups]


def pass_budget(batch_patches: int | None, precision: str) -> int | None:
    """Patches one forward/backward pass may hold: ``batch_patches`` in float32, twice that under bf16."""
    return None if not batch_patches else batch_patches * (2 if precision == "bf16" else 1)


def backward_step(model: nn.Module, chunks: list[BagBatch], loss_fn: LossFn, autocast) -> torch.Tensor:
    """Forward and backward over ``chunks`` (one batch); returns the batch's loss, detached."""
    n_bags = sum(len(chunk.index) for chunk in chunks)
    total = None
    for chunk in chunks:
        with autocast:
            loss = loss_fn(model, chunk)
        if len(chunks) > 1:  # a mean over bags: each chunk weighs its share of the batch
            loss = loss * (len(chunk.index) / n_bags)
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total


def precision_autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def fit_autocast(agg: Any, device: torch.device, model: nn.Module | None, data: CaseData | None,
                 loss_fn: LossFn | None):
    """The autocast of ``agg``'s training: ``agg.precision`` resolved (with the real step where ``model``,
    ``data`` and ``loss_fn`` are given), kept in ``precision_``, ``precision_reason_``, ``precision_probe_seconds_``
    and logged. Matrix products run in bfloat16 under it; weights, optimiser state and losses stay float32."""
    precision = getattr(agg, "precision", "fp32")
    if precision not in PRECISIONS:
        raise BadInputError(f"precision must be 'auto', 'fp32' or 'bf16', not {precision!r}",
                            fix="use --precision auto (default), fp32 or bf16")
    if model is None or data is None or loss_fn is None:
        choice = choose_precision(precision, device)
    else:
        choice = fit_precision(agg, precision, model, data, loss_fn, device, agg._patch_budget())
    agg.precision_, agg.precision_reason_ = choice.precision, choice.describe()
    agg.precision_probe_seconds_ = choice.probe_seconds
    logger.info("%s: %s", agg.name, agg.precision_reason_)
    return precision_autocast(device, choice.precision)


def fit_precision(agg: Any, precision: str, model: nn.Module, data: CaseData, loss_fn: LossFn,
                  device: torch.device, budget: int | None) -> PrecisionChoice:
    """``precision`` resolved for this fit of ``agg``; ``auto`` may time the real step (:mod:`..precision`)."""
    n = len(data)
    if precision != "auto" or n == 0:
        return choose_precision(precision, device)
    sizes = bag_sizes(data)
    cap = getattr(agg, "max_patches", None)
    per_bag = statistics.fmean(min(s, cap or s) for s in sizes)
    per_step = per_bag * min(agg.batch_size, n)
    per_pass = min(per_step, max(budget, per_bag)) if budget else per_step  # patches a float32 pass holds
    fit_steps = agg.max_epochs * math.ceil(n / agg.batch_size)
    key = probe_key(device, f"{agg.name}/{getattr(agg, 'hidden_dim', '')}", agg.feature_dim_, per_pass)

    def probe() -> dict[str, list[float]]:
        # the probe's own order and subsample draws: the fit's generator and RNG are left as they were
        generator = torch.Generator().manual_seed(int(agg.seed) + 1)
        groups = batches(torch.randperm(n, generator=generator), agg.batch_size)
        saved = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in model.state_dict().items()}
        current: dict[str, list[BagBatch]] = {}  # precision -> this round's chunks

        def prepare(round_: int) -> None:  # a new batch each round (a new GEMM shape, as in an epoch)
            state = generator.get_state()
            for p in ("fp32", "bf16"):  # each precision chunked by its own budget, from the same subsample draws
                generator.set_state(state)
                current[p] = collate_step(data, groups[round_ % len(groups)], cap, generator,
                                          pass_budget(budget, p), sizes, device)

        def step(precision: str) -> None:
            model.zero_grad(set_to_none=True)
            backward_step(model, current[precision], loss_fn, precision_autocast(device, precision))
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        was_training = model.training
        model.train()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                return time_steps(step, PROBE_STEPS, prepare=prepare)
        finally:  # no optimiser step was taken; weights, buffers and gradients as before the probe
            model.load_state_dict(saved)
            model.zero_grad(set_to_none=True)
            model.train(was_training)

    # ranks of a distributed fit must agree without talking: they follow the rule, which they all compute alike
    return choose_precision("auto", device, fit_steps=fit_steps, patches_per_step=per_pass,
                            feature_dim=agg.feature_dim_, key=key,
                            probe=None if distributed.is_distributed() else probe)
