"""Pair statistics over tiles of the K × K Gram matrices (``metrics.md``, "Many classes").

No K × K matrix is ever held: classes are cut into tiles of ``T`` ids and the
pairs c < c' are visited tile by tile (T × T blocks of the Gram matrices
M Mᵀ of the centred means and U Uᵀ of the unit-vector sums). Per tile:

* squared distances from the Gram form ‖m_c‖² + ‖m_c'‖² − 2 m_c·m_c' on
  means centred at μ_G, recomputed from explicit differences of the
  uncentred means where the form could lose digits to cancellation
  (d² ≤ ``CANCELLATION_RATIO`` (‖m_c‖² + ‖m_c'‖²), or near the coincidence
  tolerance): coincident pairs are found exactly as from a full matrix of
  explicit differences;
* cosines of centred means, cosine-view inter-class similarities, CDNV;
* distances ‖m̂_c − m̂_c'‖ between the centred means scaled to unit norm
  (GNC2), √(2 − 2cos) except for nearly parallel directions, where they are
  recomputed from explicit differences of the unit vectors;
* on the classifier layer, cosines of the classifier rows (not centred).

:class:`PairStats` folds tiles into the pair summaries exactly: sums, minima
and maxima, and Chan et al.'s centred merge for the standard deviation.
:class:`TopPairs` keeps the most confusable pairs for ``--pairs-top``.
Memory: O(K·d) for the inputs plus one tile (``tiles.TILE_BYTES``).
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import numpy as np

from nccli.metrics.tiles import CentredMeans, above_diagonal, blocks

# Pairs listed by name in a warning; the rest are counted.
LISTED_PAIRS = 10
# Normalised centred means closer than this share a direction: log(1/distance) is undefined.
SAME_DIRECTION = 1e-7


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
    """One rows × cols block of pairs as 2-d arrays; in a diagonal block only entries above the diagonal count."""

    row_ids: np.ndarray
    col_ids: np.ndarray
    upper: np.ndarray | None  # mask of the counted entries; None: all of them
    sq: np.ndarray  # ‖μ_c − μ_c'‖²
    cdnv: np.ndarray
    mean_cos: np.ndarray
    inter_cos: np.ndarray
    coincident: tuple[np.ndarray, np.ndarray]  # class ids (c, c') of the coincident pairs
    unit_dist: np.ndarray  # ‖m̂_c − m̂_c'‖, NaN where a centred mean is zero
    w_cos: np.ndarray  # cos(w_c, w_c'), NaN without a classifier or where a row is zero

    def select(self, block: np.ndarray) -> np.ndarray:
        """The counted entries, row by row (a view when every entry counts)."""
        return block.ravel() if self.upper is None else block[self.upper]

    def __len__(self) -> int:
        return self.sq.size if self.upper is None else int(self.upper.sum())

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


@dataclass(frozen=True)
class PairInputs:
    """Per-class inputs of the pair statistics (rows = present classes in id order)."""

    ids: np.ndarray
    means: CentredMeans
    variances: np.ndarray  # V_c
    unit_sum: np.ndarray
    unit_count: np.ndarray
    weight_unit: np.ndarray | None = None  # classifier rows w_c/‖w_c‖ (NaN rows where w_c = 0), or None

    def tiles(self, tile: int) -> Iterator[Tile]:
        """Every pair c < c' once, tile by tile (row tile, then column tiles to its right)."""
        half_variances = self.variances / 2.0
        with np.errstate(divide="ignore"):
            inverse_counts = 1.0 / self.unit_count  # inf for a class of zero vectors: 0 · inf = NaN, undefined
        ranges = blocks(len(self.ids), tile)
        for index, rows in enumerate(ranges):
            for cols in ranges[index:]:
                yield self._tile(rows, cols, half_variances, inverse_counts)

    def _tile(self, rows, cols, half_variances, inverse_counts) -> Tile:
        (r0, r1), (c0, c1) = rows, cols
        gram, cos, i, j, explicit = self.means.block(rows, cols)
        sq = self.means.sqnorms[r0:r1, None] + self.means.sqnorms[None, c0:c1]
        sq -= gram
        sq -= gram
        sq[i, j] = explicit
        close = np.sqrt(explicit) <= self.means.tolerance
        with np.errstate(invalid="ignore", divide="ignore"):
            cdnv = half_variances[r0:r1, None] + half_variances[None, c0:c1]
            cdnv /= sq
            inter = self.unit_sum[r0:r1] @ self.unit_sum[c0:c1].T
            inter *= inverse_counts[r0:r1, None]
            inter *= inverse_counts[None, c0:c1]
        cdnv[i[close], j[close]] = np.nan
        upper = above_diagonal(r1 - r0) if rows == cols else None
        row_ids, col_ids = self.ids[r0:r1], self.ids[c0:c1]
        unit_dist = np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))
        unit_dist[i, j] = self._unit_distances(r0 + i, c0 + j)
        if self.weight_unit is None:
            w_cos = np.full(cos.shape, np.nan)
        else:
            w_cos = self.weight_unit[r0:r1] @ self.weight_unit[c0:c1].T
        coincident = (row_ids[i[close]], col_ids[j[close]])
        return Tile(row_ids, col_ids, upper, sq, cdnv, cos, inter, coincident, unit_dist, w_cos)

    def _unit_distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """‖m̂_a − m̂_b‖ from explicit differences, for the pairs where √(2 − 2cos) would cancel."""
        means = self.means
        with np.errstate(invalid="ignore", divide="ignore"):  # a zero centred mean: NaN, undefined
            diff = means.centred[b] / means.norms[b, None] - means.centred[a] / means.norms[a, None]
        return np.sqrt(np.einsum("ij,ij->i", diff, diff))


@dataclass
class Running:
    """Count, mean and centred sum of squares over values seen in parts, merged as Chan et al. do (exact
    and centred, never E[x²] − E[x]²: at collapse the spread → 0 where that form cancels). NaN propagates."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: np.ndarray) -> None:
        n = len(values)
        if n == 0:
            return
        mean = float(values.sum()) / n
        scratch = values - mean
        m2 = float(np.dot(scratch, scratch))
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def variance(self) -> float:
        """Population variance (ddof 0); NaN without values."""
        return self.m2 / self.count if self.count else np.nan


@dataclass
class PairStats:
    """Running pair summaries over tiles; each equals the statistic over all K(K−1)/2 pairs at once.

    Strict like ``formulas.strict_*``: a NaN pair value makes its summary NaN
    (NaN propagates through the sums, the Chan merge and ``np.maximum``).
    """

    k: int
    pairs: int = 0
    cdnv_sum: float = 0.0
    cos: Running = field(default_factory=Running)  # cos(μ_c − μ_G, μ_c' − μ_G)
    cos_deviation_sum: float = 0.0  # Σ |cos + 1/(K − 1)|
    inter_max: float = -np.inf
    inter_sum: float = 0.0
    coincident_count: int = 0
    coincident_first: tuple[tuple[int, int], ...] = ()
    unit_dist: Running = field(default_factory=Running)  # ‖m̂_c − m̂_c'‖ (GNC2)
    log_dist: Running = field(default_factory=Running)  # log(1/‖m̂_c − m̂_c'‖)
    unit_dist_min: float = np.inf
    w_cos: Running = field(default_factory=Running)
    w_cos_deviation_sum: float = 0.0  # Σ |cos(w_c, w_c') + 1/(K − 1)|

    def add(self, tile: Tile) -> None:
        n = len(tile)
        if n == 0:
            return
        self.cdnv_sum += float(tile.select(tile.cdnv).sum())
        cos = tile.select(tile.mean_cos)
        self.cos.add(cos)
        scratch = cos + 1.0 / (self.k - 1)
        self.cos_deviation_sum += float(np.abs(scratch, out=scratch).sum())
        inter = tile.select(tile.inter_cos)
        self.inter_max = float(np.maximum(self.inter_max, inter.max()))
        self.inter_sum += float(inter.sum())
        distances = tile.select(tile.unit_dist)
        self.unit_dist.add(distances)
        self.unit_dist_min = float(np.minimum(self.unit_dist_min, distances.min()))
        with np.errstate(divide="ignore", invalid="ignore"):
            self.log_dist.add(-np.log(distances))  # +inf at a zero distance: the log variance is then NaN
        w_cos = tile.select(tile.w_cos)
        self.w_cos.add(w_cos)
        self.w_cos_deviation_sum += float(np.abs(w_cos + 1.0 / (self.k - 1)).sum())
        self.pairs += n
        if len(tile.coincident[0]):
            self._add_coincident(*tile.coincident)

    def _add_coincident(self, a: np.ndarray, b: np.ndarray) -> None:
        """Count them; keep the first few in (class, class_b) order, as a full matrix would list them."""
        self.coincident_count += len(a)
        kept = np.array(self.coincident_first, dtype=np.int64).reshape(-1, 2)
        a, b = np.concatenate([kept[:, 0], a]), np.concatenate([kept[:, 1], b])
        order = np.lexsort((b, a))[:LISTED_PAIRS]
        self.coincident_first = tuple((int(a[i]), int(b[i])) for i in order)

    def _mean(self, total: float) -> float:
        return total / self.pairs if self.pairs else np.nan

    @property
    def cdnv(self) -> float:
        return self._mean(self.cdnv_sum)

    @property
    def equiangular(self) -> float:
        """Population std of the cosines of centred means over pairs."""
        return math.sqrt(self.cos.variance)

    @property
    def max_angle(self) -> float:
        return self._mean(self.cos_deviation_sum)

    @property
    def w_equiangular(self) -> float:
        """Population std of the cosines of classifier rows over pairs."""
        return math.sqrt(self.w_cos.variance)

    @property
    def w_max_angle(self) -> float:
        return self._mean(self.w_cos_deviation_sum)

    @property
    def gnc2(self) -> tuple[float, float]:
        """(``gnc2_dist_var``, ``gnc2_log_var``): population variances over pairs of ‖m̂_c − m̂_c'‖ and of
        log(1/‖m̂_c − m̂_c'‖) (Liu et al. 2023, hyperspherical uniformity; the Riesz and logarithmic kernels
        of rhubarbwu/neural-collapse ``kernel_stats``); the log one NaN when two directions coincide
        (distance ≤ :data:`SAME_DIRECTION`)."""
        log_var = np.nan if not self.unit_dist_min > SAME_DIRECTION else self.log_dist.variance
        return self.unit_dist.variance, log_var

    @property
    def inter_cos_max(self) -> float:
        return self.inter_max if self.pairs else np.nan

    @property
    def inter_cos_mean(self) -> float:
        return self._mean(self.inter_sum)


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
