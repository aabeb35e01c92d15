"""Registered aggregators. Importing this package registers the built-in ones."""
from .abmil import ABMILAggregator
from .base import Aggregator

__all__ = ["Aggregator", "ABMILAggregator"]
