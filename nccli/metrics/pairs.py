"""Pair values over tiles of the K × K Gram matrices (``docs/metrics.md``, "Many classes").

No K × K matrix is ever held: classes are cut into tiles of ``T`` ids and the
pairs c < c' are visited tile by tile (T × T blocks of the Gram matrices
M Mᵀ of the centred means and, on the classifier layer, of the unit
classifier rows). Per tile:

* squared distances from the Gram form ‖m_c‖² + ‖m_c'‖² − 2 m_c·m_c' on
  means centred at μ_G, recomputed from explicit differences of the
  uncentred means where the form could lose digits to cancellation
  (:class:`~nccli.metrics.tiles.CentredMeans`): coincident pairs are found
  exactly as from a full matrix of explicit differences;
* cosines of centred means, CDNV;
* distances ‖m̂_c − m̂_c'‖ between the centred means scaled to unit norm
  (GNC2), √(2 − 2cos) except for nearly parallel directions, where they are
  recomputed from explicit differences of the unit vectors;
* on the classifier layer, cosines of the classifier rows (not centred).

Each tile's rows are cut into strips (``tiles.STRIPS``), one task of a
thread pool each (:func:`~nccli.metrics.threads.thread_pool`): its
products, its values in arrays of its thread (allocated once) and their
statistics (:class:`~nccli.metrics.pair_stats.PairStats`), merged in row
order, so results never depend on the number of threads. The summaries
keep no per-pair array: the CDNV sum Σ (V_c + V_c')/(2d²) is two
matrix-vector products with the block of 1/d²; ``inter_cos_*`` come from
:mod:`nccli.metrics.inter`.
A per-pair consumer (``--pairs``, ``--pairs-top``; :class:`TopPairs` keeps
the most confusable pairs) gets each tile in fresh arrays, with the
cosine-view inter-class similarities from a float64 product.
Memory: O(K·d) for the inputs plus one tile (``tiles.TILE_BYTES``).
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial

import numpy as np

from nccli.metrics.pair_stats import Block, PairStats
from nccli.metrics.threads import thread_pool
from nccli.metrics.tiles import (
    CentredMeans,
    above_diagonal,
    blocks,
    strip_rows,
)


@dataclass
class PairTile:
    """Pairs c < c' of one tile, flattened: class ids and per-pair values (NaN where undefined)."""

    class_a: np.ndarray
    class_b: np.ndarray
    cdnv: np.ndarray
    mean_cos: np.ndarray
    inter_cos: np.ndarray
    mean_dist: np.ndarray
    w_cos: np.ndarray

    def __len__(self) -> int:
        return len(self.class_a)

    def take(self, index) -> "PairTile":
        return PairTile(*(getattr(self, item.name)[index] for item in fields(self)))

    @classmethod
    def concat(cls, tiles: list["PairTile"]) -> "PairTile":
        return cls(*(np.concatenate([getattr(t, item.name) for t in tiles]) for item in fields(cls)))


@dataclass
class Tile:
    """One rows × cols block of pairs as 2-d arrays, as a per-pair consumer gets it; in a diagonal block
    only entries above the diagonal count."""

    row_ids: np.ndarray
    col_ids: np.ndarray
    upper: np.ndarray | None  # mask of the counted entries; None: all of them
    sq: np.ndarray  # ‖μ_c − μ_c'‖²
    cdnv: np.ndarray
    mean_cos: np.ndarray
    inter_cos: np.ndarray
    w_cos: np.ndarray  # cos(w_c, w_c'), NaN without a classifier or where a row is zero

    def select(self, block: np.ndarray) -> np.ndarray:
        """The counted entries, row by row (a view when every entry counts)."""
        return block.ravel() if self.upper is None else block[self.upper]

    def pairs(self, where: np.ndarray | None = None) -> PairTile:
        """The counted pairs as flat columns, row by row; only those ``where`` is true, if given."""
        shape = self.sq.shape
        grid = np.broadcast_to(self.row_ids[:, None], shape), np.broadcast_to(self.col_ids[None, :], shape)
        columns = (*grid, self.cdnv, self.mean_cos, self.inter_cos, self.sq, self.w_cos)
        if where is None:
            a, b, cdnv, mean_cos, inter_cos, sq, w_cos = (self.select(np.ascontiguousarray(x)) for x in columns)
        else:
            keep = where if self.upper is None else where & self.upper
            a, b, cdnv, mean_cos, inter_cos, sq, w_cos = (x[keep] for x in columns)
        return PairTile(a, b, cdnv, mean_cos, inter_cos, np.sqrt(sq), w_cos)


class PairInputs:
    """Per-class inputs of the pair values (rows = present classes in id order): ``variances`` V_c,
    ``unit_sum`` and ``unit_count`` of the cosine view, ``weight_unit`` the classifier rows w_c/‖w_c‖
    (NaN rows where w_c = 0), or None."""

    def __init__(self, ids, means: CentredMeans, variances, unit_sum, unit_count, weight_unit=None):
        self.ids, self.means, self.unit_sum, self.weight_unit = ids, means, unit_sum, weight_unit
        self.half_variances = variances / 2.0
        with np.errstate(divide="ignore"):
            self.inverse_counts = 1.0 / unit_count  # inf for a class of zero vectors: 0 · inf = NaN, undefined

    def fold(self, tile: int, pairs: Callable[[Tile], None] | None = None) -> PairStats:
        """The statistics of every pair c < c', tile by tile (row tile, then column tiles to its right);
        each tile also handed to ``pairs`` if given."""
        stats = PairStats(len(self.ids))
        local = threading.local()  # each thread's strip arrays
        upper = above_diagonal(min(tile, len(self.ids)))
        ranges = blocks(len(self.ids), tile)
        with thread_pool() as pool:
            for index, rows in enumerate(ranges):
                strips, row = blocks(rows[1] - rows[0], strip_rows(tile)), ranges[index:]
                # a whole row of tiles at a time (fewer waits), or with a consumer one tile, in fresh arrays
                for batch in [row] if pairs is None else [[cols] for cols in row]:
                    shape = (rows[1] - rows[0], batch[0][1] - batch[0][0])
                    kept = None if pairs is None else [np.empty(shape) for _ in _KEPT]
                    task = partial(self._strip, rows, upper, kept, local, tile)
                    done = list(pool.map(task, [(cols, strip) for cols in batch for strip in strips]))
                    for part in done:
                        stats.merge(part)
                    if pairs is not None:
                        pairs(self._tile(rows, batch[0], upper, kept))
        return stats

    def _strip(self, rows, upper, kept, local, tile: int, task) -> PairStats:
        """For ``task`` = (cols, strip), the rows ``strip`` (within the row tile) of the tile ``cols``: their
        statistics, and their values into the rows of ``kept`` (:data:`_KEPT`) if given."""
        cols, (s0, s1) = task
        c0, c1 = cols
        first, last = rows[0] + s0, rows[0] + s1
        if not hasattr(local, "arrays"):
            local.arrays = _Arrays(7, strip_rows(tile) * tile)
        arrays = local.arrays.shaped((s1 - s0, c1 - c0))
        if kept is not None:
            arrays[:3] = (values[s0:s1] for values in kept[:3])
        sq, cos, w_cos, gram, inverse, shifted, deviations = arrays
        if self.weight_unit is None:
            w_cos = None
        else:
            np.matmul(self.weight_unit[first:last], self.weight_unit[c0:c1].T, out=w_cos)
        upper = upper[s0:s1, : c1 - c0] if cols == rows else None
        self.means.gram((first, last), cols, gram)
        half_rows, half_cols = self.half_variances[first:last], self.half_variances[c0:c1]
        with np.errstate(invalid="ignore", divide="ignore"):
            i, j, explicit = self.means.block((first, last), cols, gram, sq, cos, upper)
            close = np.sqrt(explicit) <= self.means.tolerance
            np.divide(1.0, sq, out=inverse)
            inverse[i[close], j[close]] = np.nan  # cdnv undefined
            if upper is not None:
                inverse[~upper] = 0.0
            cdnv_sum = float((inverse @ half_cols).sum() + (half_rows @ inverse).sum())  # Σ (V_c + V_c')/2d²
            if kept is not None:
                cdnv = np.add(half_rows[:, None], half_cols[None, :], out=kept[3][s0:s1])
                cdnv /= sq
                cdnv[i[close], j[close]] = np.nan
            unit_dist = np.multiply(cos, -2.0, out=gram)  # the products are used up
            unit_dist += 2.0
            np.sqrt(unit_dist, out=unit_dist)  # cancels only where cos ≥ 1 − 2τ: recomputed there
            unit_dist[i, j] = self._unit_distances(first + i, c0 + j)
        row_ids, col_ids = self.ids[first:last], self.ids[c0:c1]
        coincident = (row_ids[i[close]], col_ids[j[close]])
        stats = PairStats(len(self.ids))
        stats.add(Block(upper, cdnv_sum, cos, unit_dist, w_cos, coincident), (shifted, deviations))
        return stats

    def _tile(self, rows, cols, upper, kept: list) -> Tile:
        """A whole tile for a per-pair consumer, with the inter-class cosines."""
        (r0, r1), (c0, c1) = rows, cols
        upper = upper[: r1 - r0, : c1 - c0] if rows == cols else None
        sq, cos, w_cos, cdnv = kept
        with np.errstate(invalid="ignore"):
            inter = self.unit_sum[r0:r1] @ self.unit_sum[c0:c1].T
            inter *= self.inverse_counts[r0:r1, None]
            inter *= self.inverse_counts[None, c0:c1]
        if self.weight_unit is None:
            w_cos.fill(np.nan)
        return Tile(self.ids[r0:r1], self.ids[c0:c1], upper, sq, cdnv, cos, inter, w_cos)

    def _unit_distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """‖m̂_a − m̂_b‖ from explicit differences, for the pairs where √(2 − 2cos) would cancel."""
        means = self.means
        with np.errstate(invalid="ignore", divide="ignore"):  # a zero centred mean: NaN, undefined
            diff = means.centred[b] / means.norms[b, None] - means.centred[a] / means.norms[a, None]
        return np.sqrt(np.einsum("ij,ij->i", diff, diff))


# The per-pair values a consumer keeps, in fresh arrays per tile (the rest of a tile's work is reused).
_KEPT = ("sq", "cos", "w_cos", "cdnv")


class _Arrays:
    """``count`` float64 arrays allocated once (a fresh large array costs page faults each time), viewed
    as contiguous arrays of any shape of at most ``size`` entries."""

    def __init__(self, count: int, size: int):
        self.flat = [np.empty(size) for _ in range(count)]

    def shaped(self, shape: tuple[int, int]) -> list[np.ndarray]:
        return [flat[: shape[0] * shape[1]].reshape(shape) for flat in self.flat]


class TopPairs:
    """The ``n`` pairs with the largest cdnv over all tiles (coincident pairs, cdnv null, count as largest;
    ties by class ids), chosen with memory O(n + tile)."""

    def __init__(self, n: int):
        self.n = n
        self.kept: PairTile | None = None

    @staticmethod
    def _key(cdnv: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(cdnv), np.inf, cdnv)

    def add(self, tile: Tile) -> None:
        where = None
        if self.kept is not None and len(self.kept) == self.n:
            where = self._key(tile.cdnv) >= self._key(self.kept.cdnv)[-1]  # only these can enter (≥: ties by ids)
        candidates = tile.pairs(where)
        merged = candidates if self.kept is None else PairTile.concat([self.kept, candidates])
        order = np.lexsort((merged.class_b, merged.class_a, -self._key(merged.cdnv)))[: self.n]
        self.kept = merged.take(order)

    def result(self) -> PairTile | None:
        return self.kept
