"""Class-mean geometry without a K × K matrix (``metrics.md``, "Many classes"): tiles and their budget,
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
# Below this fraction of ‖m_c‖² + ‖m_c'‖², the Gram form of d² keeps fewer than
# ~12 significant digits (rounding of the dot product ~ √d·ε·(‖m_c‖² + ‖m_c'‖²)).
CANCELLATION_RATIO = 1.0 / 16.0


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
    may lose digits (d² ≤ ``CANCELLATION_RATIO`` (‖m_c‖² + ‖m_c'‖²) + 4 tol², tol
    the coincidence distance),
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
            candidates &= above_diagonal(r1 - r0)
        i, j = np.nonzero(candidates)
        sq = np.empty(len(i))
        chunk = max(1, TILE_BYTES // (8 * _TILE_ARRAYS * max(1, self.means.shape[1])))
        for start in range(0, len(i), chunk):
            end = start + chunk
            diff = self.means[c0 + j[start:end]] - self.means[r0 + i[start:end]]
            sq[start:end] = np.einsum("ij,ij->i", diff, diff)
        return gram, cos, i, j, sq


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
