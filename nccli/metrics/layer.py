"""One layer's metrics from its final pass-1 and pass-2 states.

Decides which metrics are undefined (``metrics.md``, "Degenerate cases"),
reports them as NaN and says why through ``warn``; never a crash, never a
silent 0.
"""

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from nccli import schema
from nccli.metrics import classifier as clf
from nccli.metrics import formulas as f
from nccli.metrics.accumulators import ClassMoments, Decisions, Geometry
from nccli.metrics.backend import Backend


@dataclass(frozen=True)
class Classifier:
    """The last linear layer: ``weight`` (C, d) and ``bias`` (C,), float64."""

    weight: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class ClassMeans:
    """Means of the present classes: ``ids`` ascending, ``means`` (K, d)."""

    ids: np.ndarray
    means: np.ndarray

    @classmethod
    def of(cls, moments: ClassMoments) -> "ClassMeans":
        ids = np.flatnonzero(moments.count > 0)
        return cls(ids, moments.mean[ids])

    @property
    def centred(self) -> np.ndarray:
        """M: rows μ_c − μ_G, μ_G the mean of class means."""
        return self.means - self.means.mean(axis=0)

    @property
    def scale(self) -> float:
        """Largest ‖μ_c‖: the size of rounding errors in differences of means."""
        return float(np.linalg.norm(self.means, axis=1).max()) if len(self.ids) else 0.0

    def with_ties_exact(self) -> "ClassMeans":
        """Coincident means replaced by the lowest id's, so NCC ties go to the lowest class id exactly."""
        close = np.sqrt(f.pairwise_sq_distances(self.means)) <= f.COINCIDENCE_TOLERANCE * self.scale
        representative = np.argmax(close, axis=1)  # first (lowest-id) class each mean coincides with
        return ClassMeans(self.ids, self.means[representative])


@dataclass
class LayerMetrics:
    """Summary values (every name of ``schema.METRIC_COLUMNS``), per-class and per-pair rows."""

    summary: dict[str, float]
    classes: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    sigma_b_rank: int = 0


def build_geometry(
    xp: Backend,
    moments: ClassMoments,
    spectrum: f.Spectrum,
    ncc_reference: ClassMeans,
    classifier: Classifier | None,
) -> Geometry:
    """Move what pass 2 needs onto the backend's device, relative to this layer's μ_G."""
    present = ClassMeans.of(moments)
    ncc_reference = ncc_reference.with_ties_exact()
    origin = present.means.mean(axis=0)
    ncc_centres = ncc_reference.means - origin
    column_of_class = np.zeros(len(moments.count), dtype=np.int64)
    column_of_class[present.ids] = np.arange(len(present.ids))
    blocks = [spectrum.basis, ncc_centres.T]
    bias = free_bias = None
    if classifier is not None:
        weight = classifier.weight[present.ids]
        blocks.append(weight.T)
        free_bias = weight @ origin
        bias = xp.constant(classifier.bias[present.ids] + free_bias)
        free_bias = xp.constant(free_bias)
    return Geometry(
        origin=xp.constant(origin),
        stacked=xp.constant(np.hstack(blocks)),
        rank=spectrum.rank,
        projected_means=xp.constant((moments.mean - origin) @ spectrum.basis),
        ncc_count=len(ncc_reference.ids),
        ncc_sqnorms=xp.constant(np.einsum("ij,ij->i", ncc_centres, ncc_centres)),
        ncc_ids=xp.labels(ncc_reference.ids),
        present_ids=xp.labels(present.ids),
        column_of_class=xp.labels(column_of_class),
        centres=xp.constant(moments.mean - origin),
        bias=bias,
        free_bias=free_bias,
    )


def summarize_layer(
    moments: ClassMoments,
    spectrum: f.Spectrum,
    decisions: Decisions,
    classifier: Classifier | None,
    warn: Callable[[str], None],
) -> LayerMetrics:
    """Every summary metric of ``metrics.md`` for one layer (MSE columns left NaN)."""
    present = ClassMeans.of(moments)
    ids, k = present.ids, len(present.ids)
    n = float(moments.count.sum())
    centred = present.centred
    tolerance = f.COINCIDENCE_TOLERANCE * present.scale
    counts = moments.count[ids]
    variances = moments.scatter[ids] / counts
    norms = np.linalg.norm(centred, axis=1)
    sq_distances = f.pairwise_sq_distances(present.means)
    coincident = np.sqrt(sq_distances) <= tolerance
    np.fill_diagonal(coincident, False)
    mean_cosines = f.cosine_matrix(centred)
    np.fill_diagonal(mean_cosines, 1.0)
    intra = f.intra_cosines(moments.unit_sum[ids], moments.unit_count[ids])
    inter = f.inter_cosines(moments.unit_sum[ids], moments.unit_count[ids])
    weight = classifier.weight[ids] if classifier is not None else None

    all_coincide = k >= 2 and norms.max() <= tolerance
    some_at_global_mean = k >= 2 and bool((norms <= tolerance).any())
    if some_at_global_mean:
        mean_cosines[norms <= tolerance, :] = np.nan
        mean_cosines[:, norms <= tolerance] = np.nan

    tr_sw = float(moments.scatter.sum() / n)
    tr_sb = float(np.sum(centred**2) / k)
    pair_mean_cos = f.pair_values(mean_cosines)
    gnc2_dist_var = gnc2_log_var = np.nan
    if not some_at_global_mean and k >= 2:
        unit = centred / norms[:, None]
        gnc2_dist_var, gnc2_log_var = clf.hyperspherical_variances(np.sqrt(f.pair_values(f.pairwise_sq_distances(unit))))
    values = dict.fromkeys(schema.METRIC_COLUMNS, np.nan)
    values.update(
        tr_sw=tr_sw,
        tr_sb=tr_sb,
        nc1=np.nan if all_coincide else f.nc1(decisions.projected_sq, spectrum, n),
        nc1_tilde=np.nan if all_coincide or k < 2 else f.ratio(tr_sw, tr_sb),
        cdnv=f.strict_mean(f.pair_values(f.cdnv_matrix(variances, sq_distances, coincident))),
        nc1_dist_ratio=f.ratio(decisions.own_distance_sum, decisions.global_distance_sum),
        nc2_equinorm=np.nan if all_coincide or k < 2 else f.equinorm(norms),
        nc2_equiangular=f.equiangularity(pair_mean_cos) if not some_at_global_mean else np.nan,
        nc2_maxangle=f.max_angle(pair_mean_cos, k) if not some_at_global_mean else np.nan,
        nc2_etf=f.etf_distance(mean_cosines) if not some_at_global_mean else np.nan,
        nc2_tirer=np.nan if all_coincide or k < 2 else clf.tirer_distance(f.etf_distance(centred @ centred.T)),
        gnc2_dist_var=gnc2_dist_var,
        gnc2_log_var=gnc2_log_var,
        ncc_accuracy=float(decisions.ncc_correct.sum() / n),
        intra_cos_min=f.strict_min(intra),
        intra_cos_mean=f.strict_mean(intra),
        inter_cos_max=f.strict_max(f.pair_values(inter)),
        inter_cos_mean=f.strict_mean(f.pair_values(inter)),
    )
    duality_cos = f.row_cosines(weight, centred) if classifier is not None else None
    w_norms = np.linalg.norm(weight, axis=1) if classifier is not None else None
    w_cosines = f.cosine_matrix(weight) if classifier is not None else None
    if classifier is not None:
        values.update(_classifier_values(moments, ids, weight, centred, decisions, duality_cos, w_norms, w_cosines, all_coincide))
        values.update(
            nc3_duality=np.nan if all_coincide or k < 2 else f.duality_distance(weight, centred),
            nc3_etf=np.nan if all_coincide else f.etf_distance(weight @ centred.T),
            clf_accuracy=float(decisions.clf_correct.sum() / n),
            nc4_ncc_mismatch=float(decisions.mismatch / n),
            margin_min=decisions.margin_min if k >= 2 else np.nan,
            margin_mean=decisions.margin_sum / n if k >= 2 else np.nan,
        )

    _warn_degenerate(
        warn, moments, ids, k, all_coincide, some_at_global_mean, coincident, norms <= tolerance, classifier
    )
    if classifier is not None and k >= 2 and counts.min() != counts.max():
        warn(
            f"class counts differ ({int(counts.min())} to {int(counts.max())}): margin_normalized uses n = N/K, "
            "and its bound 1 assumes balanced classes"
        )

    classes = []
    for row, class_id in enumerate(ids):
        classes.append(
            {
                schema.COL_CLASS: int(class_id),
                "n": int(counts[row]),
                "var": float(variances[row]),
                "mean_norm": float(norms[row]),
                "intra_cos": float(intra[row]),
                "ncc_recall": float(decisions.ncc_correct[class_id] / counts[row]),
                "clf_recall": float(decisions.clf_correct[class_id] / counts[row]) if classifier else np.nan,
                "duality_cos": float(duality_cos[row]) if classifier is not None else np.nan,
                "w_norm": float(w_norms[row]) if classifier is not None else np.nan,
            }
        )
    cdnv = f.cdnv_matrix(variances, sq_distances, coincident)
    pairs = []
    for a, b in zip(*np.triu_indices(k, k=1)):
        pairs.append(
            {
                schema.COL_CLASS: int(ids[a]),
                schema.COL_CLASS_B: int(ids[b]),
                "cdnv": float(cdnv[a, b]),
                "mean_cos": float(mean_cosines[a, b]),
                "inter_cos": float(inter[a, b]),
                "mean_dist": float(np.sqrt(sq_distances[a, b])),
                "w_cos": float(w_cosines[a, b]) if classifier is not None else np.nan,
            }
        )
    return LayerMetrics(values, classes, pairs, spectrum.rank)


def _classifier_values(moments, ids, weight, centred, decisions, duality_cos, w_norms, w_cosines, all_coincide) -> dict:
    """The classifier's geometry, Tirer's NC3, uniform duality, norms, margins and losses (``metrics.md``)."""
    k, n = len(ids), float(moments.count.sum())
    pair_w_cos = f.pair_values(w_cosines)
    sq_w = float(np.sum(weight**2))
    sq_h = clf.feature_sq_norm(moments.count[ids], moments.mean[ids], moments.scatter[ids])
    return dict(
        w_equinorm=f.equinorm(w_norms) if k >= 2 else np.nan,
        w_equiangular=f.equiangularity(pair_w_cos),
        w_maxangle=f.max_angle(pair_w_cos, k),
        nc3_tirer=np.nan if all_coincide or k < 2 else clf.tirer_distance(f.etf_distance(weight @ centred.T)),
        nc3_uniform_duality=clf.uniform_duality(duality_cos),
        margin_normalized=clf.normalized_margin(decisions.free_margin_min, sq_w, sq_h, n, k),
        norm_balance=clf.norm_balance(sq_w, sq_h),
        ce_loss=decisions.ce_sum / n,
        ce_excess=clf.excess_cross_entropy(decisions.free_ce_sum / n, k, sq_w, sq_h, n),
    )


def _warn_degenerate(warn, moments, ids, k, all_coincide, some_at_global_mean, coincident, at_global_mean, classifier):
    """One warning per reason, naming the classes and the metrics reported as null."""
    clf = classifier is not None
    if k < 2:
        nulls = "nc1, nc1_tilde, cdnv, nc2_*, inter_cos_*" + (", nc3_*, margin_*" if clf else "")
        warn(f"only {k} class present (K < 2): {nulls} reported as null")
        return
    if all_coincide:
        nulls = "nc1, nc1_tilde, cdnv, nc2_*" + (", nc3_*" if clf else "")
        warn(f"all {k} class means coincide (tr(Σ_B) = 0): {nulls} reported as null")
        return
    if coincident.any():
        pairs = [f"{ids[a]}–{ids[b]}" for a, b in zip(*np.nonzero(np.triu(coincident)))]
        warn(f"coincident class means for pairs {_listing(pairs)}: cdnv reported as null")
    if some_at_global_mean:
        classes = _listing([str(c) for c in ids[at_global_mean]])
        warn(f"class mean equals the global mean for classes {classes}: nc2_equiangular, nc2_maxangle, nc2_etf reported as null")
    all_zero = ids[moments.unit_count[ids] == 0]
    if len(all_zero):
        warn(f"every feature vector is zero in classes {_listing([str(c) for c in all_zero])}: intra_cos_*, inter_cos_* reported as null")
    zero_vectors = int(moments.count[ids].sum() - moments.unit_count[ids].sum())
    if zero_vectors and len(all_zero) < k:
        warn(f"{zero_vectors} all-zero feature vectors left out of the cosine view")


def _listing(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
