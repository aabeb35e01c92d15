"""The ``msrl-plugin`` command line: ``main`` is the entry point, ``cli`` the click group."""
from .main import cli, main

__all__ = ["cli", "main"]
