"""Running the real CLI entry point in-process: its exit code, as the shell would see it."""
from msrl_plugin.cli import main


def run(args, capsys=None) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code or 0
    return 0
