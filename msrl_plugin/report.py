"""A comparison report: figures from a :class:`~msrl_plugin.compare.ComparisonResult`, an offline HTML page.

Every function that draws returns a :class:`matplotlib.figure.Figure` (no pyplot, no global state);
``write_report`` saves them as PNGs next to ``report.html`` (relative links, no scripts, opens offline).
Degenerate inputs (one risk group, one class, no coords, no MSRL model) give a note, never a crash
(STAMP PR #151).
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import stats
from .atomic import atomic_path, write_text
from .cohort import SURVIVAL, Cohort
from .compare import ComparisonResult, ExampleFit, file_stem

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


def km_figure(result: ComparisonResult, seed: int | None = None) -> Figure:
    """Kaplan-Meier curves of predicted low/high-risk groups (per-fold median split of out-of-fold risk)."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    seed = result.seeds[0] if seed is None else seed
    fig, axes = _grid(len(result.models))
    for ax, model in zip(axes, result.models, strict=True):
        frame = result.predictions[(model, seed)]
        high = _risk_groups(frame)
        t, e = frame["time"].to_numpy(float), 1 - frame["censorship"].to_numpy(int)
        for flag, name, colour in ((False, "low risk", "tab:blue"), (True, "high risk", "tab:red")):
            sel = high == flag
            if sel.any():
                KaplanMeierFitter(label=f"{name} (n={sel.sum()})").fit(t[sel], e[sel]).plot_survival_function(
                    ax=ax, color=colour, ci_show=False)
        if high.all() or not high.any():
            title = f"{model}: one risk group, log-rank n/a"
        else:
            p = logrank_test(t[high], t[~high], e[high], e[~high]).p_value
            title = f"{model}: log-rank p = {p:.3g}" if np.isfinite(p) else f"{model}: log-rank n/a"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("time")
        ax.set_ylabel("survival probability")
        ax.set_ylim(0, 1.02)
    fig.suptitle(f"Kaplan-Meier by predicted risk group (seed {seed}, out-of-fold, median split per fold)")
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
    """One slide's attention heatmap drawn on its patch grid (level-0 coords; patch index grid without)."""
    scores, coords = model.attention_scores(cohort.subset([case_id]))[case_id]
    n = len(scores)
    if coords is None or len(coords) != n:
        side = int(np.ceil(np.sqrt(n)))
        coords, step, unit = np.stack([np.arange(n) % side, np.arange(n) // side], 1), 1, "patch index"
    else:
        coords = np.asarray(coords, dtype=np.int64)
        steps = np.diff(np.unique(coords[:, 0]))
        step, unit = (int(steps[steps > 0].min()) if (steps > 0).any() else 1), "level-0 px"
    origin = coords.min(axis=0)
    cells = (coords - origin) // step
    grid = np.full((int(cells[:, 1].max()) + 1, int(cells[:, 0].max()) + 1), np.nan)
    grid[cells[:, 1], cells[:, 0]] = scores
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.subplots()
    extent = (origin[0], origin[0] + grid.shape[1] * step, origin[1] + grid.shape[0] * step, origin[1])
    image = ax.imshow(grid, cmap="magma", extent=extent, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="attention (softmax over patches)")
    ax.set_xlabel(f"x ({unit})")
    ax.set_ylabel(f"y ({unit})")
    ax.set_title(f"{model.name} attention, case {case_id} ({n} patches)")
    return fig


def _outcome(cohort: Cohort, case_id: str) -> tuple[float, str]:
    row = cohort.cases.loc[case_id]
    if cohort.task == SURVIVAL:
        return float(row["time"]), "censored" if int(row["censorship"]) == 1 else "event"
    return float("nan"), f"label {row['label']}"


def borrowing_figure(model, cohort: Cohort, case_id: str, top: int = 10) -> Figure:
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
        right.set_xlabel("neighbour's survival time")
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


def report_figures(result: ComparisonResult, cohort: Cohort,
                   model_for_examples: str | None = None) -> tuple[dict[str, Figure], dict[str, str]]:
    """``(figures by name, notes by section)``: a note explains every figure that could not be drawn."""
    figs: dict[str, Figure] = {"metric": metric_figure(result)}
    notes: dict[str, str] = {}
    if result.task == SURVIVAL:
        figs["kaplan_meier"] = km_figure(result)
    else:
        figs["roc"] = roc_figure(result)
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
        figs["borrowing"] = borrowing_figure(ex.model, cohort, (no_genomics or test)[0])
    return figs, notes


_CAPTIONS = {
    "metric": "Held-out metric per model: mean over (seed, fold) with a 95% bootstrap CI; dots are single "
              "folds.",
    "kaplan_meier": "Kaplan-Meier curves of the predicted low- and high-risk halves (out-of-fold risk, split "
                    "at each fold's median), with the log-rank p-value.",
    "roc": "Out-of-fold ROC curves (binary: the last class is positive; multi-class: micro-average).",
    "attention": "Attention of one held-out slide drawn at its patch coordinates.",
    "borrowing": "For one held-out case predicted from its WSI alone: the training cases in the buffer it "
                 "borrowed from (edge weights of its learned graph) and their own outcomes.",
}

_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}img{max-width:100%}")
_PAIRED_NOTE = ("Difference = model - reference per (seed, fold); two-sided Wilcoxon signed-rank p; "
                "percentile paired-bootstrap 95% CI. For the integrated Brier score lower is better.")


def write_report(result: ComparisonResult, cohort: Cohort, out_dir: str | Path,
                 model_for_examples: str | None = None) -> Path:
    """Write ``report.html`` and ``figures/*.png`` into ``out_dir``; return the HTML path."""
    out = Path(out_dir)
    figs, notes = report_figures(result, cohort, model_for_examples)
    links = {}
    for name, fig in figs.items():
        rel = f"figures/{file_stem(name)}.png"
        with atomic_path(out / rel, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        links[name] = rel
    cfg = result.config
    esc = html.escape
    setup = (f"Task: {result.task}. Models: {', '.join(result.models)}. Reference: {result.reference}. "
             f"Seeds: {result.seeds}; folds: {cfg.get('folds')} ({cfg.get('n_folds')}). "
             f"Budget: {cfg.get('budget')}. Model selection: {cfg.get('selection_rule')}.")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>msrl-plugin comparison</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Model comparison</h1>",
        f"<p>{esc(setup)}</p>",
        "<h2>Summary (mean +- sd over seed x fold)</h2>", result.table().to_html(escape=True),
        f"<h2>Paired differences vs {esc(result.reference)}</h2>",
        f"<p>{esc(_PAIRED_NOTE)}</p>",
        result.paired().to_html(escape=True, index=False, float_format=lambda v: f"{v:.4g}"),
    ]
    for name in ("metric", "kaplan_meier", "roc", "attention", "borrowing"):
        if name in links:
            parts.append(f"<h2>{esc(name.replace('_', ' ').title())}</h2><p>{esc(_CAPTIONS[name])}</p>"
                         f"<img src='{esc(links[name])}' alt='{esc(name)}'>")
        elif name in notes:
            parts.append(f"<h2>{esc(name.title())}</h2><p><i>{esc(notes[name])}</i></p>")
    parts.append("</body></html>\n")
    path = out / "report.html"
    write_text(path, "\n".join(parts))
    return path
