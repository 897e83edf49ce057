"""Let glibc's malloc keep freed memory for reuse: each explanation allocates fresh activation arrays.

By default glibc hands arrays above a (dynamic, at most 32 MB) threshold out as fresh mmap'ed pages and
returns them to the system when freed, so every explanation page-faults its activations in again: on
VGG16 at 224 x 224 about 3,400 faults and 40-50 ms of system time per image, more at batch 8 (whose
100 MB activations are always fresh). With the limits raised, freed arrays go back to malloc's heap and
the next explanation reuses them (docs/performance.md). The command line does this; a Python program
opts in with `fbi_ref.keep_freed_memory()`. The cost: memory freed by the process is not returned to the
system until it exits (peak memory does not grow).
"""
import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


def keep_freed_memory(limit=1 << 30):
    """Serve allocations below `limit` bytes from the heap and keep up to `limit` bytes of freed memory.

    Returns True if glibc accepted both settings, False elsewhere (musl, macOS, Windows: nothing changes).
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(limit))) and bool(mallopt(M_TRIM_THRESHOLD, int(limit)))
