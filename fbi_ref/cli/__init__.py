"""The `fbi-ref` command line (top layer: it may import every other subpackage; nothing imports it).

program.py parses the command line and turns errors into one line and an exit code; args.py holds what the
commands share; each command group has its module: figure_commands.py (demo, explain, layers, sweep),
methods.py, weights.py, reference.py (reference, compare), evaluate.py; stream.py runs explain and reference in
resumable batches (locally or on Dask), voc.py is evaluate's pointing game on a VOC-style folder.
`python -m fbi_ref.cli` runs __main__.py.

This file stays light (no numpy): the `fbi-ref` program starts here, and Ctrl-C while the rest loads must
still end in one line.
"""
import signal
import sys


def main(argv=None):
    """Run the command line with `argv` (default sys.argv[1:]); returns the exit code (see program.py)."""
    from fbi_ref.cli.program import main as run
    return run(argv)


def console_main():
    """The `fbi-ref` program: exit code 130 and one line on Ctrl-C, even while numpy and numba load."""
    # While the libraries load, Ctrl-C waits: some of them catch everything at import (a bare `except:`
    # swallowed it once in 40 tries) or run native code that dies of it. Unblocked, it arrives here at once.
    masking = hasattr(signal, "pthread_sigmask")
    try:
        if masking:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            from fbi_ref.cli.program import console_main as run
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if our parent ignores Ctrl-C
                signal.signal(signal.SIGINT, _interrupted)
        finally:
            if masking:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        code = run()
        if code == 0 and _received:  # every repeat of the interrupt was dropped too: still not a success
            raise KeyboardInterrupt
        return code
    except KeyboardInterrupt:
        stop_repeating_interrupt()
        print("fbi-ref: interrupted", file=sys.stderr)
        return 130


_received = False  # a Ctrl-C has come


def _interrupted(signum, frame):
    """Ctrl-C: KeyboardInterrupt now, and again every 0.2 s until it ends the program. Python drops an exception
    raised inside a __del__ or a finalizer (it prints "Exception ignored in" and goes on), so a Ctrl-C landing
    there would be lost and the run would finish; the repeat lands in ordinary code."""
    global _received
    _received = True
    if hasattr(signal, "setitimer"):
        signal.signal(signal.SIGALRM, _interrupted_again)
        signal.setitimer(signal.ITIMER_REAL, 0.2, 0.2)
    raise KeyboardInterrupt


def _interrupted_again(signum, frame):
    """The repeat of a Ctrl-C that has not ended the program yet."""
    raise KeyboardInterrupt


def stop_repeating_interrupt():
    """Cancel the repeat once the interrupt has reached the code that reports it."""
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)


__all__ = ["main", "console_main", "stop_repeating_interrupt"]
