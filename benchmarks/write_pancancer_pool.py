"""Write the pan-cancer pool of one evaluated cohort ``(config, seed)`` as a cohort folder for ``msrl-plugin pretrain``.

The pool holds other cancer types of the same population (never the evaluated cohort's training or external
cases: ``msrl_plugin.synth.generate_pancancer_pool``). Usage::

    python benchmarks/write_pancancer_pool.py --out pool_seed100 --seed 100 --set n_cases=400
    msrl-plugin pretrain --features pool_seed100/20x_256px_0px_overlap/features_synthetic \\
        --clinical pool_seed100/clinical.csv --genomics pool_seed100/genomics.csv --task survival \\
        --model msrl --out pool_seed100.pt
    # then: --param pretrained=pool_seed100.pt on every fine-tuning run of seed 100
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from msrl_plugin.cli.common import parse_value
from msrl_plugin.synth import CohortConfig, generate_pancancer_pool, write_cohort


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tier", choices=("test", "benchmark"), default="test",
                        help="the evaluated cohort's sizes (bags, feature and genomics widths)")
    parser.add_argument("--set", dest="knobs", action="append", default=[], metavar="KEY=VALUE",
                        help="the evaluated cohort's generator knobs (repeatable), e.g. signal_model=abundance")
    parser.add_argument("--n-types", type=int, default=6, help="cancer types including the evaluated one")
    parser.add_argument("--n-cases", type=int, default=3000, help="pool cases over the other types")
    args = parser.parse_args(argv)
    knobs = {k: parse_value(v) for k, _, v in (item.partition("=") for item in args.knobs)}
    config = (CohortConfig.test_tier if args.tier == "test" else CohortConfig.benchmark_tier)(**knobs)
    start = time.perf_counter()
    pool = generate_pancancer_pool(config, args.seed, n_types=args.n_types, n_cases=args.n_cases)
    paths = write_cohort(pool, args.out)
    print(f"{pool}: {pool.cases['cancer_type'].nunique()} types, wrote {paths['job_dir']} "
          f"in {time.perf_counter() - start:.0f}s")
    print(f"next: msrl-plugin pretrain --features {paths['features_dir']} --clinical {paths['clinical']} "
          f"--genomics {paths['genomics']} --task survival --model msrl --out {args.out}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
