"""Streaming, mergeable accumulators for one layer (the torchmetrics pattern).

Two passes over the rows, state in float64, O(K·d) per layer:

* pass 1, :class:`ClassMoments`: per-class count and mean, merged
  Chan-style, and the sums of unit vectors h_i/‖h_i‖ for the cosine view
  (Pan 2023, Lemma 2.4.4: intra_c = ‖ĥ_c‖², inter_cc' = ĥ_c·ĥ_c'): first
  moments only, a few sums per block.
* pass 2, :class:`Decisions`: with the final means fixed, everything centred
  on them (two-pass: never E[x²] − E[x]²): the per-class scatter
  Σ_{i∈c}‖h_i − μ_c‖², with ``within`` the within-class scatter matrix
  Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ (only the MSE decomposition and the SNR
  spectrum need it), the squared projections of the residuals on the span of
  the centred means (where Σ_B⁺ lives, so tr(Σ_W Σ_B⁺) is exact for any d),
  and the decisions of the nearest-class-centre rule and of the classifier,
  tile by tile over classes (:mod:`nccli.metrics.geometry`).

``merge(a, b)`` equals one pass over the rows of both.

States are plain data: dataclasses of arrays (and a few floats), with no
backend object inside. Their kernels take the backend from the arrays
(:func:`~nccli.metrics.backend.backend_of`), so a state moved to the host
(:meth:`host`), pickled to another process or sent to another rank
(:mod:`nccli.collectives`) merges with any other state of the same layer,
wherever each was computed.
"""

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nccli.metrics.backend import Backend, backend_of

if TYPE_CHECKING:  # geometry.py imports layer.py, which imports this module
    from nccli.metrics.geometry import Geometry


@dataclass
class ClassMoments:
    """Pass-1 state: per-class first moments of one layer.

    Row c belongs to class c, or, in a block's own state (``ids`` set), to
    class ``ids[c]``: a block touches only the classes present in it, so its
    state and its merge cost O(classes in the block · d), not O(K · d).
    """

    count: object  # (C,) float64: n_c (exact below 2**53)
    mean: object  # (C, d) μ_c
    unit_sum: object  # (C, d) Σ_{i∈c, h_i≠0} h_i/‖h_i‖
    unit_count: object  # (C,) number of non-zero h_i
    ids: object = None  # class id of each row (a block's state), None = all classes

    @classmethod
    def empty(cls, xp: Backend, num_classes: int, dim: int) -> "ClassMoments":
        return cls(xp.zeros(num_classes), xp.zeros(num_classes, dim), xp.zeros(num_classes, dim), xp.zeros(num_classes))

    @staticmethod
    def state_bytes(num_classes: int, dim: int) -> int:
        """Bytes of a whole layer's state: two (C, d) and two (C,) float64 arrays."""
        return 8 * num_classes * (2 * dim + 2)

    @classmethod
    def of_block(cls, xp: Backend, rows, labels) -> "ClassMoments":
        """Moments of one block of rows (float64 backend arrays) for the classes present in it (``ids``)."""
        rows, labels = xp.grouped(rows, labels)
        groups = xp.groups(labels)
        norms = xp.sqrt(xp.rowdot(rows, rows))
        nonzero = norms > 0
        mean = xp.segment_sum(rows, groups) / groups.count[:, None]
        # A zero vector leaves the cosine view: dividing it by 1 keeps it zero, so every row stays in its run.
        unit_sum = xp.segment_sum(rows / (norms + ~nonzero)[:, None], groups)
        return cls(groups.count, mean, unit_sum, xp.group_sum(1.0 * nonzero, groups), groups.ids)

    def _combined(self, other: "ClassMoments"):
        """Chan et al. pairwise update of this state's rows for ``other``'s classes (n-weighted means)."""
        xp, at = backend_of(self.count), slice(None) if other.ids is None else other.ids
        count_a, mean_a = self.count[at], self.mean[at]
        count = count_a + other.count
        share = other.count / xp.at_least_one(count)  # n_b / n, 0 for absent classes
        return (
            count,
            mean_a + (other.mean - mean_a) * share[:, None],
            self.unit_sum[at] + other.unit_sum,
            self.unit_count[at] + other.unit_count,
        )

    def merge(self, other: "ClassMoments") -> "ClassMoments":
        """Both states (over all classes) merged, as one pass over both."""
        return ClassMoments(*self._combined(other))

    def update(self, rows, labels) -> None:
        """Fold one block of rows into this state, in place."""
        self.fold(ClassMoments.of_block(backend_of(self.count), rows, labels))

    def fold(self, block: "ClassMoments") -> None:
        """Fold a block's state (``of_block``) into this state, in place, touching only the block's classes."""
        at = block.ids
        self.count[at], self.mean[at], self.unit_sum[at], self.unit_count[at] = self._combined(block)

    def host(self) -> "ClassMoments":
        """The same state as numpy arrays."""
        return on_host(self)


@dataclass
class Decisions:
    """Pass-2 state of one layer.

    Besides the decisions and the scatter about the final means:
    Σ_i ‖h_i − μ_{y_i}‖ and Σ_i ‖h_i − μ_G‖ (``nc1_dist_ratio``), and on the
    classifier layer the smallest bias-free margin and the summed
    cross-entropies of Wh + b and of Wh (seeds ``002_*``, ``003_*``,
    ``004_*``), over every present class tile by tile.
    """

    projected_sq: object  # (r,) Σ_i (v_j·(h_i − μ_{y_i}))²
    scatter: object  # (C,) Σ_{i∈c} ‖h_i − μ_c‖²
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
    within: object = None  # (d, d) within-class scatter matrix, MSE and SNR only

    @classmethod
    def empty(cls, xp: Backend, num_classes: int, rank: int, within_dim: int | None = None) -> "Decisions":
        """A state of nothing; ``within_dim`` d: with the d × d within-class matrix."""
        within = None if within_dim is None else xp.zeros(within_dim, within_dim)
        return cls(xp.zeros(rank), xp.zeros(num_classes), xp.zeros(num_classes), xp.zeros(num_classes), within=within)

    @staticmethod
    def state_bytes(num_classes: int, dim: int, with_matrix: bool = False) -> int:
        """Bytes of a whole layer's state at most: three (C,) float64 arrays, the rank ≤ d projections (+ d²)."""
        return 8 * (3 * num_classes + dim + (dim * dim if with_matrix else 0))

    @classmethod
    def of_block(cls, xp: Backend, geometry: "Geometry", rows, labels, num_classes: int, with_matrix: bool = False) -> "Decisions":
        block = geometry.block(xp, rows)
        residuals = block.centred - geometry.own_centres[geometry.column_of_class[labels]]
        squared = xp.rowdot(residuals, residuals)
        projected = residuals @ geometry.basis
        ncc_pred = geometry.nearest(xp, block)
        state = cls(
            (projected * projected).sum(0),
            xp.bincount(labels, num_classes, weights=squared),
            xp.bincount(labels, num_classes, weights=1.0 * (ncc_pred == labels)),
            xp.zeros(num_classes),
            within=residuals.T @ residuals if with_matrix else None,
        )
        state.own_distance_sum = xp.scalar(xp.sqrt(squared).sum())
        state.global_distance_sum = xp.scalar(block.norms.sum())
        if geometry.weight is None or not len(labels):
            return state
        scored = geometry.classify(xp, block, labels)
        state.clf_correct = xp.bincount(labels, num_classes, weights=1.0 * (scored.prediction == labels))
        state.mismatch = xp.scalar((scored.prediction != ncc_pred).sum())
        state.ce_sum, state.free_ce_sum = xp.scalar(scored.ce.sum()), xp.scalar(scored.free_ce.sum())
        if len(geometry.own_centres) > 1:
            margins = scored.own - scored.other
            state.margin_min = xp.scalar(margins.min())
            state.margin_sum = xp.scalar(margins.sum())
            state.free_margin_min = xp.scalar((scored.free_own - scored.free_other).min())
        return state

    def merge(self, other: "Decisions") -> "Decisions":
        return Decisions(
            self.projected_sq + other.projected_sq,
            self.scatter + other.scatter,
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
            None if self.within is None else self.within + other.within,
        )

    def update(self, geometry: "Geometry", rows, labels) -> None:
        """Fold one block of rows into this state, in place."""
        xp = backend_of(self.projected_sq)
        self.fold(Decisions.of_block(xp, geometry, rows, labels, self.ncc_correct.shape[0], self.within is not None))

    def fold(self, block: "Decisions") -> None:
        """Fold a block's state (``of_block``) into this state, in place."""
        self.__dict__.update(self.merge(block).__dict__)

    def host(self) -> "Decisions":
        """The same state as numpy arrays."""
        return on_host(self)


def on_host(state):
    """A state (any dataclass of arrays, floats and None) with every array moved to numpy on the host."""
    def moved(value):
        return value if value is None or isinstance(value, (int, float)) else backend_of(value).host(value)

    return dataclasses.replace(state, **{item.name: moved(getattr(state, item.name)) for item in dataclasses.fields(state)})
