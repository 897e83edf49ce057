"""Runs the fuzz tests of tests/fuzz_inputs.py in a process with a limited address space (and warnings as errors).

A loader that allocated what a corrupt header declares would hit the limit and fail with a MemoryError,
which the fuzz tests count as a failure; a RuntimeWarning (an overflow nobody reported) fails as well.
"""
import os
import resource
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz_inputs.py"
FUZZ_MEMORY_LIMIT = 3 * 2**30  # bytes of address space: about 5x what a normal run of these tests maps
EXAMPLES = 100


def limited():
    """In the child, before it runs: at most FUZZ_MEMORY_LIMIT bytes of address space."""
    resource.setrlimit(resource.RLIMIT_AS, (FUZZ_MEMORY_LIMIT, FUZZ_MEMORY_LIMIT))


@pytest.mark.slow
def test_fuzzing_finds_no_untyped_error_no_warning_and_stays_within_the_memory_budget(tmp_path):
    env = {**os.environ, "FUZZ_EXAMPLES": str(EXAMPLES), "NUMBA_NUM_THREADS": "2"}
    report = tmp_path / "fuzz.xml"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error::RuntimeWarning",
                             f"--junitxml={report}", str(FUZZ)], capture_output=True, text=True, timeout=1800, env=env,
                            preexec_fn=limited, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    suite = ET.parse(report).getroot().find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    assert counts["tests"] > 0 and counts["failures"] == counts["errors"] == counts["skipped"] == 0, counts


def test_the_memory_limit_really_stops_a_large_allocation():
    """The planted bug: without the checks, a header's declared size would be allocated; under the limit it fails."""
    code = "import numpy as np; np.ones(2**33, dtype=np.uint8)"  # 8 GiB, as a lying header would ask
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            preexec_fn=limited)
    assert result.returncode != 0 and "MemoryError" in result.stderr
