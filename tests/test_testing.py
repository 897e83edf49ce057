"""fbi_ref.testing: compare's verdict as an assertion in a re-implementer's own test suite, used as a user would:
the documented pytest example run by pytest, and the project's own PyTorch port checked through check_port."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fbi_ref.testing
from fbi_ref.errors import InputError
from fbi_ref.io.arrays import write_npz

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "test_my_port.py"


def test_assert_matches_reference_passes_and_fails_with_compares_report(tmp_path):
    ref = fbi_ref.testing.make_reference("shapes", ["gradient"], n=2)
    assert fbi_ref.testing.assert_matches_reference(ref, dict(ref)).passed
    write_npz(tmp_path / "ref.npz", ref)
    write_npz(tmp_path / "mine.npz", {**ref, "attr/gradient": ref["attr/gradient"] * 1.01})
    assert fbi_ref.testing.assert_matches_reference(tmp_path / "ref.npz", str(tmp_path / "ref.npz")).passed
    with pytest.raises(AssertionError) as failed:
        fbi_ref.testing.assert_matches_reference(tmp_path / "ref.npz", tmp_path / "mine.npz")
    report = str(failed.value)
    assert "attr/gradient" in report and report.splitlines()[-1].startswith("FAILED: 1 of")
    assert "first divergence: attr/gradient" in report and "mine.npz" in report
    with pytest.raises(AssertionError, match="no key in the other file for gradient"):
        fbi_ref.testing.assert_matches_reference(ref, {"x": ref["x"]})
    assert fbi_ref.testing.assert_matches_reference(ref, {"x": ref["x"]}, methods=[]).passed


def test_make_reference_needs_inputs_for_a_model_the_shapes_images_do_not_fit(keras_fixtures):
    with pytest.raises(InputError, match="give x"):
        fbi_ref.testing.make_reference(keras_fixtures / "small_vgg_k3.keras")
    x = np.load(keras_fixtures / "small_vgg_forward_reference.npz")["x"][:2]
    ref = fbi_ref.testing.make_reference(keras_fixtures / "small_vgg_k3.keras", ["gradient"], x=x)
    assert ref["x"].shape == x.shape and any(k.startswith("w/") for k in ref)


def test_check_port_refuses_what_it_cannot_use():
    with pytest.raises(InputError, match="layout must be"):
        fbi_ref.testing.check_port(lambda x, w: {}, layout="NCHW")
    with pytest.raises(InputError, match="must return a dict of arrays"):
        fbi_ref.testing.check_port(lambda x, w: [x])


@pytest.mark.torch
def test_the_documented_pytest_example_passes_as_a_user_runs_it(tmp_path):
    pytest.importorskip("torch")
    text = (ROOT / "docs" / "reference-format.md").read_text()
    assert EXAMPLE.read_text() in text  # the page shows the file that runs here, whole
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


@pytest.mark.torch
@pytest.mark.slow
def test_the_projects_own_pytorch_port_passes_through_check_port():
    torch = pytest.importorskip("torch")
    from . import torch_port

    def port(x, weights, meta):  # the port reads the same file a user's would: meta, weights, inputs
        ref = {"x": x.transpose(0, 2, 3, 1), "meta": np.array(json.dumps(meta)),
               **{f"w/{layer}/{name}": a for layer, arrays in weights.items() for name, a in arrays.items()}}
        with torch.no_grad():
            logits = torch_port.Port(ref).forward(torch.from_numpy(x))[1]
        ref["target"] = logits.argmax(1).numpy()  # its own top-1, as the reference's meta says ("top1")
        return torch_port.run(ref)

    result = fbi_ref.testing.check_port(port, model="shapes", methods=["gradient", "guided_backprop", "fbi"],
                                        options={"fbi": {"k": 0.5}})
    assert result.methods == ["gradient", "guided_backprop", "fbi"] and len(result.rows) > 60
