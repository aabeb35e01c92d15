"""validate_folder / format_report: every bag reported, nothing raised for bad bags."""
from __future__ import annotations

import numpy as np
import pytest
from msrl_plugin.adapters import format_report, validate_folder

from msrl_plugin.errors import BadInputError


def test_genuine_trident_job(real_fixtures):
    report = validate_folder(real_fixtures / "trident/job", patch_encoder="custom_vits16head768_fp16_seed1")
    assert report.usable and report.layout == "trident_job"
    assert [(r.slide_id, r.fmt, r.n_patches, r.dim, r.dtype, r.status) for r in report.rows] == [
        ("cmu_small_region", "trident", 58, 768, "float16", "ok"), ("tissue_speck", "trident", 6, 768, "float16", "ok")]
    text = format_report(report)
    assert text.splitlines()[-1] == "USABLE: feature dim 768"


def test_genuine_clam_dir(real_fixtures):
    report = validate_folder(real_fixtures / "clam/job")
    assert report.usable and report.rows[0].fmt == "clam_h5" and report.rows[0].n_patches == 50


def _mixed_folder(tmp_path, kit):
    folder = tmp_path / "features_uni_v1"
    kit.write_trident(folder / "ok1.h5", kit.feats(5, 8))
    kit.write_trident(folder / "ok2.h5", kit.feats(3, 8))
    kit.write_trident(folder / "empty.h5", np.empty((0,), np.float32), np.empty((0, 2), np.int64))
    kit.write_trident(folder / "busy.h5", kit.feats(2, 8))
    (folder / "busy.h5.lock").write_text("{}")
    nan = kit.feats(4, 8)
    nan[2, 0] = np.nan
    kit.write_trident(folder / "nan.h5", nan)
    (folder / "broken.h5").write_bytes(b"garbage")
    return folder


def test_reports_every_kind_of_bag(tmp_path, kit):
    report = validate_folder(_mixed_folder(tmp_path, kit))
    status = {r.slide_id: r.status for r in report.rows}
    assert status == {"ok1": "ok", "ok2": "ok", "empty": "empty", "busy": "locked",
                      "nan": "error: features contain NaN/Inf in 1 of 4 rows",
                      "broken": "error: not an HDF5 file"}
    assert not report.usable and report.reasons == ["2 bag(s) cannot be read"]
    lines = format_report(report).splitlines()
    assert lines[0].split() == ["slide", "format", "N", "D", "dtype", "status"]
    status_col = lines[0].index("status")
    assert all(len(line) > status_col and line[status_col - 2:status_col] == "  " for line in lines[1:7])
    assert "2 ok, 1 empty, 1 locked, 2 error" in lines[-2]
    assert lines[-1].startswith("NOT USABLE: 2 bag(s) cannot be read; empty bags need --on-empty skip")


def test_usable_with_empty_and_locked(tmp_path, kit):
    folder = _mixed_folder(tmp_path, kit)
    (folder / "nan.h5").unlink()
    (folder / "broken.h5").unlink()
    report = validate_folder(folder)
    assert report.usable
    assert format_report(report).splitlines()[-1] == (
        "USABLE: feature dim 8 (empty bags need --on-empty skip; locked bags are still being written and will "
        "be skipped)")


def test_mixed_dims_and_nothing_usable(tmp_path, kit):
    kit.write_clam_h5(tmp_path / "a" / "x.h5", kit.feats(3, 8))
    kit.write_clam_h5(tmp_path / "a" / "y.h5", kit.feats(3, 16))
    report = validate_folder(tmp_path / "a")
    assert not report.usable and "feature dims differ [8, 16]" in report.reasons[0]
    kit.write_trident(tmp_path / "b" / "e.h5", np.empty((0,), np.float32), np.empty((0, 2), np.int64))
    assert validate_folder(tmp_path / "b").reasons == ["no readable non-empty bag"]


def test_missing_root_raises(tmp_path):
    with pytest.raises(BadInputError, match="features folder not found"):
        validate_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    report = validate_folder(tmp_path / "empty")
    assert not report.usable and "NOT USABLE" in format_report(report)
