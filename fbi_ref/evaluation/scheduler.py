"""Batches of a data set as tasks: on this machine (workers.py, the default) or on a Dask cluster (an extra).

    with scheduler("local", jobs=2, threads=1) as client:          # or "tcp://host:8786", or None
        for i, result in run_batches(fn, tasks, client, jobs=2, threads=1):
            ...                                                     # results as they finish, i = task index

`dask.distributed` is an optional extra (`pip install 'fbi_ref[dask]'`): without it, asking for a scheduler
is an InputError that says which extra to install. A task is a module-level function and its arguments, so it
runs the same in this process, on the local pool and on a Dask worker; each runs with a fixed number of BLAS
and numba threads (workers.thread_limit), so a result has the same bytes wherever it ran. The model is loaded
once per worker process (`worker_model`, cached by its name or path and the file's size and time), not sent
with every task: on a cluster every worker must see the model file at the same path, or have the official
weights in its own cache.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os

from fbi_ref.errors import InputError
from fbi_ref.evaluation.workers import run_limited, stream_tasks, worker_threads
from fbi_ref.io.zoo import load_model

DASK_EXTRA = "pip install 'fbi_ref[dask]'"
CONNECT_TIMEOUT = 10  # seconds to reach a scheduler before saying it does not answer


def dask_distributed():
    """The dask.distributed module, or an InputError naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise InputError(f"--scheduler needs the optional extra 'dask' (dask.distributed is not installed): "
                         f"{DASK_EXTRA}") from None
    return distributed


@contextlib.contextmanager
def scheduler(spec, jobs=2, threads=1):
    """A Dask client for `spec` ('local': a LocalCluster of `jobs` worker processes, one task each; or a
    scheduler address such as tcp://host:8786), closed after the block; None gives None (the local pool)."""
    if spec is None:
        yield None
        return
    distributed = dask_distributed()
    if spec == "local":
        with worker_threads(threads):  # the worker processes start `threads` BLAS and numba threads, not one per core
            cluster = distributed.LocalCluster(n_workers=jobs, processes=True, threads_per_worker=1,
                                               dashboard_address=None, silence_logs=logging.ERROR)
        try:
            with distributed.Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = distributed.Client(spec, timeout=CONNECT_TIMEOUT)
    except Exception as e:  # noqa: BLE001 -- a server that is not Dask's makes Dask fail in any way (a frame of
        # 3 EiB announced, garbage, a reset): each means no scheduler answers there
        raise InputError(f"{spec}: no Dask scheduler answers there ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    with client:
        yield client


def workers_of(client):
    """How many worker processes a Dask client has (at least 1)."""
    return max(1, len(client.scheduler_info().get("workers", {})))


def run_batches(fn, tasks, client=None, jobs=1, threads=1, window=None):
    """Yield (i, fn(*tasks[i])) as tasks finish: on `client`'s workers if given, else workers.stream_tasks.

    At most `window` tasks are in flight (default: twice the workers), so at most that many results exist at
    once, wherever they are: the memory bound of a run.
    """
    if client is None:
        yield from stream_tasks(fn, tasks, jobs, threads, window)
        return
    distributed = dask_distributed()
    window = window or 2 * workers_of(client)
    queue = iter(enumerate(tasks))
    pending = {}

    def submit(i, task):
        future = client.submit(run_limited, fn, threads, task, pure=False)
        pending[future.key] = i
        return future

    running = distributed.as_completed([submit(i, task) for i, task in _take(queue, window)])
    try:
        for future in running:
            i = pending.pop(future.key)
            result = future.result()
            future.release()  # its result leaves the worker's memory
            yield i, result
            for j, task in _take(queue, 1):
                running.add(submit(j, task))
    finally:  # Ctrl-C or an error: cancel what has not finished
        running.clear()


def _take(iterator, n):
    """The next n items of an iterator (fewer at its end)."""
    out = []
    for item in iterator:
        out.append(item)
        if len(out) >= n:
            break
    return out


@functools.lru_cache(maxsize=2)
def _cached_model(spec, stamp):
    """The model `spec` names, loaded once per process for one state (`stamp`) of its file."""
    return load_model(spec)


def worker_model(spec):
    """fbi_ref.load_model(spec), cached in this process (a worker loads a model once, not once per batch)."""
    try:
        st = os.stat(os.path.expanduser(spec))
        stamp = (st.st_size, st.st_mtime_ns)  # a file replaced in between is loaded again
    except (OSError, TypeError, ValueError):
        stamp = None  # a name: vgg16, shapes, ...
    return _cached_model(spec, stamp)
