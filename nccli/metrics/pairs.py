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


def tile_sq_distances(means, centred, sqnorms, rows: tuple[int, int], cols: tuple[int, int], tolerance: float):
    """‖μ_c − μ_c'‖² for a block of rows × cols (positions), and the Gram block of the centred means.

    The Gram form is exact to rounding where d² is not small next to the
    norms; elsewhere (and wherever the pair could be coincident) the distance
    is recomputed from explicit differences, in chunks that fit a tile.
    """
    (r0, r1), (c0, c1) = rows, cols
    gram = centred[r0:r1] @ centred[c0:c1].T
    scale = sqnorms[r0:r1, None] + sqnorms[None, c0:c1]
    sq = scale - 2.0 * gram
    suspect = sq <= CANCELLATION_RATIO * scale + 4.0 * tolerance**2
    if r0 == c0:  # a diagonal tile: only pairs above the diagonal are wanted
        suspect &= np.triu(np.ones(suspect.shape, dtype=bool), k=1)
    i, j = np.nonzero(suspect)
    chunk = max(1, TILE_BYTES // (8 * _TILE_ARRAYS * max(1, means.shape[1])))
    for start in range(0, len(i), chunk):
        a, b = i[start : start + chunk], j[start : start + chunk]
        diff = means[c0 + b] - means[r0 + a]
        sq[a, b] = np.einsum("ij,ij->i", diff, diff)
    np.maximum(sq, 0.0, out=sq)  # only the unused entries below a diagonal tile's diagonal can be < 0
    return sq, gram


@dataclass
class PairTile:
    """Pairs c < c' of one tile, flattened: class ids and per-pair values (NaN where undefined)."""

    class_a: np.ndarray
    class_b: np.ndarray
    cdnv: np.ndarray
    mean_cos: np.ndarray
    inter_cos: np.ndarray
    mean_dist: np.ndarray
    coincident: np.ndarray

    def __len__(self) -> int:
        return len(self.class_a)

    def take(self, index) -> "PairTile":
        return PairTile(*(getattr(self, item.name)[index] for item in fields(self)))

    @classmethod
    def concat(cls, tiles: list["PairTile"]) -> "PairTile":
        return cls(*(np.concatenate([getattr(t, item.name) for t in tiles]) for item in fields(cls)))


@dataclass(frozen=True)
class PairInputs:
    """Per-class inputs of the pair statistics (rows = present classes in id order)."""

    ids: np.ndarray
    means: np.ndarray  # μ_c
    centred: np.ndarray  # μ_c − μ_G
    norms: np.ndarray  # ‖μ_c − μ_G‖
    variances: np.ndarray  # V_c
    unit_sum: np.ndarray
    unit_count: np.ndarray
    tolerance: float  # coincidence distance

    def tiles(self, tile: int) -> Iterator[PairTile]:
        """Every pair c < c' once, tile by tile (row tile, then column tiles to its right)."""
        sqnorms = np.einsum("ij,ij->i", self.centred, self.centred)
        at_centre = self.norms <= self.tolerance
        ranges = blocks(len(self.ids), tile)
        for index, rows in enumerate(ranges):
            for cols in ranges[index:]:
                yield self._tile(rows, cols, sqnorms, at_centre)

    def _tile(self, rows, cols, sqnorms, at_centre) -> PairTile:
        (r0, r1), (c0, c1) = rows, cols
        sq, gram = tile_sq_distances(self.means, self.centred, sqnorms, rows, cols, self.tolerance)
        if r0 == c0:
            a, b = np.triu_indices(r1 - r0, k=1)
        else:
            a, b = (grid.ravel() for grid in np.indices((r1 - r0, c1 - c0)))
        sq = sq[a, b]
        a_pos, b_pos = a + r0, b + c0
        coincident = np.sqrt(sq) <= self.tolerance
        with np.errstate(invalid="ignore", divide="ignore"):
            cdnv = (self.variances[a_pos] + self.variances[b_pos]) / (2.0 * sq)
            mean_cos = gram[a, b] / (self.norms[a_pos] * self.norms[b_pos])
            inter = self.unit_sum[r0:r1] @ self.unit_sum[c0:c1].T
            inter_cos = inter[a, b] / (self.unit_count[a_pos] * self.unit_count[b_pos])
        cdnv[coincident] = np.nan
        mean_cos[at_centre[a_pos] | at_centre[b_pos]] = np.nan
        return PairTile(self.ids[a_pos], self.ids[b_pos], cdnv, mean_cos, inter_cos, np.sqrt(sq), coincident)


@dataclass
class PairStats:
    """Running pair summaries over tiles; each equals the statistic over all K(K−1)/2 pairs at once.

    Strict semantics as ``formulas.strict_*``: a NaN anywhere makes the summary NaN.
    """

    k: int
    pairs: int = 0
    cdnv_sum: float = 0.0
    cdnv_nan: bool = False
    cos_mean: float = 0.0
    cos_m2: float = 0.0  # Σ (cos − mean)², merged Chan-style
    cos_deviation_sum: float = 0.0  # Σ |cos + 1/(K − 1)|
    cos_nan: bool = False
    inter_max: float = -np.inf
    inter_sum: float = 0.0
    inter_nan: bool = False
    coincident_count: int = 0
    coincident_first: tuple[tuple[int, int], ...] = ()

    def add(self, tile: PairTile) -> None:
        n = len(tile)
        if n == 0:
            return
        self.cdnv_nan |= bool(np.isnan(tile.cdnv).any())
        self.cdnv_sum += float(tile.cdnv.sum())
        self.cos_nan |= bool(np.isnan(tile.mean_cos).any())
        if not self.cos_nan:
            mean = float(tile.mean_cos.mean())
            m2 = float(np.sum((tile.mean_cos - mean) ** 2))
            total = self.pairs + n
            delta = mean - self.cos_mean
            self.cos_mean += delta * n / total
            self.cos_m2 += m2 + delta * delta * self.pairs * n / total
            self.cos_deviation_sum += float(np.abs(tile.mean_cos + 1.0 / (self.k - 1)).sum())
        self.inter_nan |= bool(np.isnan(tile.inter_cos).any())
        if not self.inter_nan:
            self.inter_max = max(self.inter_max, float(tile.inter_cos.max()))
            self.inter_sum += float(tile.inter_cos.sum())
        self.pairs += n
        if tile.coincident.any():
            self._add_coincident(tile.class_a[tile.coincident], tile.class_b[tile.coincident])

    def _add_coincident(self, a: np.ndarray, b: np.ndarray) -> None:
        """Count them; keep the first few in (class, class_b) order, as a full matrix would list them."""
        self.coincident_count += len(a)
        kept = np.array(self.coincident_first, dtype=np.int64).reshape(-1, 2)
        a, b = np.concatenate([kept[:, 0], a]), np.concatenate([kept[:, 1], b])
        order = np.lexsort((b, a))[:LISTED_PAIRS]
        self.coincident_first = tuple((int(a[i]), int(b[i])) for i in order)

    def _strict(self, value: float, undefined: bool) -> float:
        return np.nan if undefined or self.pairs == 0 else value

    @property
    def cdnv(self) -> float:
        return self._strict(self.cdnv_sum / max(self.pairs, 1), self.cdnv_nan)

    @property
    def equiangular(self) -> float:
        """Population std of the cosines of centred means over pairs."""
        return self._strict(math.sqrt(self.cos_m2 / max(self.pairs, 1)), self.cos_nan)

    @property
    def max_angle(self) -> float:
        return self._strict(self.cos_deviation_sum / max(self.pairs, 1), self.cos_nan)

    @property
    def inter_cos_max(self) -> float:
        return self._strict(self.inter_max, self.inter_nan)

    @property
    def inter_cos_mean(self) -> float:
        return self._strict(self.inter_sum / max(self.pairs, 1), self.inter_nan)


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
    norm_sq = float(np.vdot(x.T @ x, y.T @ y)) if d <= k else _product_sq_norm(x, y, tile)
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
