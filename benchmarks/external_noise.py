"""Where the external tables' seed-to-seed spread comes from: the 2,000 external cases, or the training cohort.

For a few (signal, n_train, seed) cells of ``external_benchmark.py`` it refits ABMIL and ``msrl`` exactly as
that script does, predicts the external cohort, and bootstraps the external cases (paired, 300 draws) for the
SE of one seed's ``msrl - abmil`` c-index difference. Set beside the seed-to-seed sd of the same difference in
the committed cells (``--cells``), it says how much of the 10-seed SE a larger external set could remove:
``share = mean(bootstrap SE^2) / seed sd^2``. Each refit must reproduce its committed row (printed as a check).

    python benchmarks/external_noise.py --signal A,B --n-train 100 --seeds 200,201,202 \\
        --cells benchmarks/results/external_fp32/cells
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external_benchmark import TIERS, cell_cohorts, model_params  # noqa: E402

from msrl_plugin.evaluation.external import external_scores  # noqa: E402
from msrl_plugin.registry import create_aggregator  # noqa: E402

PAIR = ("msrl", "abmil")


def cell_noise(signal: str, n_train: int, seed: int, n_boot: int = 300, tier_name: str = "full") -> dict[str, float]:
    """One cell refitted: the paired c-index difference and the SE of it over the external cases."""
    tier = TIERS[tier_name]
    _, _, train, test = cell_cohorts(tier, signal, n_train, seed)
    risks = {}
    for name in PAIR:
        base, params = model_params(name, tier, seed, None)
        risks[name] = create_aggregator(base, **params).fit(train).predict(test)["risk"]
    row = external_scores(risks, test, [PAIR], n_boot=n_boot, seed=seed).loc[f"{PAIR[0]} - {PAIR[1]}"]
    return {"signal": signal, "n_train": n_train, "seed": seed, "diff": float(row["c_index"]),
            "external_se": float(row["ci_high"] - row["ci_low"]) / 3.92}


def committed(cells: Path, signal: str, n_train: int) -> pd.Series:
    """Per seed, the committed ``msrl - abmil`` c-index difference of (signal, n_train)."""
    frames = [pd.read_csv(p) for p in sorted(cells.glob(f"{signal}_n{n_train}_seed*.csv"))]
    wide = pd.concat(frames).pivot_table(index="seed", columns="model", values="c_index")
    return wide[PAIR[0]] - wide[PAIR[1]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signal", default="A,B")
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--seeds", default="200,201,202")
    parser.add_argument("--cells", type=Path, required=True, help="external_benchmark.py's cells folder")
    args = parser.parse_args(argv)
    for signal in args.signal.split(","):
        per_seed = committed(args.cells, signal, args.n_train)
        rows = [cell_noise(signal, args.n_train, int(s)) for s in args.seeds.split(",")]
        for r in rows:
            print(f"{signal} n={args.n_train} seed {r['seed']}: msrl - abmil {r['diff']:+.4f} (committed "
                  f"{per_seed.get(r['seed'], np.nan):+.4f}), SE over the external cases {r['external_se']:.4f}")
        ext_var = float(np.mean([r["external_se"] ** 2 for r in rows]))
        sd = float(per_seed.std(ddof=1))
        print(f"{signal} n={args.n_train}: seed-to-seed sd {sd:.4f} over {len(per_seed)} committed seeds; "
              f"external-sample SE {np.sqrt(ext_var):.4f}; share of the seed variance from the external "
              f"sample {ext_var / sd ** 2:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
