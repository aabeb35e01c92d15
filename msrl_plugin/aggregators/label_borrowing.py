"""The label-only control of MSRL's borrowing: the neighbours' observed outcomes, not their genomics.

MSRL's ``borrow="genomic_risk"`` adds, for each case, the edge-weighted mean of what its buffer neighbours j lend:
a genomic risk of g_j (cross-fitted by default, ``teacher_crossfit``, so never row j's own memorised outcome; with
``teacher_crossfit=0``, r_G(g_j) of a teacher fitted on every training case's outcome). The shuffled-buffer control
destroys genomics and labels alike and cannot tell them apart; this control lends labels only.

This control keeps everything of a fitted MSRL (weights, buffer, graph, edge weights, the head) and replaces
only what each buffer row lends: r_G(g_j) becomes r_L(s_j), where s_j is the row's case's *observed outcome*
(survival: the martingale residual event - H(t) under the training cohort's Nelson-Aalen hazard; classification:
the one-hot label) and r_L is a linear map to the task's logits fitted by the task loss on the training cases'
own outcomes, as r_G was. If MSRL does no better than this, what it borrows is labels, not genomics.

Two ways in (both the same transform): :func:`lend_observed_outcomes` on a fitted MSRL (a copy, paired with the
same fit: ``msrl:label_only``, alias ``msrl_label_only``, in ``compare`` and the benchmarks), or the registered
``msrl_label_only`` for ``train`` (MSRL's fit, then the transform).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..cohort import SURVIVAL, Cohort
from ..errors import MSRLPluginError
from ..nn.msrl import CandidateGraph, MSRLNetwork
from ..registry import register_aggregator
from .msrl import MSRLAggregator

OUTCOME_STEPS = 500  # Adam steps of r_L (a linear map of 1 or C inputs: converged long before)
OUTCOME_LR = 0.05


def observed_outcome_scores(cohort: Cohort) -> np.ndarray:
    """``(n, q)`` float32 observed-outcome features of the cases, in ``cohort.case_ids`` order.

    Survival (q = 1): martingale residual ``event - H(t)``, H the Nelson-Aalen cumulative hazard of these cases
    (higher = an earlier event than expected). Classification (q = classes): the one-hot label.
    """
    if cohort.task != SURVIVAL:
        labels = np.asarray(cohort.labels())
        classes = np.unique(labels)
        return (labels[:, None] == classes[None, :]).astype(np.float32)
    time, event = np.asarray(cohort.times(), float), np.asarray(cohort.events(), float)
    event_times, deaths = np.unique(time[event == 1], return_counts=True)
    at_risk = (time[None, :] >= event_times[:, None]).sum(axis=1)
    cumulative = np.concatenate([[0.0], np.cumsum(deaths / at_risk)])
    hazard = cumulative[np.searchsorted(event_times, time, side="right")]
    return (event - hazard).astype(np.float32)[:, None]


class OutcomeLendingNetwork(MSRLNetwork):
    """An MSRL network whose buffer rows lend ``outcome_logits`` (one row of logits per buffer row) once
    ``lend_outcomes`` is set; until then it is MSRL (so fitting is MSRL's fit)."""

    def borrowed_logits(self, graph):
        if not bool(self.lend_outcomes):
            return super().borrowed_logits(graph)
        # the weighting of MSRLNetwork.borrowed_logits, with each row's lent logits looked up
        w = graph.adj[:, 0, 1:]
        lent = (self.outcome_logits[graph.rows] if isinstance(graph, CandidateGraph)
                else self.outcome_logits[None].expand(w.shape[0], -1, -1))
        w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return torch.einsum("bm,bmo->bo", w, lent)


def as_outcome_lending(net: MSRLNetwork, n_outputs: int) -> OutcomeLendingNetwork:
    """Turn ``net`` (in place) into an :class:`OutcomeLendingNetwork`, lending switched off."""
    if net.genomic_head is None:
        raise MSRLPluginError("the label-only control replaces the genomic risk that MSRL lends; this model "
                              "lends none", fix="use an MSRL form with borrow='genomic_risk' (e.g. msrl)")
    if not isinstance(net, OutcomeLendingNetwork):
        net.__class__ = OutcomeLendingNetwork
        device = net.buffer.features.device
        net.register_buffer("outcome_logits", torch.zeros(net.buffer.size, n_outputs, device=device))
        net.register_buffer("lend_outcomes", torch.zeros((), dtype=torch.bool, device=device))
    return net


def fit_outcome_head(model: MSRLAggregator, train: Cohort) -> tuple[nn.Linear, dict[str, np.ndarray]]:
    """r_L: the observed-outcome features -> task logits, fitted by the task loss on ``train`` (the cases the
    model was fitted on); and each training case's features by case id."""
    scores = observed_outcome_scores(train)
    targets = model.task_.targets(train)
    generator = torch.Generator().manual_seed(int(getattr(model, "seed", 0)))
    head = nn.Linear(scores.shape[1], model.task_.n_outputs)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.01)
    x = torch.as_tensor(scores)
    optimiser = torch.optim.Adam(head.parameters(), lr=OUTCOME_LR)
    with torch.enable_grad():
        for _ in range(OUTCOME_STEPS):
            optimiser.zero_grad()
            loss = model.task_.loss(head(x), targets)
            loss.backward()
            optimiser.step()
    return head, dict(zip(train.case_ids, scores))


def install_outcome_lending(model: MSRLAggregator, train: Cohort) -> MSRLAggregator:
    """In place: every buffer row lends r_L(its case's observed outcome) instead of r_G(its genomics)."""
    model._check_fitted()
    missing = set(model.buffer_case_ids()) - set(train.case_ids)
    if missing:
        raise MSRLPluginError(f"{len(missing)} buffer case(s) are not in the cohort given, e.g. "
                              f"{sorted(missing)[0]!r}", fix="pass the cohort the model was fitted on")
    head, scores = fit_outcome_head(model, train)
    net = as_outcome_lending(model.model_, model.task_.n_outputs)
    _, ids, valid = net.buffer.snapshot()
    q = next(iter(scores.values())).shape[0]
    rows = np.stack([scores[i] if ok else np.zeros(q, np.float32) for i, ok in zip(ids, valid.tolist())])
    with torch.no_grad():
        lent = head(torch.as_tensor(rows)).to(net.outcome_logits)
        net.outcome_logits.copy_(torch.where(valid[:, None].to(lent.device), lent, torch.zeros_like(lent)))
        net.lend_outcomes.fill_(True)
    model.outcome_head_ = head
    return model


def lend_observed_outcomes(model: MSRLAggregator, train: Cohort) -> MSRLAggregator:
    """A copy of a fitted MSRL whose buffer rows lend their cases' observed outcomes (the label-only control);
    ``train`` is the cohort it was fitted on. The graph, its edge weights and the head are unchanged."""
    if not isinstance(model, MSRLAggregator) or getattr(model, "modality", None) != "fused":
        raise MSRLPluginError(f"model {getattr(model, 'name', model)!r} is not a fitted MSRL with a genomic buffer")
    return install_outcome_lending(copy.deepcopy(model), train)


@register_aggregator("msrl_label_only")
class MSRLLabelOnly(MSRLAggregator):
    """Control: MSRL's fit, then each buffer row lends its case's observed outcome instead of its genomics.

    Fitted with the same seed, the network is MSRL's; only what the buffer lends differs (module docstring).
    Not a method: a control for ``compare`` against ``msrl`` (and its shuffled buffer).
    """

    change = "control: buffer rows lend their cases' observed outcomes (label-only), not their genomics"

    def _build_model(self, feature_dim: int, genomics_dim: int, n_outputs: int) -> MSRLNetwork:
        return as_outcome_lending(super()._build_model(feature_dim, genomics_dim, n_outputs), n_outputs)

    def fit(self, cohort: Cohort, progress: bool | None = None) -> MSRLLabelOnly:
        super().fit(cohort, progress)
        return install_outcome_lending(self, cohort)
