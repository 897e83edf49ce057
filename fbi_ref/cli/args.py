"""What the `fbi-ref` commands share: the parsers, argument types and options, models, image and output paths,
and printing that respects --quiet."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
import time
from pathlib import Path

from tqdm.auto import tqdm

from fbi_ref.errors import InputError, ModelFileError
from fbi_ref.io import weights_cache, zoo
from fbi_ref.io.paths import input_file, output_file, shown
from fbi_ref.methods.catalog import METHODS, method
from fbi_ref.methods.fbi import PRESETS

IMPORTED = time.time()
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}


# --- parsers ---------------------------------------------------------------------------------

class UsageError(Exception):
    """A bad command line, already formatted as the one line to print."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line pointing at --help, instead of usage + error."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def command_parser(sub, name, help, description, example):
    """A subcommand's parser, with its example in the --help epilog and -q/--quiet."""
    parser = sub.add_parser(name, help=help, description=textwrap.fill(description, 88),
                            epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors; no progress bars")
    return parser


# --- argument types --------------------------------------------------------------------------

def number(text):
    """A float, 'inf' and '-inf' included; ints stay ints (k=3 is a count of maps, k=0.5 a fraction)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError("NaN is not a valid value")
    plain = text.strip().lstrip("+-")
    return int(value) if plain.isdigit() else value


def int_between(low, high):
    """An argument type: an integer from low to high."""
    def parse(text):
        value = positive_int(text) if low >= 1 else int(text)
        return value if low <= value <= high else _bad(f"must be from {low} to {high}, got {value}")
    return parse


def positive_int(text):
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    return value if value >= 1 else _bad(f"must be at least 1, got {value}")


def positive_number(text):
    """A finite number greater than 0."""
    value = number(text)
    return value if 0 < value < math.inf else _bad(f"must be a finite number greater than 0, got {text}")


def tolerance_value(text):
    """'1e-4' -> ('', 1e-4); 'attr/=1e-3' -> ('attr/', 1e-3): a tolerance for every key, or for a key prefix."""
    prefix, sep, value = text.rpartition("=")
    try:
        number_ = float(value)
    except ValueError:
        _bad(f"expected [PREFIX=]NUMBER, got {text!r}")
    if not (number_ >= 0 and math.isfinite(number_)):
        _bad(f"a tolerance must be a finite number >= 0, got {value}")
    return prefix, number_


def tau_value(text):
    """A threshold: a number, or 'none' for no threshold (-inf; `--tau -inf` would look like an option)."""
    return -math.inf if text.strip().lower() == "none" else number(text)


def number_list(text, kind=number):
    """Comma-separated numbers: '0.1,0.25,0.5,1.0'."""
    return [kind(part) for part in text.split(",") if part.strip()] or _bad(f"no numbers in {text!r}")


def tau_list(text):
    """Comma-separated thresholds, 'none' meaning no threshold: 'none,1,10,100'."""
    return number_list(text, tau_value)


def method_list(text):
    """'all' or comma-separated method names."""
    if text.strip() == "all":
        return list(METHODS)
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        _bad(f"unknown method {unknown[0] if unknown else text!r}; choose from all, {', '.join(METHODS)}")
    return list(dict.fromkeys(names))  # in the order given, each once


def target_value(text):
    """'top1' (None: each image's prediction), a class index, or a class name."""
    text = text.strip()
    if text == "top1":
        return None
    return int(text) if text.isdigit() else text


def option_value(text):
    """'METHOD.NAME=VALUE' -> (method, name, value), VALUE as a number, true/false/none, or text."""
    key, sep, raw = text.partition("=")
    method, dot, name = key.partition(".")
    if not (sep and dot and name) or method not in METHODS:
        _bad(f"expected METHOD.NAME=VALUE with a method from {', '.join(METHODS)}, got {text!r}")
    options = [option.name for option in METHODS[method].options]
    if name not in options:
        _bad(f"method {method!r} takes no option {name!r} (its options: {', '.join(options) or 'none'}; "
             f"`fbi-ref methods {method}` describes them)")
    words = {"true": True, "false": False, "none": None}
    if raw.lower() in words:
        return method, name, words[raw.lower()]
    try:
        return method, name, number(raw)
    except argparse.ArgumentTypeError:
        return method, name, raw


def _bad(message):
    """Reject an argument value (argparse turns this into a one-line usage error)."""
    raise argparse.ArgumentTypeError(message)


# --- shared options --------------------------------------------------------------------------

def add_model(parser, default="vgg16"):
    """--model: a known name (vgg16, vgg19, shapes) or a Keras file."""
    parser.add_argument("--model", default=default, metavar="NAME|PATH",
                        help=f"vgg16, vgg19, torchvision_vgg16, torchvision_vgg19, an embedded model (shapes), a Keras "
                             f".h5/.keras file, a torchvision state dict (.safetensors, .pth) or an .onnx file "
                             f"(default {default})")


def add_target(parser):
    """--target: which class to explain."""
    parser.add_argument("--target", type=target_value, default=None, metavar="top1|INDEX|NAME",
                        help="the class to explain: top1 (each image's prediction, the default), an index or a name")


def add_fbi_options(parser):
    """--preset, --k, --tau, --tau-mode."""
    parser.add_argument("--preset", choices=PRESETS, default=None,
                        help="FBI: the option set under the options given: model (default: the model's own "
                             "defaults) or paper (every option at the paper's reading; tau 10 absolute on the "
                             "ImageNet VGG16/VGG19, 0.05 relative on other models)")
    parser.add_argument("--k", type=number, default=None, help="FBI: maps kept at each top-k position (the top conv "
                        "layer's output, or every conv layer's with fbi.topk_layers=all): a fraction in (0, 1] (0.5) "
                        "or a count (3) (default: the model's, 0.5 for VGG)")
    parser.add_argument("--tau", type=tau_value, default=None, help="FBI: forward-backward mask threshold, none "
                        "for no mask (default: the model's, 10 for VGG)")
    add_tau_mode(parser)


def add_tau_mode(parser):
    """--tau-mode absolute|relative."""
    parser.add_argument("--tau-mode", choices=method("fbi").option("tau_mode").choices, default=None,
                        help="FBI: tau as a value, or as a fraction of each layer's largest product")


def add_options(parser):
    """--option METHOD.NAME=VALUE for any method option (docs/methods.md lists them)."""
    parser.add_argument("--option", type=option_value, action="append", default=[], metavar="METHOD.NAME=VALUE",
                        help="a method option, repeatable, e.g. integrated_gradients.steps=16 or fbi.unpool=switch "
                             "(`fbi-ref methods` lists every option, its default and its allowed values)")


def method_options(args, methods):
    """{method: {option: value}} from --preset/--k/--tau/--tau-mode (FBI) and --option ('preset' goes to
    explain's preset)."""
    options = {m: {} for m in methods}
    given = [(name, getattr(args, name, None)) for name in ("preset", "k", "tau", "tau_mode")]
    fbi = [("fbi", name, value) for name, value in given if value is not None]
    for method, name, value in fbi + list(getattr(args, "option", [])):
        if method not in options:  # an option nobody would use: most likely a mistake
            raise InputError(f"{method}.{name} given, but {method} is not among the methods ({', '.join(methods)})")
        options[method][name] = value
    return options


# --- shared helpers --------------------------------------------------------------------------

def say(args, *lines):
    """Print unless --quiet (through tqdm, so an open progress bar is not broken)."""
    if not args.quiet:
        for line in lines:
            emit(line, through_tqdm=True)


def emit(text, through_tqdm=False):
    """Write a line to stdout; if the reader has gone (`fbi-ref compare a b | head`), stop writing, quietly.

    File names that are not valid UTF-8 are shown with \\xNN escapes instead of failing to print.
    """
    if _stdout_closed:
        return
    try:
        (tqdm.write if through_tqdm else print)(shown(str(text)))
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()


_stdout_closed = False


def silence_stdout():
    """Send the rest of stdout to /dev/null, so that nothing (not even Python's exit) writes to a closed pipe."""
    global _stdout_closed
    _stdout_closed = True
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (a test's capture): nothing to do
        pass


def announce_compiling(args):
    """From now on, say once on stderr when numba starts compiling a kernel (it has none in its cache)."""
    global _notice
    if _notice is None:
        from numba.core import event  # numba's "numba:compile" event fires on a compile, not on a cache load

        class CompileNotice(event.Listener):
            """Prints the notice when the first compile starts."""
            enabled, said = False, False

            def on_start(self, ev):
                if self.enabled and not self.said:
                    self.said = True
                    print("fbi-ref: compiling the numba kernels, once (about half a minute); later runs load "
                          "them from the cache", file=sys.stderr, flush=True)

            def on_end(self, ev):
                pass
        _notice = CompileNotice()
        event.register("numba:compile", _notice)
    _notice.enabled = not args.quiet


_notice = None  # the listener, registered once per process


def process_age():
    """Seconds since this process started (Linux: from /proc; elsewhere since fbi_ref was imported)."""
    since_import = time.time() - IMPORTED
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: start, in clock ticks after boot
            age = float(uptime.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return since_import
    # some containers virtualise /proc/uptime but not the start time: then the age makes no sense
    return age if since_import - 0.02 <= age < since_import + 3600 else since_import


def bar(args, items, desc, unit):
    """A progress bar on stderr (off with --quiet, and when stderr is not a terminal)."""
    return tqdm(items, desc=desc, unit=unit, disable=True if args.quiet else None, leave=False)


# --- models, images and outputs --------------------------------------------------------------

def load_model(name):
    """fbi_ref.load_model, with a clearer message for the embedded Shapes model before it exists."""
    if name == "shapes" and "shapes" not in zoo.embedded_models():
        raise ModelFileError(f"the embedded 'shapes' model is not in {zoo.EMBEDDED_DIR} (shapes.h5 + shapes.json): "
                             "reinstall fbi_ref, train it with `python -m fbi_ref.shapes.train`, or pass --model PATH")
    return zoo.load_model(name)


LIST_SUFFIXES = {".txt", ".lst"}
MAX_LIST_BYTES = 256 * 2**20  # a list of ten million image paths


def image_files(paths):
    """The image files named, with every folder expanded to the image files in it (sorted by name) and every
    list file (.txt, .lst: one image path a line, relative to the list's folder; # comments) to its images."""
    files = []
    for path in map(Path, paths):
        if path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            files += list_file(path)
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"{shown(path)}: no image files in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise InputError(f"{shown(path)}: no such file or folder")
    return files


def list_file(path):
    """The image paths a list file names (each must exist), in its order."""
    path = input_file(path, "list file")
    if path.stat().st_size > MAX_LIST_BYTES:
        raise InputError(f"{shown(path)}: a list file of {path.stat().st_size:,} bytes, more than {MAX_LIST_BYTES:,}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{shown(path)}: a list file must be UTF-8 text, one image path a line") from None
    files = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        image = path.parent / os.path.expanduser(line)
        if not image.is_file():
            raise InputError(f"{shown(path)}, line {number}: {shown(image)}: no such image file")
        files.append(image)
    if not files:
        raise InputError(f"{shown(path)}: a list file that names no image")
    return files


def output_folder(path, create=True):
    """The output folder, created if needed (with create=False only checked: nothing in the way)."""
    path = Path(path)
    if not create:
        if path.exists() and not path.is_dir() or any(p.exists() and not p.is_dir() for p in path.parents):
            raise InputError(f"{shown(path)}: cannot be an output folder, a file is in the way")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"{shown(path)}: cannot be an output folder, a file is in the way") from None
    return path


def figure_path(path, inputs=()):
    """The figure file to write, checked before any work: its suffix must name a format matplotlib writes, and
    it must be neither one of the command's `inputs` nor an existing symlink, FIFO, device or folder."""
    from matplotlib.figure import Figure
    kinds = Figure().canvas.get_supported_filetypes()  # png, pdf, svg, ...
    if Path(path).suffix.lower().lstrip(".") not in kinds:
        raise InputError(f"{shown(path)}: give the figure a file name ending in one of .{', .'.join(sorted(kinds))}")
    return output_file(path, inputs)


def model_file(name):
    """The file a --model name or path stands for (a known name's cached file, an embedded model's), or None."""
    if name in weights_cache.KNOWN_WEIGHTS:
        return weights_cache.cached_weights(name)
    embedded = zoo.embedded_models()
    return embedded[name] if name in embedded else Path(os.path.expanduser(name))  # as load_model reads it


def emit_json(record):
    """Print a record as JSON on stdout (for programs)."""
    emit(json.dumps(record, indent=2, sort_keys=True))


def file_size(path):
    """A file size for people: '528.0 MB'."""
    size = float(Path(path).stat().st_size)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
