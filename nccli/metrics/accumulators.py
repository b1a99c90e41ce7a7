"""Streaming, mergeable accumulators for one layer (the torchmetrics pattern).

Two passes over the rows, state in float64, O(K·d) per layer:

* pass 1, :class:`ClassMoments`: per-class count, mean and scatter
  Σ_{i∈c}‖h_i − μ_c‖², merged Chan-style (centred; never E[x²] − E[x]²), and
  the sums of unit vectors h_i/‖h_i‖ for the cosine view (Pan 2023, Lemma
  2.4.4: intra_c = ‖ĥ_c‖², inter_cc' = ĥ_c·ĥ_c'). With ``with_matrix`` also the
  within-class scatter matrix Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ, which only
  the MSE decomposition needs.
* pass 2, :class:`Decisions`: with the final means fixed, the squared
  projections of the residuals h_i − μ_{y_i} on the span of the centred means
  (where Σ_B⁺ lives, so tr(Σ_W Σ_B⁺) is exact for any d), and the decisions
  of the nearest-class-centre rule and of the classifier.

``merge(a, b)`` equals one pass over the rows of both.
"""

from dataclasses import dataclass

import numpy as np

from nccli.metrics.backend import Backend
from nccli.metrics.classifier import RunningLogSumExp


@dataclass
class ClassMoments:
    """Pass-1 state: per-class moments of one layer (rows indexed by class id)."""

    xp: Backend
    count: object  # (C,) float64: n_c (exact below 2**53)
    mean: object  # (C, d) μ_c
    scatter: object  # (C,) Σ_{i∈c} ‖h_i − μ_c‖²
    unit_sum: object  # (C, d) Σ_{i∈c, h_i≠0} h_i/‖h_i‖
    unit_count: object  # (C,) number of non-zero h_i
    within: object = None  # (d, d) within-class scatter matrix, MSE only

    @classmethod
    def empty(cls, xp: Backend, num_classes: int, dim: int, with_matrix: bool = False) -> "ClassMoments":
        return cls(
            xp,
            xp.zeros(num_classes),
            xp.zeros(num_classes, dim),
            xp.zeros(num_classes),
            xp.zeros(num_classes, dim),
            xp.zeros(num_classes),
            xp.zeros(dim, dim) if with_matrix else None,
        )

    @classmethod
    def of_block(cls, xp: Backend, rows, labels, num_classes: int, with_matrix: bool = False) -> "ClassMoments":
        """Moments of one block of rows (float64 backend arrays), centred on the block's own means."""
        rows, labels = xp.grouped(rows, labels)
        count = xp.bincount(labels, num_classes)
        mean = xp.segment_sum(rows, labels, num_classes) / xp.at_least_one(count)[:, None]
        residuals = rows - mean[labels]
        scatter = xp.bincount(labels, num_classes, weights=xp.rowdot(residuals, residuals))
        norms = xp.sqrt(xp.rowdot(rows, rows))
        nonzero = norms > 0
        if not bool(nonzero.all()):  # zero vectors leave the cosine view; copy only when there are some
            rows, labels, norms = rows[nonzero], labels[nonzero], norms[nonzero]
        unit_sum = xp.segment_sum(rows / norms[:, None], labels, num_classes)
        unit_count = xp.bincount(labels, num_classes)
        within = residuals.T @ residuals if with_matrix else None
        return cls(xp, count, mean, scatter, unit_sum, unit_count, within)

    def merge(self, other: "ClassMoments") -> "ClassMoments":
        """Chan et al. pairwise update: exact and centred."""
        xp = self.xp
        count = self.count + other.count
        share = other.count / xp.at_least_one(count)  # n_b / n, 0 for absent classes
        delta = other.mean - self.mean
        mean = self.mean + delta * share[:, None]
        weight = self.count * share  # n_a n_b / n
        scatter = self.scatter + other.scatter + weight * xp.rowdot(delta, delta)
        within = None
        if self.within is not None:
            within = self.within + other.within + (delta * weight[:, None]).T @ delta
        return ClassMoments(
            xp,
            count,
            mean,
            scatter,
            self.unit_sum + other.unit_sum,
            self.unit_count + other.unit_count,
            within,
        )

    def update(self, rows, labels) -> None:
        """Fold one block of rows into this state."""
        num_classes = self.count.shape[0]
        merged = self.merge(ClassMoments.of_block(self.xp, rows, labels, num_classes, self.within is not None))
        self.__dict__.update(merged.__dict__)

    def host(self) -> "ClassMoments":
        """The same state as numpy arrays."""
        h = self.xp.host
        within = None if self.within is None else h(self.within)
        return ClassMoments(
            self.xp, h(self.count), h(self.mean), h(self.scatter), h(self.unit_sum), h(self.unit_count), within
        )


@dataclass(frozen=True)
class Geometry:
    """What pass 2 needs from pass 1, on the backend's device.

    One matrix product serves every pass-2 quantity: rows centred on
    ``origin`` (μ_G, so common offsets cost no precision) times ``stacked`` =
    [V | C_nccᵀ | W_presentᵀ], where V (d × ``rank``) spans Σ_B's kept
    eigen-directions, C_ncc holds the ``ncc_count`` class means the NCC rule
    uses (this file's, or the reference file's with ``--means-from``) and W
    the classifier's rows of present classes (if any), all relative to
    ``origin``. ``projected_means`` (C × rank): (μ_c − origin)ᵀV per class;
    ``bias``: b + Wᵀorigin for present classes, or None without a classifier.
    """

    origin: object
    stacked: object
    rank: int
    projected_means: object
    ncc_count: int
    ncc_sqnorms: object
    ncc_ids: object
    present_ids: object
    column_of_class: object
    centres: object = None
    bias: object = None
    free_bias: object = None


@dataclass
class Decisions:
    """Pass-2 state of one layer.

    Besides the decisions: Σ_i ‖h_i − μ_{y_i}‖ and Σ_i ‖h_i − μ_G‖
    (``nc1_dist_ratio``), and on the classifier layer the smallest bias-free
    margin and the summed cross-entropies of Wh + b and of Wh (seeds
    ``002_*``, ``003_*``, ``004_*``).
    """

    xp: Backend
    projected_sq: object  # (r,) Σ_i (v_j·(h_i − μ_{y_i}))²
    ncc_correct: object  # (C,)
    clf_correct: object  # (C,)
    mismatch: float = 0.0
    margin_min: float = float("inf")
    margin_sum: float = 0.0
    own_distance_sum: float = 0.0
    global_distance_sum: float = 0.0
    free_margin_min: float = float("inf")
    ce_sum: float = 0.0
    free_ce_sum: float = 0.0

    @classmethod
    def empty(cls, xp: Backend, num_classes: int, rank: int) -> "Decisions":
        return cls(xp, xp.zeros(rank), xp.zeros(num_classes), xp.zeros(num_classes))

    @classmethod
    def of_block(cls, xp: Backend, geometry: Geometry, rows, labels, num_classes: int) -> "Decisions":
        centred = rows - geometry.origin
        products = centred @ geometry.stacked
        rank, ncc_end = geometry.rank, geometry.rank + geometry.ncc_count
        projected = products[:, :rank] - geometry.projected_means[labels]
        distances = geometry.ncc_sqnorms[None, :] - 2.0 * products[:, rank:ncc_end]
        ncc_pred = geometry.ncc_ids[xp.argmin(distances)]
        state = cls(
            xp,
            (projected * projected).sum(0),
            xp.bincount(labels, num_classes, weights=1.0 * (ncc_pred == labels)),
            xp.zeros(num_classes),
        )
        residuals = centred - geometry.centres[labels]
        state.own_distance_sum = xp.scalar(xp.sqrt(xp.rowdot(residuals, residuals)).sum())
        state.global_distance_sum = xp.scalar(xp.sqrt(xp.rowdot(centred, centred)).sum())
        if geometry.bias is None:
            return state
        logits = products[:, ncc_end:] + geometry.bias
        free = products[:, ncc_end:] + geometry.free_bias
        clf_pred = geometry.present_ids[xp.argmax(logits)]
        state.clf_correct = xp.bincount(labels, num_classes, weights=1.0 * (clf_pred == labels))
        state.mismatch = xp.scalar((clf_pred != ncc_pred).sum())
        if not len(labels):
            return state
        rows_index = xp.arange(len(labels))
        columns = geometry.column_of_class[labels]
        own, own_free = logits[rows_index, columns], free[rows_index, columns]
        state.ce_sum = xp.scalar(_cross_entropy(xp, logits, own).sum())
        state.free_ce_sum = xp.scalar(_cross_entropy(xp, free, own_free).sum())
        if logits.shape[1] > 1:
            logits[rows_index, columns] = -np.inf
            margins = own - xp.row_max(logits)
            state.margin_min = xp.scalar(margins.min())
            state.margin_sum = xp.scalar(margins.sum())
            free[rows_index, columns] = -np.inf
            state.free_margin_min = xp.scalar((own_free - xp.row_max(free)).min())
        return state

    def merge(self, other: "Decisions") -> "Decisions":
        return Decisions(
            self.xp,
            self.projected_sq + other.projected_sq,
            self.ncc_correct + other.ncc_correct,
            self.clf_correct + other.clf_correct,
            self.mismatch + other.mismatch,
            min(self.margin_min, other.margin_min),
            self.margin_sum + other.margin_sum,
            self.own_distance_sum + other.own_distance_sum,
            self.global_distance_sum + other.global_distance_sum,
            min(self.free_margin_min, other.free_margin_min),
            self.ce_sum + other.ce_sum,
            self.free_ce_sum + other.free_ce_sum,
        )

    def update(self, geometry: Geometry, rows, labels) -> None:
        block = Decisions.of_block(self.xp, geometry, rows, labels, self.ncc_correct.shape[0])
        self.__dict__.update(self.merge(block).__dict__)

    def host(self) -> "Decisions":
        h = self.xp.host
        return Decisions(
            self.xp,
            h(self.projected_sq),
            h(self.ncc_correct),
            h(self.clf_correct),
            self.mismatch,
            self.margin_min,
            self.margin_sum,
            self.own_distance_sum,
            self.global_distance_sum,
            self.free_margin_min,
            self.ce_sum,
            self.free_ce_sum,
        )


def _cross_entropy(xp, logits, own):
    """Per row, −log softmax(z)_own over every present class at once (one tile)."""
    partition = RunningLogSumExp(xp, logits.shape[0])
    partition.add(logits)
    return partition.cross_entropy(own)
