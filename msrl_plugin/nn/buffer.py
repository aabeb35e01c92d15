"""FIFO buffer of real multimodal case features, one row per case (method.md §5.1)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import nn


class FeatureBuffer(nn.Module):
    """K rows of detached case features with their case ids, replaced first-in first-out [P].

    State (all saved by ``state_dict``; ``torch.load(weights_only=True)`` safe):
        features: (K, dim) float32 buffer rows.
        case_index: (K,) int64 index of each row's case id in ``case_ids_`` (-1 = empty row).
        valid: (K,) bool, rows written so far. Empty rows must be masked out of the graph.
        ptr: () int64, next row to overwrite (the oldest row once the buffer is full).
        case_ids_: list[str], every id ever stored (extra state).

    With ``lent_dim`` > 0 each row also carries what it lends (``lent`` (K, lent_dim)), looked up by case id in
    a table set once with :meth:`set_lent_table` (MSRL: a genomic risk fitted without that case's outcome).

    Args: size K [D: min(N_train, 256)], dim [P: 1536 = concat(g, h)], lent_dim (0 = rows lend nothing).
    """

    def __init__(self, size: int, dim: int, lent_dim: int = 0):
        super().__init__()
        if size < 1 or dim < 1 or lent_dim < 0:
            raise ValueError(f"size and dim must be >= 1 and lent_dim >= 0, got {size}, {dim}, {lent_dim}")
        self.size, self.dim, self.lent_dim = size, dim, lent_dim
        self.register_buffer("features", torch.zeros(size, dim, dtype=torch.float32))
        self.register_buffer("case_index", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("valid", torch.zeros(size, dtype=torch.bool))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        if lent_dim:
            self.register_buffer("lent", torch.zeros(size, lent_dim, dtype=torch.float32))
        self.lent_table_: dict[str, list[float]] = {}
        self._set_vocabulary([])

    # --- case-id vocabulary (extra state) ---
    def _set_vocabulary(self, ids: Sequence[str]) -> None:
        self.case_ids_: list[str] = list(ids)
        self._id_to_index = {cid: i for i, cid in enumerate(self.case_ids_)}

    def _index_of(self, case_ids: Sequence[str], add: bool) -> torch.Tensor:
        out = []
        for cid in case_ids:
            if not isinstance(cid, str):
                raise TypeError(f"case ids must be str, got {type(cid).__name__}")
            if cid not in self._id_to_index and add:
                self._id_to_index[cid] = len(self.case_ids_)
                self.case_ids_.append(cid)
            out.append(self._id_to_index.get(cid, -2))  # -2 never matches a row (empty rows hold -1)
        return torch.tensor(out, dtype=torch.long, device=self.case_index.device)

    def get_extra_state(self) -> dict:
        return {"case_ids": list(self.case_ids_), "lent_table": dict(self.lent_table_)}

    def set_extra_state(self, state: dict) -> None:
        self._set_vocabulary(state["case_ids"])
        self.lent_table_ = dict(state.get("lent_table", {}))

    # --- what rows lend ---
    def set_lent_table(self, case_ids: Sequence[str], lent: torch.Tensor) -> None:
        """What each case's row lends, ``(n, lent_dim)``; rows written later take their case's entry."""
        if not self.lent_dim or lent.shape != (len(case_ids), self.lent_dim):
            raise ValueError(f"lent must be ({len(case_ids)}, {self.lent_dim}), got {tuple(lent.shape)}")
        self.lent_table_ = {cid: [float(v) for v in row] for cid, row in zip(case_ids, lent.tolist(), strict=True)}

    def lent_of(self, case_ids: Sequence[str]) -> torch.Tensor:
        """The table's entries of these cases, ``(n, lent_dim)``."""
        missing = [cid for cid in case_ids if cid not in self.lent_table_]
        if missing:
            raise ValueError(f"no lent value for buffer case(s) {missing[:3]}: call set_lent_table first")
        return torch.tensor([self.lent_table_[cid] for cid in case_ids], dtype=torch.float32,
                            device=self.features.device)

    # --- writing ---
    def _check(self, features: torch.Tensor, case_ids: Sequence[str]) -> None:
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be (n, {self.dim}), got {tuple(features.shape)}")
        if len(case_ids) != features.shape[0]:
            raise ValueError(f"{features.shape[0]} feature rows but {len(case_ids)} case ids")

    @torch.no_grad()
    def initialise(self, features: torch.Tensor, case_ids: Sequence[str]) -> None:
        """Reset and fill with ``features`` (n, dim); keeps the first K rows if n > K (caller shuffles)."""
        self._check(features, case_ids)
        self._set_vocabulary([])
        self.features.zero_()
        self.case_index.fill_(-1)
        self.valid.zero_()
        n = min(features.shape[0], self.size)
        self.features[:n] = features[:n].detach().to(self.features)
        self.case_index[:n] = self._index_of(case_ids[:n], add=True)
        self.valid[:n] = True
        self.ptr.fill_(n % self.size)
        if self.lent_dim:
            self.lent.zero_()
            self.lent[:n] = self.lent_of(case_ids[:n])

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor, case_ids: Sequence[str]) -> None:
        """Write (B, dim) rows, stored detached, keeping one row per case: a case already in the buffer has its
        row refreshed in place; the others go in at ``ptr`` with wrap-around, replacing the oldest rows (FIFO)
        but never a row refreshed by the same call. A case drawn twice in the batch keeps its last row."""
        self._check(features, case_ids)
        last = {cid: i for i, cid in enumerate(case_ids)}  # the newest row of each case in the batch
        order = sorted(last.values())
        if not order:
            return
        ids = [case_ids[i] for i in order]
        features = features[order].detach().to(self.features)
        index = self._index_of(ids, add=True)
        hits = (index[:, None] == self.case_index[None, :]) & self.valid[None, :]
        present = hits.any(dim=1)
        refreshed = hits[present].float().argmax(dim=1)
        self.features[refreshed] = features[present]  # cases already held: their rows, in place
        lent = self.lent_of(ids) if self.lent_dim else None
        new = (~present).nonzero().squeeze(1)
        new = new[max(0, len(new) - (self.size - len(refreshed))):]  # only the newest rows that fit
        pos, ptr, skip = [], int(self.ptr), set(refreshed.tolist())
        for _ in range(len(new)):  # FIFO over the rows not refreshed by this very call
            while ptr in skip:
                ptr = (ptr + 1) % self.size
            pos.append(ptr)
            ptr = (ptr + 1) % self.size
        if pos:
            pos_t = torch.tensor(pos, dtype=torch.long, device=self.ptr.device)
            self.features[pos_t] = features[new]
            self.case_index[pos_t] = index[new]
            self.valid[pos_t] = True
            self.ptr.fill_(ptr)
            if lent is not None:
                self.lent[pos_t] = lent[new]

    # --- reading ---
    def snapshot(self) -> tuple[torch.Tensor, list[str | None], torch.Tensor]:
        """Copies of (features (K, dim), case id per row or None if empty, valid (K,) bool), in row order.

        Copies, so a later ``enqueue`` cannot modify tensors an autograd graph still holds.
        """
        ids = [self.case_ids_[i] if i >= 0 else None for i in self.case_index.tolist()]
        return self.features.clone(), ids, self.valid.clone()

    def exclusion_mask(self, query_case_ids: Sequence[str]) -> torch.Tensor:
        """(B, K) bool, True where buffer row j holds the same case as query i (leakage mask 2, §5.2)."""
        q = self._index_of(query_case_ids, add=False)
        return (q[:, None] == self.case_index[None, :]) & self.valid[None, :]

    def contains_only(self, case_ids: Collection[str]) -> bool:
        """True if every stored (valid) row belongs to a case in ``case_ids``."""
        allowed = set(case_ids)
        return all(self.case_ids_[i] in allowed for i in self.case_index[self.valid].tolist())

    def __len__(self) -> int:
        return int(self.valid.sum())
