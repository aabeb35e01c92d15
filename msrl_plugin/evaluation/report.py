"""A comparison report: figures from a :class:`~msrl_plugin.evaluation.compare.ComparisonResult`, an offline HTML page.

Every function that draws returns a :class:`matplotlib.figure.Figure` (no pyplot, no global state).
``write_report`` embeds them in ``report.html`` as base64 PNGs (one self-contained file, no scripts, no
external references: it can be mailed) and also saves them under ``figures/`` for slides and papers.
Degenerate inputs (one risk group, one class, no coords, no MSRL model) give a note, never a crash
(STAMP PR #151).
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..atomic import atomic_path, write_text
from ..cohort import SURVIVAL, Cohort
from ..errors import MSRLPluginError
from ..heatmap import SlideAttention, draw_attention, infer_patch_size
from . import stats
from .compare import ComparisonResult, ExampleFit, file_stem
from .metrics import EVALUATION_TIMES_RULE

METRIC_LABELS = {"c_index": "c-index", "auc": "AUC", "c_index_ipcw": "IPCW c-index",
                 "ibs": "integrated Brier", "td_auc": "time-dependent AUC",
                 "balanced_accuracy": "balanced accuracy"}


def _grid(n: int, width: float = 4.2, height: float = 3.6, max_cols: int = 4) -> tuple[Figure, list]:
    cols = max(1, min(n, max_cols))
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


# -- model-level figures ---------------------------------------------------------------------------
def metric_figure(result: ComparisonResult, metric: str | None = None) -> Figure:
    """Mean of ``metric`` per model with its bootstrap 95% CI, and every (seed, fold) value as a dot."""
    metric = metric or result.primary_metric
    table = stats.mean_ci_table(result.per_fold, metric, min(result.n_boot, 5000))
    fig = Figure(figsize=(max(5.0, 1.1 * len(table) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(table))
    lo = (table["mean"] - table["ci_low"]).clip(lower=0).fillna(0)
    hi = (table["ci_high"] - table["mean"]).clip(lower=0).fillna(0)
    ax.errorbar(x, table["mean"], yerr=[lo, hi], fmt="o", color="black", capsize=5, label="mean, 95% CI")
    rng = np.random.default_rng(0)
    for i, model in enumerate(table["model"]):
        v = result.per_fold.loc[result.per_fold["model"] == model, metric].to_numpy(float)
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=12, alpha=0.5, color="tab:blue",
                   label="one (seed, fold)" if i == 0 else None)
    if metric in ("c_index", "auc", "c_index_ipcw", "td_auc"):
        ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
    ax.set_xticks(x, table["model"], rotation=30, ha="right")
    ax.set_xlabel("model")
    ax.set_ylabel(f"held-out {METRIC_LABELS.get(metric, metric)}")
    ax.set_title(f"{METRIC_LABELS.get(metric, metric)} per model ({len(result.seeds)} seed(s) x folds)")
    ax.legend(fontsize=8)
    return fig


def _risk_groups(frame: pd.DataFrame) -> np.ndarray:
    """High-risk flag: risk above the median of its own fold (fold models' risk scales differ)."""
    high = np.zeros(len(frame), dtype=bool)
    for idx in frame.groupby("fold").indices.values():
        r = frame["risk"].to_numpy(float)[idx]
        high[idx] = r > np.median(r)
    return high


def time_unit_from_column(column: str | None) -> str | None:
    """``survival_months`` -> ``months`` (days, weeks, years likewise); None when the name does not say."""
    name = (column or "").lower()
    for unit in ("days", "weeks", "months", "years"):
        if unit[:-1] in name:
            return unit
    return None


def km_figure(result: ComparisonResult, seed: int | None = None, time_unit: str | None = None) -> Figure:
    """Kaplan-Meier curves of predicted low/high-risk groups (per-fold median split of out-of-fold risk):
    95% confidence bands, censoring ticks and a number-at-risk table (at risk, censored, events) per panel."""
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts
    from lifelines.statistics import logrank_test

    seed = result.seeds[0] if seed is None else seed
    cols = min(2, len(result.models))
    rows = int(np.ceil(len(result.models) / cols))
    fig = Figure(figsize=(6.4 * cols, 5.6 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    fig.subplots_adjust(left=0.2 / cols, right=1 - 0.04 / cols, top=1 - 0.85 / (5.6 * rows),
                        bottom=1.45 / (5.6 * rows), wspace=0.45, hspace=0.8)
    for ax in axes[len(result.models):]:
        ax.set_visible(False)
    unit = f"time ({time_unit})" if time_unit else "time (unit not recorded)"
    for ax, model in zip(axes, result.models):
        frame = result.predictions[(model, seed)]
        high = _risk_groups(frame)
        t, e = frame["time"].to_numpy(float), 1 - frame["censorship"].to_numpy(int)
        fitters = []
        for flag, name, colour in ((False, "low risk", "tab:blue"), (True, "high risk", "tab:red")):
            sel = high == flag
            if sel.any():
                km = KaplanMeierFitter(label=f"{name} (n={sel.sum()})").fit(t[sel], e[sel])
                km.plot_survival_function(ax=ax, color=colour, ci_show=True, ci_alpha=0.15, show_censors=True,
                                          censor_styles={"marker": "|", "ms": 7, "mew": 1})
                fitters.append(km)
        if high.all() or not high.any():
            title = f"{model}: one risk group, log-rank n/a"
        else:
            p = logrank_test(t[high], t[~high], e[high], e[~high]).p_value
            title = f"{model}: log-rank p = {p:.3g}" if np.isfinite(p) else f"{model}: log-rank n/a"
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("survival probability")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(left=0)
        ax.legend(fontsize=8, loc="lower left", title="| = censored", title_fontsize=8)
        add_at_risk_counts(*fitters, ax=ax, fig=fig, ypos=-0.45)
        ax.set_xlabel(unit)
    fig.suptitle(f"Kaplan-Meier by predicted risk group (seed {seed}, out-of-fold, median split per fold; "
                 f"shaded: 95% CI)", fontsize=11)
    return fig


def roc_figure(result: ComparisonResult, seed: int | None = None) -> Figure:
    """Out-of-fold ROC curve per model (binary: last class positive; multi-class: micro-average)."""
    from sklearn.metrics import auc, roc_curve

    seed = result.seeds[0] if seed is None else seed
    fig = Figure(figsize=(5.2, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="chance")
    for model in result.models:
        frame = result.predictions[(model, seed)]
        classes = [c[len("prob_"):] for c in frame.columns if c.startswith("prob_")]
        y = frame["label"].astype(str).to_numpy()
        if len(set(y)) < 2 or not classes:
            continue
        probs = frame[[f"prob_{c}" for c in classes]].to_numpy(float)
        if len(classes) == 2:
            truth, score = (y == classes[1]).astype(int), probs[:, 1]
        else:
            truth = (y[:, None] == np.array(classes)[None, :]).astype(int).ravel()
            score = probs.ravel()
        fpr, tpr, _ = roc_curve(truth, score)
        ax.plot(fpr, tpr, label=f"{model} (AUC {auc(fpr, tpr):.3f})")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC, out-of-fold (seed {seed})")
    ax.legend(fontsize=8, loc="lower right")
    return fig


# -- case-level figures ----------------------------------------------------------------------------
def attention_figure(model, cohort: Cohort, case_id: str) -> Figure:
    """One slide's attention drawn as ``msrl-plugin heatmap`` draws it: percentile within the slide on a
    diverging map, at the patch coordinates (level-0 px; a patch-index grid when the bag has no coords)."""
    scores, coords = model.attention_scores(cohort.subset([case_id]))[case_id]
    n = len(scores)
    unit = "level-0 pixels"
    if coords is None or len(coords) != n:
        side = int(np.ceil(np.sqrt(n)))
        coords, unit = np.stack([np.arange(n) % side, np.arange(n) // side], 1), "patch index"
    coords = np.rint(np.asarray(coords)).astype(np.int64)
    try:
        patch = 1 if unit == "patch index" else infer_patch_size(coords)
    except MSRLPluginError:  # a single patch position
        patch = 1
    att = SlideAttention(case_id, np.asarray(scores, np.float32), coords - coords.min(axis=0), patch, model.name)
    width, height = att.level0_size()
    fig = Figure(figsize=(6.4, max(3.0, 5.6 * height / max(width, 1))))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw_attention(ax, att, unit=unit + (" from the tissue's corner" if unit != "patch index" else ""))
    ax.set_title(f"{model.name} attention, case {case_id} ({n} patches)", fontsize=10)
    return fig


def loss_figure(histories: pd.DataFrame) -> Figure:
    """Mean training loss per epoch, one panel per model and stage (MSRL's pre-training apart): every
    fold's curve thin, their mean thick."""
    panels = list(dict.fromkeys(zip(histories["model"], histories["stage"])))
    fig, axes = _grid(len(panels), width=4.4, height=3.4, max_cols=3)
    for ax, (model, stage) in zip(axes, panels):
        part = histories[(histories["model"] == model) & (histories["stage"] == stage)]
        for _, run in part.groupby(["seed", "fold"]):
            ax.plot(run["epoch"], run["loss"], color="tab:grey", lw=0.8, alpha=0.6)
        mean = part.groupby("epoch")["loss"].mean()
        ax.plot(mean.index, mean.to_numpy(), color="tab:blue" if stage == "training" else "tab:green", lw=2,
                label=f"mean of {part.groupby(['seed', 'fold']).ngroups} fold fit(s)")
        ax.set_title(f"{model}: {'GSL pre-training' if stage == 'pre-training' else 'training'} loss",
                     fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("mean loss per epoch")
        ax.legend(fontsize=8)
    return fig


def _outcome(cohort: Cohort, case_id: str) -> tuple[float, str]:
    row = cohort.cases.loc[case_id]
    if cohort.task == SURVIVAL:
        return float(row["time"]), "censored" if int(row["censorship"]) == 1 else "event"
    return float("nan"), f"label {row['label']}"


def borrowing_figure(model, cohort: Cohort, case_id: str, top: int = 10, time_unit: str | None = None) -> Figure:
    """The training (buffer) cases a WSI-only case borrowed from: edge weights and their own outcomes."""
    nb = model.buffer_neighbours(cohort.subset([case_id]), top=top)
    fig = Figure(figsize=(10.0, 0.35 * max(len(nb), 4) + 1.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    ids = nb["neighbour_case_id"].astype(str).tolist()[::-1]
    y = np.arange(len(ids))
    left.barh(y, nb["edge_weight"].to_numpy(float)[::-1], color="tab:purple")
    left.set_yticks(y, ids)
    left.set_xlabel("edge weight (learned graph, row-normalised)")
    left.set_ylabel("training case in the buffer")
    left.set_title(f"case {case_id} (WSI only) borrowed from")
    own_t, own_status = _outcome(cohort, case_id)
    outcomes = [_outcome(cohort, c) if c in cohort.cases.index else (float("nan"), "?") for c in ids]
    if cohort.task == SURVIVAL:
        colours = ["tab:red" if s == "event" else "tab:grey" for _, s in outcomes]
        right.barh(y, [t for t, _ in outcomes], color=colours)
        right.axvline(own_t, color="black", ls="--", lw=1,
                      label=f"case {case_id}: {own_t:.1f} ({own_status})")
        right.plot([], [], color="tab:red", lw=6, label="neighbour: event")
        right.plot([], [], color="tab:grey", lw=6, label="neighbour: censored")
        right.legend(fontsize=8)
        right.set_xlabel(f"neighbour's survival time ({time_unit or 'unit not recorded'})")
    else:
        right.barh(y, np.ones(len(y)), color="tab:grey")
        for yi, (_, s) in zip(y, outcomes, strict=True):
            right.text(0.5, yi, s, ha="center", va="center")
        right.set_xlabel(f"neighbour's label (case {case_id}: {own_status})")
    right.set_yticks(y, ids)
    right.set_ylabel("training case in the buffer")
    right.set_title("their own outcomes")
    return fig


# -- assembling ------------------------------------------------------------------------------------
def _example(result: ComparisonResult, preferred: str | None, need: str,
             avoid_genomics_at_test: bool = False) -> tuple[str, ExampleFit] | None:
    """The example fit to draw from: ``preferred`` if it has method ``need``, else the first that does."""
    names = ([preferred] if preferred else []) + [m for m in result.models if m != result.reference] + [
        result.reference]
    for name in dict.fromkeys(names):
        ex = result.examples.get(name)
        if ex is not None and hasattr(ex.model, need):
            if avoid_genomics_at_test and getattr(ex.model, "genomics_at_test", False) and name != preferred:
                continue
            return name, ex
    return None


def report_figures(result: ComparisonResult, cohort: Cohort, model_for_examples: str | None = None,
                   time_unit: str | None = None) -> tuple[dict[str, Figure], dict[str, str]]:
    """``(figures by name, notes by section)``: a note explains every figure that could not be drawn."""
    figs: dict[str, Figure] = {"metric": metric_figure(result)}
    notes: dict[str, str] = {}
    if result.task == SURVIVAL:
        figs["kaplan_meier"] = km_figure(result, time_unit=time_unit)
    else:
        figs["roc"] = roc_figure(result)
    if len(result.histories):
        figs["training_loss"] = loss_figure(result.histories)
    else:
        notes["training_loss"] = "no per-epoch losses were recorded for these fits"
    picked = _example(result, model_for_examples, "attention_scores")
    if picked is None:
        notes["attention"] = "no fitted attention model was kept (attention heatmap skipped)"
    else:
        _, ex = picked
        figs["attention"] = attention_figure(ex.model, cohort, str(ex.fold.test[0]))
    picked = _example(result, model_for_examples, "buffer_neighbours", avoid_genomics_at_test=True)
    if picked is None:
        notes["borrowing"] = "no MSRL model in this comparison (no buffer to borrow from)"
    else:
        _, ex = picked
        test = [str(c) for c in ex.fold.test]
        no_genomics = [c for c, has in zip(test, cohort.subset(test).has_genomics, strict=True) if not has]
        figs["borrowing"] = borrowing_figure(ex.model, cohort, (no_genomics or test)[0], time_unit=time_unit)
    return figs, notes


SECTIONS = {"metric": "Held-out metric per model", "kaplan_meier": "Kaplan-Meier by predicted risk group",
            "roc": "ROC curves", "training_loss": "Training loss", "attention": "Attention heatmap",
            "borrowing": "What a WSI-only case borrowed"}
_CAPTIONS = {
    "metric": "Held-out metric per model: mean over (seed, fold) with a 95% bootstrap CI; dots are single "
              "folds.",
    "kaplan_meier": "Kaplan-Meier curves of the predicted low- and high-risk halves (out-of-fold risk, split "
                    "at each fold's median) with 95% confidence bands, censoring ticks, the log-rank p-value "
                    "and, below each panel, the number at risk, censored and with an event at each time.",
    "roc": "Out-of-fold ROC curves (binary: the last class is positive; multi-class: micro-average).",
    "training_loss": "Mean loss per training epoch of every fold's fit (grey) and their mean. Each model's loss "
                     "is its own objective (MSRL's adds the alignment terms to the task loss, and its GSL "
                     "pre-training is a contrastive loss), so compare shapes, not levels, across panels.",
    "attention": "Attention of one held-out slide, drawn as msrl-plugin heatmap draws it: each patch coloured "
                 "by its attention's percentile within the slide (blue low, red high; white: no patch).",
    "borrowing": "For one held-out case predicted from its WSI alone: the training cases in the buffer it "
                 "borrowed from (edge weights of its learned graph) and their own outcomes.",
}

_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:3px 7px;text-align:right}th{background:#f3f3f3}img{max-width:100%}"
        ".note{background:#fff4d6;border-left:4px solid #e0a800;padding:.4em .8em}")
_PAIRED_NOTE = ("Difference = model - reference per (seed, fold); two-sided Wilcoxon signed-rank p; "
                "percentile paired-bootstrap 95% CI. For the integrated Brier score lower is better.")


def evaluation_times_table(result: ComparisonResult) -> pd.DataFrame | None:
    """Where each (seed, fold)'s IBS and td-AUC were evaluated: ``seed, fold, evaluation times, models``
    (``bin<j>@t``: column ``survival_bin<j>`` read at time t); None without survival curves."""
    per_fold = result.per_fold
    if "eval_times" not in per_fold or per_fold["eval_times"].isna().all():
        return None
    rows = []
    for (seed, fold), part in per_fold.groupby(["seed", "fold"], sort=True):
        for times, same in part.dropna(subset=["eval_times"]).groupby("eval_times", sort=False):
            rows.append({"seed": seed, "fold": fold, "evaluation times": times or "none usable",
                         "models": "all" if len(same) == len(part) else ", ".join(same["model"])})
    return pd.DataFrame(rows)


def _png_data_uri(fig: Figure) -> tuple[str, bytes]:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), data


def _settings(values: Any) -> str:
    """``{"max_epochs": 20, "lr": 0.001}`` -> ``max_epochs=20, lr=0.001`` (nested: ``model: ...; ...``)."""
    if isinstance(values, dict):
        if values and all(isinstance(v, dict) for v in values.values()):
            return "; ".join(f"{k}: {_settings(v) or 'defaults'}" for k, v in values.items())
        return ", ".join(f"{k}={v}" for k, v in values.items())
    return "" if values is None else str(values)


def _table_html(frame: pd.DataFrame, **kwargs) -> str:
    """A table with its index as an ordinary first column (no empty header row)."""
    if frame.index.name is not None or not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()
    return frame.to_html(index=False, escape=True, border=0, na_rep="", **kwargs)


def write_report(result: ComparisonResult, cohort: Cohort, out_dir: str | Path,
                 model_for_examples: str | None = None, time_unit: str | None = None) -> Path:
    """Write the self-contained ``report.html`` (and ``figures/*.png``) into ``out_dir``; return its path.

    ``time_unit``: the unit of the survival times (e.g. ``months``), shown on the Kaplan-Meier axes.
    """
    out = Path(out_dir)
    figs, notes = report_figures(result, cohort, model_for_examples, time_unit)
    images = {}
    for name, fig in figs.items():
        images[name], data = _png_data_uri(fig)
        with atomic_path(out / "figures" / f"{file_stem(name)}.png", suffix=".png") as tmp:
            tmp.write_bytes(data)
    cfg = result.config
    esc = html.escape
    folds = cfg.get("folds")
    setup = [f"Task: {result.task}; {len(cohort)} cases. Models: {', '.join(result.models)}; reference: "
             f"{result.reference}.",
             f"Seeds: {', '.join(map(str, result.seeds))}; folds: {folds} ({cfg.get('n_folds')} per seed).",
             f"Budget (the same for every model): {_settings(cfg.get('budget')) or 'not recorded'}.",
             f"Model selection: {cfg.get('selection_rule', 'not recorded')}."]
    if cfg.get("cohort") and isinstance(cfg["cohort"], str):
        setup.append(f"Cohort: {cfg['cohort']}.")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>msrl-plugin comparison</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Model comparison</h1>",
        "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in setup) + "</ul>",
    ]
    if isinstance(cfg.get("params"), dict):
        params = pd.DataFrame({"model": list(cfg["params"]),
                               "parameters set for this comparison": [_settings(v) or "defaults"
                                                                      for v in cfg["params"].values()]})
        parts += ["<h2>Settings per model</h2>", _table_html(params)]
    paired = result.paired()
    parts += ["<h2>Summary (mean +- sd over seed x fold)</h2>", _table_html(result.table()),
              f"<h2>Paired differences vs {esc(result.reference)}</h2>", f"<p>{esc(_PAIRED_NOTE)}</p>"]
    primary = paired[paired["metric"] == result.primary_metric]  # the other metrics' n_pairs are in the table
    primary = primary if len(primary) else paired
    note = stats.too_few_pairs_note(int(primary["n_pairs"].min())) if len(primary) else None
    if note:
        parts.append(f"<p class='note'>{esc(note)}</p>")
    parts.append(_table_html(paired, float_format=lambda v: f"{v:.4g}"))
    times = evaluation_times_table(result)
    if times is not None:
        unit = f" Times in {time_unit}." if time_unit else ""
        parts += ["<h2>Evaluation times of the time-dependent metrics</h2>",
                  f"<p>{esc(EVALUATION_TIMES_RULE + unit)}</p>",
                  _table_html(times)]
    for name in ("metric", "kaplan_meier", "roc", "training_loss", "attention", "borrowing"):
        if name in images:
            parts.append(f"<h2>{esc(SECTIONS[name])}</h2><p>{esc(_CAPTIONS[name])}</p>"
                         f"<img src='{images[name]}' alt='{esc(SECTIONS[name])}'>")
        elif name in notes:
            parts.append(f"<h2>{esc(SECTIONS[name])}</h2><p><i>{esc(notes[name])}</i></p>")
    parts.append("</body></html>\n")
    path = out / "report.html"
    write_text(path, "\n".join(parts))
    return path
