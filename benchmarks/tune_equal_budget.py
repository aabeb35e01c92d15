"""Equal-budget tuning before the method benchmark: the same number of configurations per model, tuning seeds only.

``shared/benchmark.md`` asks for seed hygiene (tune on seeds 0-4, report on fresh seeds fixed in advance) and
an equal tuning budget for every method. This script runs each model's configuration grid (every grid has
``GRID_SIZE`` entries, the shipped defaults first) on the generator's cohorts for the tuning seeds, with the
tier's shared training budget, and prints the mean held-out c-index of each configuration and the winner per
model. Each fit is scored by its held-out c-index and by the rank correlation of its risk with the generator's
true log-hazard (``spearman_eta``, far less noisy on small folds); MSRL-family fits are also scored with their
buffer's genomics shuffled (the borrowing control). The winner per model is chosen by one rule stated before
looking: the highest mean ``spearman_eta`` over the tuning seeds. The winners are then run on the report seeds
by ``method_benchmark.py`` (``--budget`` / ``--msrl-param``, or as extra rows), never re-tuned there.
Every fit trains in fp32, as the benchmark's do (the tunings recorded in ``benchmarks/README.md`` ran earlier,
under ``precision=auto``).

Run: ``python benchmarks/tune_equal_budget.py --tier quick --out tune_quick`` (seeds may be split across two
processes with ``--seeds 0,2,4`` / ``--seeds 1,3`` and separate ``--out`` folders).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from msrl_plugin import create_aggregator
from msrl_plugin.atomic import write_csv
from msrl_plugin.synth import generate_cohort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_benchmark import MSRL_FAMILY, TIERS, spearman_with_truth, tier_settings  # noqa: E402

GRID_SIZE = 3
#: per model: the shipped defaults, then two alternatives (learning rate, and one structural setting)
GRIDS: dict[str, list[dict[str, Any]]] = {
    "abmil": [{}, {"lr": 1e-3}, {"lr": 5e-5}],
    "msrl": [{}, {"genomic_teacher_steps": 300, "train_gene_encoder": False}, {"genomic_teacher_steps": 300}],
}


def score(fitted, test, eta: pd.Series) -> dict[str, float]:
    predictions = fitted.predict(test)
    return {"c_index": fitted.evaluate(test, predictions)["c_index"],
            "spearman_eta": spearman_with_truth(predictions, eta)}


def tune(tier_name: str, seeds: list[int], models: list[str], out: Path | None, log=print) -> pd.DataFrame:
    tier = tier_settings(tier_name)  # fp32, as the benchmark's runs train
    rows = []
    for seed in seeds:
        synth = generate_cohort(tier["base"](), seed)
        cohort = synth.to_cohort()
        for k, (train_ids, test_ids) in enumerate(synth.folds):
            train, test = cohort.subset(list(train_ids)), cohort.subset(list(test_ids))
            for model in models:
                for index, config in enumerate(GRIDS[model]):
                    params = {**tier["budget"], **(tier["msrl"] if model in MSRL_FAMILY else {}), **config}
                    fitted = create_aggregator(model, **params, seed=seed).fit(train, progress=False)
                    row = {"model": model, "config": index, "settings": repr(config or "defaults"),
                           "seed": seed, "fold": k, **score(fitted, test, synth.truth.eta)}
                    if model in MSRL_FAMILY:
                        shuffled = score(fitted.with_shuffled_buffer(seed), test, synth.truth.eta)
                        row.update({f"shuffled_{key}": value for key, value in shuffled.items()})
                    rows.append(row)
                    log(f"seed {seed} fold {k} {model} {config or 'defaults'}: c-index {row['c_index']:.3f}, "
                        f"spearman_eta {row['spearman_eta']:.3f}")
        if out is not None:
            write_csv(out / "tuning_per_fold.csv", pd.DataFrame(rows))
    return pd.DataFrame(rows)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean of every score per configuration, and the number of (seed, fold) pairs."""
    scores = [c for c in rows.columns if c.endswith(("c_index", "spearman_eta"))]
    table = rows.groupby(["model", "config", "settings"])[scores].mean()
    table["pairs"] = rows.groupby(["model", "config", "settings"]).size()
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=sorted(TIERS), default="quick")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="tuning seeds (never the report seeds)")
    parser.add_argument("--models", default=",".join(GRIDS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",")]
    assert all(len(GRIDS[m]) == GRID_SIZE for m in models), "every model gets the same tuning budget"
    rows = tune(args.tier, [int(s) for s in args.seeds.split(",")], models, args.out)
    print("\n" + summarise(rows).to_string(float_format=lambda v: f"{v:.3f}"))
    for model, part in summarise(rows).groupby(level="model"):
        best = part["spearman_eta"].idxmax()
        print(f"{model}: best {best[2]} (mean spearman_eta {part['spearman_eta'].max():.3f}, "
              f"c-index {part.loc[best, 'c_index']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
