"""--log-data (CLAM's --log_data): per-epoch scalars in TensorBoard event files, read back here."""
import json
import sys

import pandas as pd
import pytest
from _cli import run
from _cohorts import easy_survival_cohort

from msrl_plugin import create_aggregator
from msrl_plugin.synth import CohortConfig, generate_cohort, write_cohort


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files of ``folder``: tag -> [(step, value), ...]."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def needs_tensorboard():
    pytest.importorskip("tensorboard")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A cohort on disk with one split file whose validation cases differ from its test cases."""
    out = tmp_path_factory.mktemp("cohort")
    paths = write_cohort(generate_cohort(CohortConfig.test_tier(n_cases=40, bag_min=8, bag_max=16), 0), out)
    cases = list(pd.read_csv(paths["clinical"])["case_id"])
    split = out / "val_splits"
    split.mkdir()
    pd.DataFrame({"train": cases[:24], "val": cases[24:32] + [None] * 16, "test": cases[32:] + [None] * 16}
                 ).to_csv(split / "splits_0.csv")
    return {**paths, "val_splits": split}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Traceback" not in err[0], err
    return err[0]


def train_args(paths, results, *extra):
    return ["-q", "train", "--features", str(paths["job_dir"]), "--clinical", str(paths["clinical"]),
            "--genomics", str(paths["genomics"]), "--results_dir", str(results), "--threads", "1", *extra]


def test_without_tensorboard_the_flag_is_one_error_naming_the_extra(cohort, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    for spelling in ("--log-data", "--log_data"):
        assert run(train_args(cohort, tmp_path / "res", "--k", "2", "--max_epochs", "1", spelling)) == 2
        line = one_error_line(capsys)
        assert "tensorboard" in line and "msrl-plugin[tensorboard]" in line
    assert not (tmp_path / "res").exists()  # refused before any work


def test_log_data_needs_one_training_process(cohort, tmp_path, capsys):
    needs_tensorboard()
    assert run(train_args(cohort, tmp_path / "res", "--k", "2", "--max_epochs", "1", "--log-data",
                          "--devices", "2")) == 2
    assert "--devices" in one_error_line(capsys) and not (tmp_path / "res").exists()


def test_train_writes_readable_event_files_per_fold(cohort, tmp_path):
    results = tmp_path / "res"
    assert run(train_args(cohort, results, "--model", "abmil", "--split-dir", str(cohort["val_splits"]),
                          "--max_epochs", "3", "--lr", "0.0005", "--log_data")) == 0
    folder = results / "abmil_s1"
    logged = scalars(folder / "tensorboard" / "fold_0")
    history = pd.read_csv(folder / "split_0_history.csv")
    assert [step for step, _ in logged["train/loss"]] == [1, 2, 3]
    assert [v for _, v in logged["train/loss"]] == pytest.approx(list(history["loss"]), rel=1e-6)
    assert [v for _, v in logged["train/lr"]] == pytest.approx([0.0005] * 3)
    # validation after every epoch; the last one is the fold's recorded validation metric
    metrics = json.loads((folder / "split_0_metrics.json").read_text())
    assert [step for step, _ in logged["val/c_index"]] == [1, 2, 3]
    assert logged["val/c_index"][-1][1] == pytest.approx(metrics["val_c_index"], abs=1e-6)
    assert json.loads((folder / "provenance.json").read_text())["settings"]["log_data"] is True


def test_pretrain_writes_stage1_scalars_beside_its_checkpoint(cohort, tmp_path):
    out = tmp_path / "gsl.pt"
    assert run(["-q", "pretrain", "--model", "msrl", "--features", str(cohort["job_dir"]), "--clinical",
                str(cohort["clinical"]), "--genomics", str(cohort["genomics"]), "--param", "pretrain_epochs=2",
                "--param", "embed_dim=8", "--out", str(out), "--threads", "1", "--log-data"]) == 0
    logged = scalars(tmp_path / "gsl.pt.tensorboard")
    for tag in ("pretrain/loss", "pretrain/intra", "pretrain/inter", "pretrain/fused", "pretrain/recall_at_k"):
        assert [step for step, _ in logged[tag]] == [1, 2], tag
    history = pd.read_csv(tmp_path / "gsl.pt.history.csv")
    assert [v for _, v in logged["pretrain/loss"]] == pytest.approx(list(history["loss"]), rel=1e-6)


def _fit(name, cohort, log=None, **params):
    from msrl_plugin.training_log import attached

    model = create_aggregator(name, device="cpu", seed=3, **params)
    with attached(model, log):
        model.fit(cohort)
    return model


MSRL_TINY = dict(max_epochs=2, pretrain_epochs=2, embed_dim=8, genomic_teacher_steps=3, max_patches=16,
                 pretrain_batch_size=16, batch_size=8)


def test_msrl_logs_every_loss_term_stage1_and_the_teacher(tmp_path):
    needs_tensorboard()
    from msrl_plugin.training_log import EpochLog

    data = easy_survival_cohort(n=40, genomics_dim=4)
    model = _fit("msrl", data, EpochLog(tmp_path / "tb", validation=data.subset(data.case_ids[:10])),
                 **MSRL_TINY)
    logged = scalars(tmp_path / "tb")
    for tag in ("train/loss", "train/lr", "train/task", "train/task_borrowed", "train/teacher", "train/distill",
                "train/f_align", "train/g_align", "train/s_align", "train/borrowed_share", "val/c_index",
                "pretrain/loss", "pretrain/recall_at_k", "pretrain/chance"):
        assert [step for step, _ in logged[tag]] == [1, 2], tag
    assert [step for step, _ in logged["teacher/loss"]] == [1, 2, 3]
    assert all(0 <= v <= 1 for _, v in logged["train/borrowed_share"])
    assert [v for _, v in logged["train/loss"]] == pytest.approx([h["train_loss"] for h in model.history_],
                                                                   rel=1e-6)
    assert model._epoch_log is None  # detached after the fit: nothing of the writer is copied or saved


@pytest.mark.parametrize("name, params", [("abmil", dict(max_epochs=2, batch_size=8)), ("msrl", MSRL_TINY)])
def test_logging_changes_no_result(tmp_path, name, params):
    needs_tensorboard()
    from msrl_plugin.training_log import EpochLog

    data = easy_survival_cohort(n=40, genomics_dim=4)
    plain = _fit(name, data, **params).predict(data)
    logged = _fit(name, data, EpochLog(tmp_path / name, validation=data.subset(data.case_ids[:10])), **params)
    pd.testing.assert_frame_equal(plain, logged.predict(data))


def test_compare_logs_each_fit_in_its_own_run(tmp_path):
    needs_tensorboard()
    from msrl_plugin.evaluation.compare import compare_models
    from msrl_plugin.training_log import compare_logs

    data = easy_survival_cohort(n=40, genomics_dim=4)
    compare_models(data, ["abmil", "snn"], 2, [0], budget={"max_epochs": 2}, n_boot=20, log=lambda _: None,
                   epoch_log=compare_logs(tmp_path))
    runs = sorted(p.name for p in (tmp_path / "tensorboard").iterdir())
    assert runs == ["abmil_seed0_fold0", "abmil_seed0_fold1", "snn_seed0_fold0", "snn_seed0_fold1"]
    assert [step for step, _ in scalars(tmp_path / "tensorboard" / "snn_seed0_fold1")["train/loss"]] == [1, 2]
