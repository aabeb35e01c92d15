"""Training data held as tensors, and mini-batches of variable-size bags (padding + mask)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .cohort import Cohort


@dataclass
class GenomicsScaler:
    """Per-column standardisation fitted on training cases that have genomics (never on test cases).

    Empty cells (NaN) are ignored by the fit and imputed with the training mean (0 after scaling)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, available: np.ndarray) -> GenomicsScaler:
        rows = values[available]
        seen = ~np.isnan(rows).all(axis=0) if len(rows) else np.zeros(values.shape[1], bool)
        mean, std = np.zeros(values.shape[1]), np.ones(values.shape[1])
        if seen.any():
            mean[seen], std[seen] = np.nanmean(rows[:, seen], axis=0), np.nanstd(rows[:, seen], axis=0)
        return cls(mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32))

    def transform(self, values: np.ndarray, available: np.ndarray) -> np.ndarray:
        out = np.nan_to_num((values - self.mean) / self.std, nan=0.0).astype(np.float32)
        out[~available] = 0.0
        return out


@dataclass
class CaseData:
    """Everything a model needs about a list of cases, aligned by position."""

    case_ids: list[str]
    bags: Sequence[torch.Tensor]                  # each (N_i, D) float32, read on access
    genomics: torch.Tensor                        # (n, G) float32, standardised, zeros where missing
    has_genomics: torch.Tensor                    # (n,) bool
    targets: dict[str, torch.Tensor]              # per-case task targets
    coords: Sequence[torch.Tensor] | None = None  # each (N_i, 2) float32 patch positions, for models reading them

    def __len__(self) -> int:
        return len(self.case_ids)


class LazyBags(Sequence):
    """The cases' bags, read through the cohort's bag source when a batch needs them.

    Memory stays bounded by the source (an LRU byte budget, or a packed cache read one bag at a time), so
    cohorts larger than RAM train; in-memory sources cost nothing extra.
    """

    def __init__(self, cohort: Cohort):
        self.cohort = cohort
        self.case_ids = cohort.case_ids
        self.sizes: dict[int, int] = {}  # patches per bag, noted at each read (a fit reads every bag up front)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, i: int) -> torch.Tensor:
        features = self.cohort.load_bag(self.case_ids[i]).features
        self.sizes[i] = int(features.shape[0])
        return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))


class PatchCoords(Sequence):
    """The cases' patch coordinates, read with their bags (the bag source's cache serves both)."""

    def __init__(self, bags: LazyBags):
        self.bags = bags

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i: int) -> torch.Tensor:
        from .errors import BadInputError

        case = self.bags.case_ids[i]
        coords = self.bags.cohort.load_bag(case).coords
        if coords is None:
            raise BadInputError(f"case {case!r} has bags without patch coordinates, which this model reads",
                                fix="use .h5 bags with a coords dataset (TRIDENT, or CLAM's h5_files)")
        return torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float32))


def bag_sizes(data: CaseData) -> list[int]:
    """Patches per bag of ``data`` (from the sizes a :class:`LazyBags` noted; a bag not read yet is read)."""
    noted = getattr(data.bags, "sizes", {})
    return [noted[i] if i in noted else int(data.bags[i].shape[0]) for i in range(len(data))]


def patch_chunks(index: torch.Tensor, sizes: Sequence[int], max_patches: int | None,
                 budget: int) -> list[torch.Tensor]:
    """Split a batch ``index`` into consecutive runs of bags holding at most ``budget`` patches in all (each bag
    counted after the ``max_patches`` cap); a bag over the budget alone is a run of its own."""
    chunks, start, held = [], 0, 0
    rows = index.tolist()
    for j, i in enumerate(rows):
        n = min(sizes[i], max_patches or sizes[i])
        if j > start and held + n > budget:
            chunks.append(index[start:j])
            start, held = j, 0
        held += n
    chunks.append(index[start:])
    return chunks


def load_case_data(cohort: Cohort, scaler: GenomicsScaler | None, targets: dict[str, torch.Tensor] | None,
                   genomics_columns: list[str] | None = None) -> CaseData:
    bags = LazyBags(cohort)
    if genomics_columns and cohort.genomics is not None:
        cohort = cohort.subset(cohort.case_ids)
        cohort.genomics = cohort.genomics.reindex(columns=genomics_columns)
    values, available = cohort.genomics_matrix()
    if scaler is not None and values.shape[1]:
        values = scaler.transform(values, available)
    values = np.nan_to_num(values, nan=0.0)  # unscaled: an empty cell is 0
    return CaseData(cohort.case_ids, bags, torch.from_numpy(values), torch.from_numpy(available),
                    targets or {})


@dataclass
class BagBatch:
    """A mini-batch: ``x`` (B, N_max, D) zero-padded, ``mask`` (B, N_max) True = real patch."""

    index: torch.Tensor        # (B,) positions into the CaseData
    x: torch.Tensor
    mask: torch.Tensor
    genomics: torch.Tensor     # (B, G)
    has_genomics: torch.Tensor  # (B,)
    targets: dict[str, torch.Tensor]
    case_ids: list[str]         # (B,) ids of the rows
    coords: torch.Tensor | None = None  # (B, N_max, 2) patch positions, when the data carries them

    def select(self, rows: torch.Tensor) -> BagBatch:
        """The batch restricted to positions ``rows``."""
        return BagBatch(self.index[rows.cpu()], self.x[rows], self.mask[rows], self.genomics[rows],
                        self.has_genomics[rows], {k: v[rows] for k, v in self.targets.items()},
                        [self.case_ids[i] for i in rows.tolist()], None if self.coords is None else self.coords[rows])

    def to(self, device: torch.device) -> BagBatch:
        return BagBatch(self.index, self.x.to(device), self.mask.to(device), self.genomics.to(device),
                        self.has_genomics.to(device), {k: v.to(device) for k, v in self.targets.items()},
                        self.case_ids, None if self.coords is None else self.coords.to(device))


def collate(data: CaseData, index: torch.Tensor, max_patches: int | None = None,
            generator: torch.Generator | None = None) -> BagBatch:
    """Pad the bags at ``index``; with ``max_patches`` each larger bag is randomly subsampled."""
    bags, keeps = [], []
    for i in index.tolist():
        bag = data.bags[i]
        keep = None
        if max_patches and bag.shape[0] > max_patches:
            keep = torch.randperm(bag.shape[0], generator=generator)[:max_patches].sort().values
        bags.append(bag)
        keeps.append(keep)
    sizes = [b.shape[0] if k is None else len(k) for b, k in zip(bags, keeps, strict=True)]
    n_max = max(sizes)
    # one copy per bag, straight into the batch (a subsample is gathered into place); only padding is zeroed
    x = torch.empty(len(bags), n_max, bags[0].shape[1])
    mask = torch.zeros(len(bags), n_max, dtype=torch.bool)
    for j, (bag, keep, n) in enumerate(zip(bags, keeps, sizes, strict=True)):
        if keep is None:
            x[j, :n] = bag
        else:
            torch.index_select(bag, 0, keep, out=x[j, :n])
        x[j, n:] = 0
        mask[j, :n] = True
    coords = None
    if data.coords is not None:  # the same patches, in the same places
        coords = torch.zeros(len(bags), n_max, 2)
        for j, (i, keep, n) in enumerate(zip(index.tolist(), keeps, sizes, strict=True)):
            where = data.coords[i]
            coords[j, :n] = where if keep is None else where[keep]
    return BagBatch(index, x, mask, data.genomics[index], data.has_genomics[index],
                    {k: v[index] for k, v in data.targets.items()}, [data.case_ids[i] for i in index.tolist()],
                    coords)


def epoch_order(n: int, generator: torch.Generator, sampling_classes: np.ndarray | None = None) -> torch.Tensor:
    """A shuffled order, or a class-balanced draw with replacement (weights N / count(class), as MCAT)."""
    if sampling_classes is None:
        return torch.randperm(n, generator=generator)
    _, inverse, counts = np.unique(sampling_classes, return_inverse=True, return_counts=True)
    weights = torch.as_tensor(n / counts[inverse], dtype=torch.double)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
