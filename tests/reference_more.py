"""The naive float64 oracle, continued: Tirer's forms, GNC2, the classifier's own geometry, UNC3, margins and
losses, SNR and NC5 (``docs/metrics.md``).

Written from ``docs/metrics.md`` alone, on whole in-memory arrays
(explicit K×K matrices, per-sample loops); called by
:func:`reference.reference_metrics`, which owns the entry point and the
conventions (present classes, μ_G = mean of class means, population
variances, zero thresholds).

=========================  =================================================
metric                     NaN when
=========================  =================================================
nc1_dist_ratio             every sample equals μ_G (denominator 0)
nc2_tirer                  K < 2, or the class means coincide (MMᵀ = 0)
gnc2_dist_var              K < 2, or some centred mean is zero
gnc2_log_var               as gnc2_dist_var, or two normalised centred means
                           coincide (‖m̂_c − m̂_c'‖ ≤ SAME_DIRECTION)
w_equinorm                 no weight, K < 2, or every w_c = 0
w_equiangular, w_maxangle  no weight, K < 2, or some w_c = 0
nc3_tirer                  no weight, K < 2, or W Mᵀ = 0
nc3_uniform_duality        no weight, K < 2, or some duality_cos is NaN
margin_normalized          no weight, K < 2, or ‖W‖_F = ‖H‖_F = 0
norm_balance               no weight, or ‖H‖_F = 0
ce_loss                    no weight
ce_excess                  no weight, or K < 2
snr_min, snr_max           snr not asked, no weight, K < 2, means coincide,
                           or Σ_W singular (an eigenvalue ≤ SINGULAR_RTOL ×
                           the largest)
nc5_ood_orthogonality      no OOD rows, μ_ood = 0, or some μ_c = 0
=========================  =================================================

Per class ``w_norm = ‖w_c‖`` (NaN without weight); per pair
``w_cos = cos(w_c, w_c')`` (NaN without weight or when a row is zero).
"""

from __future__ import annotations

import math

import numpy as np

NAN = float("nan")
SAME_DIRECTION = 1e-7
SINGULAR_RTOL = 1e-10


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def _centring(K: int) -> np.ndarray:
    return np.eye(K) - np.ones((K, K)) / K


def _rho_residual(A: np.ndarray) -> float:
    """‖A − ρP‖_F / ‖A‖_F for the best ρ > 0 of seed 000 ("for some ρ > 0"), by explicit K×K matrices.

    ‖A − ρP‖²_F = ‖A‖²_F − 2ρ⟨A, P⟩ + ρ²‖P‖²_F is a parabola in ρ with its vertex at ⟨A, P⟩/‖P‖²_F;
    over ρ ≥ 0 (the closure of ρ > 0) its minimum is at max(vertex, 0).
    """
    K = A.shape[0]
    P = _centring(K)
    rho = max(float(np.sum(A * P)) / float(np.sum(P * P)), 0.0)
    return float(np.linalg.norm(A - rho * P) / np.linalg.norm(A))


def nc1_distance_ratio(X, y, stats, summary, undefined) -> None:
    """``nc1_dist_ratio = mean_i ‖h_i − μ_{y_i}‖ / mean_i ‖h_i − μ_G‖`` (norms, not squared)."""
    within = sum(float(np.linalg.norm(h - stats.means[int(c)])) for h, c in zip(X, y)) / len(y)
    total = sum(float(np.linalg.norm(h - stats.mu_g)) for h in X) / len(y)
    if total == 0:
        undefined["nc1_dist_ratio"] = "every sample equals the global mean"
    else:
        summary["nc1_dist_ratio"] = within / total


def nc2_more(stats, summary, undefined) -> None:
    """``nc2_tirer = ‖MMᵀ − ρP‖_F / ‖MMᵀ‖_F`` (ρ = tr(MMᵀ)/(K−1));
    ``gnc2_dist_var`` = population variance over pairs of ‖m̂_c − m̂_c'‖ and
    ``gnc2_log_var`` of log(1/‖m̂_c − m̂_c'‖), m̂_c = (μ_c − μ_G)/‖μ_c − μ_G‖."""
    K = stats.K
    if K < 2 or stats.coincident:
        reason = "fewer than 2 classes" if K < 2 else "class means coincide"
        for name in ("nc2_tirer", "gnc2_dist_var", "gnc2_log_var"):
            undefined[name] = reason
        return
    M = stats.M()
    summary["nc2_tirer"] = _rho_residual(M @ M.T)
    zero = [c for c in stats.classes if stats.zero_centred[c]]
    if zero:
        undefined["gnc2_dist_var"] = undefined["gnc2_log_var"] = f"centred mean of class {zero[0]} is zero"
        return
    unit = {c: stats.centred[c] / np.linalg.norm(stats.centred[c]) for c in stats.classes}
    distances = np.array([float(np.linalg.norm(unit[a] - unit[b])) for a, b in stats.pairs()])
    summary["gnc2_dist_var"] = float(np.var(distances))
    if distances.min() <= SAME_DIRECTION:
        undefined["gnc2_log_var"] = "two centred means have the same direction"
    else:
        summary["gnc2_log_var"] = float(np.var(np.log(1.0 / distances)))


def classifier_more(X, y, W, b, stats, summary, per_class, per_pair, undefined) -> None:
    """The classifier's own geometry (rows of present classes, **not** centred), Tirer's NC3, uniform
    duality, the bias-free normalised margin, the norm balance and the cross-entropies of ``docs/metrics.md``.

    ``margin_normalized = q₀ · 2(K−1)√n / (‖W‖²_F + ‖H‖²_F)``, q₀ the smallest
    bias-free margin, n = N/K, ‖H‖²_F = Σ_i ‖h_i‖²; ``norm_balance = ‖W‖_F/‖H‖_F``;
    ``ce_loss`` = mean_i [log Σ_c exp z_ic − z_{i,y_i}] over all num_classes outputs,
    z = Wh + b; ``ce_excess = CE₀ − log(1 + (K−1) exp(−K αβ/(K−1)))`` with CE₀
    the cross-entropy of Wh (all outputs), α = √(‖H‖²_F/N), β = ‖W‖_F/√K (present rows);
    q₀ is the smallest bias-free margin over all outputs.
    """
    K, N = stats.K, X.shape[0]
    Wp = np.array([W[c] for c in stats.classes])
    norms = np.linalg.norm(Wp, axis=1)
    for c, r in zip(stats.classes, norms):
        per_class[c]["w_norm"] = float(r)
    for a, bb in stats.pairs():
        if np.linalg.norm(W[a]) > 0 and np.linalg.norm(W[bb]) > 0:
            per_pair[(a, bb)]["w_cos"] = _cos(W[a], W[bb])

    if K < 2:
        for name in (
            "w_equinorm",
            "w_equiangular",
            "w_maxangle",
            "nc3_tirer",
            "nc3_uniform_duality",
            "margin_normalized",
            "ce_excess",
        ):
            undefined[name] = "fewer than 2 classes"
    else:
        if norms.max() == 0:
            undefined["w_equinorm"] = "classifier rows of present classes are all zero"
        else:
            summary["w_equinorm"] = float(np.std(norms) / np.mean(norms))
        if norms.min() == 0:
            undefined["w_equiangular"] = undefined["w_maxangle"] = "a classifier row is zero"
        else:
            cosines = np.array([per_pair[p]["w_cos"] for p in stats.pairs()])
            summary["w_equiangular"] = float(np.std(cosines))
            summary["w_maxangle"] = float(np.mean(np.abs(cosines + 1.0 / (K - 1))))
        A = Wp @ stats.M().T
        if np.linalg.norm(A) == 0 or stats.coincident:
            undefined["nc3_tirer"] = "W Mᵀ = 0"
        else:
            summary["nc3_tirer"] = _rho_residual(A)
        duality = np.array([per_class[c]["duality_cos"] for c in stats.classes])
        summary["nc3_uniform_duality"] = float(np.var(duality))  # NaN propagates

    sq_h = sum(float(np.dot(h, h)) for h in X)
    sq_w = float(np.sum(Wp**2))
    summary["norm_balance"] = math.sqrt(sq_w / sq_h) if sq_h > 0 else NAN
    free = X @ W.T
    outputs = range(W.shape[0])
    if K >= 2:
        q0 = min(float(free[i, y[i]]) - max(float(free[i, c]) for c in outputs if c != y[i]) for i in range(N))
        if sq_w + sq_h > 0:
            summary["margin_normalized"] = q0 * 2 * (K - 1) * math.sqrt(N / K) / (sq_w + sq_h)

    def cross_entropy(Z) -> float:
        total = 0.0
        for i in range(N):
            z = np.array([Z[i, c] for c in outputs])
            top = float(z.max())
            total += top + math.log(float(np.sum(np.exp(z - top)))) - float(Z[i, y[i]])
        return total / N

    summary["ce_loss"] = cross_entropy(X @ W.T + b)
    if K >= 2:
        alpha, beta = math.sqrt(sq_h / N), math.sqrt(sq_w / K)
        summary["ce_excess"] = cross_entropy(free) - math.log(1 + (K - 1) * math.exp(-K / (K - 1) * alpha * beta))


def snr_family(X, y, stats, summary, undefined) -> None:
    """``snr_min``/``snr_max``: the smallest and largest of the top min(K−1, d) singular values of
    Σ_W^{−1/2} Mᵀ, with the full d×d Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ."""
    if stats.K < 2 or stats.coincident:
        undefined["snr_min"] = undefined["snr_max"] = "fewer than 2 classes or coincident means"
        return
    D = X - np.array([stats.means[int(c)] for c in y])
    sigma_w = D.T @ D / X.shape[0]
    eig, vec = np.linalg.eigh(sigma_w)
    if eig.max() <= 0 or eig.min() <= SINGULAR_RTOL * eig.max():
        undefined["snr_min"] = undefined["snr_max"] = "Σ_W is singular"
        return
    inverse_root = vec @ np.diag(eig**-0.5) @ vec.T
    omega = np.linalg.svd(inverse_root @ stats.M().T, compute_uv=False)[: min(stats.K - 1, X.shape[1])]
    summary["snr_min"], summary["snr_max"] = float(omega.min()), float(omega.max())


def ood_family(ood_features, stats, summary, undefined) -> None:
    """``nc5_ood_orthogonality = mean_c |cos(μ_c, μ_ood)|``, μ_ood the mean of every OOD row, not centred."""
    ood = np.asarray(ood_features, dtype=np.float64)
    if len(ood) == 0:
        undefined["nc5_ood_orthogonality"] = "no OOD rows"
        return
    mu_ood = ood.sum(axis=0) / len(ood)
    if np.linalg.norm(mu_ood) == 0 or any(np.linalg.norm(stats.means[c]) == 0 for c in stats.classes):
        undefined["nc5_ood_orthogonality"] = "a zero mean"
        return
    summary["nc5_ood_orthogonality"] = float(np.mean([abs(_cos(stats.means[c], mu_ood)) for c in stats.classes]))
