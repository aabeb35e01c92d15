"""How well the buffer's real training cases cover a case: MSRL's ``neighbour_coverage`` in ``predict``."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..batching import CaseData, batches, collate
from ..cohort import Cohort


class BufferCoverageMixin:
    """For :class:`~msrl_plugin.aggregators.msrl.MSRLAggregator`: coverage scores and the flag threshold."""

    @torch.no_grad()
    def neighbour_coverage(self, data: CaseData) -> np.ndarray:
        """Per case, the mean similarity (in the graph's own space) to its k most similar buffer rows, its own
        row left out: how well the buffer's real cases cover it. ``(n,)``."""
        net = self.model_.eval()
        keys = torch.nn.functional.normalize(net._candidate_keys(), dim=1)
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
        coverage = self.neighbour_coverage(self._case_data(cohort))
        frame["neighbour_coverage"] = coverage
        frame["outside_buffer_coverage"] = coverage < getattr(self, "coverage_threshold_", float("nan"))
        return frame
