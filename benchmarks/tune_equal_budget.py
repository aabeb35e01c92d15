"""Equal-budget tuning before the method benchmark: the same number of configurations per model, tuning seeds only.

``shared/benchmark.md`` asks for seed hygiene (tune on seeds 0-4, report on fresh seeds fixed in advance) and
an equal tuning budget for every method. This script runs each model's configuration grid (every grid has
``GRID_SIZE`` entries, the shipped defaults first) on the generator's cohorts for the tuning seeds, with the
tier's shared training budget, and prints the mean held-out c-index of each configuration and the winner per
model. The winners are then run on the report seeds by ``method_benchmark.py`` (``--budget`` /
``--msrl-param``, or as extra rows), never re-tuned there.

Run: ``python benchmarks/tune_equal_budget.py --tier small --out tune_small``.
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
from method_benchmark import MSRL_FAMILY, TIERS  # noqa: E402

GRID_SIZE = 3
#: per model: the shipped defaults, then two alternatives (learning rate, and one structural setting)
GRIDS: dict[str, list[dict[str, Any]]] = {
    "abmil": [{}, {"lr": 1e-3}, {"lr": 5e-5}],
    "msrl": [{}, {"readout": "node+wsi"}, {"lr": 2e-4}],
}


def tune(tier_name: str, seeds: list[int], models: list[str], out: Path | None, log=print) -> pd.DataFrame:
    tier = TIERS[tier_name]
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
                    c = fitted.evaluate(test)["c_index"]
                    rows.append({"model": model, "config": index, "settings": repr(config or "defaults"),
                                 "seed": seed, "fold": k, "c_index": c})
                    log(f"seed {seed} fold {k} {model} {config or 'defaults'}: c-index {c:.3f}")
        if out is not None:
            write_csv(out / "tuning_per_fold.csv", pd.DataFrame(rows))
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=sorted(TIERS), default="small")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="tuning seeds (never the report seeds)")
    parser.add_argument("--models", default=",".join(GRIDS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",")]
    assert all(len(GRIDS[m]) == GRID_SIZE for m in models), "every model gets the same tuning budget"
    rows = tune(args.tier, [int(s) for s in args.seeds.split(",")], models, args.out)
    table = rows.groupby(["model", "config", "settings"])["c_index"].agg(["mean", "std", "count"])
    print("\n" + table.to_string(float_format=lambda v: f"{v:.3f}"))
    for model, part in table.groupby(level="model"):
        best = part["mean"].idxmax()
        print(f"{model}: best {best[2]} (mean c-index {part['mean'].max():.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
