"""The cosine view's summaries over pairs, ``inter_cos_max`` and ``inter_cos_mean`` (``docs/metrics.md``,
"Cosine-similarity view"), without a float64 product per pair.

With a_c = Σ_{i∈c} ĥ_i / n_c (unit vectors of the non-zero rows),
inter_{cc'} = a_c·a_c'. The mean needs only Σ_{c<c'} a_c·a_c': pairs inside
a block of ``PAIR_SUM_ROWS`` rows from its Gram matrix, pairs across blocks
from the block sums, O(K·d·``PAIR_SUM_ROWS``); unlike (‖Σ a_c‖² − Σ ‖a_c‖²)/2
it does not cancel, so its error stays that of summing the pair values.
The max is screened on float32 tiles of A Aᵀ and decided in float64, as
pass 2 decides its nearest classes (:mod:`nccli.metrics.geometry`).
"""

import threading

import numpy as np

from nccli.metrics.threads import thread_pool
from nccli.metrics.tiles import above_diagonal, blocks

PAIR_SUM_ROWS = 256
SINGLE_UNIT = 2.0**-24


def inter_class_cosines(unit_sum: np.ndarray, unit_count: np.ndarray, tile: int) -> tuple[float, float]:
    """(``inter_cos_max``, ``inter_cos_mean``) over the pairs c < c' of present classes; NaN for K < 2
    or when a class has no non-zero row (its inter_{cc'} are 0/0)."""
    k = len(unit_count)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = unit_sum / unit_count[:, None]
    if k < 2 or not np.isfinite(a).all():
        return np.nan, np.nan
    return pair_max(a, tile), pair_sum(a) / (k * (k - 1) / 2)


def pair_sum(a: np.ndarray) -> float:
    """Σ_{c<c'} a_c·a_c'."""
    total, before = 0.0, np.zeros(a.shape[1])
    upper = above_diagonal(PAIR_SUM_ROWS)
    for start, stop in blocks(len(a), PAIR_SUM_ROWS):
        rows = a[start:stop]
        inside = (rows @ rows.T)[upper[: stop - start, : stop - start]]
        block_sum = rows.sum(axis=0)
        total += float(inside.sum()) + float(block_sum @ before)
        before += block_sum
    return total


def pair_max(a: np.ndarray, tile: int) -> float:
    """max_{c<c'} a_c·a_c' for rows ‖a_c‖ ≤ 1, exactly (the float64 value of the largest pair).

    Screened in float32, a row tile at a time (one task of the thread pool
    each) against the column tiles to its right: a value is within
    δ = (d + 4)·u·‖a_c‖‖a_c'‖ of the exact one (float32 casts and a d-term
    sum, |fl(xᵀy) − xᵀy| ≤ γ_d|x|ᵀ|y|, Higham 2002 §3.1; u = 2⁻²⁴), plus
    d·2⁻¹²⁵ should subnormals be flushed to zero; e is that bound at the
    tile's largest norms, doubled for safety. A tile's exact largest is
    within 2e of its float32 largest, and can raise the task's best so far
    only if its float32 value exceeds best − e: only those candidates (most
    tiles have none) get a float64 dot product.
    """
    screen = _Screen(a, tile)
    with thread_pool() as pool:
        return max(pool.map(screen.largest, range(len(screen.ranges))))


class _Screen:
    """The float32 copy of ``a`` and what bounds its errors; ``largest`` of a row tile."""

    def __init__(self, a: np.ndarray, tile: int):
        self.a = a
        self.single = a.astype(np.float32)
        self.norms = np.linalg.norm(a, axis=1)
        self.ranges = blocks(len(a), tile)
        self.below = ~above_diagonal(min(tile, len(a)))
        self.local = threading.local()  # each thread's float32 tile

    def largest(self, index: int) -> float:
        """max a_c·a_c' over c in row tile ``index``, c' > c."""
        (r0, r1), d = self.ranges[index], self.a.shape[1]
        if not hasattr(self.local, "tile"):
            self.local.tile = np.empty(self.below.size, dtype=np.float32)
        row_norm = float(self.norms[r0:r1].max())
        best = -np.inf
        for c0, c1 in self.ranges[index:]:
            approx = self.local.tile[: (r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0)
            np.matmul(self.single[r0:r1], self.single[c0:c1].T, out=approx)
            if c0 == r0:
                approx[self.below[: r1 - r0, : c1 - c0]] = -np.inf  # pairs c < c' only
            top = float(approx.max())
            slack = 2.0 * ((d + 4) * SINGLE_UNIT * row_norm * float(self.norms[c0:c1].max()) + d * 2.0**-125)
            if top == -np.inf or top < best - slack:
                continue
            i, j = np.nonzero(approx >= max(top - 2.0 * slack, best - slack))
            best = max(best, float(np.einsum("ij,ij->i", self.a[r0 + i], self.a[c0 + j]).max()))
        return best
