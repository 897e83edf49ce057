"""Running the benchmark's tasks on worker processes, each task with the same number of threads.

Float32 sums in BLAS depend on how many threads split them (two runs with 1 and 2 OpenBLAS threads differed
in the 7th digit), so every task runs with `settings.threads` BLAS and numba threads however many workers
there are: the results are then the same, digit for digit, for any --jobs on one machine. (Another CPU or
BLAS build may still move the last digit.)

The pool is the standard library's ProcessPoolExecutor with spawned workers. It stays the single-machine
default, rather than a task scheduler such as Dask (scheduler.py, an optional extra for clusters), because
it needs no dependency beyond the standard library and threadpoolctl, and it fixes the BLAS and numba threads
of every task, which is what makes results independent of the number of workers. It is deliberately small:
run_tasks for the benchmark's few tasks (two dozen, known up front, of similar size) and stream_tasks for the
batches of a data set (results as they finish, a bounded number in flight); anything more (several machines,
retries, data locality) is Dask's job.
"""
import contextlib
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool

import numba
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from fbi_ref.errors import RunError


def cpu_count():
    """The CPUs this process may run on (its affinity, which containers and taskset narrow), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@contextlib.contextmanager
def thread_limit(n):
    """Within the block, BLAS and numba's parallel kernels use at most n threads in this process."""
    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        numba.set_num_threads(before)


def run_limited(fn, threads, args):
    """fn(*args) with `threads` threads (what a worker runs)."""
    with thread_limit(threads):
        return fn(*args)


def run_tasks(fn, tasks, settings, desc, costs=None):
    """[fn(*task) for task in tasks], in order; on settings.jobs spawned processes, costliest first.

    settings: anything with .jobs (worker processes), .threads (threads per task) and .progress (a bar or not).
    With jobs = 1 the tasks run in this process, with the same thread limit. Inside `on_client(client)` they
    run on that Dask client's workers instead (scheduler.py), with the same thread limit.
    """
    order = sorted(range(len(tasks)), key=lambda i: -(costs[i] if costs else 0))  # stable: ties keep order
    results = [None] * len(tasks)
    with tqdm(total=len(tasks), desc=desc, disable=None if settings.progress else True) as bar:  # None: terminal only
        if _client is not None:
            futures = [_client.submit(run_limited, fn, settings.threads, tasks[i], pure=False) for i in order]
            for i, future in zip(order, futures):
                results[i] = future.result()
                bar.update()
            return results
        if settings.jobs <= 1:
            for i in order:
                results[i] = run_limited(fn, settings.threads, tasks[i])
                bar.update()
            return results
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: numba's threads do not fork
        jobs = max(1, min(settings.jobs, len(tasks)))
        with worker_threads(settings.threads), ProcessPoolExecutor(jobs, mp_context=context) as pool, \
                worker_death_is_one_line(tasks):
            futures = {pool.submit(run_limited, fn, settings.threads, tasks[i]): i for i in order}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    return results


def stream_tasks(fn, tasks, jobs, threads, window=None):
    """Yield (i, fn(*tasks[i])) as each task finishes, at most `window` tasks (default 2 x jobs) in flight.

    jobs = 1 runs them in this process, in order; more runs them on that many spawned processes. Each task
    runs with `threads` BLAS and numba threads, so its result does not depend on `jobs`. Holding at most
    `window` results at once is what bounds the memory of a data set's run.
    """
    if jobs <= 1:
        for i, task in enumerate(tasks):
            yield i, run_limited(fn, threads, task)
        return
    window = window or 2 * jobs
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: numba's threads do not fork
    with worker_threads(threads):
        pool = ProcessPoolExecutor(jobs, mp_context=context)
    try:
        pending, queue = {}, iter(enumerate(tasks))
        with worker_death_is_one_line(pending):
            for i, task in queue:
                pending[pool.submit(run_limited, fn, threads, task)] = i
                if len(pending) >= window:
                    break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                with worker_death_is_one_line(pending):
                    result = future.result()
                yield pending.pop(future), result
            with worker_death_is_one_line(pending):
                for i, task in queue:  # refill the window
                    pending[pool.submit(run_limited, fn, threads, task)] = i
                    if len(pending) >= window:
                        break
    finally:  # Ctrl-C or an error: stop at once, do not wait for the batches in flight
        pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def worker_death_is_one_line(in_flight):
    """A worker process killed (out of memory, a signal) breaks the pool, wherever it is next used: one RunError."""
    try:
        yield
    except BrokenProcessPool:
        raise RunError(f"a worker process died ({len(in_flight)} tasks in flight were lost); what was written "
                       f"before is kept: run the same command again, with --resume where it takes it") from None


_client = None  # a dask.distributed Client while inside on_client()


@contextlib.contextmanager
def on_client(client):
    """Within the block, run_tasks sends its tasks to this Dask client (None: the local pool, as usual)."""
    global _client
    saved, _client = _client, client
    try:
        yield
    finally:
        _client = saved


THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# The workers' numba threading layer, unless the user's environment names one (fbi_ref/nn/kernels.py says why).
WORKER_THREADING_LAYER = "workqueue"


@contextlib.contextmanager
def worker_threads(n):
    """Processes spawned within the block start n threads each (numba and BLAS), not one per core.

    Without it, every worker starts as many numba and BLAS threads as there are cores, and on 2 cores two
    workers ran the sweep 4-5x slower than one process alone.
    """
    saved = {name: os.environ.get(name) for name in (*THREAD_VARIABLES, "NUMBA_THREADING_LAYER")}
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)
    os.environ.setdefault("NUMBA_THREADING_LAYER", WORKER_THREADING_LAYER)
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
