"""`msrl-plugin train` end to end on byte-identical copies of the genuine TRIDENT and CLAM outputs.

The fixtures hold one or two real slides; a cohort needs more, so each genuine file is copied under several
slide names (bytes unchanged) and given a made-up clinical row.
"""
import shutil

import numpy as np
import pandas as pd
import pytest
from _cli import run

N_CASES = 16



def clinical(path, slide_ids, task):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"case_id": [f"case{i:02d}" for i in range(len(slide_ids))], "slide_id": slide_ids})
    if task == "survival":
        frame["survival_months"] = rng.uniform(1, 60, len(frame)).round(2)
        frame["censorship"] = [0, 1] * (len(frame) // 2)
    else:
        frame["label"] = ["tumor_tissue", "normal_tissue"] * (len(frame) // 2)
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("encoder", ["uni_v1", "custom_vits16head768_fp16_seed1"])
def test_train_on_genuine_trident_bags(real_fixtures, tmp_path, encoder):
    source = real_fixtures / "trident" / "job" / "20x_256px_0px_overlap" / f"features_{encoder}"
    feats = tmp_path / "job" / "20x_256px_0px_overlap" / f"features_{encoder}"
    feats.mkdir(parents=True)
    genuine = sorted(source.glob("*.h5"))
    slides = []
    for i in range(N_CASES):
        slide = f"slide{i:02d}"
        shutil.copyfile(genuine[i % len(genuine)], feats / f"{slide}.h5")
        slides.append(slide)
    table = clinical(tmp_path / "clinical.csv", slides, "survival")
    code = run(["-q", "train", "--model", "abmil", "--features", str(tmp_path / "job"), "--patch-encoder", encoder,
                "--clinical", str(table), "--k", "2", "--max_epochs", "1", "--results_dir", str(tmp_path / "res")])
    assert code == 0
    summary = pd.read_csv(tmp_path / "res" / "abmil_s1" / "summary.csv")
    assert len(summary) == 2 and summary["test_cindex"].notna().all()


def test_train_on_the_genuine_trident_job_dir_itself(real_fixtures, tmp_path):
    """The real job dir (bookkeeping files, slide_features_, patches/) read in place: its 2 slides, 1 case each."""
    job = real_fixtures / "trident" / "job"
    table = clinical(tmp_path / "clinical.csv", ["cmu_small_region", "tissue_speck"], "classification")
    code = run(["-q", "evaluate", "--model-path", str(tmp_path / "missing.pt"), "--features", str(job),
                "--clinical", str(table), "--task", "classification", "--patch-encoder", "uni_v1"])
    assert code == 2  # no model yet: a clear error, not a crash
    from msrl_plugin.adapters import load_cohort

    cohort = load_cohort(job, table, "classification", patch_encoder="uni_v1")
    assert len(cohort) == 2 and cohort.feature_dim == 1024


@pytest.mark.parametrize("folder", ["h5_files", "pt_files"])
def test_train_on_genuine_clam_bags(real_fixtures, tmp_path, folder):
    source = next((real_fixtures / "clam" / "job" / "features_resnet50_trunc" / folder).iterdir())
    target = tmp_path / "feat" / folder
    target.mkdir(parents=True)
    slides = [f"slide_{i}" for i in range(N_CASES)]
    for slide in slides:
        shutil.copyfile(source, target / f"{slide}{source.suffix}")
    table = clinical(tmp_path / "dataset.csv", slides, "classification")
    code = run(["-q", "train", "--model", "abmil", "--data_root_dir", str(tmp_path / "feat"), "--csv_path",
                str(table), "--task", "classification", "--k", "2", "--max_epochs", "1",
                "--results_dir", str(tmp_path / "res"), "--exp_code", "clam"])
    assert code == 0
    summary = pd.read_csv(tmp_path / "res" / "clam_s1" / "summary.csv", index_col=0)
    assert list(summary.columns[:3]) == ["folds", "test_auc", "test_acc"]  # no val set: no empty val_ columns
