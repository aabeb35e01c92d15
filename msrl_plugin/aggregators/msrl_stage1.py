"""MSRL's stage 1 inside a fit: graph-structure pre-training on the training cases, or a pre-trained file, and
what fine-tuning inherits from it."""
from __future__ import annotations

import time
import warnings

from ..batching import CaseData, GenomicsScaler, load_case_data
from ..cohort import Cohort
from ..errors import BadInputError, CheckpointError
from ..heap import keep_freed_memory
from ..nn.gsl_pretrain import GSLPretrainModel
from ..nn.msrl import MSRLNetwork
from ..pretrain import PretrainSettings, pretrain_gsl, split_holdout


class Stage1Mixin:
    """Stage 1 of :class:`~msrl_plugin.aggregators.msrl.MSRLAggregator` (its keywords, its fitted state)."""

    def _pretrain_model(self, feature_dim: int, genomics_dim: int) -> GSLPretrainModel:
        return GSLPretrainModel(feature_dim, genomics_dim if self.modality == "fused" else 0, self.embed_dim,
                                self.attn_dim, self.modality, self.k, self.learner_layers,
                                self.learner_activation, dropedge=self.dropedge, dropout=self.dropout,
                                snn_activation=self.snn_activation, wsi_encoder=self._encoder(feature_dim))

    def pretrain(self, data: CaseData, progress: bool | None = None) -> GSLPretrainModel:
        """Stage 1 on ``data`` (training cases only); the result is kept in ``pretrain_history_``."""
        model = self._pretrain_model(self.feature_dim_, len(self.genomics_columns_))
        settings = PretrainSettings(self.pretrain_epochs, self.pretrain_lr, self.pretrain_batch_size,
                                    self.maskfeat_rate_learner, self.maskfeat_rate_anchor, self.anchor_tau,
                                    self.anchor_init, self.temperature, self.max_patches,
                                    inter_level=self.pretrain_inter_level, holdout=self.pretrain_holdout)
        show = self.verbose if progress is None else progress
        keep_freed_memory(self._device())
        start = time.perf_counter()
        on_epoch = None if self._epoch_log is None else self._epoch_log.pretrain_epoch
        self.pretrain_history_ = pretrain_gsl(
            model, data, settings, self._generator, self._device(), show, on_epoch=on_epoch,
            check_epoch=lambda epoch, losses, module: self._check_finite(
                epoch, losses, [module], data, "stage-1 pre-training", "--param pretrain_lr", self.pretrain_lr))
        self.pretrain_seconds_ = time.perf_counter() - start
        return model

    def pretrain_pool(self, cohort: Cohort, score_holdout: float = 0.15,
                      progress: bool | None = None) -> GSLPretrainModel:
        """Stage 1 once, on every case of a pool (``msrl-plugin pretrain``; no labels read).

        With ``score_holdout`` > 0 a scoring run first holds that share of the cases with genomics out and
        scores WSI -> genomics retrieval on them after each epoch; the model returned is then trained again,
        from the same seed, on every case. ``pretrain_history_`` is the final run's losses with the scoring
        run's retrieval beside them; ``pretrain_score_`` its last value, the hold-out and its size."""
        from .base import seed_everything
        from .params import check_params

        check_params(self)
        self._warn_ignored()
        self._fit_inputs(cohort)
        data = load_case_data(cohort, self.scaler_, None)
        kept, log, scoring = self.pretrain_holdout, self._epoch_log, []
        try:
            for holdout in ([score_holdout] if score_holdout > 0 else []) + [0.0]:
                self.pretrain_holdout = holdout
                self._epoch_log = None if holdout else log  # --log-data: the final run's losses, live
                self._generator = seed_everything(self.seed)
                model = self.pretrain(data, progress)
                scoring = self.pretrain_history_ if holdout else scoring
        finally:
            self.pretrain_holdout, self._epoch_log = kept, log
        settings = PretrainSettings(holdout=score_holdout)
        held = len(split_holdout(data, settings, seed_everything(self.seed))[1]) if score_holdout > 0 else 0
        for epoch, (row, scored) in enumerate(zip(self.pretrain_history_, scoring, strict=False), start=1):
            retrieval = {k: scored[k] for k in ("recall_at_k", "chance") if k in scored}
            row.update(retrieval)
            if log is not None and retrieval:  # and the scoring run's retrieval beside them
                log.pretrain_epoch(epoch, retrieval)
        last = self.pretrain_history_[-1] if self.pretrain_history_ else {}
        self.pretrain_score_ = {"holdout": float(score_holdout), "held_out_cases": held,
                                "trained_on_cases": len(data), "k": settings.retrieval_k,
                                **{k: last[k] for k in ("recall_at_k", "chance") if k in last}}
        return model

    def _pretrained_inputs(self, cohort: Cohort) -> tuple[Cohort, GenomicsScaler | None]:
        """``cohort`` with its genomic columns in the pre-trained file's order (aligned by name; columns the
        pool lacked are dropped with a warning) and that file's genomics scaler, so phi_G reads what it was
        pre-trained on [D]; the cohort and None when no file is used or it has no scaler (older files)."""
        self.__dict__.pop("_pretrained_ckpt", None)
        if not (self.pretrained and self.use_pretraining and self._borrows()):
            return cohort, None
        from ..pretrain_io import read_pretrained

        self._pretrained_ckpt = ckpt = read_pretrained(self.pretrained)
        genes = ckpt["genomics_columns"]
        have = [] if cohort.genomics is None else [str(c) for c in cohort.genomics.columns]
        if not genes or have == genes:
            return cohort, ckpt["scaler"]
        lacking = [g for g in genes if g not in have]
        if lacking:
            raise BadInputError(f"the genomics table lacks {len(lacking)} of the {len(genes)} genes the "
                                f"pre-trained file {self.pretrained} was trained on (e.g. {lacking[0]!r})",
                                fix="give a genomics table with the pool's genes (matched by column name), or "
                                    "pre-train on a pool with this cohort's genes")
        extra = len(have) - len(genes)
        if extra:
            warnings.warn(f"{extra} genomic column(s) not in the pre-training pool are left out (the pre-trained "
                          f"phi_G reads the pool's {len(genes)} genes)", UserWarning, stacklevel=3)
        frame = cohort.genomics.copy()
        frame.columns = [str(c) for c in frame.columns]
        return (Cohort(cohort.cases, cohort.slides, cohort.bags, cohort.task, frame[genes], cohort.class_names,
                       cohort.labelled), ckpt["scaler"])

    def _load_pretrained(self) -> GSLPretrainModel:
        from ..pretrain_io import read_pretrained

        ckpt = self.__dict__.pop("_pretrained_ckpt", None) or read_pretrained(self.pretrained)
        if ckpt["feature_dim"] != self.feature_dim_ or ckpt["genomics_columns"] != self.genomics_columns_:
            raise CheckpointError("pre-trained model was trained on other features or genomic columns",
                                  self.pretrained, "pre-train on the same feature and genomics tables")
        model = self._pretrain_model(self.feature_dim_, len(self.genomics_columns_))
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
        if unexpected or any(not k.startswith("cross.") for k in missing):  # older files lack only `cross`
            raise CheckpointError("pre-trained model does not match this MSRL configuration", self.pretrained,
                                  "pre-train again with the same embed_dim, k and modality")
        self.pretrain_history_ = []
        return model

    def _transfer(self, pre: GSLPretrainModel, net: MSRLNetwork, learned_graph: bool) -> None:
        """Initialise the online modules from stage 1 (the inductor and head start at random) [P];
        ``pretrain_transfer`` keeps the encoders it names out at their random initialisation."""
        if self.pretrain_transfer in ("all", "wsi+graph"):
            net.wsi_encoder.load_state_dict(pre.wsi_encoder.state_dict())
        if net.gene_encoder is not None and self.pretrain_transfer == "all":
            net.gene_encoder.load_state_dict(pre.gene_encoder.state_dict())
        net.gcn.load_state_dict(pre.finetune_stack.gcn.state_dict())
        if learned_graph:  # a learner over the WSI half takes the trailing block of the fused learner's weights
            start = net.graph_learner.start
            net.graph_learner.load_state_dict({name: w[start:] for name, w in
                                               pre.finetune_stack.learner.state_dict().items()})
