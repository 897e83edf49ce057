"""The `fbi-ref` command line: explanations as figures, reference files for re-implementers, the weights cache.

    fbi-ref demo                                  # Shapes images explained by the embedded model
    fbi-ref explain cat.jpg --model vgg16         # one figure per image, in the style of the paper's Table 1
    fbi-ref layers cat.jpg                        # FBI's walk layer by layer
    fbi-ref sweep cat.jpg --k 0.1,0.5 --tau 1,10  # FBI over a grid of k and tau
    fbi-ref weights fetch vgg16                   # download the official Keras weights into the cache
    fbi-ref reference --model vgg16 --images cat.jpg --out ref.npz
    fbi-ref compare ref.npz mine.npz              # which array differs first
    fbi-ref methods fbi                           # a method's options: defaults and allowed values

Exit codes: 0 success; 1 a check failed (compare, weights verify); 2 bad arguments or files, reported in
one line on stderr. The commands live beside this module: figure_commands.py (demo, explain, layers, sweep),
methods.py, weights.py, reference.py (reference, compare) and evaluate.py.
"""
from __future__ import annotations

import argparse
import sys

from fbi_ref.cli import evaluate, figure_commands, methods, reference, weights
from fbi_ref.cli.args import OneLineParser, UsageError, announce_compiling, command_parser, silence_stdout
from fbi_ref.errors import FbiRefError
from fbi_ref.io.paths import shown
from fbi_ref.nn.kernels import use_workqueue_threads
from fbi_ref.nn.memory import keep_freed_memory
from fbi_ref.version import __version__

PROG = "fbi-ref"
EPILOG = """examples:
  fbi-ref demo --out demo.png
  fbi-ref explain photos/ --model vgg16 --method fbi,guided_backprop --out explanations/
  fbi-ref reference --model vgg16 --images cat.jpg --out ref.npz && fbi-ref compare ref.npz mine.npz

Run `fbi-ref COMMAND --help` for each command's options and an example; docs/cli.md has them all."""


def build_parser():
    """The whole command line: every subcommand with its options."""
    parser = OneLineParser(prog=PROG, description="Forward-Backward Interpretability (FBI) and the methods it "
                           "is compared with, for Keras VGG models.", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for commands in (figure_commands, methods, weights, reference, evaluate):
        commands.register(sub, command_parser)
    return parser


def main(argv=None):
    """Run the command line; returns the exit code (0 ok, 1 a check failed, 2 bad arguments or files, 130 Ctrl-C)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prefix = f"{PROG}: error:"
    try:
        try:
            args = parse(argv)
        except SystemExit as e:  # --help and --version exit 0 from inside argparse
            return e.code if isinstance(e.code, int) else 0
        prefix = " ".join([PROG, args.command, *filter(None, [getattr(args, "action", None)])]) + ": error:"
        announce_compiling(args)  # says so if this command is the one that compiles the numba kernels
        return int(args.run(args) or 0)
    except UsageError as e:
        return fail(str(e))
    except FbiRefError as e:
        return fail(f"{prefix} {one_line(e)}")
    except BrokenPipeError:  # a reader such as `head` closed stdout: not an error of ours, and nothing to say
        silence_stdout()
        return 141  # what a shell reports for a program ended by SIGPIPE
    except OSError as e:
        return fail(f"{prefix} {os_error_text(e)}")
    except KeyboardInterrupt:
        return fail(f"{prefix} interrupted", 130)


def parse(argv):
    """The parsed command line; `evaluate` takes everything after it as is, for fbi_ref.evaluate to parse."""
    if argv[:1] == ["evaluate"]:
        return argparse.Namespace(command="evaluate", rest=argv[1:], run=evaluate.run_evaluate, quiet=False)
    return build_parser().parse_args(attach_negative_values(argv))


def attach_negative_values(argv):
    """['--tau', '-inf,1'] -> ['--tau=-inf,1']: argparse would take '-inf' for an option and complain."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--tau" and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1][1:2] in "i.0123456789":
            out.append(f"--tau={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def fail(message, code=2):
    """Print one line on stderr and return the exit code."""
    print(shown(message), file=sys.stderr)
    return code


def one_line(error):
    """An exception's message as a single line."""
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())


def os_error_text(e):
    """'PATH: reason' for an OSError such as a folder that cannot be written."""
    reason = e.strerror or one_line(e)
    return f"{shown(e.filename)}: {reason}" if e.filename else reason


def console_main():
    """The `fbi-ref` program: main() in a process of its own, whose freed memory malloc may keep for reuse and
    whose numba kernels run on the workqueue threads: settings of the whole process, so not in main(), which
    tests and programs call."""
    keep_freed_memory()  # fewer page faults per explanation (fbi_ref/nn/memory.py)
    use_workqueue_threads()  # no spinning omp threads against OpenBLAS's (fbi_ref/nn/kernels.py)
    return main()
