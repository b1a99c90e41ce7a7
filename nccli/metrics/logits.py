"""The classifier's side of pass 2, from one float32 screen of the logits.

Per row: the decision, the own-class logit, the best other logit and the
cross-entropy, for z = Wh + b and for the bias-free Wh (seed ``002_*``),
exact in float64. Each tile of classes is multiplied once in float32 (within
δ_i of the exact logits, :meth:`Geometry.slack`); then, per row:

* every class whose float32 logit is within ``log K + 40 + 4δ_i`` of the
  row's float32 best other logit so far is a candidate, recomputed in
  float64. The exact best other is always among them (it is within 2δ_i),
  and the classes left out weigh together less than e^{−40} of the others'
  sum in the loss: below float64 rounding;
* a row whose tile holds many candidates (real logits spread over tens of
  nats, not thousands) is cheaper as one float64 product of its rows with the
  tile: every logit of it exact for the loss; its best other is still decided
  from explicit dot products (the entries within the product's rounding of its
  largest), as the candidates are, so that no decision or margin depends on the
  block's shape. When most rows of a block's first tile are
  like that, the rest of the block skips the float32 screen.

The own class's column is left out of the tiles; its logit (one float64 dot
product per row) enters the loss once, ``m`` times for a row shared by m
classes, and the best other logit when another class shares its row. Ties
go to the lowest class id: the lowest column within a tile, strict updates
across ascending tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nccli.metrics.backend import Backend
from nccli.types import Array

# A row whose tile has more than 1/DENSE_SHARE of its classes as candidates gets a float64 product.
DENSE_SHARE = 32
# Classes left out of a row's loss weigh less than e^-NEGLIGIBLE of the sum over its other classes.
NEGLIGIBLE = 40.0


@dataclass(frozen=True)
class ClassifierRows:
    """Per row of a block: the decision (class id), own and best other logit, cross-entropy; ``free_*``
    the same of the bias-free logits."""

    prediction: Array
    own: Array
    other: Array
    ce: Array
    free_own: Array
    free_other: Array
    free_ce: Array


class RunningLogSumExp:
    """Per row, log Σ_c m_c exp(z_c) over the classes, folded a tile or a set of terms at a time.

    Kept as (``top``, ``rest``): top = max_c z_c and rest = Σ_c m_c exp(z_c − top) − 1,
    the top term's exact 1 left out, so that near collapse, where the loss is
    (K−1)e^{−gap}-small, ``log1p(rest)`` keeps it where log(1 + tiny) would not.
    ``m_c`` (default 1) counts classes that share one logit column. Merging is
    exact up to rounding and does not depend on how the classes were cut.
    """

    def __init__(self, xp, rows: int):
        self.xp = xp
        self.top = xp.full(rows, -np.inf)
        self.rest = xp.zeros(rows)

    def add(self, logits, multiplicity=None, rows=None):
        """Fold a (rows × classes) tile of logits (−inf: left out) for ``rows`` (default all);
        ``multiplicity`` (classes,) or None. Returns each row's largest logit."""
        xp = self.xp
        everyone = xp.arange(logits.shape[0])
        column = xp.argmax(logits)
        top = logits[everyone, column]
        rows = everyone if rows is None else rows
        finite = xp.flatnonzero(top > -np.inf)  # a row whose every logit is left out adds nothing
        if len(finite) == len(top):  # the usual case: no copy of the tile
            kept, tile, tile_top, tile_column = everyone, logits, top, column
        else:
            kept = finite
            tile, tile_top, tile_column = logits[kept], top[kept], column[kept]
        scaled = xp.exp(tile - tile_top[:, None])
        if multiplicity is not None:
            scaled = scaled * multiplicity[None, :]
        scaled[xp.arange(len(kept)), tile_column] -= 1.0  # the top entry is exactly m·1: m − 1 exactly
        self._merge(rows[kept], tile_top, scaled.sum(1))
        return top

    def add_terms(self, rows, values, multiplicity) -> None:
        """Fold single terms m·exp(value) of the given rows (repeats allowed)."""
        xp = self.xp
        if not len(rows):
            return
        first = xp.first_per_row(rows, -values, xp.arange(len(rows)))  # each row's largest term
        top = self.xp.full(len(self.top), -np.inf)
        top[rows[first]] = values[first]
        scaled = xp.exp(values - top[rows]) * multiplicity
        scaled[first] -= 1.0
        rest = xp.bincount(rows, len(self.top), weights=scaled)
        self._merge(rows[first], top[rows[first]], rest[rows[first]])

    def _merge(self, rows, top, rest) -> None:
        old_top, old_rest = self.top[rows], self.rest[rows]
        higher = top > old_top
        with np.errstate(over="ignore", invalid="ignore"):  # the branch where() drops may overflow
            self.rest[rows] = self.xp.where(
                higher,
                (old_rest + 1.0) * self.xp.exp(old_top - top) + rest,
                old_rest + (rest + 1.0) * self.xp.exp(top - old_top),
            )
        self.top[rows] = self.xp.where(higher, top, old_top)

    def cross_entropy(self, own):
        """Per row, log Σ_c m_c exp(z_c) − z_own = log1p(rest) + (top − own)."""
        return self.xp.log1p(self.rest) + (self.top - own)


class _View:
    """One kind of logit (with or without the bias) of one block: its offsets a_c (z = w_cᵀ(h − origin) + a_c),
    the row's own logit, the float32 screen's running best other, the loss and the exact best other so far."""

    def __init__(self, xp: Backend, offsets, added, own, slack, product_slack, classes: int):
        self.xp, self.offsets, self.own, self.product_slack = xp, offsets, own, product_slack
        self.added = None if added is None else xp.single(added)  # float32, added to the screen's product
        self.screen = xp.full(len(own), -np.inf)
        # Candidates: within this of the best other; widened by 2u(|best| + margin) for the float32 cast.
        self.margin = slack + (math.log(classes) + NEGLIGIBLE)
        self.loss = RunningLogSumExp(xp, len(own))
        self.best = xp.full(len(own), -np.inf)
        self.best_column = xp.labels(np.zeros(len(own), dtype=np.int64))

    def threshold(self, unit: float):
        """Per row, in float32: candidates are the tile entries at or above it (none before any entry)."""
        xp = self.xp
        low = self.screen - self.margin * (1.0 + 2.0 * unit) - 2.0 * unit * abs(self.screen)
        return xp.single(xp.where(self.screen > -np.inf, low, np.inf))

    def raise_screen(self, rows, top) -> None:
        """The running best other logit of ``rows`` (or every row, ``rows`` None) raised to ``top`` where higher."""
        rows = slice(None) if rows is None else rows
        self.screen[rows] = self.xp.where(top > self.screen[rows], top, self.screen[rows])

    def update_best(self, rows, columns, values) -> None:
        """Keep, per row, the largest exact value and its lowest column; strictly larger replaces."""
        xp = self.xp
        if not len(rows):
            return
        first = xp.first_per_row(rows, -values, columns)
        rows, columns, values = rows[first], columns[first], values[first]
        better = xp.flatnonzero(values > self.best[rows])
        self.best[rows[better]], self.best_column[rows[better]] = values[better], columns[better]

    def result(self, geometry, own_column, shared):
        """(prediction, own, best other, cross-entropy) per row, the shared own column counted as an other class."""
        xp = self.xp
        multiplicity = geometry.multiplicity[own_column]
        self.loss.add_terms(xp.arange(len(self.own)), self.own, multiplicity)
        use_own = shared & ((self.own > self.best) | ((self.own == self.best) & (own_column < self.best_column)))
        other = xp.where(use_own, self.own, self.best)
        other_column = xp.where(use_own, own_column, self.best_column)
        wins = (self.own > other) | ((self.own == other) & (own_column <= other_column))
        prediction = geometry.clf_ids[xp.where(wins, own_column, other_column)]
        return prediction, self.own, other, self.loss.cross_entropy(self.own)


def classify(geometry, xp: Backend, block, labels) -> ClassifierRows:
    """Decisions, own and best other logits and cross-entropies of a block's rows, with and without the bias."""
    g = geometry
    n = len(block.centred)
    own_column = g.clf_column[labels]
    dot = xp.rowdot(block.centred, g.weight[own_column])
    classes = int(xp.scalar(g.multiplicity.sum()))
    views = []
    bias_max = xp.scalar(abs(g.bias).max())  # the screen's product holds the first view's offsets
    for offsets in (g.bias,) if g.bias_is_zero else (g.bias, g.free_bias):
        added = None if offsets is g.bias else offsets - g.bias
        added_max = 0.0 if added is None else xp.scalar(abs(added).max())
        slack = g.slack(block, g.weight_norm_max, bias_max, added_max)
        product_slack = g.slack(block, g.weight_norm_max, 0.0, xp.scalar(abs(offsets).max()), unit=2.0**-53)
        views.append(_View(xp, offsets, added, dot + offsets[own_column], slack, product_slack, classes))
    screened = True
    scratch = [xp.scratch(n * g.tile_width(n)) for _ in views]
    quarter = max(1, n // 4)  # float64 products in quarters of the block
    for start, stop in g.tiles(len(g.clf_ids), n):
        inside = xp.flatnonzero((own_column >= start) & (own_column < stop))
        own_at = own_column[inside] - start
        if screened:
            dense = _screen(g, xp, block, views, start, stop, inside, own_at, scratch)
            screened = start > 0 or 2 * len(dense) <= n
        else:
            dense = xp.arange(n)
        for part in range(0, len(dense), quarter):
            _exact_tile(g, xp, block, views, start, stop, dense[part : part + quarter], inside, own_at)
    shared = g.clf_shared[own_column]
    with_bias = views[0].result(g, own_column, shared)
    free = views[-1].result(g, own_column, shared) if len(views) > 1 else with_bias
    return ClassifierRows(*with_bias, *free[1:])


def _screen(g, xp: Backend, block, views, start: int, stop: int, inside, own_at, scratch):
    """One tile in float32: fold every view's candidates of the rows with few of them, exact in float64;
    return the rows with many (they get a float64 product of the whole tile)."""
    n, width = len(block.centred), stop - start
    product = xp.product_into(block.single, g.weight_single[start:stop], scratch[0])
    masks = []
    for view in views:
        values = product if view.added is None else xp.add_into(product, view.added[None, start:stop], scratch[1])
        values[inside, own_at] = -np.inf
        view.raise_screen(None, xp.wide(xp.row_max(values)))
        masks.append(values >= view.threshold(g.single_unit)[:, None])
    rows, columns = xp.pairs(masks[0] if len(masks) == 1 else masks[0] | masks[1])
    columns = columns + start
    dense = xp.flatnonzero(xp.bincount(rows, n) * DENSE_SHARE > width)
    if len(dense):
        is_dense = xp.bincount(dense, n) > 0
        keep = xp.flatnonzero(~is_dense[rows])
        rows, columns = rows[keep], columns[keep]
    exact = g.exact_products(xp, block, rows, columns)
    for view in views:
        values = exact + view.offsets[columns]
        view.loss.add_terms(rows, values, g.multiplicity[columns])
        view.update_best(rows, columns, values)
    return dense


def _exact_tile(g, xp: Backend, block, views, start: int, stop: int, rows, inside, own_at) -> None:
    """Every logit of ``rows`` in one tile, in float64: folded into each view's loss and best other."""
    if not len(rows):
        return
    products = block.centred[rows] @ g.weight[start:stop].T
    position = xp.labels(np.full(len(block.centred), -1, dtype=np.int64))
    position[rows] = xp.arange(len(rows))
    mine = xp.flatnonzero(position[inside] >= 0)
    at_rows = position[inside[mine]]
    multiplicity = g.multiplicity[start:stop]
    multiplicity = None if xp.scalar(multiplicity.max()) == 1 else multiplicity  # one class per column: no product
    for view in views:
        logits = products + view.offsets[None, start:stop]
        logits[at_rows, own_at[mine]] = -np.inf
        top = view.loss.add(logits, multiplicity, rows)
        view.raise_screen(rows, top)
        # The best other from the same explicit dot products as the candidates of _screen: within the
        # product's rounding of its largest entry, so that decisions never depend on the block's shape.
        near = xp.where(top > -np.inf, top - view.product_slack[rows], np.inf)
        at, columns = xp.pairs(logits >= near[:, None])
        columns = columns + start
        exact = g.exact_products(xp, block, rows[at], columns) + view.offsets[columns]
        view.update_best(rows[at], columns, exact)
