"""``msrl-plugin demo``: a small deterministic multimodal cohort on disk, cross-validated end to end."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

DEMO_EPOCHS = 20


def run_demo(out: Path, models: list[str], k: int = 5, seed: int = 0, max_epochs: int | None = None,
             log=print) -> dict[str, object]:
    from .adapters.loader import load_cohort
    from .adapters.results import ResultsFolder
    from .aggregators.base import Aggregator
    from .compare import from_cv_results
    from .experiment import SELECTION_RULE, cross_validate
    from .report import write_report
    from .splits import kfold_splits
    from .synth import CohortConfig, generate_cohort, write_cohort

    config = CohortConfig.test_tier()
    log(f"writing the demo cohort to {out} (TRIDENT layout, {config.n_cases} cases, seed {seed})")
    paths = write_cohort(generate_cohort(config, seed), out)
    cohort = load_cohort(paths["features_dir"], paths["clinical"], "survival", paths["genomics"])
    log(f"{cohort}")
    folds = kfold_splits(cohort, k, seed)
    results, fitted = {}, {}
    for model in models:
        log(f"\n== {model} ==")
        params = {"max_epochs": max_epochs or DEMO_EPOCHS, "seed": seed}
        # a re-run of the demo keeps the folds it already finished (settings are checked against config.json)
        sink = ResultsFolder(Path(out) / "results", f"demo_{model}", seed, cohort, resume=True)
        sink.write_config({"model": model, "model_params": params, "k": k, "seed": seed})
        results[model] = cross_validate(cohort, folds, model, params, sink, log=log)
        fitted[model] = {f.k: Aggregator.load(sink.checkpoint_path(f.k)) for f in folds[:1]}
    table = comparison_table(results)
    log("\nper-fold test c-index")
    log(table.to_string(float_format=lambda v: f"{v:.4f}"))
    if len(models) >= 2:  # paired comparison against the first model, from the same folds (nothing retrained)
        comparison = from_cv_results(cohort, folds, results, seed, reference=models[0], fitted=fitted,
                                     config={"seeds": [seed], "n_folds": k, "folds": f"{k}-fold (seed {seed})",
                                             "budget": {"max_epochs": max_epochs or DEMO_EPOCHS},
                                             "selection_rule": SELECTION_RULE})
        comparison.write(Path(out) / "compare")
        report = write_report(comparison, cohort, Path(out) / "compare")
        log("\n" + comparison.format())
        log(f"report: {report}")
    return results


def comparison_table(results: dict) -> pd.DataFrame:
    """Folds as rows, models as columns, plus mean and sd rows."""
    cols = {}
    for model, result in results.items():
        metric = [c for c in result.fold_metrics.columns if c.startswith("test_")][0]
        cols[model] = result.fold_metrics.set_index("fold")[metric]
    table = pd.DataFrame(cols)
    table.index = [f"fold {i}" for i in table.index]
    stats = pd.DataFrame([table.mean(), table.std(ddof=1)], index=["mean", "sd"])
    return pd.concat([table, stats])
