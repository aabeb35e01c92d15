"""Packed feature cache (issue 5, item 1): round trip, float16, invalidation, crash safety, refusals."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import feats, write_clam_h5, write_pt, write_stamp, write_trident
from msrl_plugin.adapters import read_bag
from msrl_plugin.adapters.cache_folder import HEADER
from msrl_plugin.adapters.packed_cache import INDEX, PackedBagSource, build_or_update_packed_cache

from msrl_plugin.cohort import Cohort
from msrl_plugin.errors import BadInputError


def _bags(root: Path, n: int = 4, d: int = 8) -> dict[str, Path]:
    return {f"s{i}": write_trident(root / f"s{i}.h5", feats(10 + 7 * i, d, seed=i)) for i in range(n)}


def _same(source: PackedBagSource, files: dict[str, Path], atol: float = 0.0) -> None:
    for slide, path in files.items():
        want, got = read_bag(path), source.load(slide)
        assert got.features.dtype == np.float32 and got.features.flags.writeable
        np.testing.assert_allclose(got.features, want.features, atol=atol, rtol=0)
        if want.coords is None:
            assert got.coords is None
        else:
            np.testing.assert_array_equal(got.coords, want.coords)


def _data_file(cache: Path) -> Path:
    return cache / json.loads((cache / INDEX).read_text())["data_file"]


def test_round_trip_every_format_and_reuse(tmp_path):
    files = {"t": write_trident(tmp_path / "t.h5", feats(9, 6, 1)),
             "c": write_clam_h5(tmp_path / "c.h5", feats(40, 6, 2)),
             "s": write_stamp(tmp_path / "s.h5", feats(3, 6, 3)),
             "p": write_pt(tmp_path / "p.pt", {"features": feats(5, 6, 4)})}
    first = build_or_update_packed_cache(files, tmp_path / "cache")
    assert sorted(first.last_update.written) == sorted(files) and first.feature_dim == 6
    _same(first, files)
    again = build_or_update_packed_cache(files, tmp_path / "cache")
    assert again.last_update.written == [] and again.last_update.reused == 4
    _same(again, files)
    _same(pickle.loads(pickle.dumps(again)), files)  # spawned workers reopen the file


def test_cohort_reads_through_the_cache(tmp_path):
    files = _bags(tmp_path, 3)
    source = build_or_update_packed_cache(files, tmp_path / "cache")
    cases = pd.DataFrame({"time": [1.0, 2.0], "censorship": [0, 1]}, index=["a", "b"])
    cohort = Cohort(cases, {"a": ["s0", "s1"], "b": ["s2"]}, source, "survival")
    want = np.concatenate([read_bag(files["s0"]).features, read_bag(files["s1"]).features])
    np.testing.assert_array_equal(cohort.load_bag("a").features, want)


def test_float16_halves_the_store_and_returns_float32(tmp_path):
    files = _bags(tmp_path, 3, d=32)
    full = build_or_update_packed_cache(files, tmp_path / "c32")
    half = build_or_update_packed_cache(files, tmp_path / "c16", float16=True)
    _same(half, files, atol=5e-3)
    assert half.nbytes < 0.75 * full.nbytes
    # switching the same cache to float16 rewrites its entries
    switched = build_or_update_packed_cache(files, tmp_path / "c32", float16=True)
    assert sorted(switched.last_update.written) == sorted(files)
    big = write_trident(tmp_path / "big.h5", feats(4, 32) * 1e6)
    with pytest.raises(BadInputError, match="overflow float16"):
        build_or_update_packed_cache({"big": big}, tmp_path / "c16", float16=True)


def test_changed_file_invalidates_only_its_entry(tmp_path):
    files = _bags(tmp_path, 4)
    cache = tmp_path / "cache"
    build_or_update_packed_cache(files, cache)
    write_trident(files["s1"], feats(30, 8, seed=99))  # new content and size
    updated = build_or_update_packed_cache(files, cache)
    assert updated.last_update.written == ["s1"] and updated.last_update.reused == 3
    _same(updated, files)
    st = files["s2"].stat()
    os.utime(files["s2"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size, newer mtime
    assert build_or_update_packed_cache(files, cache).last_update.written == ["s2"]


def test_new_file_is_added_and_other_cohorts_entries_are_kept(tmp_path):
    files = _bags(tmp_path, 3)
    cache = tmp_path / "cache"
    build_or_update_packed_cache({"s0": files["s0"]}, cache)
    grown = build_or_update_packed_cache(files, cache)
    assert grown.last_update.written == ["s1", "s2"]
    build_or_update_packed_cache({"s2": files["s2"]}, cache)  # another cohort: s0, s1 stay cached
    assert build_or_update_packed_cache(files, cache).last_update.written == []


def test_compaction_when_more_than_half_is_waste(tmp_path):
    files = _bags(tmp_path, 3)
    cache = tmp_path / "cache"
    first = build_or_update_packed_cache(files, cache)
    old_s0 = first.load("s0").features
    old_data = _data_file(cache)
    for i, path in enumerate(files.values()):
        write_trident(path, feats(3, 8, seed=10 + i))  # every entry replaced by a smaller one: mostly waste
    updated = build_or_update_packed_cache(files, cache)
    assert updated.last_update.compacted
    assert not old_data.exists() and list(cache.glob("features-*.bin")) == [_data_file(cache)]
    assert _data_file(cache).stat().st_size == len(HEADER) + updated.nbytes
    _same(updated, files)
    if os.name == "posix":  # a source opened before the compaction keeps reading its own (unlinked) file
        np.testing.assert_array_equal(first.load("s0").features, old_s0)


def test_crash_before_index_write_leaves_a_tail_that_is_cut(tmp_path):
    files = _bags(tmp_path, 3)
    cache = tmp_path / "cache"
    build_or_update_packed_cache(files, cache)
    data = _data_file(cache)
    size = data.stat().st_size
    with open(data, "ab") as fh:  # a bag was appended, then the process died before the index
        fh.write(os.urandom(1000))
    again = build_or_update_packed_cache(files, cache)
    assert again.last_update.written == [] and data.stat().st_size == size
    _same(again, files)


def test_stale_index_never_points_past_the_data_file(tmp_path):
    files = _bags(tmp_path, 4)
    cache = tmp_path / "cache"
    build_or_update_packed_cache(files, cache)
    index = json.loads((cache / INDEX).read_text())
    last = max(index["entries"].values(), key=lambda e: e["offset"])
    with open(_data_file(cache), "r+b") as fh:  # data lost after the index was written (e.g. restored backup)
        fh.truncate(last["offset"] + 8)
    again = build_or_update_packed_cache(files, cache)
    assert again.last_update.written == ["s3"]
    _same(again, files)
    size = _data_file(cache).stat().st_size
    for e in again.entries.values():
        assert e.end <= size


def test_corrupt_or_foreign_index_is_rebuilt(tmp_path):
    files = _bags(tmp_path, 2)
    cache = tmp_path / "cache"
    build_or_update_packed_cache(files, cache)
    (cache / INDEX).write_text("{not json")
    with pytest.warns(UserWarning, match="damaged or foreign cache index"):
        again = build_or_update_packed_cache(files, cache)
    assert sorted(again.last_update.written) == ["s0", "s1"]
    _same(again, files)
    assert len(list(cache.glob("features-*.bin"))) == 1  # the orphaned data file is removed


def test_empty_locked_and_mixed_bags_are_refused(tmp_path):
    empty = write_trident(tmp_path / "empty.h5", np.zeros((0, 8), np.float32), np.zeros((0, 2), np.int64))
    with pytest.raises(BadInputError, match="empty"):
        build_or_update_packed_cache({"empty": empty}, tmp_path / "cache")
    locked = write_trident(tmp_path / "locked.h5", feats(4, 8))
    Path(f"{locked}.lock").touch()
    with pytest.raises(BadInputError, match="still being written"):
        build_or_update_packed_cache({"locked": locked}, tmp_path / "cache")
    mixed = {"a": write_trident(tmp_path / "a.h5", feats(4, 8)),
             "b": write_trident(tmp_path / "b.h5", feats(4, 6))}
    with pytest.raises(BadInputError, match="mixed encoders"):
        build_or_update_packed_cache(mixed, tmp_path / "cache")
    with pytest.raises(BadInputError, match="not found"):
        build_or_update_packed_cache({"gone": tmp_path / "gone.h5"}, tmp_path / "cache")
    source = build_or_update_packed_cache({"a": mixed["a"]}, tmp_path / "cache")
    with pytest.raises(BadInputError, match="not in the packed feature cache"):
        source.load("b")
