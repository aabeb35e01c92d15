"""Honest model comparison: identical folds, seeds and epoch budget for every model, paired statistics.

``compare_models`` fits every model on the same ``(seed, fold)`` pairs, scores the held-out cases, keeps
out-of-fold predictions, and summarises: mean +- sd per metric and the paired difference of each model
against a reference (Wilcoxon signed-rank p, paired-bootstrap 95% CI; :mod:`msrl_plugin.evaluation.stats`).

Post-fit *variants* reuse a fitted model of another name and change it before predicting, so the control
is paired with the very same fit: ``msrl:shuffled_buffer`` (alias ``msrl_shuffled_buffer``) permutes the
genomic half of a fitted MSRL's buffer across rows (``shared/benchmark.md``: a real win must vanish when
the buffer's genomics are shuffled).
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..aggregators.base import Aggregator
from ..atomic import write_csv, write_json
from ..cohort import SURVIVAL, Cohort
from ..errors import MSRLPluginError
from ..registry import create_aggregator, get_aggregator_class
from ..survival import fit_bin_edges
from ..training_log import attached
from . import stats
from .crossval import SELECTION_RULE, check_pool_overlap
from .metrics import concordance_index, fold_survival_metrics
from .splits import Fold, kfold_splits
from .variants import borrowing_controls, shuffled_buffer, variant_of

DEFAULT_BUDGET: dict[str, Any] = {"max_epochs": 20}
PRIMARY = {"survival": "c_index", "classification": "auc"}
HISTORY_COLUMNS = ["model", "seed", "fold", "stage", "epoch", "loss"]
#: an external model: (training cohort, test cohort, seed) -> predictions indexed by case_id
ExternalModel = Callable[[Cohort, Cohort, int], pd.DataFrame]


# -- results ---------------------------------------------------------------------------------------
@dataclass
class ExampleFit:
    """One fitted model kept for the report (the first seed's first fold)."""

    model: Aggregator
    seed: int
    fold: Fold


@dataclass
class ComparisonResult:
    """Everything a comparison produced.

    ``per_fold``: one row per ``model, seed, fold`` with metric columns (``c_index``, ... or ``auc``, ...),
    ``eval_times`` (survival curves: where the IBS and td-AUC were evaluated) and ``fit_seconds``.
    ``predictions[(model, seed)]``: out-of-fold predictions indexed by case_id with a ``fold`` column and
    the targets (``time``, ``censorship`` or ``label``). ``histories``: mean training loss per epoch, one
    row per ``model, seed, fold, stage, epoch`` (``loss``), for the fitted models.
    """

    task: str
    models: list[str]
    reference: str
    per_fold: pd.DataFrame
    predictions: dict[tuple[str, int], pd.DataFrame]
    config: dict[str, Any]
    examples: dict[str, ExampleFit] = field(default_factory=dict)
    n_boot: int = 10_000
    histories: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=HISTORY_COLUMNS))

    @property
    def primary_metric(self) -> str:
        return PRIMARY[self.task]

    @property
    def seeds(self) -> list[int]:
        return sorted({int(s) for s in self.per_fold["seed"]})

    def metrics(self) -> list[str]:
        return stats.metric_columns(self.per_fold)

    def summary(self) -> pd.DataFrame:
        """``(models, <metric>_mean/_sd, n)``."""
        return stats.mean_sd(self.per_fold, self.metrics())

    def paired(self) -> pd.DataFrame:
        """Paired differences vs the reference, one row per (model, metric)."""
        return stats.paired_table(self.per_fold, self.reference, self.metrics(), self.n_boot)

    def table(self) -> pd.DataFrame:
        """Readable table: ``mean +- sd`` per metric, then the primary metric's paired difference."""
        summary, paired = self.summary(), self.paired()
        out = pd.DataFrame(index=summary.index)
        for m in self.metrics():
            pairs = zip(summary[f"{m}_mean"], summary[f"{m}_sd"], strict=True)
            out[m] = [stats.format_mean_sd(a, b) for a, b in pairs]
        prim = paired[paired["metric"] == self.primary_metric].set_index("model")
        delta, ci, p = [], [], []
        for model in out.index:
            if model == self.reference or model not in prim.index:
                delta.append("reference" if model == self.reference else "n/a")
                ci.append("")
                p.append("")
                continue
            row = prim.loc[model]
            delta.append(f"{row['mean_diff']:+.3f}")
            ci.append(f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]")
            p.append(f"{row['wilcoxon_p']:.3g}")
        out[f"diff_{self.primary_metric}"] = delta
        out["95% CI"] = ci
        out["wilcoxon_p"] = p
        out["n"] = summary["n"]
        return out

    def borrowing(self) -> pd.DataFrame:
        """The borrowing check of every model compared with its shuffled-buffer control (``m`` and
        ``m:shuffled_buffer``): paired difference model - control on the primary metric, bootstrap CI,
        Wilcoxon p and a verdict ("evidence of borrowing" only when the CI lies above 0; "too few pairs to tell"
        below the pairs at which the Wilcoxon test can reach p < 0.05: 6, two-sided)."""
        metric = self.primary_metric
        rows = []
        for control in self.models:
            variant = variant_of(control)
            if variant is None or variant[1] is not shuffled_buffer or variant[0] not in self.models:
                continue
            model = variant[0]
            diffs = stats.paired_differences(self.per_fold[self.per_fold["model"].isin([model, control])],
                                             control, metric)["diff"].to_numpy(float)
            lo, hi = stats.bootstrap_ci(diffs, self.n_boot)
            verdict = ("too few pairs to tell" if stats.min_wilcoxon_p(diffs.size) >= 0.05 else
                       "evidence of borrowing" if lo > 0 else
                       "no evidence of borrowing (CI covers 0)" if hi >= 0 else "shuffled buffer scores higher")
            rows.append({"model": model, "control": control, "metric": metric,
                         "mean_diff": float(diffs.mean()) if diffs.size else float("nan"), "ci_low": lo,
                         "ci_high": hi, "wilcoxon_p": stats.wilcoxon_p(diffs), "n_pairs": int(diffs.size),
                         "verdict": verdict})
        return pd.DataFrame(rows, columns=["model", "control", "metric", "mean_diff", "ci_low", "ci_high",
                                           "wilcoxon_p", "n_pairs", "verdict"])

    def format(self) -> str:
        head = (f"{len(self.models)} models x {len(self.seeds)} seed(s), {self.config.get('n_folds', '?')} "
                f"folds; paired vs {self.reference!r} over (seed, fold)")
        lines = [head, self.table().to_string()]
        for row in self.borrowing().itertuples():
            lines.append(f"borrowing check: {row.model} - {row.control} = {row.mean_diff:+.3f} {row.metric} "
                         f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}], Wilcoxon p {row.wilcoxon_p:.3g}, "
                         f"{row.n_pairs} pairs: {row.verdict}")
        return "\n".join(lines)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``comparison.csv, paired.csv, per_fold.csv, training_history.csv,
        predictions/<model>_seed<s>.csv, compare_config.json`` (each atomically) and return their paths."""
        out = Path(out_dir)
        paths = {"comparison": out / "comparison.csv", "paired": out / "paired.csv",
                 "per_fold": out / "per_fold.csv", "config": out / "compare_config.json",
                 "history": out / "training_history.csv"}
        write_csv(paths["history"], self.histories)
        write_csv(paths["comparison"], self.summary(), index=True)
        write_csv(paths["paired"], self.paired())
        write_csv(paths["per_fold"], self.per_fold)
        borrowing = self.borrowing()
        if len(borrowing):
            paths["borrowing"] = out / "borrowing.csv"
            write_csv(paths["borrowing"], borrowing)
        for (model, seed), frame in self.predictions.items():
            write_csv(out / "predictions" / f"{file_stem(model)}_seed{seed}.csv", frame, index=True)
        write_json(paths["config"], self.config)
        paths["predictions_dir"] = out / "predictions"
        return paths


def file_stem(name: str) -> str:
    """A model name safe as a file name on every OS (``msrl:shuffled_buffer`` -> ``msrl-shuffled_buffer``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def merge_results(results: list[ComparisonResult], config: dict[str, Any] | None = None) -> ComparisonResult:
    """One result from several (e.g. one generated cohort per seed); seeds must not repeat."""
    if not results:
        raise ValueError("nothing to merge")
    first = results[0]
    preds: dict[tuple[str, int], pd.DataFrame] = {}
    for r in results:
        overlap = set(preds) & set(r.predictions)
        if overlap:
            raise ValueError(f"results share (model, seed) {min(overlap)}")
        preds.update(r.predictions)
    models = list(dict.fromkeys(m for r in results for m in r.models))
    return ComparisonResult(first.task, models, first.reference,
                            pd.concat([r.per_fold for r in results], ignore_index=True), preds,
                            config or first.config, dict(first.examples), first.n_boot,
                            history_frame([r.histories for r in results]))


def history_frame(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenated training histories with the :data:`HISTORY_COLUMNS` (empty when there are none)."""
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True)[HISTORY_COLUMNS] if parts else pd.DataFrame(columns=HISTORY_COLUMNS)


def _tagged_history(history: pd.DataFrame, model: str, seed: int, fold: int) -> pd.DataFrame:
    return history.assign(model=model, seed=seed, fold=fold)


# -- scoring ---------------------------------------------------------------------------------------
def score_predictions(train: Cohort, test: Cohort, predictions: pd.DataFrame,
                      edges: np.ndarray | None = None) -> dict[str, float | str]:
    """Held-out metrics of one fold from predictions alone (no model needed).

    ``edges``: the survival bins the model's curve refers to; when None and the predictions hold a curve,
    they are refitted on ``train`` exactly as :class:`~msrl_plugin.tasks.SurvivalTask` does. With a curve,
    ``eval_times`` (a string, e.g. ``"bin0@8.1; bin1@15.3"``) names the times the IBS and td-AUC used
    (:func:`~msrl_plugin.evaluation.metrics.evaluation_times`).
    """
    pred = predictions.loc[test.case_ids]
    if test.task == SURVIVAL:
        out: dict[str, float | str] = {
            "c_index": concordance_index(test.times(), test.events(), pred["risk"].to_numpy(float))}
        n_bins = sum(c.startswith("survival_bin") for c in pred.columns)
        if edges is None and n_bins:
            edges = fit_bin_edges(train.times(), train.censorship(), n_bins)
        extras = fold_survival_metrics(train.times(), train.events(), test.times(), test.events(), pred, edges)
        if extras is not None:
            out.update(extras.metrics)
            if extras.times is not None:
                out["eval_times"] = extras.times.describe()
        return out
    from ..tasks import ClassificationTask

    return ClassificationTask(test.class_names).evaluate(pred, test)


def _with_targets(pred: pd.DataFrame, cohort: Cohort, fold: Fold, seed: int) -> pd.DataFrame:
    frame = pred.copy()
    frame.insert(0, "seed", seed)
    frame.insert(0, "fold", fold.k)
    cases = cohort.cases.loc[frame.index]
    for col in ("time", "censorship", "label"):
        if col in cases:
            frame[col] = cases[col].to_numpy()
    return frame


def from_cv_results(cohort: Cohort, folds: list[Fold], results: dict[str, Any], seed: int, reference: str,
                    fitted: dict[str, dict[int, Aggregator]] | None = None,
                    config: dict[str, Any] | None = None, n_boot: int = 10_000) -> ComparisonResult:
    """A comparison from finished :func:`~msrl_plugin.evaluation.crossval.cross_validate` runs (one per model) on
    the same ``folds``, without refitting. ``fitted[model][k]`` (e.g. checkpoints loaded back) supplies the
    survival bin edges for the extra metrics and the example models of the report."""
    fitted = fitted or {}
    rows, preds, examples, histories = [], {}, {}, []
    for name, cv in results.items():
        parts = []
        for fold in folds:
            if fold.k in getattr(cv, "histories", {}):
                histories.append(_tagged_history(cv.histories[fold.k], name, seed, fold.k))
            train, test = cohort.subset(fold.train), cohort.subset(fold.test)
            model = fitted.get(name, {}).get(fold.k)
            pred = cv.predictions[fold.k].loc[test.case_ids]
            edges = getattr(getattr(model, "task_", None), "edges", None)
            metrics = score_predictions(train, test, pred, edges)
            rows.append({"model": name, "seed": seed, "fold": fold.k, **metrics})
            parts.append(_with_targets(pred, cohort, fold, seed))
            if model is not None and name not in examples:
                examples[name] = ExampleFit(model, seed, fold)
        preds[(name, seed)] = pd.concat(parts)
    config = config or {"seeds": [seed], "n_folds": len(folds), "selection_rule": SELECTION_RULE}
    return ComparisonResult(cohort.task, list(results), reference, pd.DataFrame(rows), preds, config,
                            examples, n_boot, history_frame(histories))


# -- the comparison --------------------------------------------------------------------------------
def resolve_params(models: list[str], params: dict[str, dict[str, Any]] | None,
                   budget: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per fitted model: its own params plus every budget key it accepts (a conflict is an error)."""
    params = params or {}
    bases = [variant_of(m)[0] if variant_of(m) else m for m in models]
    unknown = sorted(set(params) - set(bases))
    if unknown:
        raise MSRLPluginError(f"parameters given for model(s) {unknown} that are not compared",
                              fix=f"compared models: {', '.join(models)}")
    out = {}
    for base in dict.fromkeys(bases):
        valid = set(get_aggregator_class(base)._get_param_names())
        own = dict(params.get(base, {}))
        for key, value in budget.items():
            if key in own and own[key] != value:
                raise MSRLPluginError(f"model {base!r} sets {key}={own[key]!r} but the shared budget is "
                                      f"{value!r}",
                                      fix="every model gets the same budget; drop the per-model value")
            if key in valid:
                own[key] = value
        out[base] = own
    return out


def compare_models(cohort: Cohort, models: list[str], folds: int | list[Fold], seeds: list[int],
                   params: dict[str, dict[str, Any]] | None = None, reference: str = "abmil",
                   budget: dict[str, Any] | None = None, external: dict[str, ExternalModel] | None = None,
                   n_boot: int = 10_000, out_dir: str | Path | None = None, progress: bool = False,
                   log: Callable[[str], None] = print, borrowing_check: bool = True,
                   epoch_log: Callable[..., Any] | None = None,
                   allow_pool_overlap: bool = False) -> ComparisonResult:
    """Run every model on the same ``(seed, fold)`` pairs and compare them against ``reference``.

    ``folds``: ``k`` (stratified k-fold drawn per seed) or a fixed list of folds used for every seed.
    ``seeds``: model seeds (and fold seeds when ``folds`` is ``k``). ``budget``: keys applied to every model
    that accepts them (default ``max_epochs=20``). ``external``: extra name -> callable models (oracles,
    simple baselines) scored the same way. ``models`` may name post-fit variants (:func:`variant_of`).
    ``borrowing_check``: every model with real genomics in its buffer also runs as its shuffled-buffer
    control (a post-fit copy, no extra training) and :meth:`ComparisonResult.borrowing` reports the effect.
    ``epoch_log(model, seed, fold, validation)``: an ``EpochLog`` per fit (``--log-data``).
    ``allow_pool_overlap``: keep a fold whose test cases are in a model's stage-1 pool (refused otherwise).
    """
    budget = dict(DEFAULT_BUDGET if budget is None else budget)
    external = dict(external or {})
    models = list(dict.fromkeys(models))
    if borrowing_check:
        models += [c for c in borrowing_controls(models) if c not in models]
    names = models + [e for e in external if e not in models]
    if reference not in names:
        raise MSRLPluginError(f"reference model {reference!r} is not among the compared models",
                              fix=f"add it to --models or pick --reference from: {', '.join(names)}")
    if len(names) < 2:
        raise MSRLPluginError("a comparison needs at least two models", fix="pass --models abmil,msrl")
    if not seeds:
        raise MSRLPluginError("no seeds given", fix="pass --seeds 0,1,2")
    registered = [m for m in models if m not in external]
    variants = {m: variant_of(m) for m in registered if variant_of(m)}
    fitted = list(dict.fromkeys(variants[m][0] if m in variants else m for m in registered))
    resolved = resolve_params(registered, params, budget)
    rows, preds, examples, fold_record, histories = [], {}, {}, {}, []
    folds_by_seed = {seed: kfold_splits(cohort, folds, seed) if isinstance(folds, int) else list(folds)
                     for seed in seeds}
    for name in fitted:  # before any fit: no fold's test cases in a stage-1 pool
        check_pool_overlap(name, resolved[name], [f for fs in folds_by_seed.values() for f in fs],
                           allow_pool_overlap)
    for seed in seeds:
        seed_folds = folds_by_seed[seed]
        fold_record[seed] = [{"k": f.k, "source": f.source, "n_train": len(f.train), "test": list(f.test)}
                             for f in seed_folds]
        for fold in seed_folds:
            fold.check(cohort)
            train, test = cohort.subset(fold.train), cohort.subset(fold.test)
            outputs: dict[str, tuple[pd.DataFrame, np.ndarray | None, float, Aggregator | None]] = {}
            for name in fitted:
                model = create_aggregator(name, **{**resolved[name], "seed": seed})
                fit_log = None if epoch_log is None else epoch_log(
                    name, seed, fold, cohort.subset(fold.val) if fold.val else None)
                start = time.perf_counter()
                with attached(model, fit_log):
                    model.fit(train, progress=progress)
                seconds = time.perf_counter() - start
                outputs[name] = (model.predict(test), getattr(model.task_, "edges", None), seconds, model)
                histories.append(_tagged_history(model.training_history(), name, seed, fold.k))
            for name, (base, transform) in variants.items():
                variant = transform(outputs[base][3], seed, train)
                outputs[name] = (variant.predict(test), outputs[base][1], 0.0, variant)
            for name, fn in external.items():
                start = time.perf_counter()
                outputs[name] = (fn(train, test, seed), None, time.perf_counter() - start, None)
            for name in names:
                pred, edges, seconds, model = outputs[name]
                metrics = score_predictions(train, test, pred, edges)
                rows.append({"model": name, "seed": seed, "fold": fold.k, **metrics, "fit_seconds": seconds})
                oof = _with_targets(pred.loc[test.case_ids], cohort, fold, seed)
                preds.setdefault((name, seed), []).append(oof)
                if model is not None and name not in examples:
                    examples[name] = ExampleFit(model, seed, fold)
                log(f"seed {seed} fold {fold.k} {name:<22} " + ", ".join(
                    f"{k}={v:.4f}" for k, v in metrics.items() if not isinstance(v, str) and np.isfinite(v)))
    config = {
        "models": names, "reference": reference, "seeds": list(seeds), "task": cohort.task,
        "budget": budget, "selection_rule": SELECTION_RULE, "params": resolved,
        "model_params": {name: {k: v for k, v in create_aggregator(name, **resolved[name]).get_params().items()
                                if k != "seed"} for name in fitted},  # every value used, defaults included
        "variants": {m: v[0] for m, v in variants.items()}, "external": list(external),
        "folds": "stratified k-fold per seed" if isinstance(folds, int) else "fixed folds for every seed",
        "n_folds": folds if isinstance(folds, int) else len(folds), "fold_cases": fold_record,
        "cohort": {"cases": len(cohort), "feature_dim": cohort.feature_dim,
                   "genomics_dim": cohort.genomics_dim},
        "n_boot": n_boot, "allow_pool_overlap": allow_pool_overlap,
        "pairing": "per (seed, fold); difference = model - reference",
        "tests": "two-sided Wilcoxon signed-rank (scipy, zeros dropped); percentile paired bootstrap 95% CI",
    }
    per_fold = pd.DataFrame(rows)
    predictions = {key: pd.concat(parts) for key, parts in preds.items()}
    result = ComparisonResult(cohort.task, names, reference, per_fold, predictions,
                              json.loads(json.dumps(config, default=str)), examples, n_boot,
                              history_frame(histories))
    if out_dir is not None:
        result.write(out_dir)
    return result
