"""Epoch >= 2 bag reads: the packed feature cache vs opening each bag's h5 file on every step.

Target (issue 5): packed cache >= 10x faster. Writes a synthetic cohort in TRIDENT's layout (``features``
chunked one row per chunk, as TRIDENT's ``save_h5`` does), then times full passes over every bag:

- ``h5py``: what CLAM-style loaders do each step: ``h5py.File(path)['features'][:]`` (+ coords);
- ``read_bag``: our validated reader, opening the file each time (``FileBagSource(cache_bytes=0)``);
- ``packed``: ``PackedBagSource.load`` (float32 and float16 stores).

Both sides run with a warm OS page cache (every file was read once before timing), so the ratio measures the
per-file open/parse/chunk overhead, not the disk. The one-off cost of the first pass (building the cache) is
printed separately. Run: ``python benchmarks/bench_cache.py [--quick]``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from msrl_plugin.adapters import FileBagSource, find_bags
from msrl_plugin.adapters.packed_cache import build_or_update_packed_cache

from msrl_plugin.synth import CohortConfig, generate_cohort, write_cohort


def h5py_read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f["features"][:], f["coords"][:]


def epoch_seconds(load, keys: list, repeats: int) -> list[float]:
    """Wall time of ``repeats`` full passes over ``keys`` (each a fresh epoch)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for key in keys:
            load(key)
        out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cohort, finishes in well under 2 minutes")
    parser.add_argument("--repeats", type=int, default=None, help="epochs timed per reader (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    config = (CohortConfig.benchmark_tier(n_cases=80) if args.quick
              else CohortConfig.benchmark_tier(n_cases=400, feature_dim=1024))
    with tempfile.TemporaryDirectory(prefix="msrl-bench-cache-") as tmp:
        paths = write_cohort(generate_cohort(config, args.seed), Path(tmp) / "cohort")
        files = find_bags(paths["features_dir"]).files
        slides = sorted(files)
        total_mb = sum(files[s].path.stat().st_size for s in slides) / 2**20
        print(f"cohort: {len(slides)} bags, {config.bag_min}-{config.bag_max} patches x "
              f"{config.feature_dim}-d, "
              f"{total_mb:.0f} MiB of h5 (TRIDENT layout), {repeats} timed epochs per reader")

        start = time.perf_counter()
        packed = build_or_update_packed_cache(files, Path(tmp) / "cache")
        build_s = time.perf_counter() - start
        packed16 = build_or_update_packed_cache(files, Path(tmp) / "cache16", float16=True)
        start = time.perf_counter()
        build_or_update_packed_cache(files, Path(tmp) / "cache")
        reopen_s = time.perf_counter() - start
        per_step = FileBagSource(files, cache_bytes=0)

        for s in slides:  # warm the page cache for every reader alike
            h5py_read(files[s].path)
        readers = {
            "h5py per step": lambda s: h5py_read(files[s].path),
            "read_bag per step": per_step.load,
            "packed float32": packed.load,
            "packed float16": packed16.load,
        }
        # interleave readers epoch by epoch so machine noise hits them alike
        times: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(repeats):
            for name, load in readers.items():
                times[name] += epoch_seconds(load, slides, 1)
        med = {name: statistics.median(t) for name, t in times.items()}

    print(f"first pass (build the float32 cache): {build_s:.2f} s; reopen, nothing changed: "
          f"{reopen_s * 1e3:.1f} ms")
    print(f"{'reader':<20}{'median epoch (s)':>18}{'ms / bag':>12}")
    for name, value in med.items():
        print(f"{name:<20}{value:>18.3f}{value / len(slides) * 1e3:>12.3f}")
    ratio = med["h5py per step"] / med["packed float32"]
    print(f"ratio h5py-per-step / packed float32: {ratio:.1f}x "
          f"(target >= 10x: {'met' if ratio >= 10 else 'MISSED'})")
    print(f"ratio read_bag-per-step / packed float32: "
          f"{med['read_bag per step'] / med['packed float32']:.1f}x")
    print(f"ratio h5py-per-step / packed float16: {med['h5py per step'] / med['packed float16']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
