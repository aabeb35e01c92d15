"""Registered aggregators. Importing this package registers the built-in ones."""
from .abmil import ABMILAggregator
from .base import Aggregator
from .generated import CVAEFusionAggregator, ReconFusionAggregator
from .label_borrowing import MSRLLabelOnly  # noqa: F401 (registers the label-only control)
from .msrl import MSRLAggregator
from .msrl_forms import (
    MSRLHAggregator,
    MSRLKNNCosine,
    MSRLKNNEuclidean,
    MSRLMultiAggregator,
    MSRLOnlineBuffer,
    MSRLPaperAggregator,
    MSRLRandomGSL,
)
from .multimodal import LateFusionAggregator, SNNAggregator
from .torchmil_baselines import TORCHMIL_AGGREGATORS, EncoderMILAggregator

__all__ = ["Aggregator", "ABMILAggregator", "MSRLAggregator", "SNNAggregator", "LateFusionAggregator",
           "ReconFusionAggregator", "CVAEFusionAggregator", "MSRLHAggregator", "MSRLMultiAggregator",
           "MSRLKNNEuclidean", "MSRLKNNCosine", "MSRLRandomGSL", "MSRLOnlineBuffer", "MSRLPaperAggregator",
           "EncoderMILAggregator", "TORCHMIL_AGGREGATORS"]
