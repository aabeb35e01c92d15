"""WSI-only MSRL inference with a buffer of K = 1e3, 1e4, 1e5 rows (node dim d = 1536): memory and latency.

Target (issue 5): peak memory grows linearly in K, and latency <= 50 ms per case at K = 1e5 on 2 cores.

Each (K, mode) runs in a fresh subprocess (2 torch threads) so that its peak RSS (``VmHWM`` of
/proc/self/status) is its own. The network is the paper's size: patch features 1024-d, embed_dim 768, fused
nodes concat(g~, h) = 1536-d, k = 10. Cases are scored one at a time (batch 1, as in deployment), each a bag
of ``--patches`` patches. Modes: ``dense`` (the graph over [case; all K rows]: O(K^2) per case) and
``candidates`` (each case's graph over its exact top-m rows: O(K d)). Dense at K = 1e5 is not run: one (K+1)^2
float32 matrix alone is 40 GB and the graph learner holds several. Reported: latency of the whole case (bag
encoding + graph + head) and of the graph forward alone, medians over the cases; peak RSS above the process's
RSS before the network was built. The network is MSRL's shipped default (``similarity="wsi"``: the graph ranks
neighbours by the WSI half, so the cached retrieval keys are 768-d; ``candidate_keys="float16"``: keys stored
in float16, a 2m-row shortlist re-scored exactly in float32). ``--keys float32`` adds the all-float32 search
(every score exact) and ``--similarity fused`` the paper's 1536-d keys. For float16 keys the script reports
the recall of the float32 search's top-m (1.000 = the same rows). Run: ``python
benchmarks/bench_buffer_inference.py [--quick]``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

PATCH_DIM, EMBED, GENOMICS = 1024, 768, 64
BATCH = 32
DENSE_LIMIT = 10_000


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory of this process from /proc (Linux), in MiB; ``VmHWM`` is the peak so far."""
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{field}:\s+(\d+) kB", fh.read()).group(1)) / 1024


def _time_cases(net, bags: list, clock) -> tuple[float, float]:
    """Median ms per case of the whole forward and of the graph forward alone (first 2 cases: warm-up)."""
    whole, graph_only = [], []
    for i, x in enumerate(bags):
        ids = [f"test{i}"]
        start = clock()
        net(x, case_ids=ids)
        whole.append(clock() - start)
        f = net.online_nodes(net.encode_wsi(x, None))
        start = clock()
        net.graph_forward(f, ids)
        graph_only.append(clock() - start)
    return statistics.median(whole[2:]) * 1e3, statistics.median(graph_only[2:]) * 1e3


def child(k: int, m: int | None, cases: int, patches: int, search: str, keys: str = "float16",
          similarity: str = "wsi") -> dict:
    import torch

    from msrl_plugin.nn.msrl import MSRLNetwork

    torch.set_num_threads(2)
    torch.manual_seed(0)
    bags = [torch.randn(1, patches, PATCH_DIM) for _ in range(cases + 2)]
    base = rss_mb()
    net = MSRLNetwork(PATCH_DIM, GENOMICS, 4, embed_dim=EMBED, k=10, buffer_size=k, buffer_candidates=m,
                      candidate_search=search, candidate_keys=keys, similarity=similarity).eval()
    out = {"k": k, "m": m, "search": search, "keys": keys, "similarity": similarity, "base_mb": base}
    with torch.no_grad():
        for start in range(0, k, 10_000):  # fill in chunks: no second K x d copy
            n = min(10_000, k - start)
            net.buffer.enqueue(torch.randn(n, net.buffer.dim), [f"train{start + i}" for i in range(n)])
        # wall clock on 2 threads: the target's setting, but inflated when other jobs share the cores
        out["whole_ms"], out["graph_ms"] = _time_cases(net, bags, time.perf_counter)
        out["peak_mb"] = rss_mb("VmHWM")
        # CPU time on 1 thread: robust to other jobs; an upper bound on 2-core wall time on an idle machine
        torch.set_num_threads(1)
        out["whole_cpu1_ms"], out["graph_cpu1_ms"] = _time_cases(net, bags, time.process_time)
        torch.set_num_threads(2)
        if m is not None:  # a cohort scored in batches (predict): one buffer scan serves the whole batch
            x = torch.randn(BATCH, patches, PATCH_DIM)
            ids = [f"batch{i}" for i in range(BATCH)]
            runs = []
            for _ in range(3):
                start = time.perf_counter()
                net(x, case_ids=ids)
                runs.append((time.perf_counter() - start) / BATCH * 1e3)
            out["batch_ms"] = statistics.median(runs)
            out["key_mb"] = net._candidate_keys().numel() * net._candidate_keys().element_size() / 2**20
            if net._key_dtype() != torch.float32:  # recall of the all-float32 search's top-m (after the peak)
                f = net.online_nodes(net.encode_wsi(x, None))
                got = net.retrieve(f)
                net.candidate_keys = "float32"
                want = net.retrieve(f)
                out["recall"] = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, want)) / want.numel()
    return out


def run_child(k: int, m: int | None, cases: int, patches: int, search: str = "torch", keys: str = "float16",
              similarity: str = "wsi") -> dict:
    cmd = [sys.executable, __file__, "--child", str(k), str(m or 0), str(cases), str(patches), search, keys,
           similarity]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"k": k, "m": m, "search": search, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        k, m, cases, patches = (int(v) for v in argv[1:5])
        print(json.dumps(child(k, m or None, cases, patches, *argv[5:8])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 cases per setting, no dense K = 1e4")
    parser.add_argument("--m", type=int, default=128, help="candidate buffer rows per case [128]")
    parser.add_argument("--cases", type=int, default=None, help="cases timed per setting [20; quick 5]")
    parser.add_argument("--patches", type=int, default=512, help="patches per case bag [512]")
    parser.add_argument("--keys", action="append", default=[], choices=["float32"],
                        help="also run candidate_keys=float32 (every score exact)")
    parser.add_argument("--similarity", default="wsi", choices=["wsi", "fused"],
                        help="the graph's similarity space [wsi: shipped default; fused: the paper]")
    args = parser.parse_args(argv)
    cases = args.cases or (5 if args.quick else 20)
    sizes = [1_000, 10_000, 100_000]
    try:
        import faiss  # noqa: F401

        has_faiss = True
    except ImportError:
        has_faiss = False
    results = []
    for k in sizes:
        results.append(run_child(k, args.m, cases, args.patches, similarity=args.similarity))
        for keys in args.keys:
            results.append(run_child(k, args.m, cases, args.patches, keys=keys, similarity=args.similarity))
        if has_faiss:
            results.append(run_child(k, args.m, cases, args.patches, "faiss", similarity=args.similarity))
        if k <= (1_000 if args.quick else DENSE_LIMIT):
            results.append(run_child(k, None, max(3, cases // 4) if k > 1000 else cases, args.patches,
                                     similarity=args.similarity))
        else:
            gb = 4 * (k + 1) ** 2 / 1e9
            why = (f"infeasible, one (K+1)^2 float32 matrix is {gb:.0f} GB" if k > DENSE_LIMIT
                   else "skipped by --quick (seconds per case)")
            results.append({"k": k, "m": None, "search": "torch", "error": f"not run: {why}"})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[0]
    print(f"node dim {2 * EMBED}, patch dim {PATCH_DIM}, bag {args.patches} patches, {cases} cases per "
          f"setting (medians); load average {load} on {os.cpu_count()} cores")
    print("case/graph ms: batch-1 wall clock on 2 threads; cpu1: CPU ms on 1 thread (robust to other jobs); "
          f"batch{BATCH}: wall ms per case when {BATCH} cases share one call")
    print(f"{'K':>7} {'mode':<27}{'case ms':>8}{'graph ms':>9}{'case cpu1':>10}{'graph cpu1':>11}"
          f"{f'batch{BATCH}':>9}{'peak-base MiB':>14}{'keys MiB':>9}{'recall':>7}")
    for r in results:
        mode = "dense" if r["m"] is None else f"candidates m={r['m']}"
        mode += " faiss" if r["search"] == "faiss" else f" {r.get('keys', '')}" if r["m"] else ""
        if "error" in r:
            print(f"{r['k']:>7} {mode:<27} {r['error']}")
            continue
        batch = f"{r['batch_ms']:>9.1f}" if r.get("batch_ms") is not None else f"{'-':>9}"
        keys = f"{r['key_mb']:>9.0f}" if "key_mb" in r else f"{'-':>9}"
        recall = f"{r['recall']:>7.3f}" if "recall" in r else f"{'-':>7}"
        print(f"{r['k']:>7} {mode:<27}{r['whole_ms']:>8.1f}{r['graph_ms']:>9.1f}{r['whole_cpu1_ms']:>10.1f}"
              f"{r['graph_cpu1_ms']:>11.1f}{batch}{r['peak_mb'] - r['base_mb']:>14.0f}{keys}{recall}")
    cand = {r["k"]: r for r in results if r["m"] is not None and r["search"] == "torch" and "error" not in r
            and r.get("keys") == "float16"}
    if len(cand) == len(sizes):
        mem = [cand[k]["peak_mb"] - cand[k]["base_mb"] for k in sizes]
        growth = ", ".join(f"x{mem[i + 1] / mem[i]:.1f}" for i in range(len(sizes) - 1))
        per_row = (mem[-1] - mem[0]) / (sizes[-1] - sizes[0]) * 2**20
        print(f"candidate-mode memory growth per 10x K: {growth} (linear -> x10 once the fixed part is "
              f"small; quadratic -> x100); slope {per_row:.0f} bytes per buffer row "
              f"(buffer rows {4 * 2 * EMBED} + float16 keys {2 * (EMBED if args.similarity == 'wsi' else 2 * EMBED)})")
        top = cand[sizes[-1]]
        # 1-thread CPU time bounds the idle 2-core wall time from above; wall time is at other jobs' mercy
        ok = min(top["whole_ms"], top["whole_cpu1_ms"]) <= 50
        by = "wall" if top["whole_ms"] <= 50 else "1-thread CPU time"
        print(f"latency per case at K = {sizes[-1]:.0e}: {top['whole_ms']:.1f} ms wall (2 threads), "
              f"{top['whole_cpu1_ms']:.1f} ms CPU (1 thread), "
              f"{top.get('batch_ms') or float('nan'):.1f} ms in batches of {BATCH}; "
              f"target <= 50 ms: {f'met ({by})' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
