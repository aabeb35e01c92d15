"""Shared fixtures: the genuine toolkit outputs in ../shared (skipped when absent) and bag-file writers."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from hypothesis import settings

# Property tests are deterministic by default (the same examples on every run, CI included); set
# HYPOTHESIS_PROFILE=explore to search new random examples locally. Found failures become @example cases.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

TRIDENT_COORD_ATTRS = {
    "level0_height": 2967, "level0_magnification": 20, "level0_width": 2220, "name": "slide", "overlap": 0,
    "patch_size": 256, "patch_size_level0": 256.0, "savetodir": "/data/job/20x_256px_0px_overlap",
    "target_magnification": 20.0,
}


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = Path(__file__).parents[1].parent / "shared"
    if not path.is_dir():
        pytest.skip("../shared (genuine toolkit fixtures) is not available")
    return path


@pytest.fixture(scope="session")
def real_fixtures(shared_dir: Path) -> Path:
    path = shared_dir / "fixtures" / "real-toolkit"
    if not path.is_dir():
        pytest.skip("shared/fixtures/real-toolkit is not available")
    return path


def _dataset(f: h5py.File, key: str, array: np.ndarray, chunk_rows: int = 1) -> h5py.Dataset:
    """A dataset laid out like TRIDENT's save_h5 / CLAM's save_hdf5 (chunked along rows, resizable)."""
    if array.ndim == 0 or array.shape[0] == 0:
        return f.create_dataset(key, data=array)
    return f.create_dataset(key, data=array, chunks=(min(chunk_rows, array.shape[0]),) + array.shape[1:],
                            maxshape=(None,) + array.shape[1:])


def grid_coords(n: int) -> np.ndarray:
    return np.stack([np.arange(n) % 10 * 256, np.arange(n) // 10 * 256], axis=1).astype(np.int64)


def write_trident(path: Path, features: np.ndarray, coords: np.ndarray | None = None,
                  encoder: str = "uni_v1") -> Path:
    """A TRIDENT patch-features file: ``features`` (attrs name/savetodir/encoder) then ``coords`` + 9 attrs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    features = np.asarray(features)
    n = features.shape[0] if features.ndim else 0
    coords = grid_coords(n) if coords is None else coords
    with h5py.File(path, "w") as f:
        ds = _dataset(f, "features", features)
        ds.attrs.update({"name": path.stem, "savetodir": str(path.parent.name), "encoder": encoder})
        cs = _dataset(f, "coords", np.asarray(coords))
        cs.attrs.update({**TRIDENT_COORD_ATTRS, "name": path.stem})
    return path


def write_clam_h5(path: Path, features: np.ndarray) -> Path:
    """A CLAM ``h5_files`` bag: float32 features, int32 coords, chunks of 32 rows, no attributes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        _dataset(f, "features", np.asarray(features, np.float32), 32)
        _dataset(f, "coords", grid_coords(len(features)).astype(np.int32), 32)
    return path


def write_stamp(path: Path, features: np.ndarray) -> Path:
    """A STAMP-style bag: ``feats`` plus ``coords``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["feats"] = np.asarray(features)
        f["coords"] = grid_coords(len(features)).astype(np.float64)
    return path


def write_pt(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def write_coords_only(path: Path, n: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        _dataset(f, "coords", grid_coords(n)).attrs.update(TRIDENT_COORD_ATTRS)
    return path


def feats(n: int = 5, d: int = 8, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """Writers for self-made bag files mimicking each toolkit (usable inside hypothesis tests too)."""
    return SimpleNamespace(write_trident=write_trident, write_clam_h5=write_clam_h5, write_stamp=write_stamp,
                           write_pt=write_pt, write_coords_only=write_coords_only, feats=feats,
                           grid_coords=grid_coords)


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch():
    """Tiny models run faster on one thread, and the suite shares 2 cores; restore afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def files(tmp_path: Path):
    """A tiny TRIDENT-like cohort on disk for the CLI's bad-input tests (``_bad_input_kit.make_files``)."""
    from _bad_input_kit import make_files

    return make_files(tmp_path)
