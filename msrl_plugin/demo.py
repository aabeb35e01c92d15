"""``msrl-plugin demo``: a small semi-synthetic multimodal cohort on disk, cross-validated end to end.

Every model gets the same explicit :class:`DemoBudget` (epochs, patches per bag, and MSRL's pre-training
epochs inside each fold), passed as parameters: the models' own defaults are not changed by the demo.
Progress: one line per stage and fold (with its time) on stdout, epoch bars (tqdm) on stderr.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class DemoBudget:
    """The training budget every demo model gets (a model takes the keys it has)."""

    max_epochs: int = 20
    max_patches: int = 128       # patches sampled per bag per training step
    pretrain_epochs: int = 20    # MSRL's GSL pre-training, on each fold's training cases
    k: int = 5                   # folds
    n_external: int = 1000       # generated external test cases every fold model is also scored on

    @classmethod
    def quick(cls) -> DemoBudget:
        """Under a minute on 2 busy cores: a smoke test of the whole pipeline, not a result."""
        return cls(max_epochs=3, max_patches=64, pretrain_epochs=3, k=3, n_external=300)

    def params_for(self, model: str) -> dict[str, int]:
        from .registry import get_aggregator_class

        valid = set(get_aggregator_class(model)._get_param_names())
        return {k: v for k, v in asdict(self).items() if k not in ("k", "n_external") and k in valid}

    def describe(self, model: str) -> str:
        p = self.params_for(model)
        text = f"{p.get('max_epochs', '?')} epochs, <= {p.get('max_patches', 'all')} patches/bag per step"
        if "pretrain_epochs" in p:
            text += f", + {p['pretrain_epochs']} GSL pre-training epochs per fold"
        return text


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def idle_cores() -> int:
    """Available cores minus the 1-minute load average of the machine (at least 1)."""
    cores = available_cores()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on Unix
        busy = 0.0
    return max(1, min(cores, int(round(cores - busy))))


def demo_threads(requested: int | None) -> int:
    """``--threads`` when given, else ``OMP_NUM_THREADS`` when set, else the idle cores.

    Idle, not all: torch's threads wait for each other at every operation, so a thread per core on a busy
    machine is far slower than fewer threads (on a shared 2-core machine, 2 threads ran the demo's ABMIL
    epochs at 3-6 s each where 1 thread had taken 0.5 s).
    """
    if requested:
        return int(requested)
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else idle_cores()


def run_demo(out: Path, models: list[str], budget: DemoBudget | None = None, seed: int = 0,
             log: Callable[[str], None] = print, progress: bool = True,
             allow_changed_inputs: bool = False) -> dict[str, object]:
    from .adapters.loader import load_cohort
    from .adapters.results import ResultsFolder
    from .aggregators.base import Aggregator
    from .evaluation.compare import from_cv_results
    from .evaluation.crossval import SELECTION_RULE, CVResult, cross_validate
    from .evaluation.report import write_report
    from .evaluation.splits import kfold_splits
    from .evaluation.variants import borrowing_controls, variant_of
    from .synth import CohortConfig, generate_cohort, write_cohort

    budget = budget or DemoBudget()
    out = Path(out)
    config = CohortConfig.test_tier(n_external=budget.n_external)
    log(f"[1/{len(models) + 2}] writing the semi-synthetic demo cohort to {out} (TRIDENT layout, "
        f"{config.n_cases} cases, seed {seed}; an external test set of {budget.n_external} cases kept in memory)")
    synth = generate_cohort(config, seed)
    paths = write_cohort(synth, out)
    cohort = load_cohort(paths["features_dir"], paths["clinical"], "survival", paths["genomics"])
    log(f"{cohort}")
    folds = kfold_splits(cohort, budget.k, seed)
    results, fitted, seconds, sinks = {}, {}, {}, {}
    for step, model in enumerate(models, start=2):
        params = {**budget.params_for(model), "seed": seed}
        log(f"\n[{step}/{len(models) + 2}] {model}: {budget.k}-fold cross-validation, {budget.describe(model)}")
        # a re-run of the demo keeps the folds it already finished (settings are checked against config.json)
        sink = sinks[model] = ResultsFolder(out / "results", f"demo_{model}", seed, cohort, resume=True)
        record = demo_record(sink.provenance_path(), cohort, paths, {model: params}, allow_changed_inputs,
                             sink.holds_results())
        sink.run_record = record
        sink.write_config({"model": model, "model_params": params, "k": budget.k, "seed": seed})
        record.write(sink.provenance_path())
        start = time.perf_counter()
        results[model] = cross_validate(cohort, folds, model, params, sink, progress=progress, log=log)
        seconds[model] = time.perf_counter() - start
        record.write(sink.provenance_path(), finished=True)
        log(f"{model}: {budget.k} folds in {seconds[model]:.0f}s")
        fitted[model] = {f.k: Aggregator.load(sink.checkpoint_path(f.k)) for f in folds[:1]}
    log(f"\n[{len(models) + 2}/{len(models) + 2}] summary")
    log(summary_text(comparison_table(results), budget, models, seconds, config.n_cases))
    if len(models) >= 2:  # paired comparison against the first model, from the same folds (nothing retrained)
        for control in borrowing_controls(models):  # the borrowing check: each fold's model, buffer shuffled
            base, shuffle = variant_of(control)
            log(f"{control}: the fitted {base} of each fold with its buffer's genomics shuffled")
            predictions = {f.k: shuffle(Aggregator.load(sinks[base].checkpoint_path(f.k)), seed,
                                        cohort.subset(f.train)).predict(cohort.subset(f.test)) for f in folds}
            results[control] = CVResult(control, pd.DataFrame({"fold": [f.k for f in folds]}), predictions)
        comparison = from_cv_results(cohort, folds, results, seed, reference=models[0], fitted=fitted,
                                     config={"seeds": [seed], "n_folds": budget.k,
                                             "folds": f"{budget.k}-fold (seed {seed})",
                                             "budget": {m: budget.params_for(m) for m in models},
                                             "selection_rule": SELECTION_RULE,
                                             "cohort": "semi-synthetic (msrl_plugin.synth, test tier)"})
        record = demo_record(out / "compare" / "provenance.json", cohort, paths,
                             {m: budget.params_for(m) for m in models}, allow_changed_inputs,
                             (out / "compare" / "per_fold.csv").exists(), resume=False)
        for name, by_fold in fitted.items():
            record.record_model(name, next(iter(by_fold.values())))
        comparison.write(out / "compare")
        report = write_report(comparison, cohort, out / "compare", time_unit="months")
        record.write(out / "compare" / "provenance.json", finished=True)
        log("\n" + comparison.format())
        log(f"report: {report}")
    if synth.external is not None:
        log("\n" + external_report(out, synth, cohort, models, folds, sinks, seed))
    return results


def external_report(out: Path, synth, cohort, models: list[str], folds, sinks: dict, seed: int) -> str:
    """Every fold model (and its shuffled-buffer control) scored on the generated external set, written to
    ``<out>/external.csv``: the verdict the folds' few test cases cannot give."""
    from .aggregators.base import Aggregator
    from .atomic import write_csv
    from .evaluation.external import external_scores, fold_averaged_risk, format_external
    from .evaluation.variants import borrowing_controls, variant_of

    external = synth.external.to_cohort()
    fold_models = {m: [Aggregator.load(sinks[m].checkpoint_path(f.k)) for f in folds] for m in models}
    risks = {m: fold_averaged_risk(fold_models[m], external) for m in models}
    pairs = [(m, models[0]) for m in models[1:]]
    for control in borrowing_controls(models):
        base, shuffle = variant_of(control)
        risks[control] = fold_averaged_risk([shuffle(model, seed, cohort.subset(f.train))
                                             for model, f in zip(fold_models[base], folds)], external)
        pairs.append((base, control))
    table = external_scores(risks, external, pairs, synth.external.truth.eta, seed=seed)
    write_csv(out / "external.csv", table, index=True)
    return format_external(table, len(external), len(folds)) + f"\n  ({out / 'external.csv'})"


def demo_record(recorded: Path, cohort, paths: dict[str, Path], models: dict[str, dict], allow_changed: bool,
                holds_results: bool, resume: bool = True):
    """The demo's provenance: its generated cohort is fingerprinted by content (every rerun rewrites the
    files, so their times change, while the same seed writes the same bytes)."""
    from .aggregators.base import resolve_device
    from .provenance import start_record
    from .registry import create_aggregator

    return start_record("demo", recorded, cohort, str(resolve_device("auto")), features=paths["features_dir"],
                        tables={"clinical": paths["clinical"], "genomics": paths["genomics"]}, hash_contents=True,
                        allow_changed=allow_changed, holds_results=holds_results, resume=resume and holds_results,
                        where="--out", models={m: create_aggregator(m, **p) for m, p in models.items()})


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


def summary_text(table: pd.DataFrame, budget: DemoBudget, models: list[str], seconds: dict[str, float],
                 n_cases: int) -> str:
    """The final table with what it shows: the metric, the budgets, the cohort, the paired-test floor."""
    from .evaluation.stats import too_few_pairs_note

    lines = [f"Held-out Harrell's c-index per fold (0.5 = chance, 1 = perfect ranking) on the test cases of "
             f"each of {budget.k} folds;",
             f"the cohort is semi-synthetic ({n_cases} generated cases, WSI features + genomics), not patients.",
             "Budgets (the same for every model; models' own defaults are not used):"]
    lines += [f"  {m:<10} {budget.describe(m)}; {seconds.get(m, 0):.0f}s in all" for m in models]
    lines += ["", table.to_string(float_format=lambda v: f"{v:.4f}")]
    note = too_few_pairs_note(budget.k) if len(models) >= 2 else None
    if note:
        lines += ["", note]
    return "\n".join(lines)
