"""Running the benchmark's tasks on worker processes, each task with the same number of threads.

Float32 sums in BLAS depend on how many threads split them (two runs with 1 and 2 OpenBLAS threads differed
in the 7th digit), so every task runs with `settings.threads` BLAS and numba threads however many workers
there are: the results are then the same, digit for digit, for any --jobs on one machine. (Another CPU or
BLAS build may still move the last digit.)

The pool is the standard library's ProcessPoolExecutor with spawned workers; it is kept rather than a task
scheduler such as Dask because the benchmark's tasks are few (two dozen), known up front and of similar size.
"""
import contextlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm


def cpu_count():
    """The CPUs this process may run on (its affinity, which containers and taskset narrow), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@contextlib.contextmanager
def thread_limit(n):
    """Within the block, BLAS and numba's parallel kernels use at most n threads in this process."""
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        numba.set_num_threads(before)


def _run_limited(fn, threads, args):
    """fn(*args) with `threads` threads (what a worker runs)."""
    with thread_limit(threads):
        return fn(*args)


def run_tasks(fn, tasks, settings, desc, costs=None):
    """[fn(*task) for task in tasks], in order; on settings.jobs spawned processes, costliest first.

    settings: anything with .jobs (worker processes), .threads (threads per task) and .progress (a bar or not).
    With jobs = 1 the tasks run in this process, with the same thread limit.
    """
    order = sorted(range(len(tasks)), key=lambda i: -(costs[i] if costs else 0))  # stable: ties keep order
    results = [None] * len(tasks)
    with tqdm(total=len(tasks), desc=desc, disable=None if settings.progress else True) as bar:  # None: terminal only
        if settings.jobs <= 1:
            for i in order:
                results[i] = _run_limited(fn, settings.threads, tasks[i])
                bar.update()
            return results
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: numba's threads do not fork
        jobs = max(1, min(settings.jobs, len(tasks)))
        with worker_threads(settings.threads), ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = {pool.submit(_run_limited, fn, settings.threads, tasks[i]): i for i in order}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    return results


THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def worker_threads(n):
    """Processes spawned within the block start n threads each (numba and BLAS), not one per core.

    Without it, every worker starts as many numba and BLAS threads as there are cores, and on 2 cores two
    workers ran the sweep 4-5x slower than one process alone.
    """
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cpu_time():
    """CPU seconds of this process and of its finished worker processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
