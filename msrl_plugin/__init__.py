"""msrl-plugin: MSRL as a pluggable slide aggregator for TRIDENT and CLAM users."""
__version__ = "0.1.0"

from .cohort import Cohort, InMemoryBags  # noqa: E402
from .errors import MSRLPluginError  # noqa: E402
from .registry import create_aggregator, list_aggregators, register_aggregator  # noqa: E402

__all__ = ["Cohort", "InMemoryBags", "MSRLPluginError", "create_aggregator", "list_aggregators",
           "register_aggregator"]
