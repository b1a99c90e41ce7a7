"""Class-mean geometry without a K × K matrix (``docs/metrics.md``, "Many classes"): tiles, their budget,
distances exact where the Gram form would cancel, coincident means, and ETF distances of K × K products.

Classes are cut into tiles of T ids (``tile_classes``: about ``TILE_BYTES``
of float64 work per tile); a K × K quantity is only ever seen T × T at a time.
Memory O(K·d) for the inputs plus one tile.
"""

import math

import numpy as np

# Working set of one tile: about _TILE_ARRAYS float64 arrays of T × T entries.
TILE_BYTES = 64 * 2**20
_TILE_ARRAYS = 16
# Strips per tile, each a task of the thread pool (and holding a few strip arrays): with ~180 rows
# each (T ≈ 724), a strip's products run at the BLAS rate of whole tiles.
STRIPS = 4
# Below this fraction of ‖m_c‖² + ‖m_c'‖², the Gram form of d² keeps fewer than
# ~12 significant digits (rounding of the dot product ~ √d·ε·(‖m_c‖² + ‖m_c'‖²)).
CANCELLATION_RATIO = 1.0 / 16.0


def tile_classes(budget: int | None = None) -> int:
    """T, the classes per tile side, so that one tile's working set fits ``budget`` bytes (``TILE_BYTES``)."""
    return max(1, math.isqrt((TILE_BYTES if budget is None else budget) // (8 * _TILE_ARRAYS)))


def blocks(k: int, tile: int) -> list[tuple[int, int]]:
    """[start, end) ranges of ``tile`` consecutive positions covering 0..k."""
    return [(start, min(start + tile, k)) for start in range(0, k, tile)]


def strip_rows(tile: int) -> int:
    """Rows of the strips a tile is cut into, one task of a thread pool each (``STRIPS`` per tile)."""
    return -(-tile // STRIPS)


class CentredMeans:
    """Class means for tiled distances: ``means`` (K, d) and the same centred at their mean.

    ``gram(rows, cols, out)`` gives −2 × a Gram block of the centred means
    (the factor, exact, saves a pass); ``block`` turns rows of it into d² =
    ‖m_c‖² + ‖m_c'‖² − 2 m_c·m_c' and the cosines, with d² recomputed from
    explicit differences of the uncentred means where the Gram form may lose
    digits (d² ≤ ``CANCELLATION_RATIO`` (‖m_c‖² + ‖m_c'‖²) + 4 tol², tol the
    coincidence distance). Those pairs are found from the cosines: for
    classes with ‖m_c‖ > r = 2 tol/√τ (τ = ``CANCELLATION_RATIO``), the
    condition implies cos ≥ 1 − 3τ/2, so the candidates are the pairs with
    cos ≥ 1 − 2τ and every pair of a class with ‖m_c‖ ≤ r; they are all
    recomputed (a superset costs time, not accuracy).
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

    def gram(self, rows: tuple[int, int], cols: tuple[int, int], out: np.ndarray) -> np.ndarray:
        """−2 M_rows M_colsᵀ into ``out``."""
        return np.matmul(-2.0 * self.centred[rows[0] : rows[1]], self.centred[cols[0] : cols[1]].T, out=out)

    def block(self, rows, cols, gram, sq, cos, upper=None):
        """d² into ``sq`` and the cosines into ``cos`` for the rows × cols block whose ``gram`` is given;
        returns (i, j, d²) of the pairs recomputed from explicit differences (with ``upper``, the mask
        of the counted entries of a diagonal block, only those).
        """
        (r0, r1), (c0, c1) = rows, cols
        np.add(gram, self.sqnorms[r0:r1, None], out=sq)
        sq += self.sqnorms[None, c0:c1]
        np.multiply(gram, -0.5 * self.inverse_norms[r0:r1, None], out=cos)  # exact: the −2 undone
        cos *= self.inverse_norms[None, c0:c1]
        small_rows, small_cols = self.small[r0:r1], self.small[c0:c1]
        limit = 1.0 - 2.0 * CANCELLATION_RATIO
        if upper is None and not small_rows.any() and not small_cols.any() and not cos.max() >= limit:
            return _NO_PAIRS, _NO_PAIRS, np.zeros(0)  # the usual tile: nothing to recompute
        candidates = cos >= limit
        candidates[small_rows, :] = True
        candidates[:, small_cols] = True
        if upper is not None:
            candidates &= upper
        i, j = np.nonzero(candidates)
        explicit = np.empty(len(i))
        chunk = max(1, TILE_BYTES // (8 * _TILE_ARRAYS * max(1, self.means.shape[1])))
        for start in range(0, len(i), chunk):
            end = start + chunk
            diff = self.means[c0 + j[start:end]] - self.means[r0 + i[start:end]]
            explicit[start:end] = np.einsum("ij,ij->i", diff, diff)
        sq[i, j] = explicit
        return i, j, explicit


_NO_PAIRS = np.zeros(0, dtype=np.intp)


def above_diagonal(size: int) -> np.ndarray:
    """Mask of the entries above the diagonal of a size × size block: the pairs c < c' of a diagonal tile."""
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
