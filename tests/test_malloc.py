"""keep_freed_memory: a freed large array's pages are reused by the next one instead of faulted in anew."""
import platform
import subprocess
import sys

import pytest

CODE = """
import resource, numpy as np, fbi_ref
applied = fbi_ref.keep_freed_memory() if {keep} else None
a = np.ones(50 * 2**20 // 8); del a  # 50 MB: above glibc's mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
b = np.ones(50 * 2**20 // 8)  # written in full: every page is touched
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(keep):
    out = subprocess.run([sys.executable, "-c", CODE.format(keep=keep)], capture_output=True, text=True, check=True)
    applied, count = out.stdout.split()
    return applied, int(count)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_freed_memory_is_reused_without_page_faults():
    # fresh pages: at least one fault per 2 MiB (transparent huge pages), up to one per 4 KiB page
    applied, count = faults(False)
    assert applied == "None" and count >= 25
    applied, count = faults(True)
    assert applied == "True" and count < 10
