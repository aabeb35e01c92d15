"""Peak RSS while training ABMIL on a cohort whose bags total more than 4x a RAM budget.

Target (issue 5): peak RSS stays under the budget. The budget is absolute (the whole process, Python + torch +
msrl-plugin included: about 0.43 GiB before any data here). Bags are written one at a time into a temp folder
(h5, ``features`` float32 + ``coords``, TRIDENT-like names) until they total more than 4x the budget; then a
fresh subprocess, whose peak RSS (``VmHWM``) is its own, trains ``ABMILAggregator`` on them and scores
held-out cases:

- ``packed16``: the first pass builds a float16 packed cache (one bag in memory at a time), then every step
  reads its bags from it;
- ``files``: every step reads its bags from the h5 files through ``FileBagSource`` with a 64 MiB LRU cache.

Training streams: the benchmark swaps ``load_case_data`` for a lazy version whose ``bags`` load on indexing
(the shipped one holds every training bag in memory, which is what the budget forbids). Each mode is one
repeat per ``--repeats``; medians are printed. Run: ``python benchmarks/bench_memory.py [--quick]``.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

DIM = 1024
FILE_CACHE_BYTES = 64 << 20


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{field}:\s+(\d+) kB", fh.read()).group(1)) / 1024


def write_bags(root: Path, total_mb: float, seed: int = 0) -> tuple[Path, Path, float]:
    """Bags with a survival signal until they total ``total_mb`` MiB; one bag in memory at a time."""
    rng = np.random.default_rng(seed)
    features_dir = root / "features_synthetic"
    features_dir.mkdir(parents=True)
    direction = rng.normal(size=DIM).astype(np.float32) / np.sqrt(DIM)
    rows, written = [], 0.0
    while written < total_mb:
        i = len(rows)
        n = int(rng.integers(800, 1200))
        z = rng.normal()
        feats = rng.normal(size=(n, DIM)).astype(np.float32)
        signal = rng.random(n) < 0.3  # the latent shows in a third of the patches
        feats[signal] += (3.0 * z) * direction * np.sqrt(DIM)
        coords = np.stack([np.arange(n) % 40 * 256, np.arange(n) // 40 * 256], axis=1).astype(np.int64)
        slide = f"slide{i:05d}"
        with h5py.File(features_dir / f"{slide}.h5", "w") as f:
            f.create_dataset("features", data=feats, chunks=(min(n, 256), DIM))
            f.create_dataset("coords", data=coords)
        written += feats.nbytes / 2**20
        time_ = rng.exponential(36.0 * np.exp(-0.8 * z))
        censor = rng.exponential(60.0)
        rows.append({"case_id": f"case{i:05d}", "slide_id": slide,
                     "survival_months": max(min(time_, censor), 0.1), "censorship": int(censor < time_)})
    clinical = root / "clinical.csv"
    pd.DataFrame(rows).to_csv(clinical, index=False)
    return features_dir, clinical, written


class LazyBags(Sequence):
    """``CaseData.bags`` that reads each case's bag when indexed (nothing kept)."""

    def __init__(self, cohort, case_ids: list[str]):
        self.cohort, self.case_ids = cohort, case_ids

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, i):
        import torch

        return torch.from_numpy(self.cohort.load_bag(self.case_ids[i]).features)


def lazy_load_case_data(cohort, scaler, targets, genomics_columns=None):
    import torch

    from msrl_plugin.batching import CaseData

    values, available = cohort.genomics_matrix()
    if scaler is not None and values.shape[1]:
        values = scaler.transform(values, available)
    return CaseData(cohort.case_ids, LazyBags(cohort, cohort.case_ids), torch.from_numpy(values),
                    torch.from_numpy(available), targets or {})


def child(root: Path, mode: str, epochs: int, max_patches: int) -> dict:
    import torch
    from msrl_plugin.adapters import load_cohort
    from msrl_plugin.adapters.packed_cache import build_or_update_packed_cache

    from msrl_plugin.aggregators import base
    from msrl_plugin.aggregators.abmil import ABMILAggregator

    torch.set_num_threads(2)
    base_mb = rss_mb()
    base.load_case_data = lazy_load_case_data  # stream bags (see the module docstring)
    cohort = load_cohort(root / "features_synthetic", root / "clinical.csv", "survival",
                         cache_bytes=FILE_CACHE_BYTES)
    start = time.perf_counter()
    build_s = 0.0
    if mode == "packed16":
        cohort.bags = build_or_update_packed_cache(cohort.bags.files, root / "cache", float16=True)
        build_s = time.perf_counter() - start
    peak_build = rss_mb("VmHWM")
    ids = cohort.case_ids
    rng = np.random.default_rng(0)
    test = set(rng.choice(ids, size=len(ids) // 5, replace=False).tolist())
    train_c, test_c = cohort.subset([c for c in ids if c not in test]), cohort.subset(sorted(test))
    start = time.perf_counter()
    model = ABMILAggregator(max_epochs=epochs, batch_size=8, max_patches=max_patches, seed=0, device="cpu")
    model.fit(train_c, progress=False)
    fit_s = time.perf_counter() - start
    peak_fit = rss_mb("VmHWM")
    c_index = model.evaluate(test_c)["c_index"]
    return {"mode": mode, "base_mb": base_mb, "peak_mb": rss_mb("VmHWM"), "peak_build_mb": peak_build,
            "peak_fit_mb": peak_fit, "build_s": build_s,
            "fit_s": fit_s, "epoch_s": fit_s / epochs, "c_index": c_index}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        print(json.dumps(child(Path(argv[1]), argv[2], int(argv[3]), int(argv[4]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch, 128 patches per bag, packed16 only")
    parser.add_argument("--budget-mb", type=float, default=768.0, help="RAM budget of the process [768]")
    parser.add_argument("--max-patches", type=int, default=None, help="patches per bag per step [512; 128]")
    parser.add_argument("--epochs", type=int, default=None, help="ABMIL epochs [2; quick 1]")
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode (median reported)")
    args = parser.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else 2)
    max_patches = args.max_patches or (128 if args.quick else 512)
    modes = ["packed16"] if args.quick else ["packed16", "files"]
    with tempfile.TemporaryDirectory(prefix="msrl-bench-mem-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        _, _, total = write_bags(root, 4.2 * args.budget_mb)
        n_bags = len(list((root / "features_synthetic").glob("*.h5")))
        print(f"budget {args.budget_mb:.0f} MiB; {n_bags} bags of 800-1200 x {DIM} float32 = "
              f"{total:.0f} MiB ({total / args.budget_mb:.1f}x the budget), written in "
              f"{time.perf_counter() - start:.0f} s; ABMIL {epochs} epoch(s), batch 8, "
              f"max_patches {max_patches}", flush=True)
        results = {}
        for mode in modes:
            for _ in range(args.repeats):
                if (root / "cache").exists():  # every repeat pays the first pass
                    for p in (root / "cache").iterdir():
                        p.unlink()
                cmd = [sys.executable, __file__, "--child", str(root), mode, str(epochs),
                       str(max_patches)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    print(f"{mode}: failed: {out.stderr.strip().splitlines()[-1:]}")
                    continue
                results.setdefault(mode, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    for mode, runs in results.items():
        keys = ("base_mb", "peak_build_mb", "peak_fit_mb", "peak_mb", "build_s", "epoch_s", "c_index")
        med = {k: statistics.median(r[k] for r in runs) for k in keys}
        verdict = "met" if med["peak_mb"] <= args.budget_mb else "MISSED"
        print(f"{mode:<9} peak RSS {med['peak_mb']:.0f} MiB vs budget {args.budget_mb:.0f} MiB: {verdict} "
              f"(after imports {med['base_mb']:.0f}, after the cache build {med['peak_build_mb']:.0f}, after "
              f"training {med['peak_fit_mb']:.0f}, after scoring {med['peak_mb']:.0f} MiB); cache build "
              f"{med['build_s']:.0f} s, epoch {med['epoch_s']:.0f} s; held-out c-index {med['c_index']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
