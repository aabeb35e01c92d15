"""The uniform aggregator contract: ``fit(cohort) -> self``, ``predict(cohort) -> DataFrame``, ``save``/``load``.

Hyper-parameters are explicit ``__init__`` keywords (scikit-learn style, so ``get_params``/``clone`` work);
fitted state lives in trailing-underscore attributes. Checkpoints hold tensors, numbers and strings
only and are read with ``torch.load(weights_only=True)``: no pickle payload is ever executed.
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..atomic import write_torch
from ..batching import BagBatch, CaseData, GenomicsScaler, bag_sizes, batches, collate, epoch_order, load_case_data
from ..checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    check_bin_edges,
    check_scaler,
    cpu_state,
    embedded_provenance,
    read_checkpoint,
)
from ..cohort import Cohort
from ..divergence import TrainingDivergedError, all_finite, likely_cause
from ..errors import BadInputError, CheckpointError
from ..heap import keep_freed_memory
from ..nn.optim import make_adam
from ..tasks import make_task, task_from_state
from .params import _DAMAGED_FIX, PARAMETER_CONSTRAINTS, check_params
from .train_step import backward_step, collate_step, fit_autocast, pass_budget
from .training_state import TrainingStateMixin


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and distributed.is_distributed():
        return torch.device("cuda", distributed.rank() % torch.cuda.device_count())
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError("--device cuda was requested but no CUDA device is available",
                            fix="use --device cpu or auto")
    return torch.device(device)


def store_init_args(estimator: BaseEstimator, args: dict[str, Any]) -> None:
    """scikit-learn style ``__init__``: every keyword kept unchanged as the attribute of the same name."""
    for name in type(estimator)._get_param_names():
        setattr(estimator, name, args[name])


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class Aggregator(TrainingStateMixin, BaseEstimator):
    """Base class of every slide/case aggregator (ABMIL, MSRL and its variants, multimodal references).

    Parameters
    ----------
    max_epochs : int
        Training epochs; the last epoch's model is kept (no early stopping).
    lr : float
        Adam learning rate.
    reg : float
        Adam weight decay.
    batch_size : int
        Bags per mini-batch (padding costs no compute).
    max_patches : int or None
        At most this many randomly drawn patches per bag per training step; None = the whole bag.
    n_bins : int
        Survival: discrete time bins (quantiles of the training events).
    alpha_surv : float
        Survival: weight of the uncensored-only term of the NLL loss (MCAT's ``alpha_surv``).
    weighted_sample : bool
        Draw training bags class-balanced with replacement (CLAM/MCAT ``--weighted_sample``).
    seed : int
        Seed of weights, batches and patch sampling.
    device : {"auto", "cpu", "cuda"}
        Where to train and predict; auto = CUDA when available.
    verbose : bool
        Show per-epoch progress.
    precision : {"auto", "fp32", "bf16"}
        bf16 trains the patch encoders under bfloat16 autocast; auto = bf16 where the CPU (AVX512-BF16, AMX)
        or GPU runs it natively, else fp32. Prediction is always float32.
    dropout : float
        Dropout rate of the slide branch.
    hidden_dim : int
        Width of the hidden layer after the patch features.
    attn_dim : int
        Width of the gated-attention branches.
    """

    name: ClassVar[str] = "aggregator"
    _parameter_constraints: ClassVar[dict] = PARAMETER_CONSTRAINTS
    #: training needs genomics for (some) cases
    uses_genomics: ClassVar[bool] = False
    #: ``predict`` reads genomics too (not a WSI-only model)
    genomics_at_test: ClassVar[bool] = False

    # -- hooks for subclasses ------------------------------------------------------------------
    def _build_model(self, feature_dim: int, genomics_dim: int, n_outputs: int) -> nn.Module:
        raise NotImplementedError

    def _forward(self, model: nn.Module, batch: BagBatch) -> torch.Tensor:
        """Logits ``(B, n_outputs)`` for a batch."""
        raise NotImplementedError

    def _warn_ignored(self) -> None:
        """Warn for each keyword set to a value that this combination of keywords never reads."""

    def _training_loss(self, model: nn.Module, batch: BagBatch) -> torch.Tensor:
        return self.task_.loss(self._forward(model, batch).float(), batch.targets)

    # -- fit -----------------------------------------------------------------------------------
    def fit(self, cohort: Cohort, progress: bool | None = None) -> Aggregator:
        data = self._prepare_fit(cohort)
        self.model_ = self._build_model(self.feature_dim_, len(self.genomics_columns_),
                                        self.task_.n_outputs).to(self._device())
        self._train(self.model_, data, self._training_loss, progress=progress)
        return self

    def _prepare_fit(self, cohort: Cohort, scaler: GenomicsScaler | None = None) -> CaseData:
        """Seed, fit the task (bins/classes) and genomics scaler on these training cases (or use ``scaler``,
        e.g. a pre-training pool's), load their data."""
        check_params(self)
        self._warn_ignored()
        self._generator = seed_everything(self.seed)
        self.task_ = make_task(cohort.task, getattr(self, "n_bins", 4), getattr(self, "alpha_surv", 0.0))
        self.task_.fit(cohort)
        self._fit_inputs(cohort, scaler)
        data = load_case_data(cohort, self.scaler_, self.task_.targets(cohort))
        for i in range(len(data)):  # one read of every bag: a bad file stops the run before training starts
            data.bags[i]
        return data

    def _fit_inputs(self, cohort: Cohort, scaler: GenomicsScaler | None = None) -> None:
        """The feature dim, genomic columns and scaler of the cases a model is fitted on."""
        self.feature_dim_ = cohort.feature_dim
        values, available = cohort.genomics_matrix()
        if self.uses_genomics and not available.any():
            raise BadInputError(f"model {self.name!r} needs genomics but no training case has a genomics row",
                                fix="pass --genomics with rows keyed by case_id, or use --model abmil")
        self.genomics_columns_ = [] if cohort.genomics is None else [str(c) for c in cohort.genomics.columns]
        self.scaler_ = GenomicsScaler.fit(values, available) if scaler is None else scaler
        self.training_case_ids_ = list(cohort.case_ids)
        self._sampling = (self.task_.sampling_classes(cohort) if getattr(self, "weighted_sample", False)
                          and cohort.labelled else None)

    def _device(self) -> torch.device:
        return resolve_device(getattr(self, "device", "auto"))

    def _autocast(self, device: torch.device, model: nn.Module | None = None, data: CaseData | None = None,
                  loss_fn: Callable[[nn.Module, BagBatch], torch.Tensor] | None = None):
        """bf16 autocast for training where ``precision`` is (or ``auto`` resolves to) bf16, else a no-op; the
        choice is kept in ``precision_``, its reason in ``precision_reason_`` (:func:`.train_step.fit_autocast`)."""
        return fit_autocast(self, device, model, data, loss_fn)

    def _patch_budget(self) -> int | None:
        """``batch_patches`` where this model has it (a loss that is a mean over bags) and not distributed."""
        return None if distributed.is_distributed() else getattr(self, "batch_patches", None)

    def _train(self, model: nn.Module, data: CaseData, loss_fn: Callable[[nn.Module, BagBatch], torch.Tensor],
               progress: bool | None = None, after_step: Callable[[BagBatch], None] | None = None,
               params: list | None = None, extra_modules: dict[str, nn.Module] | None = None) -> None:
        """Adam(lr, weight_decay=reg) over ``max_epochs`` epochs of shuffled mini-batches; last epoch kept.

        With :meth:`enable_resume`, a training state (model, optimiser, ``extra_modules`` such as the EMA
        target, RNG states, epoch) is written atomically after every epoch and picked up again after a crash.
        """
        device = self._device()
        keep_freed_memory(device)
        autocast = self._autocast(device, model, data, loss_fn)
        budget = pass_budget(self._patch_budget(), self.precision_)
        sizes = bag_sizes(data) if budget else None
        optimiser = make_adam(params if params is not None else list(model.parameters()), self.lr, self.reg)
        extra_modules = extra_modules or {}
        self.history_ = []
        start = self._restore_training_state(model, optimiser, extra_modules)
        show = getattr(self, "verbose", False) if progress is None else progress
        for epoch in tqdm(range(start, self.max_epochs), desc=f"{self.name} epochs", disable=None if show else True,
                          leave=False, initial=start, total=self.max_epochs):
            model.train()
            order = epoch_order(len(data), self._generator, self._sampling)
            losses = []
            trainable = [p for group in optimiser.param_groups for p in group["params"]]
            for index in batches(order, self.batch_size):
                # every rank collates the whole batch (keeps the sampling RNG in step), computes its share
                chunks = collate_step(data, index, self.max_patches, self._generator, budget, sizes, device)
                batch = chunks[0]  # the whole batch unless a patch budget split it (no after_step then)
                optimiser.zero_grad()
                if distributed.is_distributed():
                    share = distributed.my_share(len(index))
                    batch = batch.select(share.to(batch.x.device))
                    with autocast:
                        loss = loss_fn(model, batch) * (len(share) / len(index)) if len(share) else None
                    if loss is not None:
                        loss.backward()
                    distributed.all_reduce_gradients(trainable)
                else:
                    loss = backward_step(model, chunks, loss_fn, autocast)
                optimiser.step()
                if after_step is not None:
                    after_step(batch)
                if loss is not None:
                    losses.append(loss.detach())  # read once per epoch: no host sync per step
            self._check_finite(epoch + 1, losses, [model, *extra_modules.values()], data)
            self.history_.append({"train_loss": float(torch.stack(losses).float().mean()) if losses else np.nan})
            self._save_training_state(epoch + 1, model, optimiser, extra_modules)
            if self._epoch_log is not None:
                self._epoch_log.end_epoch(self, epoch + 1, self.history_[-1]["train_loss"], optimiser)

    def _check_finite(self, epoch: int, losses: list[torch.Tensor], modules: list[nn.Module], data: CaseData,
                      stage: str = "training", lr_flag: str = "--lr", lr: float | None = None) -> None:
        """Stop the fit when a loss or weight of this epoch is non-finite; nothing of it is saved."""
        finite = all_finite(losses, modules)
        if distributed.is_distributed():  # every rank stops together (a rank's own loss may differ)
            finite = distributed.all_true(finite)
        if not finite:
            cause = likely_cause(self.lr if lr is None else lr, lr_flag, data.bags, data.case_ids)
            raise TrainingDivergedError(self.name, stage, epoch, cause)

    def training_history(self) -> pd.DataFrame:
        """Mean loss per epoch: columns ``stage`` (``pre-training`` for MSRL's stage 1, ``training``),
        ``epoch`` (1-based) and ``loss``; empty before ``fit`` (and for a model loaded from a checkpoint)."""
        rows = [{"stage": "pre-training", "epoch": i, "loss": h.get("loss", np.nan)}
                for i, h in enumerate(getattr(self, "pretrain_history_", None) or [], start=1)]
        rows += [{"stage": "training", "epoch": i, "loss": h.get("train_loss", np.nan)}
                 for i, h in enumerate(getattr(self, "history_", None) or [], start=1)]
        return pd.DataFrame(rows, columns=["stage", "epoch", "loss"])

    # -- per-epoch scalars (--log-data) ------------------------------------------------------------
    #: a :class:`~msrl_plugin.training_log.EpochLog` the training loops report to, or None
    _epoch_log = None

    def log_epochs_to(self, log) -> Aggregator:
        """Report per-epoch scalars of the next ``fit`` to ``log`` (an ``EpochLog``; None stops)."""
        self._epoch_log = log
        return self

    # -- predict -------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise BadInputError(f"model {self.name!r} is not fitted yet", fix="call fit() or load a checkpoint")

    def _case_data(self, cohort: Cohort) -> CaseData:
        self._check_fitted()
        if cohort.feature_dim != self.feature_dim_:
            raise CheckpointError(f"the cohort's patch features are {cohort.feature_dim}-d but the model was "
                                  f"trained on {self.feature_dim_}-d features",
                                  getattr(self, "checkpoint_path_", None),
                                  "use bags from the same patch encoder the model was trained on")
        if self.genomics_at_test:
            missing = sorted(set(self.genomics_columns_) - set(map(str, getattr(cohort.genomics, "columns", []))))
            if missing:
                raise BadInputError(f"model {self.name!r} reads genomics at test time; {len(missing)} trained "
                                    f"genomic column(s) are missing, e.g. {missing[0]!r}")
        return load_case_data(cohort, self.scaler_, None, self.genomics_columns_)

    @torch.no_grad()
    def predict_logits(self, data: CaseData, batch_size: int | None = None) -> torch.Tensor:
        """Logits ``(n, n_outputs)``; each case is computed independently of the others in its batch."""
        self.model_.eval()
        device = self._device()
        out = [torch.zeros(0, self.task_.n_outputs)]
        order = distributed.my_share(len(data))  # all cases when not distributed
        for index in batches(order, batch_size or self.batch_size):
            out.append(self._forward(self.model_, collate(data, index).to(device)).float().cpu())
        logits = torch.cat(out)
        return distributed.gather_rows(logits) if distributed.is_distributed() else logits

    def predict(self, cohort: Cohort) -> pd.DataFrame:
        """Per-case predictions indexed by case_id: ``risk`` (+ survival curve) or class probabilities."""
        data = self._case_data(cohort)
        return self.task_.predictions(self.predict_logits(data), data.case_ids)

    def evaluate(self, cohort: Cohort, predictions: pd.DataFrame | None = None) -> dict[str, float]:
        predictions = self.predict(cohort) if predictions is None else predictions
        return self.task_.evaluate(predictions, cohort)

    # -- save / load ---------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _set_extra_state(self, extra: dict[str, Any]) -> None:
        pass

    def checkpoint(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "aggregator": self.name,
            "params": json.dumps(self.get_params(), default=str), "task": json.dumps(self.task_.state()),
            "feature_dim": int(self.feature_dim_), "genomics_columns": list(self.genomics_columns_),
            "genomics_mean": torch.from_numpy(self.scaler_.mean), "genomics_std": torch.from_numpy(self.scaler_.std),
            "training_case_ids": list(self.training_case_ids_),
            "state_dict": cpu_state(self.model_),
            "extra": self._extra_state(),
            # how the model was made (msrl_plugin.provenance), when the run recorded it
            "provenance": json.dumps(getattr(self, "provenance_", None), default=str),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_torch(path, self.checkpoint())
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> Aggregator:
        """Load any registered aggregator's checkpoint (when called on a subclass, the kind must match)."""
        from ..registry import get_aggregator_class

        ckpt = read_checkpoint(path)
        if not isinstance(ckpt.get("aggregator"), str):
            raise CheckpointError("damaged checkpoint: it names no model", path, _DAMAGED_FIX)
        target_cls = get_aggregator_class(ckpt["aggregator"])
        if cls is not Aggregator and not issubclass(target_cls, cls):
            raise CheckpointError(f"checkpoint holds a {ckpt['aggregator']!r} model, not {cls.name!r}", path)
        try:
            model = target_cls._from_checkpoint(ckpt, path, device)
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, NotImplementedError) as exc:
            # a checkpoint is data: a missing key or a wrong type means a damaged file, never a crash
            text = " ".join(str(exc).split())[:120]
            raise CheckpointError(f"damaged or incomplete checkpoint ({type(exc).__name__}: {text})", path,
                                  _DAMAGED_FIX) from None
        model.checkpoint_path_ = Path(path)
        model.provenance_ = embedded_provenance(ckpt)
        return model

    @classmethod
    def _from_checkpoint(cls, ckpt: dict[str, Any], path: str | Path, device: str | None) -> Aggregator:
        params = {k: v for k, v in json.loads(ckpt["params"]).items() if k in cls._get_param_names()}
        if device is not None:
            params["device"] = device
        model = cls(**params)
        check_params(model, path)
        model.task_ = task_from_state(json.loads(ckpt["task"]))
        bins = getattr(model.task_, "n_bins", None)
        if model.task_.n_outputs < 1 or ("n_bins" in params and bins is not None and bins != params["n_bins"]):
            raise CheckpointError(f"damaged checkpoint: its task has {model.task_.n_outputs} outputs", path,
                                  _DAMAGED_FIX)
        if model.task_.name == "survival":
            check_bin_edges(model.task_.edges, model.task_.n_bins, path)
        model.feature_dim_ = int(ckpt["feature_dim"])
        model.genomics_columns_ = list(ckpt["genomics_columns"])
        model.scaler_ = GenomicsScaler(ckpt["genomics_mean"].numpy(), ckpt["genomics_std"].numpy())
        check_scaler(model.scaler_.mean, model.scaler_.std, len(model.genomics_columns_), path)
        model.training_case_ids_ = list(ckpt["training_case_ids"])
        model._set_extra_state(ckpt.get("extra", {}))
        module = model._build_model(model.feature_dim_, len(model.genomics_columns_), model.task_.n_outputs)
        try:
            module.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"weights do not fit a {ckpt['aggregator']!r} model "
                                  f"({str(exc).splitlines()[0]})", path) from exc
        model.model_ = module.to(model._device())
        return model
