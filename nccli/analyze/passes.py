"""Running analyze's two passes over a file's rows: here, or in row ranges on worker processes.

Each block of rows is worked on in pieces (``xp.pieces``; on the CPU one task
of a thread pool each, :mod:`nccli.metrics.threads`) whose states fold into
the layer's state in row order, so the number of threads changes nothing.
With ``jobs > 1`` each file's rows are cut into block-aligned ranges; each
worker opens the file itself, accumulates its range, and returns its state
(O(K·d) per layer). States merge exactly (``ClassMoments.merge``,
``Decisions.merge``), so the result equals a single pass to rounding. Under
torchrun (``group``, :mod:`nccli.analyze.collectives`) this process scans only its
rank's rows, and the ranks' states merge with the same ``merge``. Each worker's BLAS, and so its
thread pool, gets its share of the cores (``cores // jobs`` threads): left at its default, every
worker would start one thread per core and they would fight over them.

Pass 2 must read the rows of pass 1 (in any order): its merged state is checked against pass 1's means
(:func:`~nccli.metrics.accumulators.moved_class`) before anything is summarized. A file can fail it only
if something wrote to it between the passes; batches in memory (``measure_collapse``) if the model or the
loader gave other rows, which its own ``other_rows`` error says.
"""

import concurrent.futures
import concurrent.futures.process
import multiprocessing
import os
import resource
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from nccli import schema
from nccli.allocator import keep_freed_memory
from nccli.analyze.plan import row_ranges
from nccli.errors import FeatureFileError, NcCliError, UsageError
from nccli.io.attributes import shown
from nccli.io.reader import FeatureFile, LayerInfo, open_feature_file
from nccli.metrics.accumulators import ClassMoments, Decisions, Moved, moved_class
from nccli.metrics.backend import Backend, NumpyBackend, backend_of
from nccli.metrics.geometry import Geometry

if TYPE_CHECKING:  # torch, only under torchrun
    from nccli.analyze.collectives import Group

RANGES_PER_JOB = 4  # more ranges than workers evens out slow ones
POOL_START_SECONDS = 120.0  # spawned workers import numpy and h5py: seconds on a loaded machine
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def moments_over(xp, feature_file, layers, block_rows, start, stop, advance) -> dict[str, ClassMoments]:
    """Pass 1 over rows [start, stop) of ``layers``; states on the host."""
    num_classes = feature_file.info.num_classes
    moments = {layer.name: ClassMoments.empty(xp, num_classes, layer.dim) for layer in layers}
    kernels = {name: partial(ClassMoments.of_block, xp) for name in moments}
    _fold_blocks(xp, feature_file, layers, block_rows, start, stop, kernels, moments, advance)
    return {name: state.host() for name, state in moments.items()}


def decisions_over(
    xp, feature_file, layers, block_rows, start, stop, advance, *, geometries, matrix_layer
) -> dict[str, Decisions]:
    """Pass 2 over rows [start, stop) of ``layers`` (with the within-class matrix of ``matrix_layer``); states on
    the host."""
    num_classes = feature_file.info.num_classes
    decisions = {
        layer.name: Decisions.empty(
            xp,
            num_classes,
            geometries[layer.name].rank,
            layer.dim if layer.name == matrix_layer else None,
            dim=layer.dim,
        )
        for layer in layers
    }
    kernels = {
        name: partial(
            Decisions.of_block, xp, geometries[name], num_classes=num_classes, with_matrix=state.within is not None
        )
        for name, state in decisions.items()
    }
    _fold_blocks(xp, feature_file, layers, block_rows, start, stop, kernels, decisions, advance)
    return {name: state.host() for name, state in decisions.items()}


def _fold_blocks(xp, feature_file, layers, block_rows, start, stop, kernels: dict, states: dict, advance) -> None:
    """Fold ``kernels[name](rows, labels)`` of every piece of every block into ``states[name]``, in row
    order. With a pool, it works on one block while the next is read."""
    with xp.piece_pool() as pool:
        pending = None  # the block submitted last: its pieces' states (in order) and its number of rows
        for labels, rows in feature_file.blocks(layers, block_rows, start, stop):
            submitted = (
                {name: _each_piece(xp, pool, block, labels, kernels[name]) for name, block in rows.items()},
                len(labels),
            )
            if pending is not None:
                _fold(pending, states, advance)
            pending = submitted
        if pending is not None:
            _fold(pending, states, advance)


def _fold(submitted, states: dict, advance) -> None:
    pieces, rows = submitted
    for name, piece_states in pieces.items():
        for state in piece_states:
            states[name].fold(state)
    advance(rows)


def _each_piece(xp, pool, block, labels, kernel: Callable):
    """``kernel(rows, labels)`` of each piece of a block (``xp.pieces``), in order: submitted to ``pool`` at
    once if there is one (results come as they are ready), else computed as they are asked for."""
    pieces = xp.pieces(*block.shape)

    def state(piece: slice):
        return kernel(xp.features(block[piece]), xp.labels(labels[piece]))

    return pool.map(state, pieces) if pool is not None else map(state, pieces)


def _in_worker(pass_function, path: str, layer_names: tuple[str, ...], *args):
    """A worker's task: open the file, run one pass (``moments_over``, or ``decisions_over`` with its
    geometries bound) over one row range."""
    with open_feature_file(path, probed=True) as feature_file:  # the parent opened it first
        layers = tuple(feature_file.info.layer(name) for name in layer_names)
        return pass_function(NumpyBackend(), feature_file, layers, *args, lambda n: None)


def _ready() -> int:
    """A worker's first task: it has started and imported what the passes need."""
    keep_freed_memory()
    return os.getpid()


def _start_pool(jobs: int) -> concurrent.futures.ProcessPoolExecutor:
    """A pool whose ``jobs`` workers have all answered once, or a one-line error.

    Under a memory limit (``ulimit -v``) a worker, or a thread the pool needs in this process, may fail to
    start. A thread that cannot start kills the pool's manager thread, after which no task ever finishes:
    the pool would wait forever. So each worker runs :func:`_ready` first, and the threads' own errors are
    caught while they start.
    """
    context = multiprocessing.get_context("spawn")  # no forked HDF5 handles
    failures: list[BaseException] = []
    previous_hook = threading.excepthook
    threading.excepthook = lambda hooked: failures.append(hooked.exc_value)
    pool = None
    try:
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context)
        futures = [pool.submit(_ready) for _ in range(jobs)]
        deadline = time.monotonic() + POOL_START_SECONDS
        while not failures and time.monotonic() < deadline:
            if not concurrent.futures.wait(futures, timeout=0.05).not_done:
                break
        if failures:
            raise failures[0]
        for future in futures:
            future.result(timeout=0)
    except (OSError, RuntimeError, ImportError, MemoryError, concurrent.futures.process.BrokenProcessPool) as error:
        if pool is not None:
            _abandon(pool)
        timed_out = isinstance(error, TimeoutError)
        reason = f"they did not answer within {POOL_START_SECONDS:.0f} s" if timed_out else shown(error)
        raise UsageError(
            f"--jobs {jobs}: cannot start the worker processes ({reason}){_memory_limit()}; "
            "use --jobs 1, or raise the limit"
        ) from None
    finally:
        threading.excepthook = previous_hook
    return pool


def _abandon(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop a pool that never started properly without waiting on it (its manager thread may be dead)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):  # not public: the workers started
        process.kill()  # before the pool's queues and locks go, which a starting worker would miss (a traceback)
        process.join()
    pool.shutdown(wait=False, cancel_futures=True)


def _memory_limit() -> str:
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    return "" if limit == resource.RLIM_INFINITY else f" under a memory limit of {limit / 2**20:.0f} MiB (ulimit -v)"


def file_changed(path: str, layer: str, moved: Moved) -> NcCliError:
    """The error of a file whose rows differed between the passes."""
    return FeatureFileError(
        path,
        schema.layer_path(layer),
        f"the second pass over the file gave other rows than the first ({moved}): something wrote to it while "
        "analyze read it; rerun once nothing writes to it",
    )


class Scanner:
    """Runs passes over files, on ``jobs`` worker processes when ``jobs > 1``, and merges the states; in a
    torchrun job (``group``), over this rank's rows, merged with the other ranks' states on rank 0.
    ``other_rows(path, layer, moved)``: the error raised when pass 2 did not read the rows of pass 1."""

    def __init__(
        self,
        xp: Backend,
        jobs: int,
        block_rows: int | None,
        advance: Callable[[int], None],
        group: "Group | None" = None,
        *,
        other_rows: Callable[[str, str, Moved], NcCliError] = file_changed,
    ):
        self.xp, self.jobs, self.block_rows, self.advance, self.group = xp, jobs, block_rows, advance, group
        self.other_rows = other_rows
        self.main = group is None or group.main  # the process that holds the merged states and reports
        self._pool = None
        self._variables_set: list[str] = []
        if jobs > 1:
            self._share_cores(jobs)
            try:
                self._pool = _start_pool(jobs)
            except BaseException:
                self.close()
                raise

    def _share_cores(self, jobs: int) -> None:
        """Workers inherit the environment when they start: give each BLAS ``cores // jobs`` threads."""
        threads = str(max(1, len(os.sched_getaffinity(0)) // jobs))
        for variable in BLAS_THREAD_VARIABLES:
            if variable not in os.environ:  # the user's own setting wins
                self._variables_set.append(variable)
                os.environ[variable] = threads

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for variable in self._variables_set:
            os.environ.pop(variable, None)

    def moments(self, feature_file: FeatureFile, layers: tuple[LayerInfo, ...]):
        """Pass-1 states of ``layers`` over every row (None on the ranks other than 0)."""
        return self._run(moments_over, feature_file, layers)

    def decisions(
        self,
        feature_file: FeatureFile,
        layers: tuple[LayerInfo, ...],
        geometries: dict[str, Geometry],
        matrix_layer: str | None = None,
    ):
        """Pass-2 states of ``layers`` over every row, with the within-class matrix of ``matrix_layer`` (None on
        the ranks other than 0), checked to be over the rows of pass 1."""
        states = self._run(
            partial(decisions_over, geometries=geometries, matrix_layer=matrix_layer), feature_file, layers
        )
        if states is not None:
            for layer in layers:
                self._check_same_rows(feature_file, layer.name, states[layer.name], geometries[layer.name])
        return states

    def _check_same_rows(self, feature_file: FeatureFile, name: str, state: Decisions, geometry: Geometry) -> None:
        """Refuse (``other_rows``) a pass 2 that did not read the rows of pass 1, whose means ``geometry`` holds."""
        host = backend_of(geometry.origin).host
        centres = host(geometry.own_centres)[host(geometry.column_of_class)]  # μ_c − o of every class
        moved = moved_class(state, centres, host(geometry.origin))
        if moved is not None:
            raise self.other_rows(feature_file.info.path, name, moved)

    def shared(self, build: Callable[[], dict]) -> dict:
        """What ``build()`` returns, built once (on rank 0 in a job) and the same on every rank."""
        return build() if self.group is None else self.group.share(build)

    def _run(self, pass_function, feature_file: FeatureFile, layers):
        block_rows = feature_file.block_rows(layers, self.block_rows)
        start, stop = (
            (0, feature_file.info.n_samples) if self.group is None else self.group.rows(feature_file, block_rows)
        )
        states = self._scan(pass_function, feature_file, layers, block_rows, start, stop)
        return states if self.group is None else self.group.reduce(states)

    def _scan(self, pass_function, feature_file: FeatureFile, layers, block_rows: int, start: int, stop: int):
        """States over rows [start, stop), merged in range order."""
        if self._pool is None or start == stop:
            return pass_function(self.xp, feature_file, layers, block_rows, start, stop, self.advance)
        names = tuple(layer.name for layer in layers)
        ranges = row_ranges(stop, block_rows, self.jobs * RANGES_PER_JOB, start)
        futures = {
            self._pool.submit(_in_worker, pass_function, feature_file.info.path, names, block_rows, start, stop): index
            for index, (start, stop) in enumerate(ranges)
        }
        # Merge in range order (a fixed merge order gives the same rounding every run), as soon as the
        # next range is in: the parent then holds few O(K·d) states at once, not one per range.
        waiting, merged, next_index = {}, None, 0
        for future in concurrent.futures.as_completed(futures):
            index = futures.pop(future)
            start, stop = ranges[index]
            self.advance(stop - start)
            waiting[index] = future.result()
            while next_index in waiting:
                state = waiting.pop(next_index)
                merged = state if merged is None else {name: merged[name].merge(state[name]) for name in names}
                next_index += 1
        return merged
