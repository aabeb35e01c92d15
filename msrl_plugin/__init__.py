"""msrl-plugin: MSRL as a pluggable slide aggregator for TRIDENT and CLAM users."""
__version__ = "0.1.0"
