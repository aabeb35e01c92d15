"""The Python API: load a TRIDENT job into a Cohort, fit MSRL on one fold's training cases, predict the
held-out cases from their slides alone, score, save and load back.

Usage: python examples/03_python_api.py [--work DIR] [--epochs N] [--cases N]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from msrl_plugin.adapters import load_cohort

from msrl_plugin import create_aggregator
from msrl_plugin.aggregators.base import Aggregator
from msrl_plugin.evaluation.splits import kfold_splits
from msrl_plugin.synth import CohortConfig, generate_cohort, write_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("python_api_example"))
    parser.add_argument("--epochs", type=int, default=2, help="training (and MSRL pre-training) epochs")
    parser.add_argument("--cases", type=int, default=120, help="cases of the demo cohort (>= 32)")
    args = parser.parse_args()

    # the demo cohort stands in for your TRIDENT job: point load_cohort at your job dir and tables instead
    paths = write_cohort(generate_cohort(CohortConfig.test_tier(n_cases=args.cases), seed=0), args.work / "job")
    cohort = load_cohort(paths["job_dir"], paths["clinical"], "survival", paths["genomics"])
    print(cohort)

    fold = kfold_splits(cohort, k=5, seed=0)[0]  # patient-level, stratified by event
    train, test = cohort.subset(fold.train), cohort.subset(fold.test)

    # every hyper-parameter is an explicit keyword (see `msrl-plugin list-models`); fit returns the model
    model = create_aggregator("msrl", max_epochs=args.epochs, pretrain_epochs=args.epochs, seed=0)
    model.fit(train)  # genomics are used in training only

    predictions = model.predict(test)  # risk (higher = earlier event) and the survival curve per case
    print(predictions.head())
    print("held-out:", {k: round(v, 4) for k, v in model.evaluate(test, predictions).items()})

    saved = model.save(args.work / "msrl.pt")  # tensors and plain values only, loaded with weights_only=True
    again = Aggregator.load(saved)
    assert (again.predict(test)["risk"] - predictions["risk"]).abs().max() < 1e-5
    print(f"saved and reloaded {saved}")


if __name__ == "__main__":
    main()
