"""validate_folder / format_report: every bag reported, nothing raised for bad bags."""
from __future__ import annotations

import numpy as np
import pytest
from msrl_plugin.adapters import format_report, format_reports, validate_folder, validate_tree

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


# -- validate_tree: every feature folder below a path --------------------------------------------------
def test_tree_above_genuine_jobs_reports_every_encoder(real_fixtures):
    reports = validate_tree(real_fixtures)
    labels = {r.label: r for r in reports}
    assert set(labels) == {"clam/job/features_resnet50_trunc",
                           "trident/job/20x_256px_0px_overlap/features_uni_v1",
                           "trident/job/20x_256px_0px_overlap/features_custom_vits16head768_fp16_seed1"}
    assert all(r.usable for r in reports)
    assert labels["trident/job/20x_256px_0px_overlap/features_uni_v1"].dims == [1024]
    assert labels["trident/job/20x_256px_0px_overlap/features_custom_vits16head768_fp16_seed1"].dims == [768]
    text = format_reports(reports, real_fixtures)
    assert text.count("slide  ") == 3 and "--patch-encoder" not in text
    assert text.splitlines()[-1].startswith(f"{real_fixtures}: 3 feature folders; usable: ")


def test_tree_of_one_genuine_job_with_two_encoders(real_fixtures):
    job = real_fixtures / "trident/job"
    assert len(validate_tree(job)) == 2  # no "choose one with --patch-encoder"
    only = validate_tree(job, patch_encoder="uni_v1")
    assert [r.label for r in only] == ["20x_256px_0px_overlap/features_uni_v1"]


def _two_jobs(tmp_path, kit):
    """Two self-made TRIDENT jobs under one folder: one usable, one with a broken bag."""
    good = tmp_path / "jobs" / "a" / "20x_256px_0px_overlap"
    kit.write_trident(good / "features_uni_v1" / "s1.h5", kit.feats(4, 8))
    kit.write_trident(good / "features_conch_v15" / "s1.h5", kit.feats(4, 16))
    kit.write_trident(good / "slide_features_mean-uni_v1" / "s1.h5", kit.feats(1, 8))  # not patch features
    bad = tmp_path / "jobs" / "b" / "10x_512px_0px_overlap" / "features_uni_v1"
    kit.write_trident(bad / "s2.h5", kit.feats(3, 8))
    (bad / "s3.h5").write_bytes(b"garbage")
    return tmp_path / "jobs"


def test_tree_of_self_made_jobs_says_which_are_usable(tmp_path, kit):
    root = _two_jobs(tmp_path, kit)
    reports = validate_tree(root)
    assert [(r.label, r.usable) for r in reports] == [
        ("a/20x_256px_0px_overlap/features_conch_v15", True), ("a/20x_256px_0px_overlap/features_uni_v1", True),
        ("b/10x_512px_0px_overlap/features_uni_v1", False)]
    lines = format_reports(reports, root).splitlines()
    assert lines[-2].endswith("usable: a/20x_256px_0px_overlap/features_conch_v15, "
                              "a/20x_256px_0px_overlap/features_uni_v1")
    assert lines[-1] == "not usable: b/10x_512px_0px_overlap/features_uni_v1"
    assert [r.label for r in validate_tree(root, patch_size=512)] == ["b/10x_512px_0px_overlap/features_uni_v1"]
    with pytest.raises(BadInputError, match="no feature folder below matches patch_encoder=nope"):
        validate_tree(root, patch_encoder="nope")


def test_tree_of_a_flat_folder_is_one_report(tmp_path, kit):
    kit.write_clam_h5(tmp_path / "bags" / "x.h5", kit.feats(3, 8))
    reports = validate_tree(tmp_path / "bags")
    assert len(reports) == 1 and reports[0].usable and reports[0].layout == "flat"
    assert format_reports(reports, tmp_path / "bags") == format_report(reports[0])
    with pytest.raises(BadInputError, match="DIRECTORY"):
        validate_tree(tmp_path / "nope")


def test_validate_command_exit_code(tmp_path, kit, capsys):
    from msrl_plugin.cli import main

    root = _two_jobs(tmp_path, kit)
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(root)])
    assert exc.value.code == 0 and capsys.readouterr().out.count("== ") == 3  # one usable is enough
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(root / "b")])
    assert exc.value.code == 1
