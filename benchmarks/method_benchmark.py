"""The method benchmark of ``shared/benchmark.md``: does MSRL beat a strong ABMIL, and for the right reason?

For every grid point (generator knobs) and seed, one semi-synthetic cohort is generated in memory and every
method runs on its folds (site-held-out by default) with the same epoch budget (``msrl_plugin.evaluation.compare``).
Paired statistics are over (seed, fold); then the expected orderings are checked one by one.

Methods, in the protocol's order (those not registered yet are skipped with a note):

- ``oracle``: the teacher's true log-hazard eta itself (no fitting): the ranking of the Bayes predictor that
  sees all 16 latent components. ``wsi_oracle``: E[eta | WSI latent], the best any WSI-only model can do.
- ``fusion`` (late fusion, WSI + genomics at test), ``msrl_multi``, ``msrl`` (WSI-only inference),
  ``recon_fusion`` and ``cvae_fusion`` (generated genomics), ``msrl_knn_cosine`` (static graph), ``abmil``.
- ``genomics_cox``: genomics-only reference, ridge Cox on 10 PCA components of the training genomics.
- ``msrl_shuffled_buffer``: the fitted ``msrl`` of the same fold with its buffer's genomic half permuted
  across rows before predicting (control: a real win must vanish).
- Any other registered name runs too, e.g. ``--methods abmil,msrl,msrl_paper,msrl_paper_random_gsl``.

Usage::

    python benchmarks/method_benchmark.py --tier test              # ~8 CPU-minutes (2 cores), machinery only
    python benchmarks/method_benchmark.py --tier quick --default-only --methods abmil,msrl,msrl_shuffled_buffer
                                                                   # iteration: ~15 min, tuning seeds 0-4
    python benchmarks/method_benchmark.py --tier full --grid efficiency --out bench_eff   # n_train 100/200/400
    python benchmarks/method_benchmark.py --tier small --default-only --out bench_small  # 120 cases, 10 seeds
    python benchmarks/method_benchmark.py --tier full --out bench   # every grid point, fresh seeds 100-109
    python benchmarks/method_benchmark.py --tier real --seeds 200 --out bench_real \
        --methods abmil,msrl,msrl_shuffled_buffer,msrl_label_only,fusion,genomics_cox
                      # real expression + real survival (SurvSet chop, DLBCL, DBCD, dataOvarian1), one seed
    python benchmarks/method_benchmark.py --tier real_smoke --methods abmil,msrl,msrl_label_only,genomics_cox
    # train small, test big (external cohorts, pan-cancer pool, two signal models): external_benchmark.py
    python benchmarks/method_benchmark.py --tier full --default-only --out bench_default  # the closing table
    # what fits 2 CPU cores in ~1.5 h: a patch cap for every model, 30 GSL pre-training epochs; run two
    # processes with disjoint --seeds into the same --out, then once more with all seeds to print the tables
    python benchmarks/method_benchmark.py --tier full --default-only --seeds 100,102,104,106,108 \
        --budget max_patches=128 --msrl-param pretrain_epochs=30 --out bench_default

MSRL's GSL pre-training epochs come on top of the shared fine-tuning budget (it is part of the method);
every other setting is the model's default, identical across grid points.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msrl_plugin.atomic import write_csv, write_json
from msrl_plugin.cohort import Cohort
from msrl_plugin.evaluation import stats
from msrl_plugin.evaluation.compare import ComparisonResult, compare_models, merge_results
from msrl_plugin.evaluation.splits import Fold
from msrl_plugin.evaluation.variants import variant_of
from msrl_plugin.registry import list_aggregators
from msrl_plugin.synth import CohortConfig, SynthCohort, generate_cohort

ORDER = ["oracle", "wsi_oracle", "fusion", "msrl_multi", "genomics_cox", "msrl", "recon_fusion",
         "cvae_fusion", "msrl_knn_cosine", "abmil", "msrl_shuffled_buffer"]
EXTERNAL = ("oracle", "wsi_oracle", "genomics_cox")
MSRL_FAMILY = ("msrl", "msrl_multi", "msrl_knn_cosine", "msrl_knn_euclidean", "msrl_h", "msrl_random_gsl",
               "msrl_label_only")

#: (relation, A, B, what it tests); relations: ">" A beats B, ">=" A not worse than B, "~" A ties B
ORDERINGS = [
    (">=", "oracle", "msrl_multi", "nothing beats the true risk"),
    (">=", "msrl_multi", "msrl", "genomics at test time help (more with w_hidden)"),
    (">=", "fusion", "msrl", "late fusion with real genomics is an upper reference"),
    (">", "msrl", "abmil", "MSRL (WSI-only inference) beats a strong ABMIL: the claim"),
    (">=", "msrl", "recon_fusion", "real buffer >= generated genomics (G-HANet-style)"),
    (">=", "msrl", "cvae_fusion", "real buffer >= generated genomics (LD-CVAE-style)"),
    (">=", "msrl", "msrl_knn_cosine", "learned graph >= static kNN graph"),
    (">", "msrl", "msrl_shuffled_buffer", "shuffling the buffer's genomics hurts MSRL"),
    ("~", "msrl_shuffled_buffer", "abmil", "shuffled buffer drops MSRL to ABMIL level"),
    (">", "msrl", "msrl_label_only", "the buffer lends more than its cases' observed outcomes"),
]

#: [B] every model that takes ``precision`` trains in fp32, so a table does not depend on the CPU's bf16 support or
#: on a timing probe under load (``precision="auto"``, the library default); ``--budget precision=auto`` restores it
REPRODUCIBLE = {"precision": "fp32"}

#: named grids (``--grid NAME``) over one knob; n_cases with leave-one-of-4-sites-out folds gives n_train ~ 3/4
GRIDS: dict[str, list[dict[str, Any]]] = {
    "efficiency": [{"n_cases": 133}, {"n_cases": 267}, {"n_cases": 533}],  # n_train ~ 100 / 200 / 400
    "w_hidden": [{"w_hidden": w} for w in (0.0, 0.5, 1.0, 2.0)],
}

#: SurvSet expression sets with their real outcome (rows after cleaning; time in months; zero times floored at one
#: day; dataOvarian1's four studies are its sites, the others get 4 random sites)
REAL_SETS = {"chop": 414, "DLBCL": 240, "DBCD": 295, "dataOvarian1": 912}
REAL_GRID = [{"genomics_source": f"survset:{name}", "outcome": "real", "n_cases": n, "site_held_out": False,
              "k_folds": 5} for name, n in REAL_SETS.items()]

TIERS: dict[str, dict[str, Any]] = {
    # iteration tier (~15 min on 2 cores for abmil, msrl and its control): 200 cases of the test-tier sizes,
    # tuning seeds 0-4 only; what it suggests is confirmed on the full tier's report seeds
    "quick": {"base": lambda **kw: CohortConfig.test_tier(**{"n_cases": 200, **kw}), "grid": [{}, {"rho": 0.0}],
              "seeds": list(range(5)), "budget": {"max_epochs": 20, "max_patches": 128},
              "msrl": {"pretrain_epochs": 30, "embed_dim": 64}},
    # the test tier checks the machinery (minutes on 2 cores); its numbers are not evidence
    "test": {"base": lambda **kw: CohortConfig.test_tier(**{"n_cases": 96, "bag_max": 64, **kw}),
             "grid": [{}, {"rho": 0.0}], "seeds": [0, 1],
             "budget": {"max_epochs": 5}, "msrl": {"pretrain_epochs": 5, "embed_dim": 64}},
    # small cohorts with the full budget: evidence at 120 cases (fresh seeds), affordable on 2 cores
    "small": {"base": CohortConfig.test_tier, "grid": [{}, {"rho": 0.0}], "seeds": list(range(100, 110)),
              "budget": {"max_epochs": 20}, "msrl": {"pretrain_epochs": 30, "embed_dim": 64}},
    # real expression with its real survival (issue 20): only the slides are synthesised; no external set is
    # possible (a few hundred cases), so each seed repeats stratified 5-fold CV with fresh slides and folds;
    # its report seeds are the external benchmark's (200-209, fixed before either tier was read)
    "real": {"base": CohortConfig.test_tier, "grid": REAL_GRID, "seeds": list(range(200, 210)),
             "budget": {"max_epochs": 20, "max_patches": 128}, "msrl": {"pretrain_epochs": 30, "embed_dim": 64}},
    "real_smoke": {"base": lambda **kw: CohortConfig.test_tier(**{"bag_min": 8, "bag_max": 24, "feature_dim": 32,
                                                                  "d_g": 16, **kw}),
                   "grid": REAL_GRID[:1], "seeds": [0], "budget": {"max_epochs": 2},
                   "msrl": {"pretrain_epochs": 2, "embed_dim": 32, "genomic_teacher_steps": 20}},
    "full": {"base": CohortConfig.benchmark_tier,
             "grid": [{}, {"rho": 0.0}, {"n_cases": 200}, {"n_cases": 800}, {"w_hidden": 2.0},
                      {"sigma_site": 1.5}, {"genomics_distribution": "gaussian_surrogate"}],
             "seeds": list(range(100, 110)), "budget": {"max_epochs": 20}, "msrl": {}},
}


# -- external (non-registered) methods ---------------------------------------------------------
def truth_model(synth: SynthCohort, column: str) -> Callable[[Cohort, Cohort, int], pd.DataFrame]:
    """The generator's own risk (``eta`` or ``eta_wsi``) for the test cases: a ranking, not a fitted model."""
    series = getattr(synth.truth, column)

    def predict(train: Cohort, test: Cohort, seed: int) -> pd.DataFrame:
        return pd.DataFrame({"risk": series.loc[test.case_ids].to_numpy()},
                            index=pd.Index(test.case_ids, name="case_id"))

    return predict


def genomics_cox(train: Cohort, test: Cohort, seed: int, n_components: int = 10,
                 penalizer: float = 0.1) -> pd.DataFrame:
    """Genomics-only ridge Cox on PCA components (training cases with genomics only; others: median risk)."""
    from lifelines import CoxPHFitter
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x, has = train.genomics_matrix()
    scaler = StandardScaler().fit(x[has])
    x_train = scaler.transform(x[has])
    pca = PCA(min(n_components, x.shape[1], int(has.sum()) - 1), random_state=seed).fit(x_train)
    cols = [f"pc{j}" for j in range(pca.n_components_)]
    frame = pd.DataFrame(pca.transform(x_train), columns=cols)
    frame["time"], frame["event"] = train.times()[has], train.events()[has]
    cph = CoxPHFitter(penalizer=penalizer).fit(frame, "time", "event")
    xt, has_t = test.genomics_matrix()
    risk = np.full(len(test), np.nan)
    if has_t.any():
        z = pd.DataFrame(pca.transform(scaler.transform(xt[has_t])), columns=cols)
        risk[has_t] = cph.predict_log_partial_hazard(z).to_numpy()
    risk[~has_t] = np.nanmedian(risk) if has_t.any() else 0.0
    return pd.DataFrame({"risk": risk}, index=pd.Index(test.case_ids, name="case_id"))


# -- running -----------------------------------------------------------------------------------
def available_methods(requested: list[str], log=print) -> list[str]:
    registered = set(list_aggregators())
    keep = []
    for name in requested:
        base = (variant_of(name) or (name,))[0]
        if name in EXTERNAL or base in registered:
            keep.append(name)
        else:
            log(f"note: {name!r} is not registered in this install; skipped")
    return keep


def run_grid_point(knobs: dict[str, Any], tier: dict[str, Any], seeds: list[int], methods: list[str],
                   n_boot: int, log=print, seed_dir: Path | None = None) -> ComparisonResult:
    """Every method on every seed's cohort. With ``seed_dir`` each finished seed's per-fold rows are written
    there at once, and seeds already written are read back instead of rerun (resume; parallel processes
    may share the folder with disjoint seeds)."""
    config = tier["base"](**knobs)
    if config.outcome == "real":  # no true risk to rank by
        methods = [m for m in methods if m not in ("oracle", "wsi_oracle")]
    registered = [m for m in methods if m not in EXTERNAL]
    params = {(variant_of(m) or (m,))[0]: dict(tier["msrl"]) for m in registered
              if (variant_of(m) or (m,))[0] in MSRL_FAMILY}
    if "abmil" in registered and tier.get("abmil"):
        params["abmil"] = dict(tier["abmil"])
    # the table's reference: ABMIL where it runs, else the first method named (e.g. transmil against MSRL on it)
    table_reference = "abmil" if "abmil" in methods else methods[0]
    results = []
    for seed in seeds:
        done = None if seed_dir is None else seed_dir / f"seed_{seed}.csv"
        kept = pd.read_csv(done) if done is not None and done.exists() else pd.DataFrame({"model": []})
        kept = kept[kept["model"].isin(methods)]
        todo = [m for m in methods if m not in set(kept["model"])]
        if not todo:
            log(f"  seed {seed}: read back from {done}")
            results.append(ComparisonResult(config.task, list(dict.fromkeys(kept["model"])), table_reference, kept,
                                            {}, {}, n_boot=n_boot))
            continue
        if len(kept):
            log(f"  seed {seed}: {sorted(set(kept['model']))} read back from {done}; running {todo}")
        synth = generate_cohort(config, seed)
        cohort = synth.to_cohort()
        folds = [Fold(k, list(tr), list(te), source=f"generator folds (seed {seed})")
                 for k, (tr, te) in enumerate(synth.folds)]
        external = {"oracle": truth_model(synth, "eta"), "wsi_oracle": truth_model(synth, "eta_wsi"),
                    "genomics_cox": genomics_cox}
        external = {k: v for k, v in external.items() if k in todo}
        todo_registered = [m for m in registered if m in todo]
        reference = "abmil" if "abmil" in todo else (todo_registered + list(external))[0]
        oracle = ("real outcome" if synth.truth.eta is None else f"oracle {synth.truth.oracle_cindex:.3f}, "
                  f"WSI oracle {synth.truth.wsi_oracle_cindex:.3f}")
        log(f"  seed {seed}: {synth} ({oracle})")
        result = compare_models(cohort, todo_registered, folds, [seed], params, reference, tier["budget"],
                                external=external, n_boot=n_boot, log=lambda _m: None)
        if synth.truth.eta is not None:
            add_truth_correlation(result, synth.truth.eta)
        fresh = result.per_fold[result.per_fold["model"].isin(todo)]
        result.per_fold = pd.concat([kept, fresh], ignore_index=True) if len(kept) else fresh
        result.models = list(dict.fromkeys(result.per_fold["model"]))
        if done is not None:
            write_csv(done, result.per_fold)
        results.append(result)
    merged = merge_results(results)
    merged.reference = table_reference
    merged.models = [m for m in ORDER if m in merged.models] + [m for m in merged.models if m not in ORDER]
    merged.config = {**merged.config, "knobs": config.to_dict(), "seeds": seeds}
    return merged


def spearman_with_truth(predictions: pd.DataFrame, eta: pd.Series) -> float:
    """The rank correlation of the predicted risk (indexed by case id) with the generator's true log-hazard."""
    from scipy.stats import spearmanr

    return float(spearmanr(predictions["risk"], eta.loc[predictions.index]).correlation)


def add_truth_correlation(result: ComparisonResult, eta: pd.Series) -> None:
    """Per (model, seed, fold): ``spearman_eta``, the rank correlation of the predicted risk with the
    generator's true log-hazard on the test cases; far less noisy than the c-index on small folds."""
    values = {}
    for (model, seed), pred in result.predictions.items():
        for fold, part in pred.groupby("fold"):
            values[(model, seed, fold)] = spearman_with_truth(part, eta)
    keys = zip(result.per_fold["model"], result.per_fold["seed"], result.per_fold["fold"])
    result.per_fold["spearman_eta"] = [values.get(k, np.nan) for k in keys]


def wsi_only(method: str) -> bool:
    """True for methods that predict from the WSI alone (the rho = 0 control applies to them)."""
    if method in EXTERNAL:
        return method == "wsi_oracle"
    from msrl_plugin.registry import get_aggregator_class

    return not get_aggregator_class((variant_of(method) or (method,))[0]).genomics_at_test


def check_orderings(result: ComparisonResult, rho: float, n_boot: int,
                    metric: str = "c_index") -> pd.DataFrame:
    """One row per expected ordering whose two methods ran: the paired difference and a verdict."""
    rows = []
    per_fold = result.per_fold
    for relation, a, b, meaning in ORDERINGS:
        if a not in result.models or b not in result.models:
            continue
        diffs = stats.paired_differences(per_fold, b, metric)
        d = diffs.loc[diffs["model"] == a, "diff"].to_numpy(float)
        lo, hi = stats.bootstrap_ci(d, n_boot)
        mean = float(d.mean()) if d.size else float("nan")
        if relation == ">":
            verdict = "held" if lo > 0 else ("trend only" if mean > 0 else "did not hold")
        elif relation == ">=":
            verdict = "held" if mean >= 0 else ("not contradicted" if hi >= 0 else "did not hold")
        else:
            verdict = "held" if lo <= 0 <= hi else "did not hold"
        rows.append({"ordering": f"{a} {relation} {b}", "tests": meaning, "mean_diff": mean, "ci_low": lo,
                     "ci_high": hi, "wilcoxon_p": stats.wilcoxon_p(d), "n_pairs": int(d.size),
                     "verdict": verdict})
    if rho == 0.0:  # negative control: every WSI-inference method at chance (c-index 0.5, Spearman 0; +- 2 SE)
        chance = 0.0 if metric == "spearman_eta" else 0.5
        for model in result.models:
            if not wsi_only(model):
                continue
            v = per_fold.loc[per_fold["model"] == model, metric].to_numpy(float)
            se = stats.standard_error(v)
            ok = abs(v.mean() - chance) <= 2 * se if np.isfinite(se) else False
            rows.append({"ordering": f"{model} ~ {chance:g} at rho=0", "tests": "no leakage (negative control)",
                         "mean_diff": float(v.mean() - chance), "ci_low": float(v.mean() - 2 * se - chance),
                         "ci_high": float(v.mean() + 2 * se - chance), "wilcoxon_p": float("nan"),
                         "n_pairs": len(v), "verdict": "held" if ok else "did not hold"})
    return pd.DataFrame(rows)


def ordering_table(result: ComparisonResult) -> pd.DataFrame:
    """Methods in protocol order: c-index (and Spearman with the true eta) mean +- sd, the paired c-index
    difference vs the reference (ABMIL where it ran)."""
    summary = result.summary()
    paired = result.paired()
    paired = paired[paired["metric"] == "c_index"].set_index("model")
    rows = []
    for model in result.models:
        row = {"method": model, "c_index": stats.format_mean_sd(summary.loc[model, "c_index_mean"],
                                                                summary.loc[model, "c_index_sd"])}
        if "spearman_eta_mean" in summary:
            row["spearman_eta"] = stats.format_mean_sd(summary.loc[model, "spearman_eta_mean"],
                                                       summary.loc[model, "spearman_eta_sd"])
        if model in paired.index:
            p = paired.loc[model]
            row.update({f"diff_vs_{result.reference}": f"{p['mean_diff']:+.3f}",
                        "95% CI": f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]",
                        "wilcoxon_p": f"{p['wilcoxon_p']:.3g}", "win_rate": f"{p['win_rate']:.2f}"})
        rows.append(row)
    return pd.DataFrame(rows).set_index("method").fillna("")


def resolution_text(result: ComparisonResult, metric: str = "c_index") -> str:
    """What the paired (seed, fold) differences vs ABMIL can resolve: SE of their mean and the smallest true
    difference found at 80% power, two-sided 5% (2.8 SE). Folds of one seed share cases, so this is optimistic."""
    diffs = stats.paired_differences(result.per_fold, result.reference, metric)
    lines = [f"resolution ({metric}, paired over seed x fold vs {result.reference}):"]
    for model, part in diffs.groupby("model", sort=False):
        d = part["diff"].to_numpy(float)
        se = stats.standard_error(d)
        lines.append(f"  {model:<22} {len(d):3d} pairs, mean {d.mean():+.3f}, SE {se:.3f}, resolves ~{2.8 * se:.3f}")
    return "\n".join(lines)


def gap_share_text(result: ComparisonResult, metric: str = "c_index") -> str:
    """The share of the reference-to-fusion gap each WSI-only MSRL row recovers (mean paired difference over
    fusion's; the paper reports ~70%); empty when fusion did not run. No share where the gap is not at least
    2 standard errors above zero: a ratio over a gap lost in noise means nothing."""
    if "fusion" not in result.models or result.reference == "fusion":
        return ""
    diffs = stats.paired_differences(result.per_fold, result.reference, metric)
    means = diffs.groupby("model")["diff"].mean()
    gap = float(means["fusion"])
    se = stats.standard_error(diffs.loc[diffs["model"] == "fusion", "diff"])
    head = f"share of the {result.reference}-to-fusion gap ({gap:+.3f} {metric}, SE {se:.3f})"
    if not gap > 2 * se:  # also when the SE is undefined (one pair)
        return f"{head}: no share reported, the gap is not 2 SE above zero"
    shares = [f"{m} {means[m] / gap:+.2f}" for m in result.models if m.startswith("msrl") and m in means
              and wsi_only(m)]
    return f"{head} recovered: " + ", ".join(shares)


def grid_slug(knobs: dict[str, Any]) -> str:
    """A folder name for one grid point, safe on every file system (``survset:chop`` -> ``survset-chop``),
    so result folders can be committed."""
    slug = "_".join(f"{k}-{v}" for k, v in sorted(knobs.items())) or "default"
    return re.sub(r"[^A-Za-z0-9._=-]", "-", slug)


def tier_settings(tier_name: str, budget: dict[str, Any] | None = None, msrl: dict[str, Any] | None = None,
                  abmil: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tier with the command line's overrides on top (and fp32 unless the budget names a precision)."""
    tier = dict(TIERS[tier_name])
    tier["budget"] = {**REPRODUCIBLE, **tier["budget"], **(budget or {})}
    tier["msrl"] = {**tier["msrl"], **(msrl or {})}
    tier["abmil"] = {**tier.get("abmil", {}), **(abmil or {})}
    return tier


def run(tier_name: str, seeds: list[int] | None = None, methods: list[str] | None = None,
        grid: list[dict[str, Any]] | None = None, n_boot: int = 5000, out: Path | None = None,
        log=print, budget: dict[str, Any] | None = None, msrl: dict[str, Any] | None = None,
        abmil: dict[str, Any] | None = None) -> dict[str, Any]:
    """``budget`` overrides the tier's shared training budget (every registered model); ``msrl`` the MSRL
    family's own settings; ``abmil`` ABMIL's (its tuned configuration, ``tune_equal_budget.py``)."""
    tier = tier_settings(tier_name, budget, msrl, abmil)
    seeds = list(tier["seeds"] if seeds is None else seeds)
    grid = tier["grid"] if grid is None else grid
    methods = available_methods(methods or ORDER, log)
    all_folds, all_orderings = [], []
    started = time.perf_counter()
    for knobs in grid:
        label = ", ".join(f"{k}={v}" for k, v in knobs.items()) or "default knobs"
        log(f"\n== {tier_name} tier, {label}: {len(seeds)} seed(s) ==")
        seed_dir = None if out is None else Path(out) / "seeds" / grid_slug(knobs)
        result = run_grid_point(knobs, tier, seeds, methods, n_boot, log, seed_dir)
        log(ordering_table(result).to_string())
        rho = result.config["knobs"]["rho"]
        metrics = [m for m in ("c_index", "spearman_eta") if m in result.per_fold]
        orderings = pd.concat([check_orderings(result, rho, n_boot, metric).assign(metric=metric)
                               for metric in metrics], ignore_index=True)
        log(resolution_text(result))
        if gap := gap_share_text(result):
            log(gap)
        log(f"wall time so far: {time.perf_counter() - started:.0f}s")
        for metric, part in orderings.groupby("metric", sort=False):
            log(f"\nexpected orderings (paired over seed x fold, {metric}):")
            log(part.drop(columns="metric").to_string(index=False, float_format=lambda v: f"{v:+.3f}"))
        all_folds.append(result.per_fold.assign(grid=label))
        all_orderings.append(orderings.assign(grid=label))
    per_fold = pd.concat(all_folds, ignore_index=True)
    orderings = pd.concat(all_orderings, ignore_index=True)
    if out is not None:
        write_csv(Path(out) / "per_fold.csv", per_fold)
        write_csv(Path(out) / "orderings.csv", orderings)
        write_json(Path(out) / "benchmark_config.json", {
            "tier": tier_name, "seeds": seeds, "grid": grid, "methods": methods, "budget": tier["budget"],
            "msrl_params": tier["msrl"], "abmil_params": tier["abmil"], "n_boot": n_boot,
            "oracle": "true teacher eta (no fitting)"})
        log(f"\nwrote {out}")
    return {"per_fold": per_fold, "orderings": orderings}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=sorted(TIERS), default="test")
    parser.add_argument("--seeds", default=None, help="comma-separated (default: the tier's)")
    parser.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(ORDER)}")
    parser.add_argument("--set", dest="knobs", action="append", default=[], metavar="KEY=VALUE",
                        help="run one grid point with these knobs instead of the tier's grid (repeatable)")
    parser.add_argument("--default-only", action="store_true", help="only the default-knob grid point")
    parser.add_argument("--grid", choices=sorted(GRIDS), default=None,
                        help="a named grid instead of the tier's: efficiency (n_train ~100/200/400), w_hidden")
    parser.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE",
                        help="shared training budget for every model, e.g. max_epochs=20, max_patches=128")
    parser.add_argument("--msrl-param", action="append", default=[], metavar="KEY=VALUE",
                        help="MSRL-family setting on top of the budget, e.g. pretrain_epochs=30")
    parser.add_argument("--abmil-param", action="append", default=[], metavar="KEY=VALUE",
                        help="ABMIL setting (its equal-budget tuning winner), e.g. lr=5e-5")
    parser.add_argument("--n-boot", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder; finished seeds are kept there and not rerun")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    grid = [{}] if args.default_only else (GRIDS[args.grid] if args.grid else None)
    from msrl_plugin.cli.compare import parse_value

    def pairs(items: list[str]) -> dict[str, Any]:
        return {k: parse_value(v) for k, _, v in (item.partition("=") for item in items)}

    if args.knobs:
        grid = [pairs(args.knobs)]
    start = time.perf_counter()
    run(args.tier, seeds, methods, grid, args.n_boot, args.out, budget=pairs(args.budget),
        msrl=pairs(args.msrl_param), abmil=pairs(args.abmil_param))
    print(f"\nwall time: {time.perf_counter() - start:.0f}s (tier {args.tier})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
