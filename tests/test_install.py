"""fbi_ref installs and runs anywhere: the built wheel carries everything the demo and the API read and works
from outside the checkout; the API imports and runs where fcntl does not exist (Windows); importing it
changes no setting of the process, and a Model never changes the arrays it is given."""
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def python(code, **env):
    """Run `code` in a fresh interpreter of this environment, from a folder that is not the checkout."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            cwd=env.pop("cwd", "/"), env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel `pip wheel --no-deps .` builds from the checkout."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("fbi_ref-*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_carries_the_embedded_model_and_the_class_names(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for member in ("fbi_ref/io/embedded/shapes.h5", "fbi_ref/io/embedded/shapes.json", "fbi_ref/io/imagenet_classes.json"):
        assert member in names, member
    assert not [n for n in names if n.startswith(("weights/", "tests/", "lessons/"))]


@pytest.mark.slow
def test_the_installed_wheel_explains_from_outside_the_checkout(wheel, tmp_path):
    """A fresh venv with the wheel (its dependencies borrowed from this environment, so that no network is
    needed): the demo, an explanation of a generated image and load_model('shapes') run from a temporary
    folder, with the package imported from the venv, not from the checkout."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    pip = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                          str(wheel)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    site = Path(subprocess.run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # numpy, numba, h5py, ...: after ours
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "HOME": str(tmp_path), "FBI_REF_HOME": str(tmp_path / "home")}
    env.pop("PYTHONPATH", None)

    def run(*command):
        result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=900, cwd=work,
                                env=env)
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
        return result.stdout

    where = run(bin_dir / "python", "-c", "import fbi_ref; print(fbi_ref.__file__)")
    assert Path(where.strip()).is_relative_to(env_dir) and not Path(where.strip()).is_relative_to(ROOT)
    run(bin_dir / "fbi-ref", "demo", "--out", "demo.png", "-q")
    assert (work / "demo.png").stat().st_size > 10_000
    run(bin_dir / "python", "-c", "import numpy as np; from PIL import Image; from fbi_ref.shapes import generate; "
        "Image.fromarray(generate(1, seed=3).images[0]).save('one.png')")
    run(bin_dir / "fbi-ref", "explain", "one.png", "--model", "shapes", "--method", "fbi,gradcam", "--out", "out", "-q")
    assert (work / "out" / "one_explain.png").is_file()
    out = run(bin_dir / "python", "-c", "import fbi_ref; m = fbi_ref.load_model('shapes'); print(m)")
    assert "Model('shapes', input (64, 64, 3), 22 layers, float32)" in out


def test_the_api_imports_and_explains_where_fcntl_does_not_exist():
    """As on Windows: fcntl unimportable; importing fbi_ref, loading the embedded model and explaining work, and
    a temporary download file is never taken for stale (there is no lock to ask)."""
    out = python(
        "import sys; sys.modules['fcntl'] = None\n"
        "import numpy as np, tempfile, pathlib, fbi_ref\n"
        "from fbi_ref.io.paths import remove_stale_parts\n"
        "from fbi_ref.shapes import generate\n"
        "model = fbi_ref.load_model('shapes')\n"
        "e = fbi_ref.explain(model, fbi_ref.preprocess_caffe(generate(1, seed=2).images), 'fbi')\n"
        "folder = pathlib.Path(tempfile.mkdtemp()); (folder / '.w.h5.x1.part').write_bytes(b'half')\n"
        "print(e.attribution.shape, bool(np.isfinite(e.attribution).all()), 'fcntl' in sys.modules and sys.modules['fcntl'],\n"
        "      remove_stale_parts(folder / 'w.h5'), (folder / '.w.h5.x1.part').exists())")
    assert out.strip() == "(1, 64, 64, 3) True None [] True"


def test_importing_and_explaining_change_no_setting_of_the_process():
    """numba's threading layer, the BLAS threads and the SIGINT handler are as they were; only the functions
    that say so change them (the command line calls them)."""
    out = python(
        "import signal, numba, threadpoolctl\n"
        "def state():  # the threading layer, the SIGINT handler, the thread count of every BLAS loaded so far\n"
        "    return (numba.config.THREADING_LAYER, signal.getsignal(signal.SIGINT),\n"
        "            {i['filepath']: i['num_threads'] for i in threadpoolctl.threadpool_info()})\n"
        "before = state()\n"
        "import fbi_ref, fbi_ref.cli, fbi_ref.evaluation.benchmark\n"
        "from fbi_ref.shapes import generate\n"
        "fbi_ref.explain(fbi_ref.load_model('shapes'), fbi_ref.preprocess_caffe(generate(1, seed=2).images), 'fbi')\n"
        "after = state()\n"
        "print(before[:2] == after[:2], all(after[2][lib] == n for lib, n in before[2].items()))")
    assert out.split() == ["True", "True"], out


def test_the_command_line_asks_for_the_workqueue_threads_unless_told_otherwise():
    code = "import numba, sys; from fbi_ref.cli import program; sys.argv = ['fbi-ref', '--version']\n" \
           "try:\n    program.console_main()\nfinally:\n    print(numba.config.THREADING_LAYER)"
    assert python(code).strip().endswith("workqueue")
    env = {"NUMBA_THREADING_LAYER": "omp"}
    assert python(code, **env).strip().endswith("omp")


def test_a_model_never_changes_the_arrays_it_is_given():
    from fbi_ref.nn.model import Model
    from fbi_ref.nn.network import Architecture, Conv2D
    kernel, bias = np.ones((3, 3, 3, 4)), np.zeros(4)
    layer = Conv2D("c", kernel, bias)
    model = Model(Architecture([layer], (5, 5, 3)))
    assert kernel.flags.writeable and bias.flags.writeable and layer.kernel is kernel  # the caller's, untouched
    assert not model.layers[0].kernel.flags.writeable and np.array_equal(model.layers[0].kernel, kernel)
    kernel[0, 0, 0, 0] = 5.0  # the caller's edit does not reach the model
    assert model.layers[0].kernel[0, 0, 0, 0] == 1.0
    frozen = np.ones((3, 3, 3, 4))
    frozen.setflags(write=False)
    assert Model(Architecture([Conv2D("c", frozen, bias)], (5, 5, 3))).layers[0].kernel is frozen  # no copy
