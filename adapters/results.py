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

Fold jobs side by side (CLAM's ``--k_start``/``--k_end`` as parallel jobs into one folder): a job that runs some
of the folds writes ``summary_partial_<start>_<end>.csv`` (CLAM's name) with its own folds and
``config_partial_<start>_<end>.json`` with its own settings; ``summary.csv`` is rebuilt, under a lock on the
folder, from every finished fold's own results, and ``config.json`` records the union of the jobs' folds. Jobs
must agree on every other setting; ``--resume`` collects the folds of all of them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from msrl_plugin.atomic import remove_stale_temporaries, restore_neutralised, write_csv, write_json, write_text
from msrl_plugin.errors import MSRLPluginError
from msrl_plugin.locking import folder_lock

CLAM_COLUMNS = {"survival": ["test_cindex", "val_cindex"],
                "classification": ["test_auc", "val_auc", "test_acc", "val_acc"]}
_RENAME = {"c_index": "cindex", "accuracy": "acc"}
#: flags that may change between a run and its resume (they change what is recorded, not the results)
IGNORED_ON_RESUME = {"resume", "quiet", "device", "log_data", "hash_contents", "allow_changed_inputs"}
#: settings that differ between the fold jobs of one run (each runs its own range of folds)
FOLD_RANGE_KEYS = {"k_start", "k_end", "folds"}


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

    def __init__(self, results_dir: str | Path, exp_code: str, seed: int, cohort=None, resume: bool = False,
                 folds=None, n_folds: int | None = None):
        """``folds`` (this job's) and ``n_folds`` (the run's) let fold jobs share the folder: a new job is then
        refused only when one of *its* folds already has results, and a job of some folds writes partial files."""
        self.path = Path(results_dir) / f"{exp_code}_s{seed}"
        self.cohort = cohort
        self.resume = resume
        self.folds = None if folds is None else [f.k for f in folds]
        self.n_folds = n_folds
        if not resume and self.holds_results(self.folds):
            raise MSRLPluginError("results folder already holds results" + (
                "" if self.folds is None else " of these folds"), self.path,
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

    def holds_results(self, folds: list[int] | None = None) -> bool:
        """Fold outputs or a training state exist (a folder with only the config of a failed start does not);
        with ``folds``, only those folds' outputs count."""
        if folds is not None:
            return self.path.is_dir() and any(p.is_file() for k in folds for p in (
                self.predictions_path(k), self.checkpoint_path(k), self.path / f"s_{k}_training_state.pt"))
        patterns = ("split_*_results.csv", "s_*_checkpoint.pt", "s_*_training_state.pt", "summary.csv",
                    "summary_partial_*.csv")
        return self.path.is_dir() and any(any(self.path.glob(p)) for p in patterns)

    @property
    def partial(self) -> bool:
        """This job runs some of the run's folds (CLAM then writes ``summary_partial_<start>_<end>.csv``)."""
        return self.folds is not None and self.n_folds is not None and len(self.folds) < self.n_folds

    def _job_name(self, kind: str, ext: str) -> Path:
        return self.path / f"{kind}_partial_{self.folds[0]}_{self.folds[-1] + 1}.{ext}"

    def set_aside_training_state(self, fold) -> tuple[Path | None, bool]:
        """Rename a diverged fold's training state to ``s_<k>_training_state.diverged[-n].pt`` (kept, never
        resumed: it would diverge again). Returns the new path (None when there was none) and whether the
        folder still holds results."""
        state = self.training_state_path(fold)
        moved = None
        if state.is_file():
            moved = self.path / f"s_{fold.k}_training_state.diverged.pt"
            n = 2
            while moved.exists():
                moved, n = self.path / f"s_{fold.k}_training_state.diverged-{n}.pt", n + 1
            state.rename(moved)
        return moved, self.holds_results()

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
        """Record the resolved config. Settings must match the recorded ones when the folder holds results (on
        resume, and for a fold job joining others); the fold ranges of several jobs are merged, not replaced."""
        path = self.path / "config.json"
        current = json.loads(json.dumps(config, default=str))
        with folder_lock(self.path):  # fold jobs starting together read and write it in turn
            previous = self._read_config(path)
            if previous is None and not self.resume and self.holds_results():  # another job's folds, unrecorded
                raise MSRLPluginError("results folder holds results of a run whose settings are not recorded (no "
                                      "config.json)", self.path, "pass --resume to continue that run, or choose "
                                      "another --exp-code/--results-dir")
            changed = sorted(k for k in set(previous or {}) | set(current)
                             if k not in IGNORED_ON_RESUME | FOLD_RANGE_KEYS
                             and (previous or {}).get(k) != current.get(k))
            # a run that stopped before any fold output was written left only its config: a new run replaces it
            if previous is not None and changed and self.holds_results():
                problem = ("cannot resume: settings differ from the recorded run" if self.resume else
                           "this folder holds folds of a run with other settings")
                raise MSRLPluginError(f"{problem} ({', '.join(changed)})", path,
                                      "use the same flags as that run (the fold jobs of one run must agree), or "
                                      "start a new --exp-code")
            merged = dict(current)
            if previous is not None and not changed and isinstance(previous.get("folds"), list):
                folds = sorted({*previous["folds"], *(current.get("folds") or [])})
                merged.update(folds=folds, k_start=folds[0] if folds else None,
                              k_end=folds[-1] + 1 if folds else None)
            write_json(path, merged)
            lines = [f"{k}: {json.dumps(v, default=str)}" for k, v in sorted(merged.items())]
            write_text(self.path / f"experiment_{self.path.name}.txt", "\n".join(lines) + "\n")
        if self.partial:
            write_json(self._job_name("config", "json"), current)

    @staticmethod
    def _read_config(path: Path) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise MSRLPluginError(f"unreadable run config ({type(exc).__name__})", path,
                                  "move the file away if this folder holds no results you need, or use another "
                                  "--exp-code") from None
        if not isinstance(config, dict):
            raise MSRLPluginError("run config is not a JSON object", path, "move the file away, or use another "
                                  "--exp-code")
        return config

    def check_resumable(self, folds, model_name: str, params: dict[str, Any]) -> None:
        """On ``--resume``, every kept fold output and training state must belong to this run and cohort:
        checked before any work, so a foreign file is one error instead of a crash at fold k."""
        from msrl_plugin.checkpoint import read_checkpoint
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
        """``summary.csv`` over every finished fold in the folder (this job's rows, the other jobs' folds read
        from their own results, under a lock); a job of some folds also writes its own
        ``summary_partial_<start>_<end>.csv``."""
        if self.partial:
            write_csv(self._job_name("summary", "csv"), self._summary_frame(rows, task), index=True)
        out = self.path / "summary.csv"
        with folder_lock(self.path):
            mine = {row["fold"] for row in rows}
            others = [self._fold_row(k) for k in self._finished_folds() if k not in mine]
            every = sorted([*rows, *others], key=lambda row: row["fold"])
            write_csv(out, self._summary_frame(every, task), index=True)
        return out

    def _finished_folds(self) -> list[int]:
        """Folds of any job whose checkpoint and predictions both exist."""
        found = []
        for path in self.path.glob("split_*_results.csv"):
            k = path.name[len("split_"):-len("_results.csv")]
            if k.isdigit() and self.checkpoint_path(int(k)).is_file():
                found.append(int(k))
        return sorted(found)

    def _fold_row(self, k: int) -> dict[str, Any]:
        """A summary row from a fold's own ``split_<k>_metrics.json`` (metrics, then timings)."""
        path = self.path / f"split_{k}_metrics.json"
        try:
            values = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            values = {}
        values = values if isinstance(values, dict) else {}
        metrics = {name: v for name, v in values.items() if name.startswith(("test_", "val_"))}
        timings = {name: v for name, v in values.items() if name.endswith("seconds")}
        return {"fold": k, **metrics, **timings}

    @staticmethod
    def _summary_frame(rows: list[dict[str, Any]], task: str) -> pd.DataFrame:
        frame = pd.DataFrame(rows).rename(columns=lambda c: "folds" if c == "fold" else clam_metric_name(c)
                                          if c.startswith(("test_", "val_")) else c)
        for col in CLAM_COLUMNS[task]:
            if col not in frame and col.startswith("test_"):
                frame[col] = float("nan")
        first = ["folds", *(c for c in CLAM_COLUMNS[task] if c in frame)]
        return frame[first + [c for c in frame.columns if c not in first]]


def split_table(fold, cohort=None) -> pd.DataFrame:
    """CLAM's ragged split form: columns train/val/test of slide ids (case ids without a cohort),
    shorter columns padded with empty cells."""
    cols = {"train": fold.train, "val": fold.val, "test": fold.test}
    if cohort is not None:
        cols = {role: [s for c in ids for s in cohort.slides[c]] for role, ids in cols.items()}
    n = max(len(v) for v in cols.values())
    return pd.DataFrame({k: list(v) + [None] * (n - len(v)) for k, v in cols.items()})
