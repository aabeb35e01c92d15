"""Why MSRL wins or loses on one fold: the diagnostics of ``shared/benchmark.md`` for one fitted model.

For a semi-synthetic cohort (the generator knows the true log-hazard eta) it fits ABMIL and MSRL on one
site-held-out fold and prints, for the test cases:

- the Spearman of each predictor with eta (ABMIL; MSRL's own head, its borrowed genomic risk, the mean of the
  two that it predicts), next to the c-index;
- neighbour quality: the Spearman of eta with the mean true eta of each case's buffer neighbours (the ideal
  read-out of the neighbours it picked) and that read-out's c-index;
- alignment: the cosine of the inductor's g~ with phi_G(real genomics), and g~ -> g retrieval recall@5;
- the genomic risk head r_G on the case's own real genomics (the ceiling of what is borrowed);
- borrowing: the correlation of predictions with and without the buffer's genomics shuffled (1.0 = ignored).

Usage::

    python benchmarks/msrl_diagnostics.py --seed 0 --fold 0                  # quick-tier cohort, ~1 min
    python benchmarks/msrl_diagnostics.py --param readout=node --param borrow=none --param similarity=fused
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from scipy.stats import spearmanr

from msrl_plugin.aggregators.msrl_fitted import shuffle_buffer_genomics
from msrl_plugin.batching import batches, collate
from msrl_plugin.evaluation.metrics import concordance_index
from msrl_plugin.registry import create_aggregator
from msrl_plugin.synth import CohortConfig, generate_cohort

BUDGET = {"max_epochs": 20, "max_patches": 128}
MSRL_QUICK = {"embed_dim": 64, "pretrain_epochs": 30}


def risk_of(logits: torch.Tensor) -> np.ndarray:
    """Risk = -sum of the survival curve (the project's convention) from hazard logits."""
    return -torch.cumprod(1 - torch.sigmoid(logits), dim=1).sum(dim=1).numpy()


@torch.no_grad()
def msrl_parts(model, cohort) -> dict[str, torch.Tensor]:
    """Per test case: head logits, borrowed logits, neighbour weights (B, K), g~ and phi_G(real g)."""
    net = model.model_.eval()
    data = model._case_data(cohort)
    parts: dict[str, list] = {"head": [], "borrowed": [], "weights": [], "g_tilde": [], "g_real": []}
    for index in batches(torch.arange(len(data)), 16):
        batch = collate(data, index)
        h = net.encode_wsi(batch.x, batch.mask)
        f = net.online_nodes(h)
        z, graph, _ = net.graph_forward(f, batch.case_ids)
        head = net.head(net.readout_features(z, f, h))
        parts["head"].append(head)
        parts["borrowed"].append(net.borrowed_logits(graph) if net.genomic_head is not None
                                 else torch.zeros_like(head))
        parts["weights"].append(net.neighbour_weights(graph))
        parts["g_tilde"].append(f[:, : net.embed_dim])
        parts["g_real"].append(net.gene_encoder.eval()(batch.genomics))
    return {k: torch.cat(v) for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="an MSRL setting")
    args = parser.parse_args(argv)
    from msrl_plugin.cli.compare import parse_value

    params = {**MSRL_QUICK, **{k: parse_value(v) for k, _, v in (p.partition("=") for p in args.param)}}
    torch.set_num_threads(1)
    synth = generate_cohort(CohortConfig.test_tier(n_cases=args.cases), args.seed)
    cohort, eta = synth.to_cohort(), synth.truth.eta
    train_ids, test_ids = synth.folds[args.fold]
    train, test = cohort.subset(list(train_ids)), cohort.subset(list(test_ids))
    true = eta.loc[test.case_ids].to_numpy()

    def report(name: str, risk: np.ndarray) -> None:
        c = concordance_index(test.times(), test.events(), risk)
        print(f"{name:<34} spearman(eta) {spearmanr(risk, true).correlation:+.3f}   c-index {c:.3f}")

    abmil = create_aggregator("abmil", seed=args.seed, **BUDGET).fit(train)
    msrl = create_aggregator("msrl", seed=args.seed, **{**BUDGET, **params}).fit(train)
    print(f"seed {args.seed}, fold {args.fold}: {len(train)} train / {len(test)} test cases; "
          f"WSI-only oracle spearman {spearmanr(synth.truth.eta_wsi.loc[test.case_ids], true).correlation:.3f}")
    report("ABMIL", abmil.predict(test)["risk"].to_numpy())
    parts = msrl_parts(msrl, test)
    report("MSRL prediction", msrl.predict(test)["risk"].to_numpy())
    report("  its own head", risk_of(parts["head"]))
    report("  its borrowed genomic risk", risk_of(parts["borrowed"]))
    net = msrl.model_
    if net.genomic_head is not None:
        report("  r_G on the case's own genomics", risk_of(net.genomic_head(parts["g_real"]).detach()))
    buffer_ids = net.buffer.snapshot()[1]
    buffer_eta = np.array([eta.get(i, np.nan) if i else np.nan for i in buffer_ids])
    w = parts["weights"].numpy()
    w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    report("  ideal read-out: neighbours' eta", (w * np.nan_to_num(buffer_eta)).sum(axis=1))
    print(f"neighbours per case {float((parts['weights'] > 0).sum(1).float().mean()):.1f}")
    g_t, g_r = parts["g_tilde"], parts["g_real"]
    sim = torch.nn.functional.normalize(g_t, dim=1) @ torch.nn.functional.normalize(g_r, dim=1).t()
    recall = float((sim.topk(5, dim=1).indices == torch.arange(len(sim))[:, None]).any(dim=1).float().mean())
    print(f"cos(g~, phi_G(g)) {float(torch.nn.functional.cosine_similarity(g_t, g_r).mean()):.3f}; "
          f"g~ -> g recall@5 {recall:.2f} (chance {5 / len(sim):.2f})")
    shuffled = shuffle_buffer_genomics(msrl, 0).predict(test)["risk"].to_numpy()
    corr = np.corrcoef(msrl.predict(test)["risk"].to_numpy(), shuffled)[0, 1]
    print(f"corr(predictions, shuffled-buffer predictions) {corr:.3f} (1.0 = the buffer's genomics are ignored)")
    report("shuffled-buffer control", shuffled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
