"""Save and read stage-1 (GSL pre-training) checkpoints: tensors and plain values only."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .atomic import write_torch
from .checkpoint import cpu_state, read_checkpoint

PRETRAIN_FORMAT = "msrl-plugin-pretrained-gsl"


def save_pretrained(path: str | Path, model: torch.nn.Module, feature_dim: int, genomics_columns: list[str],
                    case_ids: list[str], params: dict[str, Any], history: list[dict[str, float]]) -> Path:
    payload = {"format": PRETRAIN_FORMAT, "version": 1, "feature_dim": int(feature_dim),
               "genomics_columns": list(genomics_columns), "case_ids": list(case_ids),
               "params": {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool, type(None)))},
               "history": [{k: float(v) for k, v in h.items()} for h in history],
               "state_dict": cpu_state(model)}
    write_torch(path, payload)
    return Path(path)


def read_pretrained(path: str | Path) -> dict[str, Any]:
    """A stage-1 checkpoint, read as safely as a model checkpoint (plain tensors and values only)."""
    return read_checkpoint(path, PRETRAIN_FORMAT)


def write_pretrain_report(checkpoint: str | Path, history: list[dict[str, float]]) -> list[str]:
    """``<checkpoint>.history.csv`` (one row per epoch: loss terms, held-out retrieval) and
    ``<checkpoint>.history.png`` (their curves) beside a stage-1 checkpoint; returns a short text summary."""
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
