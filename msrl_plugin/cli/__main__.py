"""``python -m msrl_plugin.cli``: the same as the ``msrl-plugin`` command."""
from .main import main

main()
