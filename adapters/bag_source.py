"""A :class:`~msrl_plugin.cohort.BagSource` over bag files on disk, with a bounded in-memory cache."""
from __future__ import annotations

import collections
from collections.abc import Mapping
from pathlib import Path

from ..cohort import BagArrays
from ..errors import BadInputError
from .bag_inspection import inspect_bag
from .bags import BagFile, guess_format, read_bag


class FileBagSource:
    """A :class:`~msrl_plugin.cohort.BagSource` over bag files, with an LRU cache bounded by ``cache_bytes``.

    ``files`` maps slide id to a path or :class:`BagFile`. ``feature_dim`` is read lazily from the first
    non-empty bag's header (or given); a bag with another dim raises :class:`BadInputError`.
    """

    def __init__(self, files: Mapping[str, Path | str | BagFile], cache_bytes: int = 2**30,
                 feature_dim: int | None = None):
        self.files = {str(sid): f if isinstance(f, BagFile) else BagFile(str(sid), Path(f), guess_format(f))
                      for sid, f in files.items()}
        self.cache_bytes = int(cache_bytes)
        self._dim = feature_dim
        self._cache: collections.OrderedDict[str, BagArrays] = collections.OrderedDict()
        self._cached_bytes = 0

    @property
    def feature_dim(self) -> int:
        if self._dim is None:
            for bag_file in self.files.values():
                report = inspect_bag(bag_file.path, scan_values=False)
                if report.dim and not report.problems and not report.locked:
                    self._dim = report.dim
                    break
            else:
                raise BadInputError("no readable non-empty bag to take the feature dim from",
                                    fix="Run `msrl-plugin validate` on the features folder")
        return self._dim

    def load(self, slide_id: str) -> BagArrays:
        """The bag of ``slide_id``: features ``(N, D) float32``, coords ``(N, 2) int64`` or None."""
        if slide_id in self._cache:
            self._cache.move_to_end(slide_id)
            return self._cache[slide_id]
        bag_file = self.files.get(slide_id)
        if bag_file is None:
            raise BadInputError(f"no bag file for slide {slide_id!r}", fix="Check the slide ids in the tables")
        bag = read_bag(bag_file.path, bag_file.fmt)
        dim = bag.features.shape[1]
        if self._dim is None:
            self._dim = dim
        elif dim != self._dim:
            raise BadInputError(f"feature dim {dim} differs from {self._dim} of the other bags: mixed encoders?",
                                bag_file.path, "Use one patch encoder's features for the whole cohort "
                                "(--patch-encoder)")
        self._remember(slide_id, bag)
        return bag

    def _remember(self, slide_id: str, bag: BagArrays) -> None:
        size = bag.features.nbytes + (0 if bag.coords is None else bag.coords.nbytes)
        if size > self.cache_bytes:
            return
        self._cache[slide_id] = bag
        self._cached_bytes += size
        while self._cached_bytes > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.features.nbytes + (0 if old.coords is None else old.coords.nbytes)
