"""The `fbi-ref` command line (top layer: it may import every other subpackage; nothing imports it).

program.py parses the command line and turns errors into one line and an exit code; args.py holds what the
commands share; each command group has its module: figure_commands.py (demo, explain, layers, sweep),
methods.py, weights.py, reference.py (reference, compare), evaluate.py; stream.py runs explain and reference in
resumable batches (locally or on Dask), voc.py is evaluate's pointing game on a VOC-style folder.
`python -m fbi_ref.cli` runs __main__.py.

This file stays light (no numpy): the `fbi-ref` program starts here, and Ctrl-C while the rest loads must
still end in one line.
"""
# `_signal` is the builtin that `signal` wraps: importing `signal` loads enum (~10 ms), and Ctrl-C in a window
# before the mask below gets Python's default traceback (a test's Ctrl-C at 20 ms after start hit it).
import _signal
import sys


def main(argv=None):
    """Run the command line with `argv` (default sys.argv[1:]); returns the exit code (see program.py)."""
    from fbi_ref.cli.program import main as run
    return run(argv)


def console_main():
    """The `fbi-ref` program: exit code 130 and one line on Ctrl-C, even while numpy and numba load."""
    # While the libraries load, Ctrl-C waits: some of them catch everything at import (a bare `except:`
    # swallowed it once in 40 tries) or run native code that dies of it. Unblocked, it arrives here at once.
    masking = hasattr(_signal, "pthread_sigmask")
    try:
        if masking:
            _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})
        try:
            from fbi_ref.cli.program import console_main as run
        finally:
            if masking:
                _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGINT})
        return run()
    except KeyboardInterrupt:
        print("fbi-ref: interrupted", file=sys.stderr)
        return 130


__all__ = ["main", "console_main"]
