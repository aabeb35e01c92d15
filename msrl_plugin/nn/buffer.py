"""FIFO buffer of real multimodal case features and the allowed-edge mask of the MSRL graph forward.

method.md §5.1 (buffer) and §5.2 (leakage / consistency masks).
"""

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

    Args: size K [D: min(N_train, 256)], dim [P: 1536 = concat(g, h)].
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"size and dim must be >= 1, got {size}, {dim}")
        self.size, self.dim = size, dim
        self.register_buffer("features", torch.zeros(size, dim, dtype=torch.float32))
        self.register_buffer("case_index", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("valid", torch.zeros(size, dtype=torch.bool))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
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
        return {"case_ids": list(self.case_ids_)}

    def set_extra_state(self, state: dict) -> None:
        self._set_vocabulary(state["case_ids"])

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

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor, case_ids: Sequence[str]) -> None:
        """Write (B, dim) rows at ``ptr`` with wrap-around, replacing the oldest rows; stored detached."""
        self._check(features, case_ids)
        b = features.shape[0]
        if b == 0:
            return
        pos = (self.ptr + torch.arange(b, device=self.ptr.device)) % self.size
        keep = slice(max(0, b - self.size), b)  # a batch larger than K: only its newest K rows survive
        pos = pos[keep]
        self.features[pos] = features[keep].detach().to(self.features)
        self.case_index[pos] = self._index_of(list(case_ids)[keep], add=True)
        self.valid[pos] = True
        self.ptr.copy_((self.ptr + b) % self.size)

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
