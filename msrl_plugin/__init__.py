"""msrl-plugin: MSRL as a pluggable slide aggregator for TRIDENT and CLAM users."""
__version__ = "0.1.0"

from . import aggregators  # noqa: F401  (registers the built-in aggregators)
from .cohort import Cohort, InMemoryBags
from .errors import MSRLPluginError
from .registry import create_aggregator, list_aggregators, register_aggregator

__all__ = ["Cohort", "InMemoryBags", "MSRLPluginError", "create_aggregator", "list_aggregators",
           "register_aggregator"]
