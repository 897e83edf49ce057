"""An exclusive lock on an open file, taken without waiting: fcntl.flock on POSIX, msvcrt.locking on Windows.

The platform's module is imported where the lock is taken, so that importing fbi_ref works where either is
missing. A download locks its temporary file while it writes; a temporary file nobody holds is stale.
"""


def try_lock(file):
    """Lock `file` (an open file object) for this process: True if locked, False if another process holds
    it, None where this platform offers neither lock (the caller must then assume it is held)."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is not None:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True
    try:
        import msvcrt
    except ImportError:
        return None
    try:
        msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)  # the first byte stands for the file
    except OSError:
        return False
    return True
