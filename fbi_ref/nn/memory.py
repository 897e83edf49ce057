"""Memory that is reused instead of page-faulted in again: work arrays kept per thread (`scratch`), and
glibc's malloc told to keep freed memory (`keep_freed_memory`).

Each explanation allocates fresh activation arrays. By default glibc hands arrays above a (dynamic, at most 32 MB) threshold out as fresh mmap'ed pages and
returns them to the system when freed, so every explanation page-faults its activations in again: on
VGG16 at 224 x 224 about 3,400 faults and 40-50 ms of system time per image, more at batch 8 (whose
100 MB activations are always fresh). With the limits raised, freed arrays go back to malloc's heap and
the next explanation reuses them (docs/performance.md). The command line does this; a Python program
opts in with `fbi_ref.keep_freed_memory()`. The cost: memory freed by the process is not returned to the
system until it exits (on VGG16 the peak stayed at 932 MiB, docs/performance.md).
"""
import ctypes
import ctypes.util
import threading

import numpy as np

_local = threading.local()


def scratch(shape, dtype, slot=0):
    """A reusable (per thread) work array; `slot` tells apart arrays needed at the same time.

    A fresh array per call would be page-faulted in by the kernel that fills it, which costs more than the
    copy itself (docs/performance.md). The contents are garbage: callers overwrite them.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffers = _local.__dict__.setdefault("buffers", {})
    if slot not in buffers or buffers[slot].nbytes < nbytes:
        buffers[slot] = np.empty(nbytes, dtype=np.uint8)
    return buffers[slot][:nbytes].view(dtype).reshape(shape)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


INT_MAX = 2**31 - 1  # mallopt takes a C int


def keep_freed_memory(limit=1 << 30):
    """Serve allocations below `limit` bytes from the heap and keep up to `limit` bytes of freed memory.

    Returns True if glibc accepted both settings (glibc 2.36 here accepts 1 GiB; the mallopt manual
    mentions a 32 MiB cap for the mmap threshold on older versions), False otherwise and elsewhere (musl,
    macOS, Windows: nothing changes).
    """
    if not 0 < limit <= INT_MAX:
        raise ValueError(f"limit must be between 1 and {INT_MAX} bytes (a C int), got {limit}")
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, limit)) and bool(mallopt(M_TRIM_THRESHOLD, limit))
