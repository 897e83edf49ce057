"""`fbi-ref methods`: every explanation method and its options, as their records declare them
(fbi_ref/methods/catalog.py, FBI's options in fbi_ref/methods/fbi.py)."""
from __future__ import annotations

from fbi_ref.cli.args import emit, emit_json
from fbi_ref.errors import InputError
from fbi_ref.methods.catalog import METHODS
from fbi_ref.reference.build import plain


def runs(method):
    """How the method runs, in words."""
    return "one walk" if method.one_walk else "several walks or forward passes"


def method_record(method):
    """A method's record as plain values: name, label, how it runs, its heat map, every option."""
    return {"name": method.name, "label": method.label, "summary": method.summary,
            "runs": runs(method),
            "heatmap": method.reduction, "display": method.display,
            "options": [{"name": o.name, "default": plain(o.default), "choices": plain(list(o.choices)),
                         "help": o.help, "paper": o.paper} for o in method.options]}


def option_line(option):
    """'  tau_mode = absolute    absolute | relative: tau as a value, or ...'."""
    values = " | ".join(map(str, option.choices)) + ": " if option.choices else ""
    return f"  {option.name:<14} = {str(option.default):<14} {values}{option.help}"


def run_methods(args):
    """Print the methods (all, or those named) with their options, defaults and allowed values."""
    unknown = [name for name in args.names if name not in METHODS]
    if unknown:
        raise InputError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    chosen = [METHODS[name] for name in args.names] or list(METHODS.values())
    if args.json:
        emit_json({"methods": [method_record(m) for m in chosen]})
        return 0
    for method in chosen:
        emit(f"{method.name} ({method.label}; {runs(method)}; heat map: {method.reduction}): {method.summary}")
        for option in method.options:
            emit(option_line(option))
        if not method.options:
            emit("  (no options)")
    return 0


def register(sub, command_parser):
    """Add `methods` to the subcommands."""
    p = command_parser(sub, "methods", "every method and its options (name = default, allowed values)",
                       "List the explanation methods with their options: each option's default, its allowed values "
                       "and what it does; set one with --option METHOD.NAME=VALUE (explain, reference, ...). "
                       "docs/methods.md says where each FBI option comes from in the paper.",
                       "fbi-ref methods fbi")
    p.add_argument("names", nargs="*", metavar="METHOD", help="only these methods (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run_methods)
