"""A pool of threads for work cut into independent parts (class tiles, pieces of a block of rows).

Each thread makes its own BLAS calls with BLAS held to one thread (numpy
releases the GIL during its array work; an idle BLAS thread spins waiting for
work and would take a core from the pool), so the elementwise work between
products runs on every core too. The pool has as many threads as BLAS had (the
cores, or the user's ``OMP_NUM_THREADS``), at most ``MAX_THREADS``. Callers cut their work the same way whatever the
number of threads and merge the parts in a fixed order, so results never depend on it.
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from threadpoolctl import threadpool_info, threadpool_limits

MAX_THREADS = 4


def pool_size() -> int:
    """Threads of the pool: as many as BLAS would use now (at least 1, at most ``MAX_THREADS``)."""
    blas = [library["num_threads"] for library in threadpool_info() if library["user_api"] == "blas"]
    return max(1, min(max(blas, default=1), MAX_THREADS))


@contextmanager
def thread_pool() -> Iterator[ThreadPoolExecutor]:
    """The pool, with BLAS held to one thread while it is open."""
    threads = pool_size()
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        yield pool
