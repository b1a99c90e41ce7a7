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
* cosines of centred means, cosine-view inter-class similarities, CDNV.

:class:`PairStats` folds tiles into the pair summaries exactly: sums, minima
and maxima, and Chan et al.'s centred merge for the standard deviation.
Memory: O(K·d) for the inputs plus one tile (``TILE_BYTES``).
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np

# Working set of one tile: about _TILE_ARRAYS float64 arrays of T × T entries.
TILE_BYTES = 64 * 2**20
_TILE_ARRAYS = 16
# Below this fraction of ‖m_c‖² + ‖m_c'‖², the Gram form of d² keeps fewer than
# ~12 significant digits (rounding of the dot product ~ √d·ε·(‖m_c‖² + ‖m_c'‖²)).
CANCELLATION_RATIO = 1.0 / 16.0
# Pairs listed by name in a warning; the rest are counted.
LISTED_PAIRS = 10


def tile_classes(budget: int | None = None) -> int:
    """T, the classes per tile side, so that one tile's working set fits ``budget`` bytes (``TILE_BYTES``)."""
    return max(1, math.isqrt((TILE_BYTES if budget is None else budget) // (8 * _TILE_ARRAYS)))


def blocks(k: int, tile: int) -> list[tuple[int, int]]:
    """[start, end) ranges of ``tile`` consecutive positions covering 0..k."""
    return [(start, min(start + tile, k)) for start in range(0, k, tile)]


class CentredMeans:
    """Class means for tiled distances: ``means`` (K, d) and the same centred at their mean.

    ``block(rows, cols)`` gives the Gram block of the centred means, their
    cosines, and the pairs where the Gram form of d² = ‖m_c‖² + ‖m_c'‖² − 2 m_c·m_c'
    may lose digits (d² ≤ ``CANCELLATION_RATIO`` (‖m_c‖² + ‖m_c'‖²) + 4 tol²),
    with d² recomputed there from explicit differences of the uncentred means.
    Those pairs are found from the cosines: for classes with ‖m_c‖ > r = 2 tol/√τ
    (τ = ``CANCELLATION_RATIO``), the condition implies cos ≥ 1 − 3τ/2, so the
    candidates are the pairs with cos ≥ 1 − 2τ and every pair of a class with
    ‖m_c‖ ≤ r; they are all recomputed (a superset costs time, not accuracy).
    """

    def __init__(self, means: np.ndarray, tolerance: float):
        self.means = means
        self.centred = means - means.mean(axis=0) if len(means) else means
        self.sqnorms = np.einsum("ij,ij->i", self.centred, self.centred)
        self.norms = np.linalg.norm(self.centred, axis=1)
        self.tolerance = tolerance
        self.at_centre = self.norms <= tolerance  # cosines undefined
        with np.errstate(divide="ignore"):
            self.inverse_norms = np.where(self.at_centre, np.nan, 1.0 / self.norms)
        self.small = self.norms <= 2.0 * tolerance / math.sqrt(CANCELLATION_RATIO)

    def block(self, rows: tuple[int, int], cols: tuple[int, int]):
        """(gram, cos, i, j, sq): the rows × cols blocks, and d² at positions (i, j) from explicit differences.

        In a diagonal block (rows == cols) only positions above the diagonal are returned in (i, j).
        """
        (r0, r1), (c0, c1) = rows, cols
        gram = self.centred[r0:r1] @ self.centred[c0:c1].T
        cos = gram * self.inverse_norms[r0:r1, None]
        cos *= self.inverse_norms[None, c0:c1]
        candidates = cos >= 1.0 - 2.0 * CANCELLATION_RATIO
        candidates[self.small[r0:r1], :] = True
        candidates[:, self.small[c0:c1]] = True
        if rows == cols:
            candidates &= _upper(r1 - r0)
        i, j = np.nonzero(candidates)
        sq = np.empty(len(i))
        chunk = max(1, TILE_BYTES // (8 * _TILE_ARRAYS * max(1, self.means.shape[1])))
        for start in range(0, len(i), chunk):
            end = start + chunk
            diff = self.means[c0 + j[start:end]] - self.means[r0 + i[start:end]]
            sq[start:end] = np.einsum("ij,ij->i", diff, diff)
        return gram, cos, i, j, sq


def _upper(size: int) -> np.ndarray:
    return np.triu(np.ones((size, size), dtype=bool), k=1)


def lowest_coincident(means: np.ndarray, tolerance: float) -> np.ndarray:
    """For each row c of ``means``, the lowest c' ≤ c with ‖μ_c − μ_c'‖ ≤ ``tolerance`` (explicit differences).

    Sort and sweep along a fixed unit direction u: |u·(μ_c − μ_c')| ≤ ‖μ_c − μ_c'‖,
    so only pairs whose projections differ by at most the tolerance (plus
    their rounding, ≤ d·ε·max‖μ‖ each) can coincide; those are checked from
    explicit differences, in chunks of at most a tile's memory. Time
    O(K log K + candidates·d), no K × K matrix; the same result as checking
    every pair.
    """
    k, d = means.shape
    representative = np.arange(k)
    if k < 2:
        return representative
    direction = np.random.default_rng(0).standard_normal(d)  # fixed: the result never depends on it
    direction /= np.linalg.norm(direction)
    projection = means @ direction
    scale = float(np.linalg.norm(means, axis=1).max())
    window = tolerance + 2.0 * (d + 1) * np.finfo(np.float64).eps * scale
    order = np.argsort(projection, kind="stable")
    ordered = projection[order]
    counts = np.searchsorted(ordered, ordered + window, side="right") - np.arange(k) - 1
    ends = np.cumsum(counts)  # candidates (s, t), s < t in sorted order, numbered flat
    chunk = max(1, TILE_BYTES // (8 * _TILE_ARRAYS * max(1, d)))
    for first in range(0, int(ends[-1]), chunk):
        flat = np.arange(first, min(first + chunk, int(ends[-1])))
        s = np.searchsorted(ends, flat, side="right")
        t = s + 1 + flat - (ends[s] - counts[s])
        a, b = order[s], order[t]
        diff = means[b] - means[a]
        close = np.sqrt(np.einsum("ij,ij->i", diff, diff)) <= tolerance
        np.minimum.at(representative, np.maximum(a, b)[close], np.minimum(a, b)[close])
    return representative


@dataclass
class PairTile:
    """Pairs c < c' of one tile, flattened: class ids and per-pair values (NaN where undefined)."""

    class_a: np.ndarray
    class_b: np.ndarray
    cdnv: np.ndarray
    mean_cos: np.ndarray
    inter_cos: np.ndarray
    mean_dist: np.ndarray

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

    def select(self, block: np.ndarray) -> np.ndarray:
        """The counted entries, row by row (a view when every entry counts)."""
        return block.ravel() if self.upper is None else block[self.upper]

    def __len__(self) -> int:
        return self.sq.size if self.upper is None else int(self.upper.sum())

    def pairs(self) -> PairTile:
        shape = self.sq.shape
        grid = np.broadcast_to(self.row_ids[:, None], shape), np.broadcast_to(self.col_ids[None, :], shape)
        a, b, cdnv, mean_cos, inter_cos, sq = (self.select(np.ascontiguousarray(x)) for x in (*grid, self.cdnv, self.mean_cos, self.inter_cos, self.sq))
        return PairTile(a, b, cdnv, mean_cos, inter_cos, np.sqrt(sq))


@dataclass(frozen=True)
class PairInputs:
    """Per-class inputs of the pair statistics (rows = present classes in id order)."""

    ids: np.ndarray
    means: CentredMeans
    variances: np.ndarray  # V_c
    unit_sum: np.ndarray
    unit_count: np.ndarray

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
        upper = _upper(r1 - r0) if rows == cols else None
        row_ids, col_ids = self.ids[r0:r1], self.ids[c0:c1]
        return Tile(row_ids, col_ids, upper, sq, cdnv, cos, inter, (row_ids[i[close]], col_ids[j[close]]))


@dataclass
class PairStats:
    """Running pair summaries over tiles; each equals the statistic over all K(K−1)/2 pairs at once.

    Strict like ``formulas.strict_*``: a NaN pair value makes its summary NaN
    (NaN propagates through the sums, the Chan merge and ``np.maximum``).
    """

    k: int
    pairs: int = 0
    cdnv_sum: float = 0.0
    cos_mean: float = 0.0
    cos_m2: float = 0.0  # Σ (cos − mean)², merged Chan-style
    cos_deviation_sum: float = 0.0  # Σ |cos + 1/(K − 1)|
    inter_max: float = -np.inf
    inter_sum: float = 0.0
    coincident_count: int = 0
    coincident_first: tuple[tuple[int, int], ...] = ()

    def add(self, tile: Tile) -> None:
        n = len(tile)
        if n == 0:
            return
        self.cdnv_sum += float(tile.select(tile.cdnv).sum())
        cos = tile.select(tile.mean_cos)
        mean = float(cos.sum()) / n
        scratch = cos - mean
        m2 = float(np.dot(scratch, scratch))
        total = self.pairs + n
        delta = mean - self.cos_mean
        self.cos_mean += delta * n / total
        self.cos_m2 += m2 + delta * delta * self.pairs * n / total
        np.add(cos, 1.0 / (self.k - 1), out=scratch)
        self.cos_deviation_sum += float(np.abs(scratch, out=scratch).sum())
        inter = tile.select(tile.inter_cos)
        self.inter_max = float(np.maximum(self.inter_max, inter.max()))
        self.inter_sum += float(inter.sum())
        self.pairs = total
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
        return math.sqrt(self._mean(self.cos_m2))

    @property
    def max_angle(self) -> float:
        return self._mean(self.cos_deviation_sum)

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
    def _key(tile: PairTile) -> np.ndarray:
        return np.where(np.isnan(tile.cdnv), np.inf, tile.cdnv)

    def add(self, tile: PairTile) -> None:
        if self.kept is not None and len(self.kept) == self.n:
            floor = self._key(self.kept)[-1]
            tile = tile.take(self._key(tile) >= floor)  # only these can enter (≥: ties break by ids)
        merged = tile if self.kept is None else PairTile.concat([self.kept, tile])
        order = np.lexsort((merged.class_b, merged.class_a, -self._key(merged)))[: self.n]
        self.kept = merged.take(order)

    def result(self) -> PairTile | None:
        return self.kept


def etf_distance(x: np.ndarray, y: np.ndarray, tile: int) -> float:
    """‖XYᵀ/‖XYᵀ‖_F − P/√(K−1)‖_F (review eqs. 7, 8) without a K × K matrix; NaN if K < 2 or XYᵀ = 0.

    ⟨XYᵀ, P⟩ = Σ_c x_c·y_c − (Σ_c x_c)·(Σ_c y_c)/K and ‖XYᵀ‖²_F = ⟨XᵀX, YᵀY⟩
    (d × d) need O(K·d²). When K − 1 > d, XYᵀ has rank ≤ d < rank P, so the
    distance is bounded away from 0 and 2 − 2⟨XYᵀ,P⟩/(‖XYᵀ‖_F √(K−1)) is
    accurate. Otherwise (K ≤ d + 1: a distance that can reach 0, e.g. at
    collapse) the sum of squares is accumulated tile by tile, without
    cancellation, at a cost K²d ≤ K·d·(d + 1).
    """
    k, d = x.shape
    if k < 2:
        return np.nan
    root = math.sqrt(k - 1)
    if d <= k:
        x_gram = x.T @ x
        norm_sq = float(np.vdot(x_gram, x_gram if y is x else y.T @ y))
    else:
        norm_sq = _product_sq_norm(x, y, tile)
    norm = math.sqrt(norm_sq) if norm_sq > 0 else 0.0
    if not norm > 0 or not np.isfinite(norm):
        return np.nan
    if k - 1 > d:
        inner = float(np.einsum("ij,ij->", x, y) - x.sum(axis=0) @ y.sum(axis=0) / k)
        return math.sqrt(max(2.0 - 2.0 * inner / (norm * root), 0.0))
    total = 0.0
    ranges = blocks(k, tile)
    for rows in ranges:
        for cols in ranges:
            block = x[rows[0] : rows[1]] @ y[cols[0] : cols[1]].T / norm + 1.0 / (k * root)
            if rows == cols:
                block[np.diag_indices_from(block)] -= 1.0 / root
            total += float(np.sum(block * block))
    return math.sqrt(total)


def _product_sq_norm(x: np.ndarray, y: np.ndarray, tile: int) -> float:
    """‖XYᵀ‖²_F as a sum over tiles (when K < d, cheaper than the d × d form)."""
    ranges = blocks(len(x), tile)
    return float(sum(np.sum((x[r0:r1] @ y[c0:c1].T) ** 2) for r0, r1 in ranges for c0, c1 in ranges))
