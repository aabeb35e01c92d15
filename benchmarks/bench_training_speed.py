"""Training speed in one run (issue 14): our ABMIL epoch vs a CLAM loop at three bag regimes, the FLOP/s our
step reaches against a matmul timed in the same run, and the paired held-out c-index difference.

Regimes (synthetic cohorts in TRIDENT layout from ``msrl_plugin.synth``):

- ``small``: 40-160 patches x 64-d (the size of issue 14's report against the real CLAM loop);
- ``bench``: 128-512 x 384-d (the benchmark tier);
- ``realistic``: 2,000-8,000 x 1024-d (UNI-sized features), our shipped ``max_patches=4096`` cap.

Ours: ``ABMILAggregator`` with its shipped defaults (batch 8, ``max_patches`` 4096, ``precision="auto"``, which
is float32 on a CPU without native bf16), bags from the packed feature cache (its one-off load is printed
apart). CLAM: CLAM's own loop and layers, re-written here so that our speed work cannot speed it up: batch 1,
the slide's h5 read on every step, ``nn.Linear``/``nn.Dropout`` layers of ``CLAM_SB``'s gated attention
(``Attn_Net_Gated``), the whole bag (CLAM has no patch cap), an ``Adam`` step per bag (torch's default
implementation), the same survival NLL loss, lr, weight decay and epochs.

FLOP/s of our step = the multiply-adds of forward and backward (counted per patch actually trained: first
layer forward and weight gradient, attention forward and both gradients; x2 FLOPs) / our epoch time; the
reference rate is a (4096 x D) @ (D x 512) float32 matmul timed in the same process, on the same threads.
Paired metric: ``--folds`` (>= 5) stratified folds of the small regime, both loops trained on each, held-out
c-index difference per fold, mean and t-based 95% CI. Every timing is a ratio within this run, so other jobs
on the machine slow both sides; say so when quoting the figures. Run: ``python
benchmarks/bench_training_speed.py [--quick] [--profile]``.
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
import torch
from bench_abmil_epoch import parse_config, timed_fit
from msrl_plugin.adapters import load_cohort
from msrl_plugin.adapters.packed_cache import build_or_update_packed_cache
from scipy import stats as scipy_stats
from torch import nn

from msrl_plugin.aggregators.abmil import ABMILAggregator
from msrl_plugin.cohort import Cohort
from msrl_plugin.synth import CohortConfig, generate_cohort, write_cohort

#: name -> (cases, bag_min, bag_max, feature_dim); QUICK: cases with --quick
REGIMES = {"small": (200, 40, 160, 64), "bench": (64, 128, 512, 384), "realistic": (12, 2000, 8000, 1024)}
QUICK = {"small": 120, "bench": 40, "realistic": 8}


class CLAMAttention(nn.Module):
    """CLAM_SB's gated attention MIL in CLAM's own layers (fc -> Attn_Net_Gated -> softmax -> pool), with the
    rho layer and head of our ABMIL so that both models have the same function and size."""

    def __init__(self, in_dim: int, n_out: int, hidden: int = 512, attn: int = 256, dropout: float = 0.25):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention_a = nn.Sequential(nn.Linear(hidden, attn), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(hidden, attn), nn.Sigmoid(), nn.Dropout(dropout))
        self.attention_c = nn.Linear(attn, 1)
        self.rho = nn.Sequential(nn.Linear(hidden, 256), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(256, n_out)
        for m in self.modules():  # CLAM's initialize_weights
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (N, D) -> (1, n_out)
        h = self.fc(h)
        a = self.attention_c(self.attention_a(h) * self.attention_b(h))  # (N, 1)
        a = torch.softmax(a.t(), dim=1)
        return self.classifier(self.rho(a @ h))


def clam_fit(agg: ABMILAggregator, cohort: Cohort, paths: dict[str, Path]) -> tuple[nn.Module, list[float]]:
    """CLAM's batch-1 loop; returns the model and the wall seconds of each epoch."""
    data = agg._prepare_fit(cohort)  # task bins, targets and seed as ours
    model = CLAMAttention(agg.feature_dim_, agg.task_.n_outputs)
    optimiser = torch.optim.Adam(model.parameters(), lr=agg.lr, weight_decay=agg.reg)
    epochs = []
    for _ in range(agg.max_epochs):
        model.train()
        start = time.perf_counter()
        for i in torch.randperm(len(data), generator=agg._generator).tolist():
            parts = []
            for slide in cohort.slides[data.case_ids[i]]:
                with h5py.File(paths[slide], "r") as f:
                    parts.append(f["features"][:])
            x = torch.from_numpy(np.concatenate(parts).astype(np.float32))
            loss = agg.task_.loss(model(x), {k: v[i: i + 1] for k, v in data.targets.items()})
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        epochs.append(time.perf_counter() - start)
    agg.model_ = model  # so that agg._case_data (scaler, checks) serves the held-out cases
    return model.eval(), epochs


@torch.no_grad()
def clam_cindex(agg: ABMILAggregator, model: nn.Module, test: Cohort) -> float:
    data = agg._case_data(test)
    logits = torch.cat([model(data.bags[i]) for i in range(len(data))])
    return agg.task_.evaluate(agg.task_.predictions(logits, data.case_ids), test)["c_index"]


def step_flops(cohort: Cohort, cap: int | None, hidden: int = 512, attn: int = 256) -> float:
    """Forward + backward FLOPs of one epoch of our ABMIL over ``cohort`` (patch-level GEMMs only)."""
    d = cohort.feature_dim
    patches = sum(min(cohort.load_bag(c).features.shape[0], cap or 10**9) for c in cohort.case_ids)
    per_patch = d * hidden * 2 + hidden * 2 * attn * 3  # fc: forward + weight grad; attention: fwd + 2 grads
    return 2.0 * per_patch * patches


def matmul_rate(d: int, repeats: int = 5) -> float:
    """FLOP/s of a float32 (4096 x d) @ (d x 512) matmul on this process's threads (best of ``repeats``)."""
    a, b = torch.randn(4096, d), torch.randn(d, 512)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - start) / 4)
    return 2.0 * 4096 * d * 512 / best


def make_cohort(name: str, n: int, tmp: Path, seed: int, folds: int) -> tuple:
    _, lo, hi, d = REGIMES[name]
    config = CohortConfig.benchmark_tier(n_cases=max(n, 32), bag_min=lo, bag_max=hi, feature_dim=d, d_g=32,
                                         site_held_out=False, k_folds=folds)
    synth = generate_cohort(config, seed)
    paths = write_cohort(synth, tmp / name)
    cohort = load_cohort(paths["job_dir"], paths["clinical"], "survival")
    slide_paths = {s: f.path for s, f in cohort.bags.files.items()}
    cohort.bags = build_or_update_packed_cache(cohort.bags.files, tmp / f"{name}-cache")
    # the generator needs >= 32 cases; the realistic regime times only the first n (seconds per bag)
    # (cases with an event first: the survival bins need >= 4 events among them)
    ids = [c for _, c in sorted(zip(cohort.censorship(), cohort.case_ids, strict=True))][:n]
    return synth, cohort if n >= len(cohort) else cohort.subset(ids), slide_paths


def profile_step(agg: ABMILAggregator, cohort: Cohort) -> None:
    """Where one epoch of ours spends its CPU time (torch.profiler, top operators)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        agg.fit(cohort, progress=False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases and epochs (a few minutes)")
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs per regime [3; quick 2]")
    parser.add_argument("--metric-epochs", type=int, default=None, help="epochs of the paired folds [10; quick 6]")
    parser.add_argument("--folds", type=int, default=5, help="paired folds of the small regime (>= 5) [5]")
    parser.add_argument("--regimes", default="small,bench,realistic")
    parser.add_argument("--ours", default="", metavar="KEY=VALUE[,...]", help="overrides of our defaults")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both loops [1]")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table per regime")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs = args.epochs or (2 if args.quick else 3)
    metric_epochs = args.metric_epochs or (6 if args.quick else 10)
    overrides = parse_config(args.ours)
    results = {}
    with tempfile.TemporaryDirectory(prefix="msrl-bench-speed-") as tmp:
        for name in args.regimes.split(","):
            n = QUICK[name] if args.quick else REGIMES[name][0]
            synth, cohort, paths = make_cohort(name, n, Path(tmp), args.seed, max(args.folds, 2))
            ours = ABMILAggregator(max_epochs=epochs, seed=args.seed, device="cpu", **overrides)
            load_s, ours_epoch, _ = timed_fit(ours, cohort)
            _, clam_epochs = clam_fit(ABMILAggregator(max_epochs=epochs, seed=args.seed, device="cpu"), cohort,
                                      paths)
            rate = matmul_rate(cohort.feature_dim)
            achieved = step_flops(cohort, ours.max_patches) / ours_epoch
            clam_epoch = statistics.median(clam_epochs)
            results[name] = dict(ours=ours_epoch, clam=clam_epoch, ratio=clam_epoch / ours_epoch,
                                 flops=achieved, rate=rate, load=load_s, precision=ours.precision_)
            print(f"[{name}] {len(cohort)} cases, bags {REGIMES[name][1]}-{REGIMES[name][2]} x "
                  f"{cohort.feature_dim}-d: epoch ours {ours_epoch:.2f} s (precision {ours.precision_}, "
                  f"+ {load_s:.2f} s one-off load) vs CLAM {clam_epoch:.2f} s = {clam_epoch / ours_epoch:.2f}x; "
                  f"step {achieved / 1e9:.1f} GFLOP/s = {achieved / rate:.0%} of the matmul's "
                  f"{rate / 1e9:.1f} GFLOP/s", flush=True)
            if args.profile:
                profile_step(ABMILAggregator(max_epochs=1, seed=args.seed, device="cpu", **overrides), cohort)
            if name == "small":
                diffs = []
                for k, (train_ids, test_ids) in enumerate(synth.folds[: args.folds]):
                    train, test = cohort.subset(list(train_ids)), cohort.subset(list(test_ids))
                    mine = ABMILAggregator(max_epochs=metric_epochs, seed=args.seed + k, device="cpu",
                                           **overrides).fit(train, progress=False)
                    base = ABMILAggregator(max_epochs=metric_epochs, seed=args.seed + k, device="cpu")
                    model, _ = clam_fit(base, train, paths)
                    c_ours, c_clam = mine.evaluate(test)["c_index"], clam_cindex(base, model, test)
                    diffs.append(c_ours - c_clam)
                    print(f"  fold {k}: held-out c-index ours {c_ours:.3f}, CLAM {c_clam:.3f} "
                          f"({c_ours - c_clam:+.3f})", flush=True)
                mean = float(np.mean(diffs))
                half = float(scipy_stats.t.ppf(0.975, len(diffs) - 1) * np.std(diffs, ddof=1) / np.sqrt(len(diffs)))
                results["metric"] = (mean, mean - half, mean + half, len(diffs))
    print("\nsummary (ratio = CLAM epoch / ours; target >= 2x at every regime, realistic >= 60% of the matmul)")
    for name, r in results.items():
        if name == "metric":
            continue
        print(f"  {name:<10} ours {r['ours']:.2f} s, CLAM {r['clam']:.2f} s: {r['ratio']:.2f}x "
              f"({'met' if r['ratio'] >= 2 else 'MISSED'}); {r['flops'] / r['rate']:.0%} of the matmul rate "
              f"({r['flops'] / 1e9:.1f} / {r['rate'] / 1e9:.1f} GFLOP/s)")
    if "metric" in results:
        mean, low, high, n = results["metric"]
        print(f"  held-out c-index ours - CLAM over {n} paired folds: {mean:+.3f}, 95% CI [{low:+.3f}, {high:+.3f}] "
              f"({'within fold noise: the CI covers 0' if low <= 0 <= high else 'the CI excludes 0'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
