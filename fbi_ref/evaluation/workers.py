"""Running the benchmark's tasks on worker processes, with as many threads each as leaves the cores unshared."""
import contextlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

from tqdm.auto import tqdm


def cpu_count():
    """The CPUs this process may run on (its affinity, which containers and taskset narrow), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def run_tasks(fn, tasks, settings, desc, costs=None):
    """[fn(*task) for task in tasks], in order; on settings.jobs spawned processes, costliest first.

    settings: anything with .jobs (worker processes) and .progress (a tqdm bar or not).

    Every task computes the same thing wherever it runs, so the results do not depend on the job count.
    """
    order = sorted(range(len(tasks)), key=lambda i: -(costs[i] if costs else 0))  # stable: ties keep order
    results = [None] * len(tasks)
    with tqdm(total=len(tasks), desc=desc, disable=not settings.progress) as bar:
        if settings.jobs <= 1:
            for i in order:
                results[i] = fn(*tasks[i])
                bar.update()
            return results
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: numba's threads do not fork
        jobs = max(1, min(settings.jobs, len(tasks)))
        with worker_threads(max(1, cpu_count() // jobs)), \
                ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = {pool.submit(fn, *tasks[i]): i for i in order}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    return results


THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def worker_threads(n):
    """Processes spawned within the block use n threads each (numba and BLAS), so jobs x threads <= cores.

    Without it, every worker starts as many numba and BLAS threads as there are cores, and on 2 cores two
    workers ran the sweep 4-5x slower than one process alone.
    """
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    for name, value in saved.items():  # never more threads than the user asked for
        os.environ[name] = str(min(n, int(value)) if value and value.isdigit() and int(value) > 0 else n)
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
