"""A deliberately naive float64 numpy oracle for every metric of ``docs/metrics.md``.

This module is the *independent* test oracle for ``nccli analyze``: it is
written from ``docs/metrics.md`` alone, works on whole in-memory
matrices (full d×d covariances, O(N²) double loops for the cosine view,
explicit argmin/argmax loops) and is meant to be slow and obviously right,
never streaming. Use it only on small data (N up to a few hundred, d up to a
few hundred).

Conventions (the numbers another tool may choose differently)
-------------------------------------------------------------
* Present classes: the sorted label values that occur; ``K`` = their number.
  Absent classes are ignored everywhere except in the MSE family, where the
  extended classifier ``W̃ = [W, b]`` keeps all ``num_classes`` rows.
* ``μ_G = (1/K) Σ_c μ_c`` (mean of class means), ``Σ_W`` normalised by N,
  ``Σ_B`` by K, standard deviations are population ones (ddof 0).
* ``nc1 = (1/K) tr(Σ_W Σ_B⁺)`` with ``Σ_B⁺ = np.linalg.pinv(Σ_B,
  rcond=PINV_RCOND, hermitian=True)``: eigenvalues whose modulus is
  ``≤ 1e-10 × the largest`` are treated as zero. ``sigma_b_rank`` is the
  number of kept eigenvalues (≤ K−1).
* "Zero" centred means and coincident means: floating-point centring of
  exactly equal means leaves ~1e-17 residue, so a centred mean
  ``μ_c − μ_G`` (or a difference ``μ_c − μ_c'``) counts as zero when its norm
  is ``≤ COINCIDENT_RTOL × max_c ‖μ_c‖`` (1e-12 relative). When every centred
  mean is zero the class means *coincide* and M is set to exactly 0.
* The NCC argmin runs over the classes that have a mean (present classes,
  or the ``ncc_means`` given); what comes from the logits (the classifier's
  argmax, every margin's max over c ≠ y_i, both cross-entropies) over **all
  num_classes outputs**, as the network decides; W's geometry against the
  means over present classes. Ties to the lowest class id (strict ``<``/``>``
  while scanning classes in increasing id).
* Cosine view: a feature vector that is exactly zero (all entries 0) is left
  out of the cosine view only; ``intra_c`` then uses the ``n'_c`` non-zero
  vectors of class c: ``(1/n'_c²) Σ_{i,j} cos(h_i, h_j)``, i = j included.
* MSE: ``W̃_LS = B A⁻¹`` by ``np.linalg.solve``; when λ = 0 and A is
  singular (a dead feature, N ≤ d) the minimum-norm least-squares solution
  ``B A⁺`` (pinv, relative cut-off ``MSE_RCOND``) is used instead, for which
  both identities still hold.

Degenerate cases (NaN, never 0, never an exception)
---------------------------------------------------
A summary over classes or pairs is NaN as soon as one of its terms is
undefined (NaN propagates; there is no nan-mean). Precisely:

=====================  ======================================================
metric                 NaN when
=====================  ======================================================
tr_sw, tr_sb           N = 0 only (K = 1 gives tr_sb = 0; coincident means 0)
nc1, nc1_tilde         K < 2, or the class means coincide (Σ_B = 0)
cdnv                   K < 2, or some pair has coincident means
nc2_equinorm           K < 2, or the class means coincide (mean norm 0)
nc2_equiangular,       K < 2, or some centred mean μ_c − μ_G is zero
nc2_maxangle, nc2_etf  (its direction is undefined; includes coincidence)
nc3_duality            no weight, K < 2, means coincide, or W (present rows) = 0
nc3_etf                no weight, K < 2, some centred mean is zero (M̂
                       undefined), or W M̂ᵀ = 0
ncc_accuracy           N = 0 only (K = 1 gives 1.0; coincident means give
                       the lowest class id, by the tie rule)
clf_accuracy,          no weight, or N = 0 (K = 1 gives 1.0 and 0.0)
nc4_ncc_mismatch
margin_min/mean        no weight, or num_classes < 2 (no competing output)
intra_cos_min/mean     some present class has no non-zero feature vector
inter_cos_max/mean     K < 2, or some present class has no non-zero vector
mse_*                  mse=False, no weight, or N = 0
=====================  ======================================================

Per class: ``var``, ``mean_norm``, ``n``, ``ncc_recall`` always defined;
``intra_cos`` NaN when the class has no non-zero vector; ``clf_recall`` NaN
without a weight; ``duality_cos`` NaN without a weight or when ``w_c = 0`` or
``μ_c − μ_G`` is zero. Per pair: ``mean_dist`` always defined; ``cdnv`` NaN
when the pair's means coincide; ``mean_cos`` NaN when either centred mean is
zero; ``inter_cos`` NaN when either class has no non-zero vector.

A class whose every feature vector is zero is a legitimate point at the
origin for every non-cosine metric (only the cosine view is undefined).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import reference_more as more

from nccli import schema

PINV_RCOND = 1e-10
COINCIDENT_RTOL = 1e-12
MSE_RCOND = 1e-12
NAN = float("nan")


@dataclass(frozen=True)
class Reference:
    """What the oracle reports for one (features, labels) layer.

    ``summary`` has every name of ``schema.METRIC_COLUMNS``; ``per_class`` is
    keyed by present class id with the names of ``schema.CLASS_METRICS``;
    ``per_pair`` by ``(c, c')`` with ``c < c'`` and the names of
    ``schema.PAIR_METRICS``. ``undefined`` maps each NaN summary metric to the
    reason (for reading failures, not part of the contract).
    """

    summary: dict[str, float]
    per_class: dict[int, dict[str, float]]
    per_pair: dict[tuple[int, int], dict[str, float]]
    sigma_b_rank: int
    n_samples: int
    n_classes: int
    dim: int
    undefined: dict[str, str] = field(default_factory=dict)


@dataclass
class _ClassStats:
    """Per-class sums for one layer, the shared input of every family."""

    classes: list[int]  # present class ids, increasing
    counts: dict[int, int]
    means: dict[int, np.ndarray]  # μ_c
    mu_g: np.ndarray  # μ_G = (1/K) Σ_c μ_c
    centred: dict[int, np.ndarray]  # μ_c − μ_G (exactly 0 when means coincide)
    zero_centred: dict[int, bool]  # ‖μ_c − μ_G‖ ≤ tol
    tol: float  # COINCIDENT_RTOL × max_c ‖μ_c‖
    coincident: bool  # every centred mean is zero

    @property
    def K(self) -> int:
        return len(self.classes)

    def pairs(self) -> list[tuple[int, int]]:
        return [(a, b) for i, a in enumerate(self.classes) for b in self.classes[i + 1 :]]

    def M(self) -> np.ndarray:
        """Centred means as a K×d matrix, rows in class-id order."""
        return np.array([self.centred[c] for c in self.classes])


# --------------------------------------------------------------------------- entry point


def reference_metrics(
    features,
    labels,
    weight=None,
    bias=None,
    num_classes: int | None = None,
    ncc_means=None,
    mse: bool = False,
    weight_decay: float = 0.0,
    snr: bool = False,
    ood_features=None,
) -> Reference:
    """Every metric of ``docs/metrics.md`` for one layer, computed naively in float64.

    ``features`` (N, d) any float dtype (cast to float64); ``labels`` (N,) ints
    in ``[0, num_classes)``; ``num_classes`` defaults to ``max(labels) + 1``.
    ``weight`` (num_classes, d) and ``bias`` (num_classes,) (None → zeros)
    switch on the classifier-layer metrics; ``weight.shape[0]`` must equal
    ``num_classes`` (pass ``num_classes`` when W has rows for classes above
    the largest label). ``ncc_means`` (a dict ``{class: μ_c}`` or a
    (num_classes, d) array) replaces this data's class means in the NCC rule
    only (ncc_accuracy, nc4_ncc_mismatch, ncc_recall: the "train means for
    test data" setting); it must give a mean for every present class.
    ``mse=True`` (with a weight) adds the MSE decomposition with weight decay
    λ = ``weight_decay``; ``snr=True`` (with a weight) the SNR spectrum;
    ``ood_features`` (M, d) the NC5 orthogonality to their mean. The columns
    not above are computed in ``reference_more.py``.

    Raises ``ValueError`` only for malformed input (shapes, labels out of
    range, non-finite values), never for degenerate data.
    """
    X, y, num_classes = _validate(features, labels, num_classes)
    W, b = _validate_classifier(weight, bias, num_classes, X.shape[1])
    N, d = X.shape
    summary = {name: NAN for name in schema.METRIC_COLUMNS}
    undefined: dict[str, str] = {}
    if N == 0:
        for name in summary:
            undefined[name] = "no samples"
        return Reference(summary, {}, {}, 0, 0, 0, d, undefined)

    stats = class_statistics(X, y)
    per_class = {c: {name: NAN for name in schema.CLASS_METRICS} for c in stats.classes}
    per_pair = {p: {name: NAN for name in schema.PAIR_METRICS} for p in stats.pairs()}

    rank = nc1_family(X, y, stats, summary, per_class, per_pair, undefined)
    more.nc1_distance_ratio(X, y, stats, summary, undefined)
    nc2_family(stats, summary, per_class, per_pair, undefined)
    more.nc2_more(stats, summary, undefined)
    means_for_ncc = _ncc_means(ncc_means, stats, num_classes, d)
    ncc_pred = ncc_predictions(X, stats.classes, means_for_ncc)
    ncc_family(y, ncc_pred, stats, summary, per_class)
    cosine_view(X, y, stats, summary, per_class, per_pair, undefined)
    if W is not None:
        nc3_family(W, stats, summary, per_class, undefined)
        classifier_family(X, y, W, b, stats, ncc_pred, summary, per_class, undefined)
        more.classifier_more(X, y, W, b, stats, summary, per_class, per_pair, undefined)
        if mse:
            mse_family(X, y, W, b, float(weight_decay), summary)
        if snr:
            more.snr_family(X, y, stats, summary, undefined)
    if ood_features is not None:
        more.ood_family(ood_features, stats, summary, undefined)
    for name in summary:
        if math.isnan(summary[name]) and name not in undefined:
            undefined[name] = "not applicable (no classifier weight, or mse, snr or ood not asked)"
    return Reference(summary, per_class, per_pair, rank, N, stats.K, d, undefined)


# --------------------------------------------------------------------------- inputs


def _validate(features, labels, num_classes):
    X = np.asarray(features, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"features must be 2-D (N, d), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("features contain non-finite values")
    y_raw = np.asarray(labels)
    if y_raw.ndim != 1 or y_raw.shape[0] != X.shape[0]:
        raise ValueError(f"labels must have shape ({X.shape[0]},), got {y_raw.shape}")
    if y_raw.size and not np.issubdtype(y_raw.dtype, np.integer):
        if not np.all(y_raw == np.round(y_raw)):
            raise ValueError("labels must be integers")
    y = y_raw.astype(np.int64)
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return X, y, int(num_classes)


def _validate_classifier(weight, bias, num_classes, d):
    if weight is None:
        return None, None
    W = np.asarray(weight, dtype=np.float64)
    if W.shape != (num_classes, d):
        raise ValueError(f"weight must have shape ({num_classes}, {d}), got {W.shape}; pass num_classes")
    b = np.zeros(num_classes) if bias is None else np.asarray(bias, dtype=np.float64)
    if b.shape != (num_classes,):
        raise ValueError(f"bias must have shape ({num_classes},), got {b.shape}")
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
        raise ValueError("classifier contains non-finite values")
    return W, b


def _ncc_means(ncc_means, stats: _ClassStats, num_classes: int, d: int) -> dict[int, np.ndarray]:
    if ncc_means is None:
        return stats.means
    out = {}
    for c in stats.classes:
        if isinstance(ncc_means, dict):
            if c not in ncc_means:
                raise ValueError(f"ncc_means has no mean for present class {c}")
            mu = np.asarray(ncc_means[c], dtype=np.float64)
        else:
            arr = np.asarray(ncc_means, dtype=np.float64)
            if arr.ndim != 2 or arr.shape[0] <= c:
                raise ValueError(f"ncc_means array has no row for present class {c}")
            mu = arr[c]
        if mu.shape != (d,) or not np.all(np.isfinite(mu)):
            raise ValueError(f"ncc_means[{c}] must be a finite vector of length {d}")
        out[c] = mu
    return out


# --------------------------------------------------------------------------- class statistics


def class_statistics(X: np.ndarray, y: np.ndarray) -> _ClassStats:
    """``μ_c = (1/n_c) Σ_{i∈c} h_i``, ``μ_G = (1/K) Σ_c μ_c``, centred means ``μ_c − μ_G``."""
    classes = sorted(int(c) for c in np.unique(y))
    counts = {c: int(np.sum(y == c)) for c in classes}
    means = {c: X[y == c].sum(axis=0) / counts[c] for c in classes}
    mu_g = sum(means[c] for c in classes) / len(classes)
    tol = COINCIDENT_RTOL * max(float(np.linalg.norm(means[c])) for c in classes)
    centred = {c: means[c] - mu_g for c in classes}
    zero = {c: bool(np.linalg.norm(centred[c]) <= tol) for c in classes}
    coincident = all(zero.values())
    if coincident:
        centred = {c: np.zeros_like(mu_g) for c in classes}
    return _ClassStats(classes, counts, means, mu_g, centred, zero, tol, coincident)


def scatter_matrices(X: np.ndarray, y: np.ndarray, stats: _ClassStats) -> tuple[np.ndarray, np.ndarray]:
    """Full d×d ``Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ`` and
    ``Σ_B = (1/K) Σ_c (μ_c − μ_G)(μ_c − μ_G)ᵀ``."""
    D = X - np.array([stats.means[int(c)] for c in y])
    sigma_w = D.T @ D / X.shape[0]
    M = stats.M()
    sigma_b = M.T @ M / stats.K
    return sigma_w, sigma_b


# --------------------------------------------------------------------------- NC1


def nc1_family(X, y, stats, summary, per_class, per_pair, undefined) -> int:
    """``tr_sw = tr Σ_W``, ``tr_sb = tr Σ_B``, ``nc1 = (1/K) tr(Σ_W Σ_B⁺)``,
    ``nc1_tilde = tr Σ_W / tr Σ_B`` and
    ``cdnv = mean_{c<c'} (V_c + V_c') / (2‖μ_c − μ_c'‖²)`` with
    ``V_c = (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖²``.

    Also fills per-class ``var`` (= V_c) and per-pair ``cdnv``, ``mean_dist``.
    Returns the rank of Σ_B kept by the pseudo-inverse.
    """
    sigma_w, sigma_b = scatter_matrices(X, y, stats)
    summary["tr_sw"] = float(np.trace(sigma_w))
    summary["tr_sb"] = float(np.trace(sigma_b))

    eig = np.abs(np.linalg.eigvalsh(sigma_b))
    rank = int(np.sum(eig > PINV_RCOND * eig.max())) if eig.max() > 0 else 0
    if stats.K < 2:
        undefined["nc1"] = undefined["nc1_tilde"] = "fewer than 2 classes"
    elif stats.coincident:
        undefined["nc1"] = undefined["nc1_tilde"] = "class means coincide (Σ_B = 0)"
        rank = 0
    else:
        sigma_b_pinv = np.linalg.pinv(sigma_b, rcond=PINV_RCOND, hermitian=True)
        summary["nc1"] = float(np.trace(sigma_w @ sigma_b_pinv)) / stats.K
        summary["nc1_tilde"] = summary["tr_sw"] / summary["tr_sb"]

    V = {}
    for c in stats.classes:
        rows = X[y == c]
        V[c] = sum(float(np.sum((h - stats.means[c]) ** 2)) for h in rows) / stats.counts[c]
        per_class[c]["var"] = V[c]
        per_class[c]["n"] = float(stats.counts[c])

    values = []
    for a, b in stats.pairs():
        dist = float(np.linalg.norm(stats.means[a] - stats.means[b]))
        per_pair[(a, b)]["mean_dist"] = dist
        if dist <= stats.tol:
            per_pair[(a, b)]["cdnv"] = NAN
            undefined["cdnv"] = f"classes {a} and {b} have coincident means"
        else:
            per_pair[(a, b)]["cdnv"] = (V[a] + V[b]) / (2.0 * dist**2)
        values.append(per_pair[(a, b)]["cdnv"])
    if stats.K < 2:
        undefined["cdnv"] = "fewer than 2 classes"
    else:
        summary["cdnv"] = float(np.mean(values))  # NaN propagates
    return rank


# --------------------------------------------------------------------------- NC2


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def nc2_family(stats, summary, per_class, per_pair, undefined) -> None:
    """``nc2_equinorm = std_c ‖μ_c − μ_G‖ / mean_c ‖μ_c − μ_G‖`` (ddof 0);
    ``nc2_equiangular = std_{c<c'} cos(μ_c − μ_G, μ_c' − μ_G)``;
    ``nc2_maxangle = mean_{c<c'} |cos(·,·) + 1/(K−1)|``;
    ``nc2_etf = ‖G/‖G‖_F − P/√(K−1)‖_F`` with ``G = M̂M̂ᵀ``, M̂ = M with
    unit-norm rows, ``P = I_K − (1/K)11ᵀ``.

    Also per-class ``mean_norm`` and per-pair ``mean_cos``.
    """
    K = stats.K
    norms = np.array([float(np.linalg.norm(stats.centred[c])) for c in stats.classes])
    for c, r in zip(stats.classes, norms):
        per_class[c]["mean_norm"] = float(r)
    for a, b in stats.pairs():
        if not (stats.zero_centred[a] or stats.zero_centred[b]):
            per_pair[(a, b)]["mean_cos"] = _cos(stats.centred[a], stats.centred[b])

    names = ("nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc2_etf")
    if K < 2:
        for name in names:
            undefined[name] = "fewer than 2 classes"
        return
    if stats.coincident:
        for name in names:
            undefined[name] = "class means coincide"
        return
    summary["nc2_equinorm"] = float(np.std(norms) / np.mean(norms))
    zero = [c for c in stats.classes if stats.zero_centred[c]]
    if zero:
        for name in names[1:]:
            undefined[name] = f"centred mean of class {zero[0]} is zero"
        return
    cosines = np.array([per_pair[p]["mean_cos"] for p in stats.pairs()])
    summary["nc2_equiangular"] = float(np.std(cosines))
    summary["nc2_maxangle"] = float(np.mean(np.abs(cosines + 1.0 / (K - 1))))
    M_hat = stats.M() / norms[:, None]
    G = M_hat @ M_hat.T
    P = np.eye(K) - np.ones((K, K)) / K
    summary["nc2_etf"] = float(np.linalg.norm(G / np.linalg.norm(G) - P / math.sqrt(K - 1)))


# --------------------------------------------------------------------------- NC3


def nc3_family(W, stats, summary, per_class, undefined) -> None:
    """``nc3_duality = ‖W/‖W‖_F − M/‖M‖_F‖_F`` (not squared) and the review's
    eq. 8, ``nc3_etf = ‖AM̂ᵀ/‖AM̂ᵀ‖_F − P/√(K−1)‖_F`` with A = W and M̂ the
    matrix of eq. 5: rows (μ_k − μ_G)/‖μ_k − μ_G‖. W restricted to the rows of
    present classes (in class-id order, matching M's rows).

    Also per-class ``duality_cos = cos(w_c, μ_c − μ_G)``.
    """
    K = stats.K
    Wp = np.array([W[c] for c in stats.classes])
    M = stats.M()
    for c in stats.classes:
        if np.linalg.norm(W[c]) > 0 and not stats.zero_centred[c]:
            per_class[c]["duality_cos"] = _cos(W[c], stats.centred[c])
    if K < 2:
        undefined["nc3_duality"] = undefined["nc3_etf"] = "fewer than 2 classes"
        return
    w_norm, m_norm = np.linalg.norm(Wp), np.linalg.norm(M)
    if stats.coincident:
        undefined["nc3_duality"] = "class means coincide (M = 0)"
    elif w_norm == 0:
        undefined["nc3_duality"] = "classifier rows of present classes are all zero"
    else:
        summary["nc3_duality"] = float(np.linalg.norm(Wp / w_norm - M / m_norm))
    zero = [c for c in stats.classes if stats.zero_centred[c]]
    if zero:
        undefined["nc3_etf"] = f"centred mean of class {zero[0]} is zero (M̂ undefined)"
        return
    M_hat = np.array([stats.centred[c] / np.linalg.norm(stats.centred[c]) for c in stats.classes])
    WM = Wp @ M_hat.T
    wm_norm = np.linalg.norm(WM)
    if wm_norm <= COINCIDENT_RTOL * w_norm * math.sqrt(K) or wm_norm == 0:
        undefined["nc3_etf"] = "W M̂ᵀ = 0"
    else:
        P = np.eye(K) - np.ones((K, K)) / K
        summary["nc3_etf"] = float(np.linalg.norm(WM / wm_norm - P / math.sqrt(K - 1)))


# --------------------------------------------------------------------------- NC4 / NCC


def ncc_predictions(X, classes, means) -> np.ndarray:
    """``argmin_c ‖h_i − μ_c‖`` over present classes, ties to the lowest id
    (explicit loop, squared distances)."""
    pred = np.empty(X.shape[0], dtype=np.int64)
    for i, h in enumerate(X):
        best, best_dist = -1, math.inf
        for c in classes:  # increasing id; strict < keeps the lowest on ties
            dist = float(np.sum((h - means[c]) ** 2))
            if dist < best_dist:
                best, best_dist = c, dist
        pred[i] = best
    return pred


def ncc_family(y, ncc_pred, stats, summary, per_class) -> None:
    """``ncc_accuracy`` = fraction with ``argmin_c ‖h_i − μ_c‖ = y_i``; per-class ``ncc_recall``."""
    summary["ncc_accuracy"] = float(np.mean(ncc_pred == y))
    for c in stats.classes:
        per_class[c]["ncc_recall"] = float(np.mean(ncc_pred[y == c] == c))


def classifier_family(X, y, W, b, stats, ncc_pred, summary, per_class, undefined) -> None:
    """With logits ``z_i = W h_i + b`` over all C = num_classes outputs (the network's own decision):
    ``clf_accuracy`` = fraction with ``argmax_c z_ic = y_i``;
    ``nc4_ncc_mismatch`` = fraction where that argmax differs from the NCC's argmin;
    ``q_i = z_{i,y_i} − max_{c≠y_i} z_ic``, ``margin_min = min_i q_i``,
    ``margin_mean = mean_i q_i``. Also per-class ``clf_recall``.
    """
    Z = X @ W.T + b
    outputs = range(W.shape[0])
    pred = np.empty(X.shape[0], dtype=np.int64)
    margins = []
    for i, z in enumerate(Z):
        best, best_val = -1, -math.inf
        for c in outputs:  # strict > keeps the lowest id on ties
            if z[c] > best_val:
                best, best_val = c, float(z[c])
        pred[i] = best
        others = [float(z[c]) for c in outputs if c != y[i]]
        if others:
            margins.append(float(z[y[i]]) - max(others))
    summary["clf_accuracy"] = float(np.mean(pred == y))
    summary["nc4_ncc_mismatch"] = float(np.mean(pred != ncc_pred))
    for c in stats.classes:
        per_class[c]["clf_recall"] = float(np.mean(pred[y == c] == c))
    if W.shape[0] < 2:
        undefined["margin_min"] = undefined["margin_mean"] = "fewer than 2 outputs (no competing class)"
    else:
        summary["margin_min"] = min(margins)
        summary["margin_mean"] = float(np.mean(margins))


# --------------------------------------------------------------------------- cosine view


def cosine_view(X, y, stats, summary, per_class, per_pair, undefined) -> None:
    """Raw (uncentred) cosines, i = j included, zero vectors left out:
    ``intra_c = (1/n_c²) Σ_{i,j∈c} cos(h_i, h_j)``,
    ``inter_cc' = (1/(n_c n_c')) Σ_{i∈c, j∈c'} cos(h_i, h_j)`` by explicit
    O(N²) double loops (not the mean-of-unit-vectors shortcut);
    ``intra_cos_min/mean`` over classes, ``inter_cos_max/mean`` over pairs c<c'.
    """
    norms = np.sqrt(np.sum(X * X, axis=1))
    members = {c: [i for i in np.flatnonzero(y == c) if norms[i] > 0] for c in stats.classes}

    def mean_cos(rows_a, rows_b) -> float:
        if not rows_a or not rows_b:
            return NAN
        total = 0.0
        for i in rows_a:
            for j in rows_b:
                total += float(np.dot(X[i], X[j])) / (norms[i] * norms[j])
        return total / (len(rows_a) * len(rows_b))

    intra = []
    for c in stats.classes:
        per_class[c]["intra_cos"] = mean_cos(members[c], members[c])
        intra.append(per_class[c]["intra_cos"])
    inter = []
    for a, b in stats.pairs():
        per_pair[(a, b)]["inter_cos"] = mean_cos(members[a], members[b])
        inter.append(per_pair[(a, b)]["inter_cos"])

    empty = [c for c in stats.classes if not members[c]]
    if empty:
        reason = f"class {empty[0]} has no non-zero feature vector"
        for name in schema.COSINE_METRICS:
            undefined[name] = reason
    else:
        summary["intra_cos_min"] = float(np.min(intra))
        summary["intra_cos_mean"] = float(np.mean(intra))
    if stats.K < 2:
        undefined["inter_cos_max"] = undefined["inter_cos_mean"] = "fewer than 2 classes"
    elif not empty:
        summary["inter_cos_max"] = float(np.max(inter))
        summary["inter_cos_mean"] = float(np.mean(inter))


# --------------------------------------------------------------------------- MSE decomposition


def mse_family(X, y, W, b, lam, summary) -> None:
    """Han, Papyan & Donoho 2022, sample-weighted, literally as metrics.md:
    ``h̃ = [h; 1]``, ``W̃ = [W, b]`` (all num_classes rows), one-hot ``e_y``,
    ``L(W̃) = (1/2N) Σ_i ‖W̃h̃_i − e_{y_i}‖² + (λ/2)‖W̃‖_F²``,
    ``A = (1/N) Σ_i h̃_i h̃_iᵀ + λI``, ``W̃_LS = ((1/N) Σ_i e_{y_i} h̃_iᵀ) A⁻¹``;
    ``mse_loss = L(W̃)``, ``mse_ls = L(W̃_LS)``,
    ``mse_perp = (1/2) tr((W̃ − W̃_LS) A (W̃ − W̃_LS)ᵀ)``,
    ``mse_nc1 = (1/2) tr(W̃_LS (Σ̃_W + λI) W̃_LSᵀ)`` (Σ̃_W the within-class
    covariance of h̃, i.e. Σ_W with a zero last row and column),
    ``mse_nc23 = (1/2N) Σ_c n_c ‖W̃_LS μ̃_c − e_c‖²``.
    """
    N, d = X.shape
    C = W.shape[0]
    Ht = np.hstack([X, np.ones((N, 1))])
    Wt = np.hstack([W, b[:, None]])
    E = np.zeros((N, C))
    E[np.arange(N), y] = 1.0
    eye = np.eye(d + 1)

    A = sum(np.outer(h, h) for h in Ht) / N + lam * eye
    B = sum(np.outer(E[i], Ht[i]) for i in range(N)) / N
    eig = np.linalg.eigvalsh(A)
    if eig.min() > MSE_RCOND * eig.max():
        W_ls = np.linalg.solve(A, B.T).T  # A is symmetric: B A⁻¹ = (A⁻¹ Bᵀ)ᵀ
    else:
        W_ls = B @ np.linalg.pinv(A, rcond=MSE_RCOND, hermitian=True)

    def loss(Wm: np.ndarray) -> float:
        fit = sum(float(np.sum((Wm @ Ht[i] - E[i]) ** 2)) for i in range(N)) / (2 * N)
        return fit + lam / 2 * float(np.sum(Wm**2))

    delta = Wt - W_ls
    classes = sorted(int(c) for c in np.unique(y))
    mu_t = {c: Ht[y == c].mean(axis=0) for c in classes}
    Dt = Ht - np.array([mu_t[int(c)] for c in y])
    sigma_w_t = Dt.T @ Dt / N
    summary["mse_loss"] = loss(Wt)
    summary["mse_ls"] = loss(W_ls)
    summary["mse_perp"] = 0.5 * float(np.trace(delta @ A @ delta.T))
    summary["mse_nc1"] = 0.5 * float(np.trace(W_ls @ (sigma_w_t + lam * eye) @ W_ls.T))
    summary["mse_nc23"] = sum(
        int(np.sum(y == c)) * float(np.sum((W_ls @ mu_t[c] - np.eye(C)[c]) ** 2)) for c in classes
    ) / (2 * N)
