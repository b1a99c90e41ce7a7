"""The numpy backend: float64 arrays on the host, each block worked on in pieces on a thread pool.

The accumulators are written once against the primitives of
:class:`NumpyBackend` and :class:`~nccli.metrics.torch_backend.TorchBackend`
(plus operators and indexing, which numpy and torch share); :class:`Groups`
is what both give for the classes of a block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nccli.metrics.threads import pool_size, thread_pool
from nccli.types import Array

# Label runs at least this long are summed by one BLAS product each; shorter ones in batches (segment_sum).
LONG_RUN = 32
# The numpy backend works through a block in pieces of about this many float64 bytes (at least
# MIN_PIECE_ROWS rows), one task of a thread pool each: the elementwise work between BLAS calls runs
# on every core, and a piece's temporaries stay in the CPU's caches.
PIECE_BYTES = 4 * 2**20
MIN_PIECE_ROWS = 64


@dataclass(frozen=True)
class Groups:
    """The classes present in one block: ``ids`` ascending, ``count`` (float64) rows of each, ``index``
    the group of each row; on numpy (rows sorted by label) also each run's ``starts`` and ``lengths``."""

    ids: Array
    count: Array
    index: Array
    starts: np.ndarray | None = None
    lengths: np.ndarray | None = None


class NumpyBackend:
    """float64 numpy on the host."""

    name = "cpu"
    tile_bytes = 8 * 2**20  # pass 2's block × class-tile products (metrics/geometry.py): a few fit in the L3 cache
    single_unit = 2.0**-24  # unit roundoff of its float32 products

    def pieces(self, rows: int, dim: int) -> list[slice]:
        """Consecutive row ranges of a block of ``rows`` × ``dim``, each about PIECE_BYTES of float64."""
        step = max(MIN_PIECE_ROWS, PIECE_BYTES // (8 * max(dim, 1)))
        return [slice(start, start + step) for start in range(0, rows, step)]

    def piece_pool(self):
        """A context giving the thread pool that works on the pieces (:mod:`nccli.metrics.threads`)."""
        return thread_pool()

    def pieces_at_once(self) -> int:
        """Pieces worked on at the same time: the pool's threads."""
        return pool_size()

    def features(self, block: np.ndarray):
        return np.asarray(block, dtype=np.float64)

    def labels(self, block: np.ndarray):
        return np.asarray(block, dtype=np.int64)

    def constant(self, array: np.ndarray):
        return np.array(array, dtype=np.float64)

    def zeros(self, *shape: int):
        return np.zeros(shape, dtype=np.float64)

    def arange(self, n: int):
        return np.arange(n)

    def bincount(self, labels, length: int, weights=None):
        return np.bincount(labels, weights=weights, minlength=length).astype(np.float64)

    def grouped(self, rows, labels):
        """Rows and labels sorted by label, so that each class's rows are one run (no gather per class)."""
        if len(labels) > 1 and (labels[1:] < labels[:-1]).any():
            order = np.argsort(labels, kind="stable")
            rows, labels = rows[order], labels[order]
        return rows, labels

    def groups(self, labels) -> Groups:
        """The runs of equal labels in ``labels`` sorted by :meth:`grouped`."""
        starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]]) if len(labels) else np.zeros(0, np.int64)
        lengths = np.diff(np.r_[starts, len(labels)])
        index = np.repeat(np.arange(len(starts)), lengths)
        return Groups(labels[starts], lengths.astype(np.float64), index, starts, lengths)

    def segment_sum(self, rows, groups: Groups):
        """Row sums per group: (groups, d) in a few vectorised calls per block, whatever the run lengths.

        Runs of at least LONG_RUN rows: one BLAS vector–matrix product each
        (at most B / LONG_RUN of them). Shorter runs: one gather-and-sum per
        distinct length (fewer than LONG_RUN calls), since thousands of tiny
        products cost more in call overhead than in arithmetic. Both are plain
        sums of the rows, no cumulative-sum differences that would lose
        precision. (np.add.reduceat measured 4–6× slower than either here.)
        """
        starts, lengths = groups.starts, groups.lengths
        out = np.empty((len(starts), rows.shape[1]), dtype=np.float64)
        long_runs = np.flatnonzero(lengths >= LONG_RUN)
        if len(long_runs):
            ones = np.ones(int(lengths[long_runs].max()))
            for run in long_runs:
                start, length = starts[run], lengths[run]
                out[run] = ones[:length] @ rows[start : start + length]
        short = lengths < LONG_RUN
        for length in np.flatnonzero(
            np.bincount(lengths[short])
        ):  # the distinct lengths (np.unique imports numpy.ma: 60 ms)
            runs = np.flatnonzero(lengths == length)
            if length == 1:
                out[runs] = rows[starts[runs]]
            else:
                out[runs] = rows[starts[runs][:, None] + np.arange(length)].sum(axis=1)
        return out

    def group_sum(self, values, groups: Groups):
        """Sum of a per-row value per group: (groups,)."""
        return np.bincount(groups.index, weights=values, minlength=len(groups.ids))

    def where(self, condition, a, b):
        return np.where(condition, a, b)

    def flatnonzero(self, a):
        return np.flatnonzero(a)

    def rowdot(self, a, b):
        return np.einsum("ij,ij->i", a, b)

    def sqrt(self, a):
        return np.sqrt(a)

    def exp(self, a):
        return np.exp(a)

    def log1p(self, a):
        return np.log1p(a)

    def at_least_one(self, a):
        return np.maximum(a, 1.0)

    def argmin(self, a):
        return np.argmin(a, axis=1)

    def argmax(self, a):
        return np.argmax(a, axis=1)

    def row_min(self, a):
        return np.min(a, axis=1)

    def row_max(self, a):
        return np.max(a, axis=1)

    def single(self, a):
        return a.astype(np.float32)

    def single_with_ones(self, a):
        """(a, 1): float32 rows with one more column of ones (it multiplies offsets folded into a product)."""
        out = np.empty((a.shape[0], a.shape[1] + 1), dtype=np.float32)
        out[:, :-1], out[:, -1] = a, 1.0
        return out

    def wide(self, a):
        return a.astype(np.float64)

    def scratch(self, size: int):
        """A float32 buffer that a block's tile products are written into, one after another (no page
        faults of a fresh array per tile)."""
        return np.empty(size, dtype=np.float32)

    def product_into(self, a, b, buffer):
        """a @ bᵀ, written into the start of ``buffer``."""
        return np.matmul(a, b.T, out=buffer[: len(a) * len(b)].reshape(len(a), len(b)))

    def add_into(self, a, b, buffer):
        """a + b (broadcast to a's shape), written into the start of ``buffer`` (may be a's own)."""
        return np.add(a, b, out=buffer[: a.size].reshape(a.shape))

    def full(self, n: int, value: float):
        return np.full(n, value)

    def pairs(self, mask):
        """(rows, columns) of the True entries of a 2-D mask, row by row, columns ascending (from the
        flat positions: np.nonzero of a 2-D mask is ~10× slower)."""
        flat = np.flatnonzero(mask)
        return flat // mask.shape[1], flat % mask.shape[1]

    def concatenate(self, *arrays):
        return np.concatenate(arrays)

    def first_per_row(self, rows, keys, columns):
        """Position of the pair with the smallest key of each row present, the lowest column on ties."""
        order = np.lexsort((columns, keys, rows))
        grouped = rows[order]
        return order[np.r_[True, grouped[1:] != grouped[:-1]]] if len(order) else order

    def all_finite(self, a) -> bool:
        return bool(np.isfinite(a).all())

    def first_nonfinite_row(self, a) -> int:
        return int(np.flatnonzero(~np.isfinite(a).all(axis=1))[0])

    def host(self, a) -> np.ndarray:
        return np.asarray(a)

    def device_memory(self) -> int | None:
        """Free bytes on the device holding the state; None when that is the host."""
        return None

    def scalar(self, a) -> float:
        return float(a)
