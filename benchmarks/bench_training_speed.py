"""Training speed in one run (issues 14, 23): our ABMIL epoch vs a CLAM loop at three bag regimes, the FLOP/s our
step reaches against a matmul timed in the same run, and the paired held-out c-index difference.

Regimes (synthetic cohorts in TRIDENT layout from ``msrl_plugin.synth``):

- ``small``: 40-160 patches x 64-d (the size of issue 14's report against the real CLAM loop);
- ``bench``: 128-512 x 384-d (the benchmark tier);
- ``realistic``: 2,000-8,000 x 1024-d (UNI-sized features), our shipped ``max_patches=4096`` cap.

Ours: ``ABMILAggregator`` with its shipped defaults (batch 8, ``max_patches`` 4096, ``batch_patches`` 2048,
``precision="auto"``), fitted in each precision in one run: ``auto`` (the shipped default; it prints what it picked
and why), ``fp32`` and ``bf16``, round robin with CLAM's loop and the matmuls, ``--repeats`` rounds, medians
(matmuls: the best); bags from the packed feature cache (its one-off load printed apart, as is a precision probe's
one-off time). CLAM: CLAM's own loop and layers, re-written here so that our speed work cannot speed it up: batch 1,
the slide's h5 read on every step, ``nn.Linear``/``nn.Dropout`` layers of ``CLAM_SB``'s gated attention
(``Attn_Net_Gated``), the whole bag (CLAM has no patch cap), an ``Adam`` step per bag (torch's default
implementation), the same survival NLL loss, lr, weight decay and epochs, float32 (CLAM has no bf16 path).

FLOP/s of our step = the multiply-adds of forward and backward (counted per patch actually trained: first
layer forward and weight gradient, attention forward and both gradients; x2 FLOPs) / our epoch time; the
reference rate is a (4096 x D) @ (D x 512) matmul **in the precision the step ran in** (fp32 or bf16), timed in
the same process, on the same threads. Per-patch cost: epoch seconds / patches trained (ours after the cap, CLAM
the whole bags). For each regime the script also prints what the timed probe of ``precision="auto"`` would pick
there (a quick fit uses the stated rule instead: too few steps to pay for a probe), so the rule is checked.
Paired metric: ``--folds`` (>= 5; 0 skips) stratified folds of the small regime, both loops trained on each,
held-out c-index difference per fold, mean and t-based 95% CI. Every timing is a ratio within this run, so other
jobs on the machine slow both sides; the first line names the CPU, its bf16 flags, the threads and the load.
Run: ``python benchmarks/bench_training_speed.py [--quick] [--profile] [--ours precision=fp32]``.
"""
from __future__ import annotations

import argparse
import os
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

from msrl_plugin import precision
from msrl_plugin.aggregators.abmil import ABMILAggregator
from msrl_plugin.aggregators.train_step import fit_precision
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


def bag_patches(cohort: Cohort, cap: int | None) -> int:
    """Patches one epoch trains (each bag after the ``cap``; CLAM has none)."""
    return sum(min(cohort.load_bag(c).features.shape[0], cap or 10**9) for c in cohort.case_ids)


def step_flops(cohort: Cohort, cap: int | None, hidden: int = 512, attn: int = 256) -> float:
    """Forward + backward FLOPs of one epoch of our ABMIL over ``cohort`` (patch-level GEMMs only)."""
    per_patch = cohort.feature_dim * hidden * 2 + hidden * 2 * attn * 3  # fc: fwd + weight grad; attention: 3
    return 2.0 * per_patch * bag_patches(cohort, cap)


def matmul_rate(d: int, dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """FLOP/s of a (4096 x d) @ (d x 512) matmul in ``dtype`` on this process's threads (best of ``repeats``)."""
    a, b = torch.randn(4096, d).to(dtype), torch.randn(d, 512).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - start) / 4)
    return 2.0 * 4096 * d * 512 / best


def machine_line() -> str:
    """CPU model, native bf16 flag, threads and load: printed next to every figure."""
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 "unknown CPU")
    flags = precision.cpu_flags()
    bf16 = "/".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "no native bf16 flag"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"CPU {model} ({bf16}; torch capability {torch.backends.cpu.get_cpu_capability()}), "
            f"{torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores, load average {load}")


def probe_pick(cohort: Cohort, seed: int, epochs: int, overrides: dict) -> precision.PrecisionChoice:
    """What the timed probe picks for this regime even where the fit is too short to run it (checks the rule)."""
    agg = ABMILAggregator(max_epochs=epochs, seed=seed, device="cpu", **{**overrides, "precision": "auto"})
    data = agg._prepare_fit(cohort)
    model = agg._build_model(agg.feature_dim_, 0, agg.task_.n_outputs)
    saved = precision.MIN_STEPS_TO_PROBE
    precision.MIN_STEPS_TO_PROBE, _ = 0, precision.forget_decisions()
    try:
        return fit_precision(agg, "auto", model, data, agg._training_loss, torch.device("cpu"), agg._patch_budget())
    finally:
        precision.MIN_STEPS_TO_PROBE, _ = saved, precision.forget_decisions()


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
    parser.add_argument("--folds", type=int, default=5, help="paired folds of the small regime (>= 5; 0 skips) [5]")
    parser.add_argument("--regimes", default="small,bench,realistic")
    parser.add_argument("--ours", default="", metavar="KEY=VALUE[,...]", help="overrides of our defaults")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both loops [1]")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table per regime")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the round robin; medians [5]")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs = args.epochs or (2 if args.quick else 3)
    metric_epochs = args.metric_epochs or (6 if args.quick else 10)
    overrides = parse_config(args.ours)
    # ours in each precision, in this run: the shipped default (auto) and both fixed ones, unless --ours fixes it
    variants = {"auto": {}, "fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"}}
    if "precision" in overrides:
        variants = {overrides["precision"]: {}}
    cpu = torch.device("cpu")
    print(machine_line(), flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="msrl-bench-speed-") as tmp:
        for name in args.regimes.split(","):
            n = QUICK[name] if args.quick else REGIMES[name][0]
            synth, cohort, paths = make_cohort(name, n, Path(tmp), args.seed, max(args.folds, 2))
            clam_epochs: list[float] = []
            rates = {"fp32": 0.0, "bf16": 0.0}
            timed: dict[str, list] = {label: [] for label in variants}
            for r in range(args.repeats):  # round robin: a change in the machine's load hits every loop alike
                for dtype, key in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):  # the best of every round
                    rates[key] = max(rates[key], matmul_rate(cohort.feature_dim, dtype))
                clam_epochs += clam_fit(ABMILAggregator(max_epochs=epochs, seed=args.seed, device="cpu"), cohort,
                                        paths)[1]
                labels = list(variants)
                for label in labels[r % len(labels):] + labels[: r % len(labels)]:  # each goes first in turn
                    extra = variants[label]
                    precision.forget_decisions()  # each fit decides afresh (nothing remembered from another)
                    ours = ABMILAggregator(max_epochs=epochs, seed=args.seed, device="cpu", **{**overrides, **extra})
                    load_s, train_epoch, _ = timed_fit(ours, cohort)
                    probe_s = ours.precision_probe_seconds_
                    # the probe is one-off per fit: printed apart, like the load
                    timed[label].append((train_epoch - probe_s / epochs, load_s, probe_s, ours))
            clam_epoch = statistics.median(clam_epochs)
            row = {"clam": clam_epoch, "clam_patches": bag_patches(cohort, None), "variants": {}}
            print(f"[{name}] {len(cohort)} cases, bags {REGIMES[name][1]}-{REGIMES[name][2]} x {cohort.feature_dim}-d:"
                  f" CLAM epoch {clam_epoch:.2f} s (median of {len(clam_epochs)}); matmul fp32 "
                  f"{rates['fp32'] / 1e9:.1f}, bf16 {rates['bf16'] / 1e9:.1f} GFLOP/s", flush=True)
            for label, runs in timed.items():
                epoch = statistics.median(r[0] for r in runs)
                load_s, probe_s, ours = statistics.median(r[1] for r in runs), max(r[2] for r in runs), runs[0][3]
                patches = bag_patches(cohort, ours.max_patches)
                achieved = step_flops(cohort, ours.max_patches) / epoch
                row["variants"][label] = v = dict(
                    epoch=epoch, ratio=clam_epoch / epoch, precision=ours.precision_, reason=ours.precision_reason_,
                    share=achieved / rates[ours.precision_], probe=probe_s, patches=patches,
                    per_patch=epoch / patches, clam_per_patch=clam_epoch / row["clam_patches"])
                print(f"  ours {label:<4} epoch {epoch:.2f} s, median of {len(runs)} ({v['reason']}; + "
                      f"{load_s:.2f} s load, + {probe_s:.2f} s probe) = {v['ratio']:.2f}x CLAM; step "
                      f"{achieved / 1e9:.1f} GFLOP/s = {v['share']:.0%} of the {ours.precision_} matmul; "
                      f"per patch {v['per_patch'] * 1e6:.0f} us vs CLAM "
                      f"{v['clam_per_patch'] * 1e6:.0f} us", flush=True)
            if "auto" in variants:
                pick = probe_pick(cohort, args.seed, epochs, overrides)
                row["probe_pick"] = pick
                print(f"  the timed probe on this regime would pick: {pick.describe()}", flush=True)
            results[name] = row
            if args.profile:
                profile_step(ABMILAggregator(max_epochs=1, seed=args.seed, device="cpu", **overrides), cohort)
            if name == "small" and args.folds > 0:
                diffs = []
                for k, (train_ids, test_ids) in enumerate(synth.folds[: args.folds]):
                    train, test = cohort.subset(list(train_ids)), cohort.subset(list(test_ids))
                    mine = ABMILAggregator(max_epochs=metric_epochs, seed=args.seed + k, device="cpu",
                                           **overrides).fit(train, progress=False)
                    base = ABMILAggregator(max_epochs=metric_epochs, seed=args.seed + k, device="cpu")
                    model, _ = clam_fit(base, train, paths)
                    c_ours, c_clam = mine.evaluate(test)["c_index"], clam_cindex(base, model, test)
                    diffs.append(c_ours - c_clam)
                    print(f"  fold {k}: held-out c-index ours ({mine.precision_}) {c_ours:.3f}, CLAM {c_clam:.3f} "
                          f"({c_ours - c_clam:+.3f})", flush=True)
                mean = float(np.mean(diffs))
                half = float(scipy_stats.t.ppf(0.975, len(diffs) - 1) * np.std(diffs, ddof=1) / np.sqrt(len(diffs)))
                results["metric"] = (mean, mean - half, mean + half, len(diffs))
    print(f"\nsummary ({machine_line()})")
    print("ratio = CLAM epoch / ours; targets: shipped default >= 2x on native bf16, fp32 >= 1.5x, none < 1x; "
          "auto within 10% of the better fixed precision")
    native = precision.native_bf16(cpu)
    for name, r in results.items():
        if name == "metric":
            continue
        vs = r["variants"]
        for label, v in vs.items():
            target = 1.5 if label == "fp32" else (2.0 if native else 1.5)
            print(f"  {name:<10} {label:<4} ({v['precision']}) {v['epoch']:.2f} s vs CLAM {r['clam']:.2f} s: "
                  f"{v['ratio']:.2f}x ({'met' if v['ratio'] >= target else 'MISSED'} >= {target}x); "
                  f"{v['share']:.0%} of the {v['precision']} matmul rate; per patch {v['per_patch'] * 1e6:.0f} us "
                  f"vs CLAM {v['clam_per_patch'] * 1e6:.0f} us")
        if {"auto", "fp32", "bf16"} <= set(vs):
            faster = min(("fp32", "bf16"), key=lambda p: vs[p]["epoch"])
            loss = vs["auto"]["epoch"] / vs[faster]["epoch"] - 1
            # auto runs the very code of the precision it picks: with the same pick, a gap is the machine's noise
            print(f"  {name:<10} auto vs the better fixed precision ({faster}): {loss:+.0%} "
                  f"({'met' if loss <= 0.10 else 'MISSED'}: <= +10%); auto picked {vs['auto']['precision']} "
                  f"({'the faster' if vs['auto']['precision'] == faster else 'NOT the faster'}); the probe would "
                  f"pick {r['probe_pick'].precision}")
    if "metric" in results:
        mean, low, high, n = results["metric"]
        print(f"  held-out c-index ours - CLAM over {n} paired folds: {mean:+.3f}, 95% CI [{low:+.3f}, {high:+.3f}] "
              f"({'within fold noise: the CI covers 0' if low <= 0 <= high else 'the CI excludes 0'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
