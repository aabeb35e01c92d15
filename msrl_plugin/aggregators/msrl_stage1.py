"""MSRL's stage 1 inside a fit: graph-structure pre-training on the training cases, or a pre-trained file, and
what fine-tuning inherits from it."""
from __future__ import annotations

import time

from ..batching import CaseData
from ..errors import CheckpointError
from ..nn.gsl_pretrain import GSLPretrainModel
from ..nn.msrl import MSRLNetwork
from ..pretrain import PretrainSettings, pretrain_gsl


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
        start = time.perf_counter()
        on_epoch = None if self._epoch_log is None else self._epoch_log.pretrain_epoch
        self.pretrain_history_ = pretrain_gsl(
            model, data, settings, self._generator, self._device(), show, on_epoch=on_epoch,
            check_epoch=lambda epoch, losses, module: self._check_finite(
                epoch, losses, [module], data, "stage-1 pre-training", "--param pretrain_lr", self.pretrain_lr))
        self.pretrain_seconds_ = time.perf_counter() - start
        return model

    def _load_pretrained(self) -> GSLPretrainModel:
        from ..pretrain_io import read_pretrained

        ckpt = read_pretrained(self.pretrained)
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
