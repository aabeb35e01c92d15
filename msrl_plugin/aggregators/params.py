"""Hyper-parameter constraints shared by every aggregator, checked scikit-learn style (one error line)."""
from __future__ import annotations

import inspect
import re
from numbers import Integral, Real
from pathlib import Path

from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions

from ..errors import BadInputError, CheckpointError
from ..nn.fusion import FUSIONS
from ..nn.snn import ACTIVATIONS as SNN_ACTIVATIONS

_DAMAGED_FIX = "re-save the model with msrl-plugin train"
#: what a genomics-reading model does with cases that lack genomics (``missing_genomics``)
MISSING_GENOMICS = ("error", "impute_mean")


def _ints(low: int) -> list:
    return [Interval(Integral, low, None, closed="left")]


def _reals(low: float, high: float | None = None, closed: str = "left") -> list:
    return [Interval(Real, low, high, closed=closed)]


# scikit-learn style constraints, by parameter name, for every aggregator that has the parameter (a subclass adds
# its own in ``_parameter_constraints``); checked when a model is created, fitted or loaded (check_params)
PARAMETER_CONSTRAINTS: dict[str, list] = {
    **{name: _ints(1) for name in ("batch_size", "hidden_dim", "embed_dim", "decoder_dim",
                                   "latent_dim", "omic_dim", "k", "learner_layers", "buffer_size",
                                   "pretrain_batch_size", "n_blocks", "n_omic_blocks", "n_bins")},
    **{name: [*_ints(1), None] for name in ("attn_dim", "max_patches", "buffer_candidates", "batch_patches")},
    # max_epochs=0 is an untrained model (a control); a negative budget is a typo
    **{name: _ints(0) for name in ("max_epochs", "pretrain_epochs", "kl_warmup", "seed")},
    **{name: _reals(0, closed="neither") for name in ("lr", "pretrain_lr", "temperature")},
    **{name: _reals(0) for name in ("reg", "align_weight", "recon_weight", "kl_weight", "cosine_exponent")},
    **{name: _reals(0, 1) for name in ("dropout", "gcn_dropout", "dropedge", "maskfeat_rate_learner",
                                       "maskfeat_rate_anchor")},
    **{name: _reals(0, 1, closed="both") for name in ("alpha_surv", "ema_momentum", "anchor_tau")},
    **{name: ["boolean"] for name in ("weighted_sample", "verbose", "train_gene_encoder")},
    "precision": [StrOptions({"auto", "fp32", "bf16"})],
    "fusion": [StrOptions(set(FUSIONS))],
    **{name: [StrOptions(set(SNN_ACTIVATIONS))] for name in ("snn_activation", "activation")},
    "missing_genomics": [StrOptions(set(MISSING_GENOMICS))],
    # one GPU of up to 16 by index; the CLI offers auto/cpu/cuda
    "device": [StrOptions({"auto", "cpu", "cuda"} | {f"cuda:{i}" for i in range(16)})],
}
#: the train flag of a hyper-parameter (others are given as --param NAME=VALUE)
PARAMETER_FLAGS = {"max_epochs": "--max-epochs", "lr": "--lr", "reg": "--reg", "dropout": "--drop-out",
                   "alpha_surv": "--alpha-surv", "batch_size": "--batch-size", "seed": "--seed",
                   "precision": "--precision"}


def check_params(estimator: BaseEstimator, path: str | Path | None = None) -> None:
    """Raise one :class:`BadInputError` (:class:`CheckpointError` for a checkpoint at ``path``) naming the first
    hyper-parameter outside its range, e.g. ``batch_size must be an int in the range [1, inf), got 0``."""
    try:
        estimator._validate_params()  # scikit-learn's checker over ``_parameter_constraints``
    except InvalidParameterError as exc:
        match = re.match(r"The '(\w+)' parameter of \w+ must be (.*)\. Got (.*) instead\.$", str(exc), re.S)
        name, rule, got = match.groups() if match else ("a parameter", str(exc), "?")
        problem = f"model {getattr(estimator, 'name', type(estimator).__name__)!r}: {name} must be {rule}, got {got}"
        if path is not None:
            raise CheckpointError(f"damaged checkpoint: {problem}", path, _DAMAGED_FIX) from None
        default = inspect.signature(type(estimator)).parameters.get(name)
        example = "" if default is None or default.default is None else default.default
        flag = f"{PARAMETER_FLAGS[name]} {example}" if name in PARAMETER_FLAGS else f"--param {name}={example}"
        raise BadInputError(problem, fix=f"pass e.g. {flag.strip()} (the default)" if example != "" else
                            f"pass a valid {flag.strip()}") from None
