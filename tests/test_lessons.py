"""The lessons (lessons/NN_*.ipynb) run top to bottom, and the outputs stored in them are not stale.

The notebooks are stored with their outputs, so that a reader on a code host sees the figures. The slow
tests re-execute each one in a fresh kernel of this interpreter and fail on any error, when a cell draws
fewer figures than its stored output shows, or when a cell prints other text than its stored output
(numbers within one unit of their last printed digit; times, temporary paths, addresses and rounding
residues masked; see `same_printed`); the fast tests check the stored files themselves.

Regenerate the stored outputs after changing a lesson (needs `pip install -e '.[lessons]'`):

    python tests/test_lessons.py                       # every lesson
    python tests/test_lessons.py 04_fbi_step_by_step   # some of them, by name
    python tests/test_lessons.py solutions/07_validating_another_implementation   # a solutions notebook
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import pytest

LESSONS_DIR = Path(__file__).resolve().parent.parent / "lessons"
LESSONS = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((LESSONS_DIR / "solutions").glob("[0-9][0-9]_*.ipynb"))  # worked solutions of the exercises
CELL_TIMEOUT = 600  # seconds for one cell before nbclient gives up
# Each lesson is written to run in well under 2 minutes on 2 idle cores; the test allows twice that, so
# that a busy machine does not fail it, while a lesson that grew much slower still does.
TIME_LIMIT = 240
INSTALL_HINT = "pip install -e '.[lessons]'"


# --- reading stored notebooks (plain JSON: no Jupyter package needed) -------------------------

def read(path):
    """A notebook file as a dict."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def code_cells(nb):
    """The code cells of a notebook (dict or NotebookNode), in order."""
    return [cell for cell in nb["cells"] if cell["cell_type"] == "code"]


def figure_counts(nb):
    """{cell id or index: the number of image/png outputs} for every code cell."""
    return {cell.get("id", str(i)): sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))
            for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"}


def markdown_text(nb):
    """All markdown cells' text, joined."""
    return "\n".join("".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                     for cell in nb["cells"] if cell["cell_type"] == "markdown")


# --- executing ---------------------------------------------------------------------------------

def require_jupyter():
    """Fail (never skip) with the install command when the packages that run notebooks are missing."""
    missing = []
    for module in ("nbformat", "nbclient", "ipykernel"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        pytest.fail(f"running the lessons needs {', '.join(missing)}, which {sys.executable} lacks: "
                    f"{INSTALL_HINT}", pytrace=False)


@contextlib.contextmanager
def kernel_of_this_interpreter():
    """A 'python3' kernel spec that runs sys.executable, found before any other (it is first on JUPYTER_PATH).

    Without it a user-wide 'python3' kernel spec could run the lessons with another Python than the
    one under test (and another fbi_ref).
    """
    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "kernels" / "python3"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (fbi_ref)", "language": "python"}))
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = folder + (os.pathsep + old if old else "")
        try:
            yield
        finally:
            if old is None:
                del os.environ["JUPYTER_PATH"]
            else:
                os.environ["JUPYTER_PATH"] = old


def execute(path):
    """The notebook at `path` run top to bottom in a fresh kernel (working folder lessons/); (notebook, seconds).

    Raises nbclient's CellExecutionError, with the failing cell's traceback, on the first error.
    """
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(str(path), as_version=4)
    with kernel_of_this_interpreter():
        client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(Path(path).parent)}})
        started = time.perf_counter()
        client.execute()
    return nb, time.perf_counter() - started


# --- the stored notebooks ----------------------------------------------------------------------

def test_lessons_are_numbered_without_gaps():
    numbers = [int(path.name[:2]) for path in LESSONS]
    assert len(LESSONS) >= 8, f"expected at least 8 lessons in {LESSONS_DIR}, found {len(LESSONS)}"
    assert numbers == list(range(1, len(LESSONS) + 1)), f"lesson numbers {numbers} are not 1, 2, 3, ..."


def test_readme_lists_every_lesson():
    readme = (LESSONS_DIR / "README.md").read_text(encoding="utf-8")
    missing = [path.name for path in LESSONS if path.name not in readme]
    assert not missing, f"lessons/README.md does not list {', '.join(missing)}"


@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=lambda p: p.parent.name[:3] + "/" + p.stem)
def test_stored_notebook_was_run_top_to_bottom_without_errors(path):
    nb = read(path)
    cells = code_cells(nb)
    counts = [cell.get("execution_count") for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name} was not stored fresh from one top-to-bottom run (execution counts {counts}); "
        f"regenerate it with `python tests/test_lessons.py {path.stem}`")
    for i, cell in enumerate(cells, start=1):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{path.name}, code cell {i}: stored error {out.get('ename')}"
            assert not (out["output_type"] == "stream" and out.get("name") == "stderr"), (
                f"{path.name}, code cell {i}: stored stderr output {''.join(out.get('text', ''))[:200]!r}")


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_stored_notebook_shows_figures_and_ends_with_summary_and_exercises(path):
    nb = read(path)
    assert sum(figure_counts(nb).values()) >= 1, f"{path.name} stores no figure"
    text = markdown_text(nb)
    assert re.search(r"^#+ Summary", text, re.M), f"{path.name} has no '## Summary' section"
    exercises = text[text.find("Exercises"):] if "Exercises" in text else ""
    assert re.search(r"^#+ Exercises", text, re.M), f"{path.name} has no '## Exercises' section"
    assert len(re.findall(r"^\s*\d+\.", exercises, re.M)) >= 2, f"{path.name} has fewer than two numbered exercises"


def test_every_lesson_imports_the_library():
    for path in LESSONS:
        code = "\n".join("".join(cell["source"]) for cell in code_cells(read(path)))
        assert re.search(r"^\s*(import fbi_ref|from fbi_ref)", code, re.M), f"{path.name} does not import fbi_ref"


def exercises_text(nb):
    """The markdown of a notebook from its '## Exercises' heading on."""
    text = markdown_text(nb)
    match = re.search(r"^#+ Exercises", text, re.M)
    return text[match.start():] if match else ""


def decimals(text):
    """Every decimal number written in `text` (0.85, 14.97, -0.5), as written."""
    return set(re.findall(r"(?<![\w.])-?\d+\.\d+(?![\w.])", text))


@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=lambda p: p.parent.name[:3] + "/" + p.stem)
def test_every_decimal_the_prose_states_is_written_in_a_code_cell(path):
    """Prose quotes only what the notebook computes and asserts: a decimal number in a Markdown cell must
    appear in the source of a code cell (an assert, or the parameter it names), so that a re-run that changes
    it fails. Numbers in the exercises are questions and are exempt."""
    nb = read(path)
    prose = markdown_text(nb)
    prose = prose[:prose.find(exercises_text(nb))] if exercises_text(nb) else prose
    code = "\n".join("".join(cell["source"]) for cell in code_cells(nb))
    missing = sorted(n for n in decimals(prose) if n not in code)
    assert not missing, f"{path.name} states {missing} in prose but no code cell computes or asserts them"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_every_exercise_has_a_hint_and_a_worked_solution(path):
    nb = read(path)
    exercises = exercises_text(nb)
    numbered = re.findall(r"^\s*\d+\.", exercises, re.M)
    assert exercises.lower().count("hint") >= len(numbered), f"{path.name}: an exercise without a hint"
    solution = LESSONS_DIR / "solutions" / path.name
    assert solution.exists(), f"{path.name} has no worked solutions notebook solutions/{path.name}"
    assert f"(solutions/{path.name})" in markdown_text(nb), f"{path.name} does not link solutions/{path.name}"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_every_lesson_links_the_paper_and_the_library_source(path):
    text = markdown_text(read(path))
    assert re.search(r"fbi_ref/[\w/]+\.py", text), f"{path.name} names no library source file"
    assert re.search(r"paper[^\n]*(§|section|Section|Sec\.)", text), f"{path.name} links no section of the paper"


# --- comparing stored text outputs with a fresh run ----------------------------------------------

# What changes from run to run without being wrong: wall times, temporary paths, object addresses.
VOLATILE = [
    (re.compile(r"\b\d+(?:\.\d+)?(?: ?)(?:s|ms|µs|us|min)\b"), "<time>"),     # 0.32 s, 12 ms
    (re.compile(r"(?:/private)?/(?:tmp|var/folders)/[^\s'\"]*"), "<tmp path>"),
    (re.compile(r"0x[0-9a-fA-F]{6,}"), "<address>"),
]
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


# A cell whose printed counts depend on float rounding (near ties of a port, counts of elements beyond a
# tolerance) carries this tag in its metadata and says why in a comment; its numbers are masked, its words
# (verdicts, keys, names) are still compared.
NUMBERS_VARY = "numbers-vary"


def numbers_vary(cell):
    """True when the cell's printed numbers are declared machine-dependent (its tag and its comment)."""
    return NUMBERS_VARY in cell.get("metadata", {}).get("tags", [])


def text_outputs(nb):
    """{code cell id or index: its text output} (stdout and the text of results; images and stderr left
    out), each with the volatile parts masked (and every number, in a cell tagged NUMBERS_VARY)."""
    out = {}
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        parts = []
        for o in cell.get("outputs", []):
            if o["output_type"] == "stream" and o.get("name") == "stdout":
                parts.append("".join(o["text"]) if isinstance(o["text"], list) else o["text"])
            elif o["output_type"] in ("execute_result", "display_data") and "image/png" not in o.get("data", {}):
                text = o.get("data", {}).get("text/plain", "")
                parts.append("".join(text) if isinstance(text, list) else text)
        text = "".join(parts)
        for pattern, mask in VOLATILE:
            text = pattern.sub(mask, text)
        if numbers_vary(cell):
            text = NUMBER.sub("<n>", text)
        out[cell.get("id", str(i))] = text
    return out


def same_printed(stored, fresh):
    """None if two texts print the same, else the first difference. Numbers agree when they differ by at most
    one unit of the last digit printed (another CPU or BLAS may round the last digit the other way); every
    other character must be equal. A stale output (0.867 where a run prints 0.870) differs by more."""
    a_numbers, b_numbers = NUMBER.findall(stored), NUMBER.findall(fresh)
    a_words, b_words = NUMBER.split(stored), NUMBER.split(fresh)
    if a_words != b_words or len(a_numbers) != len(b_numbers):
        lines = [(x, y) for x, y in zip(stored.splitlines(), fresh.splitlines()) if x != y]
        first = lines[0] if lines else (stored[-80:], fresh[-80:])
        return f"the text differs: stored {first[0]!r}, now {first[1]!r}"
    for x, y in zip(a_numbers, b_numbers):
        if x == y or (is_residue(x) and is_residue(y)):
            continue
        exponent = lambda v: int(v.lower().split("e")[1]) if "e" in v.lower() else 0  # noqa: E731
        unit = 10.0 ** (exponent(x) - decimals_of(x))   # one unit of the last digit printed
        if decimals_of(x) != decimals_of(y) or abs(float(x) - float(y)) > 1.000001 * unit:
            return f"a number differs: stored {x}, now {y}"
    return None


def decimals_of(number):
    """How many digits a printed number has after its point (before any exponent)."""
    mantissa = number.lower().split("e")[0]
    return len(mantissa.split(".")[1]) if "." in mantissa else 0


def is_residue(number):
    """A rounding residue: printed in e-notation and below 1e-6 (a lesson asserts its bound; the digits vary
    with the CPU's summation order, so they are compared only as 'below 1e-6')."""
    return "e" in number.lower() and abs(float(number)) < 1e-6


def stale_outputs(stored_nb, fresh_nb):
    """{cell: the difference} for the code cells whose stored text output is not what a fresh run prints."""
    stored, fresh = text_outputs(stored_nb), text_outputs(fresh_nb)
    return {cell: why for cell in stored if (why := same_printed(stored[cell], fresh.get(cell, ""))) is not None}


def test_a_stale_number_is_caught_and_the_last_digits_rounding_is_not():
    assert same_printed("fbi 0.867 [0.828, 0.902]", "fbi 0.870 [0.823, 0.911]") == \
        "a number differs: stored 0.867, now 0.870"
    assert same_printed("rho 0.593, kept 32 of 128", "rho 0.594, kept 32 of 128") is None   # one unit: rounding
    assert same_printed("kept 197 near ties", "kept 193 near ties") == "a number differs: stored 197, now 193"
    assert same_printed("mass 0.50", "mass 0.500") is not None                                # another format
    assert same_printed("fbi passed", "fbi failed") is not None
    assert same_printed("difference 3.6e-15", "difference 1.1e-14") is None                 # residues, both tiny
    assert same_printed("difference 3.6e-05", "difference 1.1e-04") is not None             # not residues
    assert same_printed("largest 2.5e+03", "largest 2.6e+03") is None                       # one unit of 1e2
    masked = text_outputs({"cells": [{"cell_type": "code", "id": "c", "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["fbi 0.05 s, written to /tmp/x1/out.png at 0x7f3a2b1c4d50"]}]}]})
    assert masked == {"c": "fbi <time>, written to <tmp path> at <address>"}


@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=lambda p: p.parent.name[:3] + "/" + p.stem)
def test_a_cell_whose_numbers_vary_says_why(path):
    for i, cell in enumerate(read(path)["cells"]):
        if cell["cell_type"] == "code" and numbers_vary(cell):
            source = "".join(cell["source"])
            assert "# numbers vary:" in source, f"{path.name}, cell {i}: tagged {NUMBERS_VARY!r} without a '# numbers vary:' comment"


# --- running them --------------------------------------------------------------------------------

def test_every_solutions_notebook_a_lesson_links_exists():
    for path in LESSONS:
        for link in re.findall(r"\((solutions/[^)]+\.ipynb)\)", markdown_text(read(path))):
            assert (LESSONS_DIR / link).exists(), f"{path.name} links {link}, which does not exist"


@pytest.mark.slow
@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=lambda p: p.parent.name[:3] + "/" + p.stem)
def test_lesson_runs_and_its_stored_figures_are_not_stale(path):
    require_jupyter()
    fresh, seconds = execute(path)
    stored, now = figure_counts(read(path)), figure_counts(fresh)
    fewer = {cell: (stored[cell], now.get(cell, 0)) for cell in stored if now.get(cell, 0) < stored[cell]}
    assert not fewer, (f"{path.name}: re-executed cells draw fewer figures than the stored notebook shows "
                       f"(cell id: (stored, now)) {fewer}; regenerate with `python tests/test_lessons.py {path.stem}`")
    stale = stale_outputs(read(path), fresh)
    assert not stale, (f"{path.name}: stored text outputs differ from a fresh run's (cell id: difference) {stale}; "
                       f"regenerate with `python tests/test_lessons.py {path.stem}`")
    assert seconds < TIME_LIMIT, f"{path.name} took {seconds:.0f} s to run (limit {TIME_LIMIT} s)"


# --- regenerating the stored outputs -------------------------------------------------------------

def main(argv=None):
    """Execute lessons (all, or those named) and store them with their outputs; print each one's run time."""
    import nbformat
    names = argv if argv is not None else sys.argv[1:]
    every = {str(p.relative_to(LESSONS_DIR).with_suffix("")): p for p in LESSONS + SOLUTIONS}  # '07_x', 'solutions/07_x'
    chosen = [n.removesuffix(".ipynb") for n in names]
    paths = [p for name, p in every.items() if not names or name in chosen]
    unknown = [n for n in chosen if n not in every]
    if unknown:
        print(f"unknown lesson {unknown[0]!r}; lessons: {', '.join(p.stem for p in LESSONS)}", file=sys.stderr)
        return 2
    for path in paths:
        nb, seconds = execute(path)
        nbformat.write(nb, str(path))
        print(f"{path.relative_to(LESSONS_DIR)}: {seconds:.1f} s, {sum(figure_counts(nb).values())} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
