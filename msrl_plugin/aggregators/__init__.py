"""Registered aggregators. Importing this package registers the built-in ones."""
from .abmil import ABMILAggregator
from .base import Aggregator
from .msrl import MSRLAggregator

__all__ = ["ABMILAggregator", "Aggregator", "MSRLAggregator"]
