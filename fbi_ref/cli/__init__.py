"""The `fbi-ref` command line (top layer: it may import every other subpackage; nothing imports it).

main.py parses the command line and turns errors into one line and an exit code; args.py holds what the
commands share; each command group has its module: figure_commands.py (demo, explain, layers, sweep),
weights.py, reference.py (reference, compare), evaluate.py. `python -m fbi_ref.cli` runs __main__.py.
"""
from fbi_ref.cli.main import console_main, main

__all__ = ["main", "console_main"]
