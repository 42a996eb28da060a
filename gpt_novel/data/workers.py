"""The process pool of `prepare`: started only when there is work, results in order with a bounded window.

A `concurrent.futures.ProcessPoolExecutor`, not `multiprocessing.Pool`: when a worker dies (killed for memory,
an interrupt inside it) the executor fails every pending job at once, where a Pool waits forever. Its `map`
would submit the whole input at once and keep every result that arrives early: with a corpus streamed from disk
that is the corpus in memory. `ordered_map` keeps a few jobs per worker in flight, so memory does not depend on
the input size.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor

from gpt_novel.lifetime import die_with_parent


class LazyPool:
    """A pool of `workers` processes, started on the first `get()` (a warm re-run may never need one); with one
    worker there is no pool and the work runs in this process."""

    def __init__(self, workers: int):
        self.workers, self._pool = workers, None

    def get(self) -> ProcessPoolExecutor | None:
        if self._pool is None and self.workers > 1:
            # spawned, never forked: this process may run threads by then (tqdm's monitor in a terminal, the
            # tokenizers pool after a BPE training), and a fork copies the locks they hold into every worker
            ctx = multiprocessing.get_context("spawn")
            # killed with this process, however it dies: a worker waits on its call queue forever otherwise
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=die_with_parent,
                                             initargs=(signal.SIGKILL, os.getpid()))
        return self._pool

    def __enter__(self) -> LazyPool:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            if exc[0] is not None:  # the jobs in flight are of no use: end the workers now
                for process in list(self._pool._processes.values()):
                    process.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)


def ordered_map(pool: LazyPool, fn: Callable, items: Iterable, per_worker: int = 4) -> Iterator:
    """fn(item) for each item, in order, computed by the pool's workers with at most per_worker × workers jobs
    in flight (fn must be a module-level function: it is pickled to the workers)."""
    workers = pool.get()
    if workers is None:
        yield from map(fn, items)
        return
    pending: deque = deque()
    for item in items:
        pending.append(workers.submit(fn, item))
        if len(pending) >= per_worker * pool.workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
