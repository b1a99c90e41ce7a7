"""What pass 2 needs from pass 1, and its products with a block of rows, tile by tile over classes.

Pass 2 compares every row with every class: NCC distances ‖h_i − μ_c‖² and
classifier logits w_cᵀh_i + b_c. At K = 100 000 a block × K product would
not fit in memory, so both run over tiles of classes whose block × tile
product stays within the backend's ``tile_bytes``, keeping per row a running
argmin (NCC), argmax (classifier), the own-class logit and the best other
logit. Later tiles replace the running best only when strictly better, and
within a tile argmin/argmax return the first extreme, so equal values go to
the lowest class id (the rule of ``metrics.md``).

Exact ties come from classes with identical centres (coincident means made
identical by ``ClassMeans.with_ties_exact``) or identical classifier rows
(w_c, b_c). A BLAS product need not give identical columns the same
rounding when they fall in differently shaped tiles, so only the first
(lowest-id) class of each set of identical rows is a candidate: the tie rule
then holds whatever the tiling.
"""

from dataclasses import dataclass

import numpy as np

from nccli.metrics.backend import Backend
from nccli.metrics.formulas import Spectrum
from nccli.metrics.layer import ClassMeans, Classifier


@dataclass(frozen=True)
class Geometry:
    """The fixed quantities of pass 2 for one layer, on the backend's device.

    Everything is relative to ``origin`` (μ_G, so common offsets cost no
    precision): ``basis`` V (d × rank) spans Σ_B's kept eigen-directions;
    ``own_centres`` (K × d) holds μ_c − origin of the present classes, row
    ``column_of_class[c]``. NCC candidates: ``ncc_centres`` (means minus
    origin, the same array as ``own_centres`` when they coincide) of classes
    ``ncc_ids``, from this file's means or the reference file's
    (``--means-from``). Classifier candidates (None without a classifier):
    rows ``weight`` and ``bias`` (b + W·origin) of classes ``clf_ids``; class c
    has the logit of candidate ``clf_column[c]``, which ``clf_shared`` marks
    when another class has the same row. ``tile_classes`` fixes the tile
    width (tests); None sizes tiles by ``tile_bytes``.
    """

    origin: object
    basis: object
    own_centres: object
    column_of_class: object
    ncc_centres: object
    ncc_sqnorms: object
    ncc_ids: object
    weight: object = None
    bias: object = None
    clf_ids: object = None
    clf_column: object = None
    clf_shared: object = None
    tile_bytes: int = 32 * 2**20
    tile_classes: int | None = None

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    def _tiles(self, classes: int, rows: int) -> list[tuple[int, int]]:
        width = self.tile_classes or max(1, self.tile_bytes // (8 * max(rows, 1)))
        return [(start, min(start + width, classes)) for start in range(0, classes, width)]

    def nearest(self, xp: Backend, centred):
        """NCC decision of each row of ``centred`` (h_i − origin): argmin_c ‖μ_c − origin‖² − 2(h_i − origin)ᵀ(μ_c − origin),
        which is ‖h_i − μ_c‖² less a per-row constant."""
        rows = xp.arange(len(centred))
        best = best_column = None
        for start, stop in self._tiles(len(self.ncc_ids), len(centred)):
            distances = centred @ self.ncc_centres[start:stop].T
            distances *= -2.0
            distances += self.ncc_sqnorms[start:stop]
            column = xp.argmin(distances)
            value = distances[rows, column]
            if best is None:
                best, best_column = value, column + start
            else:
                better = value < best
                best, best_column = xp.where(better, value, best), xp.where(better, column + start, best_column)
        return self.ncc_ids[best_column]

    def classify(self, xp: Backend, centred, labels):
        """Classifier decision, own-class logit and best other logit of each row.

        Logits z_ic = w_cᵀ(h_i − origin) + (b_c + w_cᵀorigin) = w_cᵀh_i + b_c.
        The best other logit max_{c ≠ y_i} z_ic (−inf when K = 1) leaves out
        y_i's candidate unless another class shares its row (then it counts, as
        that class's logit).
        """
        rows = xp.arange(len(labels))
        columns = self.clf_column[labels]
        own = xp.zeros(len(labels))
        best = best_column = other = None
        for start, stop in self._tiles(len(self.clf_ids), len(labels)):
            logits = centred @ self.weight[start:stop].T
            logits += self.bias[start:stop]
            column = xp.argmax(logits)
            value = logits[rows, column]
            inside = xp.flatnonzero((columns >= start) & (columns < stop))
            local = columns[inside] - start
            own[inside] = logits[inside, local]
            alone = xp.flatnonzero(~self.clf_shared[columns[inside]])
            logits[inside[alone], local[alone]] = -np.inf
            tile_other = xp.row_max(logits)
            if best is None:
                best, best_column, other = value, column + start, tile_other
            else:
                better = value > best
                best, best_column = xp.where(better, value, best), xp.where(better, column + start, best_column)
                other = xp.where(tile_other > other, tile_other, other)
        return self.clf_ids[best_column], own, other


def distinct_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, group): ascending indices of the first row of each set of identical rows, and for
    each row the position in ``first`` of its set."""
    _, first, inverse = np.unique(matrix, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    return first[order], position[inverse.ravel()]


def build_geometry(
    xp: Backend,
    moments,
    spectrum: Spectrum,
    ncc_reference: ClassMeans,
    classifier: Classifier | None,
    tile_classes: int | None = None,
) -> Geometry:
    """Move what pass 2 needs onto the backend's device, relative to this layer's μ_G.

    NCC means go through ``with_ties_exact`` (coincident means become
    identical), then only the first class of identical means or classifier
    rows stays a candidate.
    """
    present = ClassMeans.of(moments)
    origin = present.means.mean(axis=0)
    own = present.means - origin
    own_centres = xp.constant(own)
    ncc = ncc_reference.with_ties_exact()
    first, _ = distinct_rows(ncc.means)
    shared = np.array_equal(ncc.ids[first], present.ids) and np.array_equal(ncc.means, present.means)
    ncc_centres = own if shared else ncc.means[first] - origin
    column_of_class = np.zeros(len(moments.count), dtype=np.int64)
    column_of_class[present.ids] = np.arange(len(present.ids))
    parts = {}
    if classifier is not None:
        rows = np.hstack([classifier.weight[present.ids], classifier.bias[present.ids, None]])
        first_row, group = distinct_rows(rows)
        weight = rows[first_row, :-1]
        clf_column = np.zeros(len(moments.count), dtype=np.int64)
        clf_column[present.ids] = group
        parts = dict(
            weight=xp.constant(weight),
            bias=xp.constant(rows[first_row, -1] + weight @ origin),
            clf_ids=xp.labels(present.ids[first_row]),
            clf_column=xp.labels(clf_column),
            clf_shared=xp.labels(np.bincount(group) > 1) > 0,
        )
    return Geometry(
        origin=xp.constant(origin),
        basis=xp.constant(spectrum.basis),
        own_centres=own_centres,
        column_of_class=xp.labels(column_of_class),
        ncc_centres=own_centres if shared else xp.constant(ncc_centres),
        ncc_sqnorms=xp.constant(np.einsum("ij,ij->i", ncc_centres, ncc_centres)),
        ncc_ids=xp.labels(ncc.ids[first]),
        tile_bytes=xp.tile_bytes,
        tile_classes=tile_classes,
        **parts,
    )


def geometry_bytes(num_classes: int, dim: int, classifier: bool, shared_ncc: bool) -> int:
    """Bytes of a :class:`Geometry` at C classes, all present: (C, d) centres (again when the NCC
    means are another file's), the classifier's rows, V of rank ≤ min(C − 1, d) and a few (C,) vectors."""
    rank = min(max(num_classes - 1, 0), dim)
    return 8 * (num_classes * dim * (1 + (not shared_ncc) + classifier) + dim * rank + 8 * num_classes)
