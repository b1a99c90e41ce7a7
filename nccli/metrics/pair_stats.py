"""Summaries over the pairs c < c' folded tile by tile (``docs/metrics.md``, "Many classes"), exactly.

:class:`PairStats` keeps sums, minima and the Chan et al. centred merge for
the spreads, so any cut of the pairs into tiles or strips, merged in a fixed
order, gives the statistic over all K(K−1)/2 pairs at once (to rounding).
Each pass over a tile's values writes into scratch buffers: no temporaries.
"""

import math
from dataclasses import dataclass, field

import numpy as np

# Pairs listed by name in a warning; the rest are counted.
LISTED_PAIRS = 10
# Normalised centred means closer than this share a direction: log(1/distance) is undefined.
SAME_DIRECTION = 1e-7


@dataclass
class Running:
    """Count, mean and centred sum of squares over values seen in parts, merged as Chan et al. do (exact
    and centred, never E[x²] − E[x]²: at collapse the spread → 0 where that form cancels). NaN propagates."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: np.ndarray, scratch: np.ndarray) -> None:
        """Fold in ``values`` (1-d), using ``scratch`` (as many entries) for their deviations."""
        n = len(values)
        if n == 0:
            return
        mean = float(values.sum()) / n
        deviations = np.subtract(values, mean, out=scratch)
        self.merge(Running(n, mean, float(np.dot(deviations, deviations))))

    def merge(self, other: "Running") -> None:
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / total
        self.m2 += other.m2 + delta * delta * self.count * other.count / total
        self.count = total

    @property
    def variance(self) -> float:
        """Population variance (ddof 0); NaN without values."""
        return self.m2 / self.count if self.count else np.nan


@dataclass
class Block:
    """Values of a rows × cols block of pairs (2-d arrays, reused once folded); in a diagonal block only
    the entries ``upper`` marks count."""

    upper: np.ndarray | None
    cdnv_sum: float  # Σ cdnv over the counted pairs
    cos: np.ndarray  # cos(μ_c − μ_G, μ_c' − μ_G)
    unit_dist: np.ndarray  # ‖m̂_c − m̂_c'‖
    w_cos: np.ndarray | None  # cos(w_c, w_c'); None without a classifier
    coincident: tuple[np.ndarray, np.ndarray]  # class ids (c, c') of the coincident pairs

    def select(self, values: np.ndarray) -> np.ndarray:
        """The counted entries, row by row (a view when every entry counts)."""
        return values.reshape(-1) if self.upper is None else values[self.upper]

    def __len__(self) -> int:
        return self.cos.size if self.upper is None else int(self.upper.sum())


@dataclass
class PairStats:
    """Running pair summaries over tiles; each equals the statistic over all K(K−1)/2 pairs at once.

    Strict like ``formulas.strict_*``: a NaN pair value makes its summary NaN
    (NaN propagates through the sums, the Chan merge and ``np.minimum``).
    Cosines are folded shifted by 1/(K − 1): the shift leaves their spread
    unchanged and gives the max-angle deviations |cos + 1/(K − 1)| in place.
    """

    k: int
    pairs: int = 0
    cdnv_sum: float = 0.0
    cos: Running = field(default_factory=Running)  # cos(μ_c − μ_G, μ_c' − μ_G) + 1/(K − 1)
    cos_deviation_sum: float = 0.0  # Σ |cos + 1/(K − 1)|
    coincident_count: int = 0
    coincident_first: tuple[tuple[int, int], ...] = ()
    unit_dist: Running = field(default_factory=Running)  # ‖m̂_c − m̂_c'‖ (GNC2)
    log_dist: Running = field(default_factory=Running)  # log ‖m̂_c − m̂_c'‖: the spread of log(1/‖·‖)
    unit_dist_min: float = np.inf
    w_cos: Running = field(default_factory=Running)  # cos(w_c, w_c') + 1/(K − 1)
    w_cos_deviation_sum: float = 0.0  # Σ |cos(w_c, w_c') + 1/(K − 1)|

    def add(self, block: Block, scratch: tuple[np.ndarray, np.ndarray]) -> None:
        """Fold in the counted pairs of ``block``, with two scratch arrays of at least as many entries."""
        n = len(block)
        if n == 0:
            return
        shifted, deviations = (buffer.reshape(-1)[:n] for buffer in scratch)
        self.cdnv_sum += block.cdnv_sum
        self.cos_deviation_sum += self._angles(self.cos, block.select(block.cos), shifted, deviations)
        distances = block.select(block.unit_dist)
        self.unit_dist.add(distances, deviations)
        self.unit_dist_min = float(np.minimum(self.unit_dist_min, distances.min()))
        with np.errstate(divide="ignore", invalid="ignore"):
            self.log_dist.add(np.log(distances, out=shifted), deviations)  # −inf at a zero distance: NaN variance
        if block.w_cos is not None:
            self.w_cos_deviation_sum += self._angles(self.w_cos, block.select(block.w_cos), shifted, deviations)
        self.pairs += n
        if len(block.coincident[0]):
            self._add_coincident(np.column_stack(block.coincident), len(block.coincident[0]))

    def _angles(self, running: Running, cos: np.ndarray, shifted: np.ndarray, deviations: np.ndarray) -> float:
        """Fold cos + 1/(K − 1) into ``running``; Σ |cos + 1/(K − 1)|."""
        np.add(cos, 1.0 / (self.k - 1), out=shifted)
        running.add(shifted, deviations)
        return float(np.abs(shifted, out=shifted).sum())

    def merge(self, other: "PairStats") -> None:
        """Fold in the statistics of other pairs (merging in a fixed order keeps the result fixed)."""
        self.pairs += other.pairs
        self.cdnv_sum += other.cdnv_sum
        self.cos.merge(other.cos)
        self.cos_deviation_sum += other.cos_deviation_sum
        self.unit_dist.merge(other.unit_dist)
        self.log_dist.merge(other.log_dist)
        self.unit_dist_min = float(np.minimum(self.unit_dist_min, other.unit_dist_min))
        self.w_cos.merge(other.w_cos)
        self.w_cos_deviation_sum += other.w_cos_deviation_sum
        if other.coincident_count:
            self._add_coincident(np.array(other.coincident_first, dtype=np.int64), other.coincident_count)

    def _add_coincident(self, pairs: np.ndarray, count: int) -> None:
        """Count ``count`` coincident pairs, of which ``pairs`` (rows (c, c')) include the first few; keep
        the first few overall in (class, class_b) order, as a full matrix would list them."""
        self.coincident_count += count
        kept = np.concatenate([np.array(self.coincident_first, dtype=np.int64).reshape(-1, 2), pairs.reshape(-1, 2)])
        order = np.lexsort((kept[:, 1], kept[:, 0]))[:LISTED_PAIRS]
        self.coincident_first = tuple((int(kept[i, 0]), int(kept[i, 1])) for i in order)

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
