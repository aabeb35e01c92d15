"""A CLAM-style results folder: ``<results_dir>/<exp_code>_s<seed>/``.

Per fold ``k``: ``s_<k>_checkpoint.pt`` (msrl-plugin checkpoint, safe to load), ``split_<k>_results.csv``
(per-case predictions with their targets), ``splits_<k>.csv`` (the split used, CLAM's ragged form),
``split_<k>_history.csv`` (mean training loss per epoch: ``stage, epoch, loss``).
``summary.csv`` has CLAM's columns: ``folds, test_auc, val_auc, test_acc, val_acc`` for classification,
``folds, test_cindex, val_cindex`` for survival (MCAT/SurvPath name it ``val_cindex``), plus extra
metric columns. Every file is written atomically; a fold counts as done only when both its
checkpoint and its predictions exist.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from msrl_plugin.atomic import write_csv, write_json, write_text
from msrl_plugin.errors import MSRLPluginError

CLAM_COLUMNS = {"survival": ["test_cindex", "val_cindex"],
                "classification": ["test_auc", "val_auc", "test_acc", "val_acc"]}
_RENAME = {"c_index": "cindex", "accuracy": "acc"}
IGNORED_ON_RESUME = {"resume", "quiet", "device"}


def clam_metric_name(name: str) -> str:
    role, _, metric = name.partition("_")
    return f"{role}_{_RENAME.get(metric, metric)}"


class ResultsFolder:
    """``resume=False`` refuses a folder that already holds results (never overwrite a user's results);
    ``resume=True`` keeps finished folds and continues an interrupted fold from its training state."""

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
        if path.is_file():
            previous = json.loads(path.read_text())
            changed = sorted(k for k in set(previous) | set(current)
                             if k not in IGNORED_ON_RESUME and previous.get(k) != current.get(k))
            if changed:
                raise MSRLPluginError(f"cannot resume: settings differ from the recorded run ({', '.join(changed)})",
                                      path, "resume with the same flags, or start a new --exp-code")
        write_json(path, current)
        lines = [f"{k}: {json.dumps(v, default=str)}" for k, v in sorted(config.items())]
        write_text(self.path / f"experiment_{self.path.name}.txt", "\n".join(lines) + "\n")

    def fold_done(self, fold) -> bool:
        return self.checkpoint_path(fold.k).is_file() and self.predictions_path(fold.k).is_file()

    def load_fold(self, fold):
        frame = pd.read_csv(self.predictions_path(fold.k), index_col="case_id", dtype={"case_id": str})
        metrics_file = self.path / f"split_{fold.k}_metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        return frame, metrics

    def write_fold(self, fold, model, predictions: pd.DataFrame, metrics: dict[str, float],
                   extra: dict[str, Any]) -> None:
        table = predictions.copy()
        if self.cohort is not None:
            cases = self.cohort.cases.loc[table.index]
            for col in ("time", "censorship", "label"):
                if col in cases:
                    table[col] = cases[col].to_numpy()
            table.insert(0, "slide_id", [";".join(self.cohort.slides[c]) for c in table.index])
        write_csv(self.path / f"splits_{fold.k}.csv", split_table(fold, self.cohort), index=True)
        write_json(self.path / f"split_{fold.k}_metrics.json", {**metrics, **extra})
        write_csv(self.history_path(fold.k), model.training_history())
        model.save(self.checkpoint_path(fold.k))
        write_csv(self.predictions_path(fold.k), table, index=True)

    def write_summary(self, rows: list[dict[str, Any]], task: str) -> Path:
        frame = pd.DataFrame(rows).rename(columns=lambda c: "folds" if c == "fold" else clam_metric_name(c)
                                          if c.startswith(("test_", "val_")) else c)
        for col in CLAM_COLUMNS[task]:
            if col not in frame:
                frame[col] = float("nan")
        first = ["folds", *CLAM_COLUMNS[task]]
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
