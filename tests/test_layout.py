"""The package layout is a contract: import-linter's contracts in pyproject.toml hold, and would catch a break.

The contracts (pyproject.toml, [tool.importlinter]): the subpackages are layers, bottom to top
errors/version -> nn -> methods | io -> shapes -> figures -> evaluation | reference -> cli, none importing one
above it (and the siblings separated by '|' not importing each other); no two modules of any package import
each other, directly or through others. Each planted-bug test copies the package, adds one import that breaks a
contract, and checks that lint-imports fails on the copy and names the import.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fbi_ref"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
SUBPACKAGES = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))


def lint_imports(root):
    """Run lint-imports on the fbi_ref package found in `root` with ROOT's pyproject.toml: (exit code, output)."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"lint-imports is missing from {LINT_IMPORTS.parent}: pip install -e '.[test]'", pytrace=False)
    result = subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                            cwd=root, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def package_copy(tmp_path):
    """A copy of fbi_ref (sources only) in a folder of its own; returns that folder."""
    shutil.copytree(PACKAGE, tmp_path / "fbi_ref", ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    return tmp_path


def append(path, line):
    """Add one line at the end of a module."""
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_contracts_hold():
    code, output = lint_imports(ROOT)
    assert code == 0 and "0 broken" in output, output


def test_the_contracts_cover_every_subpackage():
    text = (ROOT / "pyproject.toml").read_text()
    layers = text.split("layers = [", 1)[1].split("]", 1)[0]
    named = {name.strip(' "\n,') for line in layers.splitlines() for name in line.split("|")} - {""}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}  # errors, version, testing
    assert named == set(SUBPACKAGES) | modules, named


@pytest.mark.parametrize("importer, imported", [
    ("nn/conv.py", "from fbi_ref.methods import rules"),            # the network must not know the methods
    ("methods/rules.py", "from fbi_ref.io import zoo"),             # siblings of one layer stay apart
    ("io/images.py", "from fbi_ref.cli import main"),              # nothing imports the command line
    ("figures/panels.py", "from fbi_ref.evaluation import report"),  # the figures serve the tools above them
    ("reference/compare.py", "from fbi_ref.evaluation import report"),  # siblings on top stay apart
])
def test_an_import_against_the_layers_breaks_the_contract(package_copy, importer, imported):
    append(package_copy / "fbi_ref" / importer, imported)
    code, output = lint_imports(package_copy)
    assert code != 0 and "layers: the network at the bottom" in output and "BROKEN" in output, output
    assert "fbi_ref." + importer[:-3].replace("/", ".") in output


def test_an_import_cycle_inside_a_package_breaks_the_contract(package_copy):
    append(package_copy / "fbi_ref" / "figures" / "explanations.py", "from fbi_ref.figures import walk")
    code, output = lint_imports(package_copy)
    assert code != 0 and "no import cycles" in output and "BROKEN" in output, output


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_every_subpackage_says_what_it_holds_and_what_it_may_import(name):
    doc = (PACKAGE / name / "__init__.py").read_text().split('"""')[1]
    modules = sorted(p.stem for p in (PACKAGE / name).glob("*.py") if not p.stem.startswith("__"))
    missing = [m for m in modules if f"{m}.py" not in doc]
    assert not missing, f"fbi_ref/{name}/__init__.py does not describe {missing}"
    assert "import" in doc, f"fbi_ref/{name}/__init__.py does not say what it may import"
