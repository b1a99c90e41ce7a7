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
  tile by tile over classes (:mod:`nccli.metrics.geometry`). Also the
  per-class sums of the residuals, Σ_{i∈c}(h_i − μ_c) = n_c·(μ_c of pass 2 −
  μ_c of pass 1): 0 to rounding when pass 2 reads the rows of pass 1, in any
  order (:func:`moved_class`, the check that it did).

``merge(a, b)`` equals one pass over the rows of both.

States are plain data: dataclasses of arrays (and a few floats), with no
backend object inside. Their kernels take the backend from the arrays
(:func:`~nccli.metrics.backend.backend_of`), so a state moved to the host
(:meth:`host`), pickled to another process or sent to another rank
(:mod:`nccli.analyze.collectives`) merges with any other state of the same layer,
wherever each was computed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from nccli.metrics.backend import Backend, backend_of
from nccli.metrics.geometry import Geometry
from nccli.types import Array, ClassMeans


@dataclass
class ClassMoments:
    """Pass-1 state: per-class first moments of one layer.

    Row c belongs to class c, or, in a block's own state (``ids`` set), to
    class ``ids[c]``: a block touches only the classes present in it, so its
    state and its merge cost O(classes in the block · d), not O(K · d).
    """

    count: Array  # (C,) float64: n_c (exact below 2**53)
    mean: Array  # (C, d) μ_c
    unit_sum: Array  # (C, d) Σ_{i∈c, h_i≠0} h_i/‖h_i‖
    unit_count: Array  # (C,) number of non-zero h_i
    ids: Array | None = None  # class id of each row (a block's state), None = all classes

    @classmethod
    def empty(cls, xp: Backend, num_classes: int, dim: int) -> ClassMoments:
        return cls(xp.zeros(num_classes), xp.zeros(num_classes, dim), xp.zeros(num_classes, dim), xp.zeros(num_classes))

    @staticmethod
    def state_bytes(num_classes: int, dim: int) -> int:
        """Bytes of a whole layer's state: two (C, d) and two (C,) float64 arrays."""
        return 8 * num_classes * (2 * dim + 2)

    @classmethod
    def of_block(cls, xp: Backend, rows, labels) -> ClassMoments:
        """Moments of one block of rows (float64 backend arrays) for the classes present in it (``ids``)."""
        rows, labels = xp.grouped(rows, labels)
        groups = xp.groups(labels)
        norms = xp.sqrt(xp.rowdot(rows, rows))
        nonzero = norms > 0
        mean = xp.segment_sum(rows, groups) / groups.count[:, None]
        # A zero vector leaves the cosine view: dividing it by 1 keeps it zero, so every row stays in its run.
        unit_sum = xp.segment_sum(rows / (norms + ~nonzero)[:, None], groups)
        return cls(groups.count, mean, unit_sum, xp.group_sum(1.0 * nonzero, groups), groups.ids)

    def _combined(self, other: ClassMoments):
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

    def merge(self, other: ClassMoments) -> ClassMoments:
        """Both states (over all classes) merged, as one pass over both."""
        return ClassMoments(*self._combined(other))

    def update(self, rows, labels) -> None:
        """Fold one block of rows into this state, in place."""
        self.fold(ClassMoments.of_block(backend_of(self.count), rows, labels))

    def fold(self, block: ClassMoments) -> None:
        """Fold a block's state (``of_block``) into this state, in place, touching only the block's classes."""
        at = block.ids
        self.count[at], self.mean[at], self.unit_sum[at], self.unit_count[at] = self._combined(block)

    def host(self) -> ClassMoments:
        """The same state as numpy arrays."""
        return on_host(self)

    def restricted(self, kept: np.ndarray) -> ClassMoments:
        """This host state over the classes ``kept`` ((C,) bool) only: every field is per class, so emptying
        the others is exactly the state of a pass that never read their rows."""
        return ClassMoments(
            np.where(kept, self.count, 0.0),
            np.where(kept[:, None], self.mean, 0.0),
            np.where(kept[:, None], self.unit_sum, 0.0),
            np.where(kept, self.unit_count, 0.0),
        )

    def class_means(self) -> ClassMeans:
        """The means of the present classes (count > 0) of this host state."""
        ids = np.flatnonzero(self.count > 0)
        return ClassMeans(ids, present_rows(self.mean, ids))


@dataclass
class Decisions:
    """Pass-2 state of one layer.

    Besides the decisions and the scatter about the final means:
    Σ_i ‖h_i − μ_{y_i}‖ and Σ_i ‖h_i − μ_G‖ (``nc1_dist_ratio``), and on the
    classifier layer the smallest bias-free margin and the summed
    cross-entropies of Wh + b and of Wh (seeds ``002_*``, ``003_*``,
    ``004_*``), over every output of the classifier (``num_classes``) tile by tile.

    ``count`` and ``residual_sum`` are this pass's n_c and Σ_{i∈c}(h_i − μ_c),
    what :func:`moved_class` compares with pass 1. In a block's own state
    (``residual_ids`` set) row j of ``residual_sum`` belongs to class
    ``residual_ids[j]``, one of the classes present in the block, so that a
    block costs O(classes in the block · d), not O(K · d).
    """

    projected_sq: Array  # (r,) Σ_i (v_j·(h_i − μ_{y_i}))²
    scatter: Array  # (C,) Σ_{i∈c} ‖h_i − μ_c‖²
    ncc_correct: Array  # (C,)
    clf_correct: Array  # (C,)
    mismatch: float = 0.0
    margin_min: float = float("inf")
    margin_sum: float = 0.0
    own_distance_sum: float = 0.0
    global_distance_sum: float = 0.0
    free_margin_min: float = float("inf")
    ce_sum: float = 0.0
    free_ce_sum: float = 0.0
    within: Array | None = None  # (d, d) within-class scatter matrix, MSE and SNR only
    count: Array | None = None  # (C,) n_c of this pass
    residual_sum: Array | None = None  # (C, d) Σ_{i∈c} (h_i − μ_c); None until the first block when made without d
    residual_ids: Array | None = None  # class of each row of residual_sum (a block's state), None = all classes

    @classmethod
    def empty(
        cls, xp: Backend, num_classes: int, rank: int, within_dim: int | None = None, dim: int | None = None
    ) -> Decisions:
        """A state of nothing; ``within_dim`` d: with the d × d within-class matrix; ``dim`` d: with the
        residual sums already there (states that travel between processes must all have them)."""
        within = None if within_dim is None else xp.zeros(within_dim, within_dim)
        residual_sum = None if dim is None else xp.zeros(num_classes, dim)
        zeros = [xp.zeros(num_classes) for _ in range(3)]
        return cls(xp.zeros(rank), *zeros, within=within, count=xp.zeros(num_classes), residual_sum=residual_sum)

    @staticmethod
    def state_bytes(num_classes: int, dim: int, with_matrix: bool = False) -> int:
        """Bytes of a whole layer's state at most: four (C,) and one (C, d) float64 arrays, the rank ≤ d
        projections (+ d²)."""
        return 8 * (4 * num_classes + num_classes * dim + dim + (dim * dim if with_matrix else 0))

    @classmethod
    def of_block(
        cls, xp: Backend, geometry: Geometry, rows, labels, num_classes: int, with_matrix: bool = False
    ) -> Decisions:
        block = geometry.block(xp, rows)
        residuals = block.centred - geometry.own_centres[geometry.column_of_class[labels]]
        squared = xp.rowdot(residuals, residuals)
        projected = residuals @ geometry.basis
        ncc_pred = geometry.nearest(xp, block)
        grouped, grouped_labels = xp.grouped(residuals, labels)
        groups = xp.groups(grouped_labels)
        state = cls(
            (projected * projected).sum(0),
            xp.bincount(labels, num_classes, weights=squared),
            xp.bincount(labels, num_classes, weights=1.0 * (ncc_pred == labels)),
            xp.zeros(num_classes),
            within=residuals.T @ residuals if with_matrix else None,
            count=xp.bincount(labels, num_classes),
            residual_sum=xp.segment_sum(grouped, groups),
            residual_ids=groups.ids,
        )
        state.own_distance_sum = xp.scalar(xp.sqrt(squared).sum())
        state.global_distance_sum = xp.scalar(block.norms.sum())
        if geometry.weight is None or not len(labels):
            return state
        scored = geometry.classify(xp, block, labels)
        state.clf_correct = xp.bincount(labels, num_classes, weights=1.0 * (scored.prediction == labels))
        state.mismatch = xp.scalar((scored.prediction != ncc_pred).sum())
        state.ce_sum, state.free_ce_sum = xp.scalar(scored.ce.sum()), xp.scalar(scored.free_ce.sum())
        if len(geometry.clf_column) > 1:  # another output to compare with (present or not)
            margins = scored.own - scored.other
            state.margin_min = xp.scalar(margins.min())
            state.margin_sum = xp.scalar(margins.sum())
            state.free_margin_min = xp.scalar((scored.free_own - scored.free_other).min())
        return state

    def merge(self, other: Decisions) -> Decisions:
        """Both states merged, as one pass over both (over all classes: block states' sums are spread out)."""
        mine, theirs = self._all_residuals(), other._all_residuals()
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
            _added(self.count, other.count),
            _added(mine, theirs),
        )

    def _all_residuals(self):
        """``residual_sum`` over all classes (a block's spread out into zeros), or None."""
        if self.residual_sum is None or self.residual_ids is None:
            return self.residual_sum
        spread = backend_of(self.scatter).zeros(len(self.scatter), self.residual_sum.shape[1])
        spread[self.residual_ids] = self.residual_sum
        return spread

    def update(self, geometry: Geometry, rows, labels) -> None:
        """Fold one block of rows into this state, in place."""
        xp = backend_of(self.projected_sq)
        self.fold(Decisions.of_block(xp, geometry, rows, labels, self.ncc_correct.shape[0], self.within is not None))

    def fold(self, block: Decisions) -> None:
        """Fold a block's state (``of_block``) into this state, in place; the residual sums only at the
        block's classes (no O(K·d) array per block)."""
        sums, at = block.residual_sum, slice(None) if block.residual_ids is None else block.residual_ids
        self.__dict__.update(self.merge(dataclasses.replace(block, residual_sum=None, residual_ids=None)).__dict__)
        if sums is None:
            return
        if self.residual_sum is None:  # a state made without ``dim``
            self.residual_sum = backend_of(self.scatter).zeros(len(self.scatter), sums.shape[1])
        self.residual_sum[at] += sums

    def host(self) -> Decisions:
        """The same state as numpy arrays."""
        return on_host(self)


def _added(a, b):
    """a + b, where None stands for nothing yet."""
    return b if a is None else a if b is None else a + b


# Rows recomputed by the caller's model in another batch may round differently (float32, TF32 or
# bfloat16 kernels chosen by the batch's shape, atomics): each may move by a small random amount, which
# the check lets through (moved_class) when it is below both of these.
ROW_NOISE = 1e-2  # τ: rows that each moved by a random amount, as a fraction of their size
MEAN_SHIFT = 0.05  # κ: a class mean that moved, as a fraction of the spread of its rows
UNIT_ROUNDOFF = 2.0**-53  # float64's: the passes' sums


@dataclass(frozen=True)
class Moved:
    """A class whose rows in pass 2 are not those of pass 1: its mean moved by ``shift`` (‖μ_c of pass 2 −
    μ_c of pass 1‖); ``spread`` is the RMS distance of pass 2's rows to their own mean."""

    klass: int
    shift: float
    spread: float

    def __str__(self) -> str:
        moved = f"class {self.klass}: its rows' mean moved by {self.shift:.2g}"
        if not self.spread > 0:
            return f"{moved}, and they have no spread"
        share = self.shift / self.spread
        return (
            f"{moved}, {100 * share:.0f}% of their spread"
            if share >= 0.1
            else f"{moved}, {100 * share:.2g}% of their spread"
        )


def moved_class(state: Decisions, centres: np.ndarray, origin: np.ndarray) -> Moved | None:
    """The class whose rows pass 2 (``state``, on the host) did not read in pass 1, worst first; None if none.

    ``centres`` (C, d): μ_c − o, the means of pass 1 less the ``origin`` o pass 2 worked relative to
    (rows of absent classes ignored). With S_c = Σ_{i∈c}(h_i − μ_c) = n_c·(μ_c^(2) − μ_c^(1)), W_c the
    scatter Σ_{i∈c}‖h_i − μ_c‖², H_c = Σ_{i∈c}‖h_i‖² = W_c + 2μ_c·S_c + n_c‖μ_c‖² and R_c the larger of the
    class's RMS spread √(W_c/n_c) and the layer's √(Σ_c W_c / N) (a single row has none of its own),
    class c is refused when

        ‖S_c‖ > 8u·n_c·(√(n_c·H_c) + √(n_c·W_c) + ‖μ_c − o‖) + min(τ·√H_c, κ·n_c·R_c).

    The same rows in any order give S_c = 0 but for rounding, which the first term bounds: per coordinate,
    the pass-1 mean (block sums and Chan merges) is off by ≲ 4n_c·u·mean|h_ij|, each residual
    fl(fl(h_i − o) − fl(μ_c − o)) by ≤ u(2|r_ij| + 2|μ_cj − o_j|), and their sum by ≤ n_c·u·Σ|r_ij|
    (Higham 2002, §4.2: worst cases, not the √n_c typical); ‖Σ_i|h_i|‖ ≤ Σ_i‖h_i‖ ≤ √(n_c·H_c) carries them
    to the norm, whatever d, the inputs' dtype (exact in float64) or the block order, so the same rows
    are never refused. The second term lets through rows recomputed with other rounding (a small random
    move of each), and refuses a change that is either (i) more than τ = ROW_NOISE of the rows' size,
    read as random per-row noise (‖S_c‖ ≈ ρ·√H_c for rows that each moved by ρ‖h_i‖, at any n_c: dropout,
    augmentation, BatchNorm's batch statistics), or (ii) a shift of the mean by more than κ = MEAN_SHIFT
    of the spread (rows far from the origin that moved by little beside their size but not beside their
    spread). Recomputed rows pass both unless their rounding noise ρ nears τ, or ρ·‖h‖ nears κ·√n_c·R_c.
    """
    if state.count is None or state.residual_sum is None:
        return None
    count, sums, scatter = state.count, state.residual_sum, state.scatter
    means = centres + origin
    moved = np.sqrt(np.einsum("ij,ij->i", sums, sums))
    sizes = np.maximum(
        scatter + 2.0 * np.einsum("ij,ij->i", means, sums) + count * np.einsum("ij,ij->i", means, means), 0.0
    )
    rounding = (
        8.0
        * UNIT_ROUNDOFF
        * count
        * (np.sqrt(count * sizes) + np.sqrt(count * scatter) + np.sqrt(np.einsum("ij,ij->i", centres, centres)))
    )
    spread = np.sqrt(np.maximum(scatter / np.maximum(count, 1.0), scatter.sum() / max(count.sum(), 1.0)))
    allowed = rounding + np.minimum(ROW_NOISE * np.sqrt(sizes), MEAN_SHIFT * count * spread)
    refused = np.flatnonzero((count > 0) & (moved > allowed))
    if not len(refused):
        return None
    worst = refused[np.argmax(moved[refused] / np.maximum(allowed[refused], np.finfo(np.float64).tiny))]
    shift = moved[worst] / count[worst]
    own_spread = np.sqrt(max(scatter[worst] / count[worst] - shift**2, 0.0))
    return Moved(int(worst), float(shift), float(own_spread))


def present_rows(array: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``array[ids]``, without an O(K·d) copy when every class is present (ids = 0..C−1)."""
    return array if len(ids) == len(array) else array[ids]


def on_host(state):
    """A state (any dataclass of arrays, floats and None) with every array moved to numpy on the host."""

    def moved(value):
        return value if value is None or isinstance(value, (int, float)) else backend_of(value).host(value)

    return dataclasses.replace(
        state, **{item.name: moved(getattr(state, item.name)) for item in dataclasses.fields(state)}
    )
