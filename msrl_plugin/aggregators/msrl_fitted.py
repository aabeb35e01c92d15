"""MSRL's buffer seen from outside: how well its real training cases cover a case (``neighbour_coverage`` in
``predict``), which of them a case borrowed from, and the shuffled-buffer control."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch

from ..batching import CaseData, batches, collate
from ..cohort import Cohort
from ..errors import MSRLPluginError


class BufferCoverageMixin:
    """For :class:`~msrl_plugin.aggregators.msrl.MSRLAggregator`: coverage, neighbours, the shuffled control."""

    @torch.no_grad()
    def neighbour_coverage(self, data: CaseData) -> np.ndarray:
        """Per case, the mean similarity (in the graph's own space) to its k most similar buffer rows, its own
        row left out: how well the buffer's real cases cover it. ``(n,)``."""
        net = self.model_.eval()
        keys = torch.nn.functional.normalize(net._candidate_keys().float(), dim=1)  # float16 when compact
        out = []
        for index in batches(torch.arange(len(data)), self.batch_size):
            batch = collate(data, index).to(self._device())  # whole bags, as predict reads them
            use_real = batch.has_genomics if self.genomics_at_test else None
            f = net.online_nodes(net.encode_wsi(batch.x, batch.mask), batch.genomics, use_real)
            q = torch.nn.functional.normalize(net.similarity_embedding(f), dim=1)
            allowed = net.buffer.valid[None, :] & ~net.buffer.exclusion_mask(batch.case_ids)
            sim = (q @ keys.t()).masked_fill(~allowed, float("nan"))
            top = torch.nan_to_num(sim, nan=-2.0).topk(min(self.k, sim.shape[1]), dim=1).values
            out.append(torch.where(top > -2.0, top, torch.nan).nanmean(dim=1).cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)

    def _fit_coverage(self, data: CaseData) -> None:
        """The flag threshold: the 5th percentile of the training cases' own coverage [D]."""
        self.coverage_threshold_ = float(np.nanpercentile(self.neighbour_coverage(data), 5))

    def predict(self, cohort: Cohort) -> pd.DataFrame:
        """As :meth:`Aggregator.predict`, plus ``neighbour_coverage`` and ``outside_buffer_coverage`` (True when
        a case is less covered by the buffer's real cases than 95% of the training cases were: its borrowed
        genomics are less trustworthy, the paper's stated limitation)."""
        frame = super().predict(cohort)
        if not hasattr(self.model_, "buffer"):  # graph_forward="none": nothing borrowed, no coverage
            return frame.assign(neighbour_coverage=np.nan, outside_buffer_coverage=False)
        coverage = self.neighbour_coverage(self._case_data(cohort))
        frame["neighbour_coverage"] = coverage
        frame["outside_buffer_coverage"] = coverage < getattr(self, "coverage_threshold_", float("nan"))
        return frame

    @torch.no_grad()
    def buffer_neighbours(self, cohort: Cohort, top: int = 5) -> pd.DataFrame:
        """Per case, the buffer (training) cases it borrowed from: ids and edge weights, strongest first."""
        data = self._case_data(cohort)
        net = self.model_.eval()
        _, buffer_ids, _ = net.buffer.snapshot()
        rows = []
        for index in batches(torch.arange(len(data)), self.batch_size):
            batch = collate(data, index).to(self._device())
            ids = batch.case_ids
            use_real = batch.has_genomics if self.genomics_at_test else None
            f = net.online_nodes(net.encode_wsi(batch.x, batch.mask), batch.genomics, use_real)
            _, graph, _ = net.graph_forward(f, ids)
            weights = net.neighbour_weights(graph).cpu()
            for case_id, row in zip(ids, weights):
                order = torch.argsort(row, descending=True)[:top]
                rows += [{"case_id": case_id, "rank": r, "neighbour_case_id": buffer_ids[j],
                          "edge_weight": float(row[j])} for r, j in enumerate(order.tolist()) if row[j] > 0]
        return pd.DataFrame(rows, columns=["case_id", "rank", "neighbour_case_id", "edge_weight"])

    def with_shuffled_buffer(self, seed: int = 0):
        """A copy whose buffer genomics (the g half of each valid row) are deranged across cases.

        The benchmark's control: if MSRL's gain comes from borrowing *real, case-matched* genomics, this copy
        must fall back to ABMIL level (:func:`shuffle_buffer_genomics`).
        """
        self._check_fitted()
        return shuffle_buffer_genomics(self, seed)

    def buffer_case_ids(self) -> list[str]:
        _, ids, valid = self.model_.buffer.snapshot()
        return [i for i, v in zip(ids, valid.tolist()) if v]


def shuffle_buffer_genomics(model, seed: int = 0):
    """A copy of a fitted (fused) MSRL whose buffer rows' genomic half ``[:, :embed_dim]`` (and the risk each row
    lends, when stored) is permuted.

    The permutation is a derangement among the valid rows (no row keeps its own genomics), so every
    buffer case pairs its WSI embedding with another case's genomic embedding.
    """
    if not hasattr(model, "model_") or not hasattr(model.model_, "buffer"):
        raise MSRLPluginError(f"model {model.name!r} has no fitted buffer to shuffle",
                              fix="use a fitted MSRL model (msrl, msrl_multi, msrl_knn_*, ...)")
    if getattr(model, "modality", None) != "fused":
        raise MSRLPluginError(f"model {model.name!r} has no genomic half in its buffer (WSI-only nodes)")
    shuffled = copy.deepcopy(model)
    buffer = shuffled.model_.buffer
    d = int(shuffled.embed_dim)
    if buffer.features.shape[1] != 2 * d:
        raise MSRLPluginError(f"buffer rows are {buffer.features.shape[1]}-d, not concat(g, h) = {2 * d}")
    valid = buffer.valid.nonzero().squeeze(1)
    if len(valid) >= 2:
        order = valid[torch.randperm(len(valid), generator=torch.Generator().manual_seed(int(seed)))]
        with torch.no_grad():  # cyclic shift of a random order: a derangement
            buffer.features[order, :d] = buffer.features[order.roll(1), :d].clone()
            if buffer.lent_dim:  # what a row lends travels with its genomics
                buffer.lent[order] = buffer.lent[order.roll(1)].clone()
    return shuffled
