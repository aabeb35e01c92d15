"""Save and read stage-1 (GSL pre-training) checkpoints: tensors and plain values only."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .atomic import write_torch
from .checkpoint import cpu_state, read_checkpoint

PRETRAIN_FORMAT = "msrl-plugin-pretrained-gsl"


def save_pretrained(path: str | Path, model: torch.nn.Module, feature_dim: int, genomics_columns: list[str],
                    case_ids: list[str], params: dict[str, Any], history: list[dict[str, float]], *,
                    scaler=None, pool: list[dict[str, Any]] | None = None,
                    score: dict[str, Any] | None = None) -> Path:
    """A stage-1 checkpoint: the weights, the case ids it saw (``train``/``compare`` refuse a fold whose test
    cases are among them), the genomic columns and, from ``msrl-plugin pretrain``, the genomics ``scaler`` it
    was trained with, the ``pool``'s cohorts and the retrieval ``score`` of its scoring run."""
    payload = {"format": PRETRAIN_FORMAT, "version": 1,  # new keys are optional: older files still read
               "feature_dim": int(feature_dim),
               "genomics_columns": list(genomics_columns), "case_ids": list(case_ids),
               "params": {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool, type(None)))},
               "history": [{k: float(v) for k, v in h.items()} for h in history],
               "pool": list(pool or []), "score": dict(score or {}), "state_dict": cpu_state(model)}
    if scaler is not None:
        payload["genomics_mean"] = torch.from_numpy(scaler.mean)
        payload["genomics_std"] = torch.from_numpy(scaler.std)
    write_torch(path, payload)
    return Path(path)


def read_pretrained(path: str | Path) -> dict[str, Any]:
    """A stage-1 checkpoint, read as safely as a model checkpoint (plain tensors and values only); its
    ``scaler`` is a :class:`~msrl_plugin.batching.GenomicsScaler`, or None in files written without one."""
    from .batching import GenomicsScaler
    from .checkpoint import check_scaler

    ckpt = read_checkpoint(path, PRETRAIN_FORMAT)
    ckpt["scaler"] = None
    if "genomics_mean" in ckpt:
        mean, std = ckpt["genomics_mean"].numpy(), ckpt["genomics_std"].numpy()
        check_scaler(mean, std, len(ckpt["genomics_columns"]), path)
        ckpt["scaler"] = GenomicsScaler(mean, std)
    return ckpt


def write_pretrain_report(checkpoint: str | Path, history: list[dict[str, float]],
                          score: dict[str, Any] | None = None) -> list[str]:
    """``<checkpoint>.history.csv`` (one row per epoch: loss terms, held-out retrieval) and
    ``<checkpoint>.history.png`` (their curves) beside a stage-1 checkpoint; returns a short text summary
    (``score``: :meth:`~msrl_plugin.aggregators.msrl_stage1.Stage1Mixin.pretrain_pool`'s)."""
    import pandas as pd

    from .atomic import write_csv

    frame = pd.DataFrame(history)
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    base = Path(checkpoint)
    write_csv(base.with_name(base.name + ".history.csv"), frame)
    _plot_history(frame, base.with_name(base.name + ".history.png"))
    shown = frame.iloc[sorted({0, len(frame) // 2, len(frame) - 1})] if len(frame) else frame
    lines = [f"stage 1 over {len(frame)} epochs (L_gsl = intra + inter + fused; recall@k on held-out cases):",
             shown.to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    if "recall_at_k" in frame and len(frame):
        last = frame.iloc[-1]
        verdict = "above" if last["recall_at_k"] > 2 * last["chance"] else "NOT clearly above"
        lines.append(f"WSI -> genomics recall {last['recall_at_k']:.2f} vs chance {last['chance']:.2f}: "
                     f"{verdict} chance")
    if score:
        scored = (f"retrieval from a scoring run holding out {score['held_out_cases']} cases with genomics"
                  if score.get("held_out_cases") else "no retrieval score (no scoring run)")
        lines.append(f"the checkpoint is trained on all {score['trained_on_cases']} pool cases; {scored}")
    return lines


def _plot_history(frame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomic import atomic_path

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for col in ("loss", "intra", "inter", "fused"):
        if col in frame:
            left.plot(frame["epoch"], frame[col], label=col)
    left.set(xlabel="epoch", ylabel="loss", title="stage-1 losses")
    left.legend(fontsize=8)
    if "recall_at_k" in frame:
        right.plot(frame["epoch"], frame["recall_at_k"], label="recall@k (held-out)")
        right.plot(frame["epoch"], frame["chance"], "--", label="chance")
        right.legend(fontsize=8)
    right.set(xlabel="epoch", ylabel="WSI -> genomics recall", title="cross-modal retrieval")
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
