"""What pass 2 needs from pass 1, and its products with a block of rows, tile by tile over classes.

Pass 2 compares every row with every class: NCC distances ‖h_i − μ_c‖² and
classifier logits w_cᵀh_i + b_c, O(N·K·d), the bulk of analyze's work at
large K. At K = 100 000 a block × K product would not fit in memory, so both
run over tiles of classes whose block × tile product stays within the
backend's ``tile_bytes``, multiplied into one scratch buffer per block.

Each tile is screened in float32 (half the bytes, twice the BLAS rate) and
decided in float64. A float32 value is within δ_i of the exact one
(:meth:`Geometry.slack`); for the NCC rule every class whose float32 value
is within 2δ_i of the row's float32 best is a candidate, so the exact best
is always among them, and only the candidates (a handful per row) are
recomputed in float64 as explicit dot products; ties go to the lowest class
id (the rule of ``docs/metrics.md``). The classifier's side (decisions, margins,
cross-entropies) is :mod:`nccli.metrics.logits`.

Exact ties come from classes with identical centres (coincident means made
identical by :func:`ties_exact`) or identical classifier rows
(w_c, b_c). Only the first (lowest-id) class of a set of identical rows is a
candidate, so they never depend on rounding either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nccli.errors import DataError
from nccli.metrics import logits
from nccli.metrics.backend import Backend
from nccli.metrics.formulas import COINCIDENCE_TOLERANCE, Spectrum
from nccli.metrics.tiles import lowest_coincident
from nccli.types import Array, Classifier, ClassMeans


@dataclass(frozen=True)
class Geometry:
    """The fixed quantities of pass 2 for one layer, on the backend's device.

    Everything is relative to ``origin`` (μ_G, so common offsets cost no
    precision): ``basis`` V (d × rank) spans Σ_B's kept eigen-directions;
    ``own_centres`` (K × d) holds μ_c − origin of the present classes, row
    ``column_of_class[c]``. NCC candidates: ``ncc_centres`` (means minus
    origin, the same array as ``own_centres`` when they coincide) of classes
    ``ncc_ids``, from this file's means or the reference file's
    (``--means-from``). Classifier candidates (None without a classifier), over
    every one of its ``num_classes`` outputs, present class or not:
    rows ``weight`` and ``bias`` (b + W·origin) of classes ``clf_ids``; class c
    has the logit of candidate ``clf_column[c]``, which ``clf_shared`` marks
    when another class has the same row; ``free_bias`` (W·origin) gives the
    bias-free logits w_cᵀh_i of seed ``002_*``, ``multiplicity`` the number of
    classes that share each candidate's row (the cross-entropy sums over
    classes), ``weight_norm_max`` the largest ‖w_c‖ (``ncc_norm_max`` the
    largest ‖c‖ of the NCC centres), ``bias_is_zero`` whether b = 0 (then both
    kinds of logits are one). The screening multiplies float32
    rows (h_i − origin, 1) by ``ncc_single`` (−2·``ncc_centres``, ‖c‖²) and
    ``weight_single`` (``weight``, ``bias``): the offsets come out of the
    product, with unit roundoff ``single_unit``. ``tile_classes`` fixes the
    tile width (tests); None sizes float32 tiles by ``tile_bytes``.
    """

    origin: Array
    basis: Array
    own_centres: Array
    column_of_class: Array
    ncc_centres: Array
    ncc_single: Array
    ncc_sqnorms: Array
    ncc_ids: Array
    weight: Array | None = None
    weight_single: Array | None = None
    bias: Array | None = None
    clf_ids: Array | None = None
    clf_column: Array | None = None
    clf_shared: Array | None = None
    free_bias: Array | None = None
    multiplicity: Array | None = None
    weight_norm_max: float = 0.0
    ncc_norm_max: float = 0.0
    bias_is_zero: bool = False
    tile_bytes: int = 32 * 2**20
    tile_classes: int | None = None
    single_unit: float = 2.0**-24

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    def tile_width(self, rows: int) -> int:
        """Classes per tile for a block of ``rows``: ``tile_classes``, else a float32 product of ``tile_bytes``."""
        return self.tile_classes or max(1, self.tile_bytes // (4 * max(rows, 1)))

    def tiles(self, classes: int, rows: int) -> list[tuple[int, int]]:
        width = self.tile_width(rows)
        return [(start, min(start + width, classes)) for start in range(0, classes, width)]

    def block(self, xp: Backend, rows) -> Block:
        """What both decisions need of a block of float64 rows, computed once (refused, in one line, when the
        float32 screens could overflow on them: :func:`check_scale`)."""
        centred = rows - self.origin
        norms = xp.sqrt(xp.rowdot(centred, centred))
        partner = max(self.ncc_norm_max, self.weight_norm_max)
        check_scale(float(norms.max()) if len(norms) else 0.0, partner, centred.shape[1])
        return Block(centred, xp.single_with_ones(centred), norms)

    def slack(
        self, block: Block, norm_max: float, folded_max: float, added_max: float = 0.0, unit: float | None = None
    ):
        """2δ_i: twice the bound on |float32 − exact| of (h_i − origin)·v + a + e over rows v of norm ≤
        ``norm_max``, offsets a folded into the product (|a| ≤ ``folded_max``, the product's last column)
        and offsets e added to it (|e| ≤ ``added_max``): (d + 4)·u·(‖h_i − origin‖·norm_max + folded_max)
        + 2u·added_max (float32 casts, a (d + 1)-term sum, |fl(xᵀy) − xᵀy| ≤ γ_{d+1}|x|ᵀ|y| (Higham 2002,
        §3.1), the addition), doubled for safety; ``unit`` u (default float32's, ``single_unit``)."""
        d, u = block.centred.shape[1], unit or self.single_unit
        return 4.0 * u * ((d + 4) * (block.norms * norm_max + folded_max) + 2.0 * added_max)

    def _lowest(self, xp: Backend, block: Block, count: int, tile, slack, exact):
        """Per row, the column of the exact smallest value among ``count`` columns (lowest column on ties).

        ``tile(start, stop)`` gives the float32 values of a tile of columns,
        ``exact(rows, columns)`` the float64 ones of given pairs. Screening keeps
        every entry within ``slack`` (2δ_i) of its tile's smallest, a superset
        of those within 2δ_i of the row's smallest overall; those are then
        decided in float64 once per block. Most rows have one candidate per
        tile, the float32 smallest; only rows whose second smallest is within
        the slack are searched for more, and a row left with one candidate
        needs no float64 product.
        """
        n = len(block.centred)
        everyone = xp.arange(n)
        found, low = [], None
        for start, stop in self.tiles(count, n):
            approx = tile(start, stop)
            column = xp.argmin(approx)
            smallest = approx[everyone, column]
            approx[everyone, column] = np.inf
            bound = smallest + slack
            several = xp.flatnonzero(xp.row_min(approx) <= bound)
            more_rows, more_columns = xp.pairs(approx[several] <= bound[several][:, None])
            found.append((everyone, column + start, smallest))
            found.append((several[more_rows], more_columns + start, approx[several[more_rows], more_columns]))
            low = smallest if low is None else xp.where(smallest < low, smallest, low)
        rows, columns, approx_values = (xp.concatenate(*parts) for parts in zip(*found))
        keep = xp.flatnonzero(approx_values <= low[rows] + slack[rows])
        rows, columns = rows[keep], columns[keep]
        best_column = xp.labels(np.zeros(n, dtype=np.int64))
        candidates = xp.bincount(rows, n)[rows]
        alone = xp.flatnonzero(candidates == 1)
        best_column[rows[alone]] = columns[alone]
        contested = xp.flatnonzero(candidates > 1)
        rows, columns = rows[contested], columns[contested]
        exact_values = exact(block.centred[rows], columns)
        first = xp.first_per_row(rows, exact_values, columns)
        best_column[rows[first]] = columns[first]
        return best_column

    def nearest(self, xp: Backend, block: Block):
        """NCC decision of each row: argmin_c ‖c‖² − 2(h_i − origin)·c over c = μ_c − origin, which is
        ‖h_i − μ_c‖² less a per-row constant."""
        norm_max = self.ncc_norm_max
        slack = xp.single(2.0 * self.slack(block, norm_max, norm_max**2))  # rows −2c: norm 2·norm_max, × 2
        scratch = xp.scratch(len(block.centred) * self.tile_width(len(block.centred)))

        def tile(start, stop):
            return xp.product_into(block.single, self.ncc_single[start:stop], scratch)

        def exact(rows, columns):
            return self.ncc_sqnorms[columns] - 2.0 * xp.rowdot(rows, self.ncc_centres[columns])

        return self.ncc_ids[self._lowest(xp, block, len(self.ncc_ids), tile, slack, exact)]

    def classify(self, xp: Backend, block: Block, labels):
        """The classifier's decisions, logits and losses of each row (:func:`nccli.metrics.logits.classify`)."""
        return logits.classify(self, xp, block, labels)

    def exact_products(self, xp: Backend, block: Block, rows, columns):
        """w_cᵀ(h_i − origin) in float64 for the given (row, classifier column) pairs, in chunks of a tile's bytes."""
        chunk = max(1, self.tile_bytes // (16 * max(block.centred.shape[1], 1)))
        parts = [
            xp.rowdot(block.centred[rows[start : start + chunk]], self.weight[columns[start : start + chunk]])
            for start in range(0, len(rows), chunk)
        ]
        return xp.concatenate(*parts) if parts else xp.zeros(0)


@dataclass(frozen=True)
class Block:
    """One block of rows for pass 2: h_i − origin in float64, (h_i − origin, 1) in float32, and ‖h_i − origin‖."""

    centred: Array
    single: Array
    norms: Array


def distinct_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, group): ascending indices of the first row of each set of identical rows, and for
    each row the position in ``first`` of its set.

    Only rows whose first entry equals another row's can repeat: those are compared as bytes (−0.0
    made +0.0 first), one sort key per row; ``np.unique(axis=0)`` would build a d-field record type
    (seconds at d = 60 000 or K = 100 000).
    """
    lead = matrix[:, 0] if matrix.shape[1] else np.zeros(len(matrix))
    order = np.argsort(lead, kind="stable")
    repeated = lead[order[1:]] == lead[order[:-1]]
    candidates = np.sort(order[np.r_[repeated, False] | np.r_[False, repeated]])
    representative = np.arange(len(matrix))
    if len(candidates):
        rows = np.concatenate([matrix[candidates] + 0.0, np.zeros((len(candidates), 1))], axis=1)  # ≥ 1 column
        keys = rows.view(np.dtype((np.void, 8 * rows.shape[1]))).ravel()
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        representative[candidates] = candidates[first[inverse.ravel()]]  # the lowest index of each set
    first = np.flatnonzero(representative == np.arange(len(matrix)))
    return first, np.searchsorted(first, representative)


# Pass 2 screens products of (h − μ_G) with class means and classifier rows in float32 (2^128 at most) and
# the spectrum squares the centred means in float64 (2^1024): finite data beyond these bounds would overflow.
SINGLE_LIMIT, DOUBLE_LIMIT = 2.0**120, 2.0**500


def check_scale(largest: float, partner: float, dim: int) -> None:
    """Refuse, in one line, rows of norm up to ``largest`` whose products with vectors of norm ``partner``
    could overflow pass 2's float32 screens, or whose squares overflow float64 (float32 features near 1e19,
    float64 features near 1e155: decisions would be made on inf)."""
    magnitude = (dim + 4) * (largest * partner + partner * partner)
    if not (magnitude < SINGLE_LIMIT and largest < DOUBLE_LIMIT):
        raise DataError(
            f"feature values too large for analyze: ‖h − μ_G‖ reaches {largest:.1e} and pass 2's float32 products "
            f"{magnitude:.1e}, beyond what they hold; divide the features by a constant (the NC ratios do not "
            "change) and analyze again"
        )


def ties_exact(means: ClassMeans) -> ClassMeans:
    """Coincident means replaced by the lowest id's, so NCC ties go to the lowest class id exactly.

    Class c gets the mean of the lowest c' ≤ c within the coincidence distance
    (:func:`tiles.lowest_coincident`: no K × K matrix).
    """
    representative = lowest_coincident(means.means, COINCIDENCE_TOLERANCE * means.scale)
    return ClassMeans(means.ids, means.means[representative])


def build_geometry(
    xp: Backend,
    moments,
    spectrum: Spectrum,
    ncc_reference: ClassMeans,
    classifier: Classifier | None,
    tile_classes: int | None = None,
) -> Geometry:
    """Move what pass 2 needs onto the backend's device, relative to this layer's μ_G.

    NCC means go through :func:`ties_exact` (coincident means become
    identical), then only the first class of identical means or classifier
    rows stays a candidate.
    """
    present = moments.class_means()
    origin = present.means.mean(axis=0)
    own = present.means - origin
    own_centres = xp.constant(own)
    ncc = ties_exact(ncc_reference)
    first, _ = distinct_rows(ncc.means)
    shared = np.array_equal(ncc.ids[first], present.ids) and np.array_equal(ncc.means, present.means)
    ncc_centres = own if shared else ncc.means[first] - origin
    ncc_device = own_centres if shared else xp.constant(ncc_centres)
    sqnorms = np.einsum("ij,ij->i", ncc_centres, ncc_centres)
    column_of_class = np.zeros(len(moments.count), dtype=np.int64)
    column_of_class[present.ids] = np.arange(len(present.ids))
    parts = {}
    if classifier is not None:
        # Every output, present class or not: the network decides over all of them (metrics.md).
        rows = np.hstack([classifier.weight, classifier.bias[:, None]])
        first_row, group = distinct_rows(rows)
        weight = rows[first_row, :-1]
        bias = rows[first_row, -1] + weight @ origin
        parts = dict(
            weight=xp.constant(weight),
            weight_single=xp.single(xp.constant(np.hstack([weight, bias[:, None]]))),
            bias_is_zero=not np.any(rows[first_row, -1]),
            bias=xp.constant(bias),
            free_bias=xp.constant(weight @ origin),
            multiplicity=xp.constant(np.bincount(group).astype(np.float64)),
            weight_norm_max=float(np.sqrt(np.einsum("ij,ij->i", weight, weight).max(initial=0.0))),
            clf_ids=xp.labels(first_row),
            clf_column=xp.labels(group),
            clf_shared=xp.labels(np.bincount(group) > 1) > 0,
        )
    return Geometry(
        origin=xp.constant(origin),
        basis=xp.constant(spectrum.basis),
        own_centres=own_centres,
        column_of_class=xp.labels(column_of_class),
        ncc_centres=ncc_device,
        ncc_single=xp.single(xp.constant(np.hstack([-2.0 * ncc_centres, sqnorms[:, None]]))),
        ncc_sqnorms=xp.constant(sqnorms),
        ncc_norm_max=float(sqnorms.max(initial=0.0)) ** 0.5,
        ncc_ids=xp.labels(ncc.ids[first]),
        tile_bytes=xp.tile_bytes,
        tile_classes=tile_classes,
        single_unit=xp.single_unit,
        **parts,
    )


def geometry_bytes(num_classes: int, dim: int, classifier: bool, shared_ncc: bool) -> int:
    """Bytes of a :class:`Geometry` at C classes, all present: (C, d) float64 centres (again when the
    NCC means are another file's) and classifier rows, their float32 copies for the screening, V of
    rank ≤ min(C − 1, d) and a few (C,) vectors."""
    rank = min(max(num_classes - 1, 0), dim)
    matrices = num_classes * (8 * dim * (1 + (not shared_ncc) + classifier) + 4 * (dim + 1) * (1 + classifier))
    return matrices + 8 * (dim * rank + 8 * num_classes)
