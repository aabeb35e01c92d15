"""A CLAM-style results folder: ``<results_dir>/<exp_code>_s<seed>/``.

Per fold ``k``: ``s_<k>_checkpoint.pt`` (msrl-plugin checkpoint, safe to load), ``split_<k>_results.csv``
(per-case predictions with their targets), ``splits_<k>.csv`` (the split used, CLAM's ragged form),
``split_<k>_history.csv`` (mean training loss per epoch: ``stage, epoch, loss``).
``summary.csv`` has CLAM's columns: ``folds, test_auc, val_auc, test_acc, val_acc`` for classification,
``folds, test_cindex, val_cindex`` for survival, plus extra metric columns. The ``val_*`` columns are
written only when the folds have a validation set (CLAM always has one; without it the columns would
stay empty); the held-out c-index that MCAT/SurvPath call ``val_cindex`` is our ``test_cindex``.
Every file is written atomically; a fold counts as done only when both its checkpoint and its
predictions exist.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from msrl_plugin.atomic import remove_stale_temporaries, restore_neutralised, write_csv, write_json, write_text
from msrl_plugin.errors import MSRLPluginError

CLAM_COLUMNS = {"survival": ["test_cindex", "val_cindex"],
                "classification": ["test_auc", "val_auc", "test_acc", "val_acc"]}
_RENAME = {"c_index": "cindex", "accuracy": "acc"}
#: flags that may change between a run and its resume (they change what is recorded, not the results)
IGNORED_ON_RESUME = {"resume", "quiet", "device", "log_data", "hash_contents", "allow_changed_inputs"}


_FOREIGN_FIX = ("resume in the folder of that run, or move the file away to re-run this fold "
                "(msrl-plugin never deletes results)")


def clam_metric_name(name: str) -> str:
    role, _, metric = name.partition("_")
    return f"{role}_{_RENAME.get(metric, metric)}"


class ResultsFolder:
    """``resume=False`` refuses a folder that already holds results (never overwrite a user's results);
    ``resume=True`` keeps finished folds and continues an interrupted fold from its training state.

    ``run_record`` (a :class:`~msrl_plugin.provenance.RunRecord`, when set) learns each fold's model and is
    embedded in its checkpoint; ``log_data`` gives each fold an ``EpochLog`` in ``tensorboard/fold_<k>/``."""

    run_record = None
    log_data = False

    def __init__(self, results_dir: str | Path, exp_code: str, seed: int, cohort=None, resume: bool = False):
        self.path = Path(results_dir) / f"{exp_code}_s{seed}"
        self.cohort = cohort
        self.resume = resume
        if not resume and self.holds_results():
            raise MSRLPluginError("results folder already holds results", self.path,
                                  "pass --resume to continue that run, or choose another --exp-code/--results-dir")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write_probe"
            probe.write_text("")
            probe.unlink()
            remove_stale_temporaries(self.path)  # left by a run killed mid-write
        except OSError as exc:
            raise MSRLPluginError(f"results directory is not writable ({exc.strerror})", self.path,
                                  "pass a writable --results-dir") from exc

    def holds_results(self) -> bool:
        """Fold outputs or a training state exist (a folder with only the config of a failed start does not)."""
        patterns = ("split_*_results.csv", "s_*_checkpoint.pt", "s_*_training_state.pt", "summary.csv")
        return self.path.is_dir() and any(any(self.path.glob(p)) for p in patterns)

    def checkpoint_path(self, k: int) -> Path:
        return self.path / f"s_{k}_checkpoint.pt"

    def training_state_path(self, fold) -> Path:
        return self.path / f"s_{fold.k}_training_state.pt"

    def predictions_path(self, k: int) -> Path:
        return self.path / f"split_{k}_results.csv"

    def provenance_path(self) -> Path:
        from msrl_plugin.provenance import FILE_NAME

        return self.path / FILE_NAME

    def epoch_log(self, fold, validation=None):
        """The fold's TensorBoard log (``--log-data``), or None."""
        if not self.log_data:
            return None
        from msrl_plugin.training_log import EpochLog

        return EpochLog(self.path / "tensorboard" / f"fold_{fold.k}", validation)

    def history_path(self, k: int) -> Path:
        return self.path / f"split_{k}_history.csv"

    def load_history(self, fold) -> pd.DataFrame | None:
        """The fold's per-epoch losses, or None for a fold written before they were recorded."""
        path = self.history_path(fold.k)
        return pd.read_csv(path) if path.is_file() else None

    def write_config(self, config: dict[str, Any]) -> None:
        """Record the resolved config; on resume it must match the recorded one (other settings = other run)."""
        path = self.path / "config.json"
        current = json.loads(json.dumps(config, default=str))
        # a run that stopped before any fold output was written left only its config: a new run replaces it
        if path.is_file() and self.resume and self.holds_results():
            previous = json.loads(path.read_text())
            changed = sorted(k for k in set(previous) | set(current)
                             if k not in IGNORED_ON_RESUME and previous.get(k) != current.get(k))
            if changed:
                raise MSRLPluginError(f"cannot resume: settings differ from the recorded run ({', '.join(changed)})",
                                      path, "resume with the same flags, or start a new --exp-code")
        write_json(path, current)
        lines = [f"{k}: {json.dumps(v, default=str)}" for k, v in sorted(config.items())]
        write_text(self.path / f"experiment_{self.path.name}.txt", "\n".join(lines) + "\n")

    def check_resumable(self, folds, model_name: str, params: dict[str, Any]) -> None:
        """On ``--resume``, every kept fold output and training state must belong to this run and cohort:
        checked before any work, so a foreign file is one error instead of a crash at fold k."""
        from msrl_plugin.aggregators.base import read_checkpoint
        from msrl_plugin.registry import create_aggregator

        for fold in folds:
            state = self.training_state_path(fold)
            if self.fold_done(fold):
                self._check_predictions(fold)
                ckpt = read_checkpoint(self.checkpoint_path(fold.k))
                dim = self.cohort.feature_dim if self.cohort is not None else ckpt.get("feature_dim")
                if ckpt.get("aggregator") != model_name or ckpt.get("feature_dim") != dim:
                    raise MSRLPluginError(f"checkpoint of a {str(ckpt.get('aggregator'))[:40]!r} model on "
                                          f"{ckpt.get('feature_dim')}-d features, not this run's {model_name!r} on "
                                          f"{dim}-d features", self.checkpoint_path(fold.k), _FOREIGN_FIX)
            else:
                if self.predictions_path(fold.k).is_file():  # would be replaced by the re-run: must be ours
                    self._check_predictions(fold)
                if state.is_file():
                    create_aggregator(model_name, **params).check_training_state(state, self.cohort)

    def _check_predictions(self, fold) -> None:
        path = self.predictions_path(fold.k)
        try:
            frame = pd.read_csv(path, dtype=str)
        except Exception as exc:  # noqa: BLE001 - any parser error means "not this run's file"
            raise MSRLPluginError(f"unreadable fold results ({type(exc).__name__})", path, _FOREIGN_FIX) from None
        if "case_id" not in frame.columns:
            raise MSRLPluginError("fold results without a 'case_id' column: not written by this run", path,
                                  _FOREIGN_FIX)
        ids = set(frame["case_id"].map(restore_neutralised))
        if ids != set(fold.test):
            raise MSRLPluginError(f"fold results for other cases ({len(ids & set(fold.test))} of "
                                  f"{len(fold.test)} test cases of fold {fold.k} match): not this run's fold",
                                  path, _FOREIGN_FIX)

    def fold_done(self, fold) -> bool:
        return self.checkpoint_path(fold.k).is_file() and self.predictions_path(fold.k).is_file()

    def load_fold(self, fold):
        frame = pd.read_csv(self.predictions_path(fold.k), index_col="case_id", dtype={"case_id": str})
        frame.index = frame.index.map(restore_neutralised)
        metrics_file = self.path / f"split_{fold.k}_metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        return frame, metrics

    def write_fold(self, fold, model, predictions: pd.DataFrame, metrics: dict[str, float],
                   extra: dict[str, Any]) -> None:
        table = predictions.copy()
        if self.run_record is not None:
            name = getattr(model, "name", None)
            self.run_record.record_model(name, model, fold.k)
            model.provenance_ = self.run_record.for_checkpoint(name, model, fold.k)
        if self.cohort is not None:
            cases = self.cohort.cases.loc[table.index]
            for col in ("time", "censorship", "label"):
                if col in cases:
                    table[col] = cases[col].to_numpy()
            table.insert(0, "slide_id", [";".join(self.cohort.slides[c]) for c in table.index])
        writes = [(self.path / f"splits_{fold.k}.csv", lambda p: write_csv(p, split_table(fold, self.cohort), True)),
                  (self.path / f"split_{fold.k}_metrics.json", lambda p: write_json(p, {**metrics, **extra})),
                  (self.history_path(fold.k), lambda p: write_csv(p, model.training_history())),
                  (self.checkpoint_path(fold.k), model.save),
                  (self.predictions_path(fold.k), lambda p: write_csv(p, table, index=True))]
        done = []
        try:
            for path, write in writes:
                write(path)
                done.append(path)
        except BaseException:  # disk full, Ctrl-C: no fold is left with a checkpoint but no predictions
            for path in done:
                path.unlink(missing_ok=True)
            raise

    def write_summary(self, rows: list[dict[str, Any]], task: str) -> Path:
        frame = pd.DataFrame(rows).rename(columns=lambda c: "folds" if c == "fold" else clam_metric_name(c)
                                          if c.startswith(("test_", "val_")) else c)
        for col in CLAM_COLUMNS[task]:
            if col not in frame and col.startswith("test_"):
                frame[col] = float("nan")
        first = ["folds", *(c for c in CLAM_COLUMNS[task] if c in frame)]
        frame = frame[first + [c for c in frame.columns if c not in first]]
        out = self.path / "summary.csv"
        write_csv(out, frame, index=True)
        return out


def split_table(fold, cohort=None) -> pd.DataFrame:
    """CLAM's ragged split form: columns train/val/test of slide ids (case ids without a cohort),
    shorter columns padded with empty cells."""
    cols = {"train": fold.train, "val": fold.val, "test": fold.test}
    if cohort is not None:
        cols = {role: [s for c in ids for s in cohort.slides[c]] for role, ids in cols.items()}
    n = max(len(v) for v in cols.values())
    return pd.DataFrame({k: list(v) + [None] * (n - len(v)) for k, v in cols.items()})
