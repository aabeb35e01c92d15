"""TRIDENT slide-feature write-back: the genuine file's structure, the plugin's readers, the lock protocol."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from msrl_plugin.adapters.bags import detect_format, read_bag, read_bag_attrs
from msrl_plugin.adapters.layouts import find_bags
from msrl_plugin.adapters.trident_slides import (
    acquire_lock,
    encode_slides,
    find_patch_features,
    lock_path,
    read_lock,
    read_slide_features,
)

from msrl_plugin import Cohort, InMemoryBags, create_aggregator
from msrl_plugin.cli import main
from msrl_plugin.errors import BadInputError
from msrl_plugin.slide_encoder import SlideEncoder

CDIR = "20x_256px_0px_overlap"
GENUINE = f"trident/job/{CDIR}/slide_features_mean-uni_v1"



def tiny_model(dim: int, path: Path | None = None):
    rng = np.random.default_rng(0)
    bags = {f"s{i}": rng.normal(size=(12, dim)).astype(np.float32) for i in range(8)}
    cases = pd.DataFrame({"label": ["a", "b"] * 4}, index=[f"c{i}" for i in range(8)])
    cohort = Cohort(cases, {f"c{i}": [f"s{i}"] for i in range(8)}, InMemoryBags(bags), "classification")
    model = create_aggregator("abmil", max_epochs=1, hidden_dim=16, attn_dim=8, device="cpu").fit(cohort)
    if path is not None:
        model.save(path)
    return model


@pytest.fixture(scope="module")
def model8():
    return tiny_model(8)


@pytest.fixture(scope="module")
def model1024():
    return tiny_model(1024)


@pytest.fixture
def job(tmp_path, kit):
    """A self-made TRIDENT job: three 8-d slides (one with a single patch) and one 0-patch slide."""
    feats = tmp_path / "job" / CDIR / "features_uni_v1"
    for i, n in enumerate((6, 9, 1)):
        kit.write_trident(feats / f"slide{i}.h5", kit.feats(n, 8, seed=i))
    kit.write_trident(feats / "empty.h5", np.zeros((0,), np.float32))
    return tmp_path / "job"


def out_dir(job_dir: Path, name: str = "enc") -> Path:
    return job_dir / CDIR / f"slide_features_{name}"


def describe(path: Path) -> dict:
    """What TRIDENT's save_h5 decides: datasets, dtypes, ranks, chunks, maxshape, filters, attribute types."""
    out = {}
    with h5py.File(path, "r") as f:
        out["root_attrs"] = sorted(f.attrs)
        for key in f:
            ds = f[key]
            out[key] = {"dtype": ds.dtype.str, "ndim": ds.ndim, "chunks": ds.chunks, "maxshape": ds.maxshape,
                        "compression": ds.compression, "shuffle": ds.shuffle,
                        "attrs": {a: (type(v).__name__, getattr(v, "dtype", None))
                                  for a, v in ds.attrs.items()}}
    return out


# -- the genuine TRIDENT slide-feature fixture ----------------------------------------------------
@pytest.fixture
def genuine_job(real_fixtures, tmp_path):
    src = real_fixtures / "trident" / "job" / CDIR / "features_uni_v1"
    dst = tmp_path / "job" / CDIR / "features_uni_v1"
    shutil.copytree(src, dst)
    for path in [dst, *dst.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return tmp_path / "job"


def test_written_files_match_genuine_trident_slide_files(genuine_job, real_fixtures, model1024):
    encoder = SlideEncoder.from_aggregator(model1024, "abmil-uni_v1")
    report = encode_slides(find_patch_features(genuine_job, "uni_v1"), encoder)
    assert sorted(report.written) == ["cmu_small_region", "tissue_speck"]
    for slide in report.written:
        ours = out_dir(genuine_job, "abmil-uni_v1") / f"{slide}.h5"
        theirs = real_fixtures / GENUINE / f"{slide}.h5"
        assert describe(ours) == describe(theirs)
        with h5py.File(ours, "r") as f, h5py.File(theirs, "r") as g:
            assert list(f) == list(g) == ["coords", "features"]
            assert f["features"].shape == (encoder.embedding_dim,)
            np.testing.assert_array_equal(f["coords"][()], g["coords"][()])
            assert dict(f["coords"].attrs) == dict(g["coords"].attrs)  # patch_size_level0: float64 -> int64
            assert f["features"].attrs["name"] == g["features"].attrs["name"] == slide
            assert f["features"].attrs["savetodir"] == str(out_dir(genuine_job, "abmil-uni_v1"))


def test_plugin_readers_treat_ours_like_the_genuine_file(genuine_job, real_fixtures, model1024):
    encoder = SlideEncoder.from_aggregator(model1024, "abmil-uni_v1")
    encode_slides(find_patch_features(genuine_job, "uni_v1"), encoder)
    ours = out_dir(genuine_job, "abmil-uni_v1") / "cmu_small_region.h5"
    theirs = real_fixtures / GENUINE / "cmu_small_region.h5"
    assert detect_format(ours) == detect_format(theirs) == "trident"
    assert read_bag_attrs(ours) == read_bag_attrs(theirs)
    for path in (ours, theirs):  # a slide embedding is refused as a patch bag, with the same hint
        with pytest.raises(BadInputError, match="slide-level embedding"):
            read_bag(path)
    emb, coords, attrs = read_slide_features(ours)
    g_emb, g_coords, g_attrs = read_slide_features(theirs)
    assert emb.dtype == g_emb.dtype == np.float32 and emb.ndim == g_emb.ndim == 1
    np.testing.assert_array_equal(coords, g_coords)
    assert attrs == g_attrs
    # the embedding is what the encoder returns when TRIDENT calls it
    bag = read_bag(genuine_job / CDIR / "features_uni_v1" / "cmu_small_region.h5")
    with torch.inference_mode():
        direct = encoder({"features": torch.from_numpy(bag.features)[None]}, "cpu").numpy().squeeze()
    np.testing.assert_allclose(emb, direct, rtol=1e-6)
    # the new folder does not confuse the patch-feature layout scan
    assert find_bags(genuine_job, "uni_v1").folder.name == "features_uni_v1"


# -- self-made jobs: file contents and the lock protocol ------------------------------------------
def test_empty_and_single_patch_slides_are_written_as_trident_does(job, model8):
    report = encode_slides(find_patch_features(job), SlideEncoder.from_aggregator(model8, "enc"))
    assert report.written == ["slide0", "slide1", "slide2"] and report.empty == ["empty"]
    with h5py.File(out_dir(job) / "empty.h5", "r") as f:
        assert f["features"].shape == (0,) and f["features"].dtype == np.float32
        assert f["coords"].shape == (0, 2)
        assert f["coords"].attrs["patch_size_level0"].dtype == np.float64  # genuine: not cast when empty
    with h5py.File(out_dir(job) / "slide2.h5", "r") as f:
        assert f["coords"].shape == (2,)  # TRIDENT squeezes (1, 2)
        assert f["coords"].attrs["patch_size_level0"].dtype == np.int64
    log = (job / CDIR / "_logs_slide_features_enc.txt").read_text().splitlines()
    assert "slide0: Slide features extracted." in log and any(line.startswith("empty: ") for line in log)
    assert not list(out_dir(job).glob("*.lock")) and not list(out_dir(job).glob(".*"))


def test_done_slides_are_skipped(job, model8):
    encoder = SlideEncoder.from_aggregator(model8, "enc")
    encode_slides(find_patch_features(job), encoder)
    stamp = {p.name: p.stat().st_mtime_ns for p in out_dir(job).iterdir()}
    report = encode_slides(find_patch_features(job), encoder)
    assert report.written == [] and sorted(report.done) == ["empty", "slide0", "slide1", "slide2"]
    assert {p.name: p.stat().st_mtime_ns for p in out_dir(job).iterdir()} == stamp


def _lock(path: Path, pid: int, host: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "hostname": host, "created_at": "2026-01-01T00:00:00"}
    lock_path(path).write_text(json.dumps(info))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_live_locks_are_skipped_and_stale_locks_redone(job, model8):
    target = out_dir(job)
    _lock(target / "slide0.h5", os.getpid(), socket.gethostname())     # a live run on this host
    _lock(target / "slide1.h5", 1, "another-node")                      # a run on another node
    (target / "slide1.h5").write_bytes(b"partial")                      # its half-written output is no 'done'
    _lock(target / "slide2.h5", dead_pid(), socket.gethostname())       # a crashed run
    with pytest.warns(UserWarning, match="stale lock"):
        report = encode_slides(find_patch_features(job), SlideEncoder.from_aggregator(model8, "enc"))
    assert sorted(report.locked) == ["slide0", "slide1"]
    assert report.stale_locks == ["slide2"] and sorted(report.written) == ["slide2"]
    assert not (target / "slide0.h5").exists() and lock_path(target / "slide0.h5").exists()
    assert (target / "slide1.h5").read_bytes() == b"partial"
    assert not lock_path(target / "slide2.h5").exists()
    assert read_slide_features(target / "slide2.h5")[0].shape == (model8.model_.head.in_features,)


class LockSpy(torch.nn.Module):
    """Wraps an encoder; records the lock's JSON at the moment the encoder runs."""

    def __init__(self, inner, watch: Path, fail: bool = False):
        super().__init__()
        self.inner, self.watch, self.fail, self.seen = inner, watch, fail, []
        self.enc_name, self.embedding_dim, self.feature_dim = "enc", inner.embedding_dim, inner.feature_dim

    def forward(self, batch, device="cuda"):
        self.seen.append(read_lock(self.watch / f"{batch['attributes']['name']}.h5"))
        if self.fail:
            raise RuntimeError("boom")
        return self.inner(batch, device)


def test_lock_is_held_while_writing_and_removed_on_failure(job, model8):
    spy = LockSpy(SlideEncoder.from_aggregator(model8, "enc"), out_dir(job))
    encode_slides(find_patch_features(job), spy, slides=["slide0"])
    assert set(spy.seen[0]) == {"pid", "hostname", "created_at"} and spy.seen[0]["pid"] == os.getpid()
    assert not lock_path(out_dir(job) / "slide0.h5").exists()
    failing = LockSpy(spy.inner, out_dir(job), fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        encode_slides(find_patch_features(job), failing, slides=["slide1"])
    assert not (out_dir(job) / "slide1.h5").exists() and not lock_path(out_dir(job) / "slide1.h5").exists()


def test_acquire_lock_is_exclusive(tmp_path):
    assert acquire_lock(tmp_path / "a.h5")
    assert not acquire_lock(tmp_path / "a.h5")
    assert read_lock(tmp_path / "a.h5")["hostname"] == socket.gethostname()
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5.lock"]


def test_patch_features_still_being_written_are_not_encoded(job, model8):
    lock_path(job / CDIR / "features_uni_v1" / "slide1.h5").write_text("{}")
    with pytest.warns(UserWarning, match="locked"):
        report = encode_slides(find_patch_features(job), SlideEncoder.from_aggregator(model8, "enc"))
    assert report.input_locked == ["slide1"] and "slide1" not in report.written


def test_wrong_feature_dim_and_non_trident_folders_are_refused(job, tmp_path, kit, model1024):
    with pytest.raises(BadInputError, match="8-d but the model was trained on 1024-d"):
        encode_slides(find_patch_features(job), SlideEncoder.from_aggregator(model1024, "enc"))
    kit.write_clam_h5(tmp_path / "clam" / "h5_files" / "s.h5", kit.feats(5, 8))
    with pytest.raises(BadInputError, match="not a TRIDENT job"):
        find_patch_features(tmp_path / "clam")


def test_cli_encode_slides_names_the_folder_and_resumes(job, tmp_path, model8, capsys):
    ckpt = model8.save(tmp_path / "s_0_checkpoint.pt")
    args = ["encode-slides", "--job-dir", str(job), "--patch-encoder", "uni_v1", "--model-path", str(ckpt),
            "--device", "cpu"]
    main(args)
    assert "3 written, 1 empty" in capsys.readouterr().out
    folder = out_dir(job, "abmil-uni_v1")
    assert sorted(p.name for p in folder.iterdir()) == ["empty.h5", "slide0.h5", "slide1.h5", "slide2.h5"]
    config = json.loads((job / CDIR / "_config_slide_features_abmil-uni_v1.json").read_text())
    assert config["patch_encoder"] == "uni_v1" and config["saveto"] == str(folder)
    main(args + ["--name", "abmil-uni_v1"])
    assert "0 written, 0 empty (0 patches), 4 already done" in capsys.readouterr().out


def test_savetodir_is_absolute_for_a_relative_job_dir(job, tmp_path, model8, monkeypatch, capsys):
    ckpt = model8.save(tmp_path / "s_0_checkpoint.pt")
    monkeypatch.chdir(job.parent)
    main(["encode-slides", "--job-dir", job.name, "--patch-encoder", "uni_v1", "--model-path", str(ckpt),
          "--device", "cpu"])
    with h5py.File(out_dir(job, "abmil-uni_v1") / "slide0.h5", "r") as f:
        savetodir = f["features"].attrs["savetodir"]
    assert os.path.isabs(savetodir) and Path(savetodir) == out_dir(job, "abmil-uni_v1").absolute()
