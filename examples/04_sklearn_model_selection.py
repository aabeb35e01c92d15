"""scikit-learn model selection over a cohort: GridSearchCV of ABMIL's learning rate and cross_val_score of
MSRL, with Harrell's c-index as the score (msrl_plugin.sklearn_api).

Usage: python examples/04_sklearn_model_selection.py [--work DIR] [--epochs N] [--cases N]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from msrl_plugin.adapters import load_cohort
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score

from msrl_plugin.sklearn_api import ABMILSurvival, CohortCases, MSRLSurvival
from msrl_plugin.synth import CohortConfig, generate_cohort, write_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("sklearn_example"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cases", type=int, default=120, help="cases of the demo cohort (>= 32)")
    args = parser.parse_args()

    paths = write_cohort(generate_cohort(CohortConfig.test_tier(n_cases=args.cases), seed=0), args.work / "job")
    cohort = load_cohort(paths["job_dir"], paths["clinical"], "survival", paths["genomics"])
    X = CohortCases(cohort)  # case ids that scikit-learn's splitters can index; y comes from the cohort
    cv = KFold(3, shuffle=True, random_state=0)

    # hold out a test set, tune on the rest (score = Harrell's c-index, higher is better)
    search = GridSearchCV(ABMILSurvival(max_epochs=args.epochs, seed=0), {"lr": [2e-4, 1e-3]}, cv=cv)
    search.fit(X[: len(X) * 3 // 4])
    print(f"ABMIL best lr {search.best_params_['lr']}: inner c-index {search.best_score_:.3f}; "
          f"held-out c-index {search.score(X[len(X) * 3 // 4:]):.3f}")

    msrl = MSRLSurvival(max_epochs=args.epochs, pretrain_epochs=args.epochs, seed=0)
    scores = cross_val_score(msrl, X, cv=cv)  # MSRL reads genomics in fit, only the WSI in predict
    print(f"MSRL 3-fold c-index {scores.mean():.3f} +- {scores.std(ddof=1):.3f}")


if __name__ == "__main__":
    main()
