"""Readers and writers for the files TRIDENT, CLAM, STAMP and friends produce (installed as msrl_plugin.adapters)."""
