"""benchmarks/external_noise.py: the committed per-seed difference, and a refit that reproduces its cell (slow)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"


def _module(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_reads_the_paired_difference_per_seed(tmp_path):
    noise = _module("external_noise")
    for seed, (m, a) in {200: (0.61, 0.60), 201: (0.58, 0.60), 202: (0.70, 0.65)}.items():
        pd.DataFrame({"signal": "B", "n_train": 100, "seed": seed, "model": ["abmil", "msrl", "fusion"],
                      "c_index": [a, m, 0.9]}).to_csv(tmp_path / f"B_n100_seed{seed}.csv", index=False)
    pd.DataFrame({"signal": "B", "n_train": 200, "seed": 200, "model": ["abmil", "msrl"],
                  "c_index": [0.5, 0.9]}).to_csv(tmp_path / "B_n200_seed200.csv", index=False)
    diff = noise.committed(tmp_path, "B", 100)
    assert list(diff.index) == [200, 201, 202]
    assert np.allclose(diff.to_numpy(), [0.01, -0.02, 0.05])


@pytest.mark.slow
def test_cell_noise_refit_reproduces_the_benchmark_cell():
    noise, bench = _module("external_noise"), _module("external_benchmark")
    row = noise.cell_noise("A", 40, 0, n_boot=50, tier_name="smoke")
    frame = bench.run_cell(bench.TIERS["smoke"], "A", 40, 0, ["abmil", "msrl"], None, log=lambda _m: None)
    c = frame.set_index("model")["c_index"]
    assert row["diff"] == pytest.approx(c["msrl"] - c["abmil"], abs=1e-9)
    assert 0 < row["external_se"] < 0.2
