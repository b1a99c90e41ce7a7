"""What pass 2 needs from pass 1, and its products with a block of rows, tile by tile over classes.

Pass 2 compares every row with every class: NCC distances ‖h_i − μ_c‖² and
classifier logits w_cᵀh_i + b_c. At K = 100 000 a block × K product would
not fit in memory, so both run over tiles of classes whose block × tile
product stays within the backend's ``tile_bytes``, keeping per row a running
argmin (NCC), argmax (classifier), the own-class logit and the best other
logit. Later tiles replace the running best only when strictly better, and
within a tile argmin/argmax return the first extreme: equal values go to the
lowest class id whatever the tiling (the rule of ``metrics.md``).
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
    ``column_of_class[c]``; ``ncc_centres`` (K_ncc × d) the means the NCC rule
    uses (this file's, or the reference file's with ``--means-from``; the same
    array when they coincide), of classes ``ncc_ids``; ``weight`` (K × d) the
    classifier's rows of present classes (``present_ids``) and ``bias``
    b + W·origin, or None without a classifier. ``tile_classes`` fixes the
    tile width (tests); None sizes tiles by the backend's ``tile_bytes``.
    """

    origin: object
    basis: object
    own_centres: object
    column_of_class: object
    ncc_centres: object
    ncc_sqnorms: object
    ncc_ids: object
    present_ids: object
    weight: object = None
    bias: object = None
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
        The best other logit is max_{c ≠ y_i} z_ic (−inf when K = 1).
        """
        rows = xp.arange(len(labels))
        columns = self.column_of_class[labels]
        own = xp.zeros(len(labels))
        best = best_column = other = None
        for start, stop in self._tiles(len(self.present_ids), len(labels)):
            logits = centred @ self.weight[start:stop].T
            logits += self.bias[start:stop]
            column = xp.argmax(logits)
            value = logits[rows, column]
            inside = xp.flatnonzero((columns >= start) & (columns < stop))
            local = columns[inside] - start
            own[inside] = logits[inside, local]
            logits[inside, local] = -np.inf
            tile_other = xp.row_max(logits)
            if best is None:
                best, best_column, other = value, column + start, tile_other
            else:
                better = value > best
                best, best_column = xp.where(better, value, best), xp.where(better, column + start, best_column)
                other = xp.where(tile_other > other, tile_other, other)
        return self.present_ids[best_column], own, other


def build_geometry(
    xp: Backend,
    moments,
    spectrum: Spectrum,
    ncc_reference: ClassMeans,
    classifier: Classifier | None,
    tile_classes: int | None = None,
) -> Geometry:
    """Move what pass 2 needs onto the backend's device, relative to this layer's μ_G.

    NCC means go through ``with_ties_exact`` so that coincident means give
    bit-identical distances and the tie rule decides.
    """
    present = ClassMeans.of(moments)
    ncc_reference = ncc_reference.with_ties_exact()
    origin = present.means.mean(axis=0)
    own = present.means - origin
    own_centres = xp.constant(own)
    shared = np.array_equal(ncc_reference.ids, present.ids) and np.array_equal(ncc_reference.means, present.means)
    ncc = own if shared else ncc_reference.means - origin
    column_of_class = np.zeros(len(moments.count), dtype=np.int64)
    column_of_class[present.ids] = np.arange(len(present.ids))
    weight = bias = None
    if classifier is not None:
        host_weight = classifier.weight[present.ids]
        weight = xp.constant(host_weight)
        bias = xp.constant(classifier.bias[present.ids] + host_weight @ origin)
    return Geometry(
        origin=xp.constant(origin),
        basis=xp.constant(spectrum.basis),
        own_centres=own_centres,
        column_of_class=xp.labels(column_of_class),
        ncc_centres=own_centres if shared else xp.constant(ncc),
        ncc_sqnorms=xp.constant(np.einsum("ij,ij->i", ncc, ncc)),
        ncc_ids=xp.labels(ncc_reference.ids),
        present_ids=xp.labels(present.ids),
        weight=weight,
        bias=bias,
        tile_bytes=xp.tile_bytes,
        tile_classes=tile_classes,
    )


def geometry_bytes(num_classes: int, dim: int, classifier: bool, shared_ncc: bool) -> int:
    """Bytes of a :class:`Geometry` at C classes, all present: (C, d) centres (again when the NCC
    means are another file's), the classifier's rows, V of rank ≤ min(C − 1, d) and a few (C,) vectors."""
    rank = min(max(num_classes - 1, 0), dim)
    return 8 * (num_classes * dim * (1 + (not shared_ncc) + classifier) + dim * rank + 6 * num_classes)
