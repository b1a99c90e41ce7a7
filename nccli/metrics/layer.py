"""One layer's metrics from its final pass-1 and pass-2 states.

Decides which metrics are undefined (``docs/metrics.md``, "Degenerate cases"),
reports them as NaN and says why through ``warn``; never a crash, never a
silent 0.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nccli import schema
from nccli.metrics import classifier as clf
from nccli.metrics import formulas as f
from nccli.metrics.accumulators import ClassMoments, Decisions, present_rows
from nccli.metrics.inter import inter_class_cosines
from nccli.metrics.pair_stats import PairStats
from nccli.metrics.pairs import PairInputs, Tile
from nccli.metrics.record import SummaryRecord, class_table
from nccli.metrics.tiles import CentredMeans, etf_distance, tile_classes
from nccli.types import Classifier


@dataclass
class LayerMetrics:
    """Summary values (a record of every name of ``schema.METRIC_COLUMNS``) and the per-class table as columns.

    ``classes``: ``schema.COL_CLASS`` and every name of ``schema.CLASS_METRICS``,
    each a numpy array over present classes (NaN where undefined).
    """

    summary: SummaryRecord
    classes: dict[str, np.ndarray]
    sigma_b_rank: int = 0


def summarize_layer(
    moments: ClassMoments,
    spectrum: f.Spectrum,
    decisions: Decisions,
    classifier: Classifier | None,
    warn: Callable[[str], None],
    pairs: Callable[[Tile], None] | None = None,
    tile: int | None = None,
) -> LayerMetrics:
    """Every summary metric of ``docs/metrics.md`` for one layer (MSE columns left NaN), and the per-class table.

    Memory O(K·d) plus one tile: pair statistics are folded tile by tile
    (:mod:`nccli.metrics.pairs`, tiles of ``tile`` classes, default from
    ``tiles.TILE_BYTES``); each tile (:class:`pairs.Tile`, per-pair values of
    a block of classes) is handed to ``pairs`` if given, and dropped.
    """
    present = moments.class_means()
    ids, k = present.ids, len(present.ids)
    tile = tile or tile_classes()
    n = float(moments.count.sum())
    geometry = CentredMeans(present.means, f.COINCIDENCE_TOLERANCE * present.scale)
    centred, norms = geometry.centred, geometry.norms
    counts = present_rows(moments.count, ids)
    variances = present_rows(decisions.scatter, ids) / counts
    unit_sum, unit_count = present_rows(moments.unit_sum, ids), present_rows(moments.unit_count, ids)
    intra = f.intra_cosines(unit_sum, unit_count)
    weight = present_rows(classifier.weight, ids) if classifier is not None else None
    w_norms = np.linalg.norm(weight, axis=1) if classifier is not None else None
    with np.errstate(invalid="ignore", divide="ignore"):
        weight_unit = weight / w_norms[:, None] if classifier is not None else None  # NaN rows where w_c = 0

    all_coincide = k >= 2 and bool(geometry.at_centre.all())
    some_at_global_mean = k >= 2 and bool(geometry.at_centre.any())
    # M̂, the centred means scaled to unit norm (review eq. 5): nc2_etf and nc3_etf; undefined if one is 0.
    unit_centred = None if some_at_global_mean or k < 2 else centred / norms[:, None]

    stats = PairInputs(ids, geometry, variances, unit_sum, unit_count, weight_unit).fold(tile, pairs)
    inter_cos_max, inter_cos_mean = inter_class_cosines(unit_sum, unit_count, tile)

    tr_sw = float(decisions.scatter.sum() / n)
    tr_sb = float(np.sum(centred**2) / k)
    values = dict(
        tr_sw=tr_sw,
        tr_sb=tr_sb,
        nc1=np.nan if all_coincide else f.nc1(decisions.projected_sq, spectrum, n),
        nc1_tilde=np.nan if all_coincide or k < 2 else f.ratio(tr_sw, tr_sb),
        cdnv=stats.cdnv,
        nc1_dist_ratio=f.ratio(decisions.own_distance_sum, decisions.global_distance_sum),
        nc2_equinorm=np.nan if all_coincide or k < 2 else f.equinorm(norms),
        nc2_equiangular=stats.equiangular if not some_at_global_mean else np.nan,
        nc2_maxangle=stats.max_angle if not some_at_global_mean else np.nan,
        nc2_etf=np.nan if unit_centred is None else etf_distance(unit_centred, unit_centred, tile),
        nc2_tirer=np.nan if all_coincide or k < 2 else clf.tirer_distance(etf_distance(centred, centred, tile)),
        gnc2_dist_var=stats.gnc2[0] if not some_at_global_mean else np.nan,
        gnc2_log_var=stats.gnc2[1] if not some_at_global_mean else np.nan,
        ncc_accuracy=float(decisions.ncc_correct.sum() / n),
        intra_cos_min=f.strict_min(intra),
        intra_cos_mean=f.strict_mean(intra),
        inter_cos_max=inter_cos_max,
        inter_cos_mean=inter_cos_mean,
    )
    duality_cos = f.row_cosines(weight, centred) if classifier is not None else None
    if classifier is not None:
        outputs = len(classifier.weight)
        values.update(
            nc3_duality=np.nan if all_coincide or k < 2 else f.duality_distance(weight, centred),
            nc3_etf=np.nan if unit_centred is None else etf_distance(weight, unit_centred, tile),
            nc3_tirer=np.nan if all_coincide or k < 2 else clf.tirer_distance(etf_distance(weight, centred, tile)),
            clf_accuracy=float(decisions.clf_correct.sum() / n),
            nc4_ncc_mismatch=float(decisions.mismatch / n),
            # From the logits: over every output, so defined whenever the classifier has another one.
            margin_min=decisions.margin_min if outputs >= 2 else np.nan,
            margin_mean=decisions.margin_sum / n if outputs >= 2 else np.nan,
        )
        values.update(_classifier_values(moments, ids, weight, w_norms, duality_cos, decisions, stats))

    _warn_degenerate(warn, moments, ids, k, all_coincide, some_at_global_mean, stats, geometry.at_centre, classifier)
    if classifier is not None:
        _warn_zero_weights(warn, ids, w_norms)

    undefined = np.full(k, np.nan)
    classes = {
        schema.COL_CLASS: ids.astype(np.int64),
        "n": counts.astype(np.int64),
        "var": variances,
        "mean_norm": norms,
        "intra_cos": intra,
        "ncc_recall": decisions.ncc_correct[ids] / counts,
        "clf_recall": decisions.clf_correct[ids] / counts if classifier is not None else undefined,
        "duality_cos": duality_cos if classifier is not None else undefined,
        "w_norm": w_norms if classifier is not None else undefined,
    }
    return LayerMetrics(SummaryRecord.computed(values, classifier is not None), class_table(classes), spectrum.rank)


def _classifier_values(moments, ids, weight, w_norms, duality_cos, decisions, stats: PairStats) -> dict:
    """The classifier's own geometry (rows not centred), uniform duality, the bias-free normalised
    margin, the norm balance and the cross-entropies (``docs/metrics.md``)."""
    k, n = len(ids), float(moments.count.sum())
    sq_w = float(np.sum(w_norms**2))
    sq_h = clf.feature_sq_norm(
        present_rows(moments.count, ids), present_rows(moments.mean, ids), present_rows(decisions.scatter, ids)
    )
    return dict(
        w_equinorm=f.equinorm(w_norms) if k >= 2 else np.nan,
        w_equiangular=stats.w_equiangular,
        w_maxangle=stats.w_max_angle,
        nc3_uniform_duality=clf.uniform_duality(duality_cos),
        margin_normalized=clf.normalized_margin(decisions.free_margin_min, sq_w, sq_h, n, k),
        norm_balance=clf.norm_balance(sq_w, sq_h),
        ce_loss=decisions.ce_sum / n,
        ce_excess=clf.excess_cross_entropy(decisions.free_ce_sum / n, k, sq_w, sq_h, n),
    )


def _warn_degenerate(
    warn, moments, ids, k, all_coincide, some_at_global_mean, stats: PairStats, at_global_mean, classifier
):
    """One warning per reason, naming the classes (the first pairs, then a count) and the metrics reported as null."""
    clf = classifier is not None
    if k < 2:
        nulls = "nc1, nc1_tilde, cdnv, nc2_*, inter_cos_*" + (
            ", w_*, nc3_*, margin_normalized, ce_excess" if clf else ""
        )
        warn(f"only {k} class present (K < 2): {nulls} reported as null")
        return
    if all_coincide:
        nulls = "nc1, nc1_tilde, cdnv, nc2_*" + (", nc3_*" if clf else "")
        warn(f"all {k} class means coincide (tr(Σ_B) = 0): {nulls} reported as null")
        return
    if stats.coincident_count:
        listed = [f"{a}–{b}" for a, b in stats.coincident_first]
        warn(f"coincident class means for pairs {_listing(listed, stats.coincident_count)}: cdnv reported as null")
    if some_at_global_mean:
        classes = _listing([str(c) for c in ids[at_global_mean]])
        nulls = "nc2_equiangular, nc2_maxangle, nc2_etf" + (", nc3_etf" if clf else "")
        warn(f"class mean equals the global mean for classes {classes}: {nulls} reported as null")
    all_zero = ids[moments.unit_count[ids] == 0]
    if len(all_zero):
        warn(
            f"every feature vector is zero in classes {_listing([str(c) for c in all_zero])}: intra_cos_*, "
            "inter_cos_* reported as null"
        )
    zero_vectors = int(moments.count[ids].sum() - moments.unit_count[ids].sum())
    if zero_vectors and len(all_zero) < k:
        warn(f"{zero_vectors} all-zero feature vectors left out of the cosine view")


def _warn_zero_weights(warn, ids, w_norms) -> None:
    """A warning for classifier rows w_c = 0 of present classes, whose directions (cosines) do not exist."""
    zero = w_norms == 0
    if zero.all():
        warn(
            "the classifier W is zero (an untrained head: torchvision's ViTs and timm's Mixers start at W = 0): "
            "w_equinorm, w_equiangular, w_maxangle, nc3_* reported as null"
        )
    elif zero.any():
        classes = _listing([str(c) for c in ids[zero]])
        warn(
            f"classifier rows w_c = 0 for classes {classes}: w_equiangular, w_maxangle, nc3_uniform_duality "
            "reported as null"
        )


def _listing(items: list[str], total: int | None = None, limit: int = 10) -> str:
    """The first ``limit`` items, then how many more of ``total`` (default: all of ``items``)."""
    total = len(items) if total is None else total
    shown = ", ".join(items[:limit])
    return shown + (f" and {total - limit} more" if total > limit else "")
