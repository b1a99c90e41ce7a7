"""The dense K × K computation of the pair statistics, as nccli did it before tiling: the oracle of the tiled one.

Float64 numpy over full matrices (explicit differences for distances, full
Gram matrices for cosines): fine for the small K of tests, and independent of
``nccli.metrics.pairs``.
"""

from dataclasses import dataclass

import numpy as np

from nccli.metrics.formulas import COINCIDENCE_TOLERANCE


def pairwise_sq_distances(means: np.ndarray) -> np.ndarray:
    """‖μ_c − μ_c'‖² from explicit differences."""
    k = means.shape[0]
    out = np.zeros((k, k))
    for c in range(k - 1):
        diff = means[c + 1 :] - means[c]
        out[c, c + 1 :] = out[c + 1 :, c] = np.einsum("ij,ij->i", diff, diff)
    return out


def pair_values(matrix: np.ndarray) -> np.ndarray:
    rows, cols = np.triu_indices(matrix.shape[0], k=1)
    return matrix[rows, cols]


def etf_distance(gram: np.ndarray) -> float:
    """‖G/‖G‖_F − P/√(K − 1)‖_F."""
    k = gram.shape[0]
    norm = np.linalg.norm(gram)
    if k < 2 or not norm > 0 or not np.isfinite(norm):
        return np.nan
    centring = np.eye(k) - np.full((k, k), 1.0 / k)
    return float(np.linalg.norm(gram / norm - centring / np.sqrt(k - 1)))


def tirer_residual(gram: np.ndarray) -> float:
    """‖A − ρP‖_F / ‖A‖_F with the best ρ ≥ 0, max(⟨A, P⟩, 0)/(K − 1), from the full K × K matrix."""
    k = gram.shape[0]
    norm = np.linalg.norm(gram)
    if k < 2 or not norm > 0:
        return np.nan
    centring = np.eye(k) - np.full((k, k), 1.0 / k)
    rho = max(float(np.sum(gram * centring)), 0.0) / (k - 1)
    return float(np.linalg.norm(gram - rho * centring) / norm)


def strict(function, values: np.ndarray) -> float:
    return float(function(values)) if len(values) and not np.isnan(values).any() else np.nan


@dataclass
class DensePairs:
    summary: dict[str, float]
    pairs: dict[tuple[int, int], dict[str, float]]
    coincident: list[tuple[int, int]]


def dense_pairs(moments, scatter, weight=None) -> DensePairs:
    """Every pair-dependent value of ``summarize_layer`` from host ``ClassMoments`` and pass 2's per-class
    ``scatter``, densely."""
    ids = np.flatnonzero(moments.count > 0)
    k = len(ids)
    means = moments.mean[ids]
    centred = means - means.mean(axis=0)
    scale = float(np.linalg.norm(means, axis=1).max())
    tolerance = COINCIDENCE_TOLERANCE * scale
    variances = scatter[ids] / moments.count[ids]
    norms = np.linalg.norm(centred, axis=1)
    sq = pairwise_sq_distances(means)
    coincident = np.sqrt(sq) <= tolerance
    np.fill_diagonal(coincident, False)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = (centred @ centred.T) / np.outer(norms, norms)
        cdnv = (variances[:, None] + variances[None, :]) / (2.0 * sq)
        inter = (moments.unit_sum[ids] @ moments.unit_sum[ids].T) / np.outer(
            moments.unit_count[ids], moments.unit_count[ids]
        )
    cdnv[coincident] = np.nan
    np.fill_diagonal(cosines, 1.0)
    at_centre = k >= 2 and bool((norms <= tolerance).any())
    if at_centre:
        cosines[norms <= tolerance, :] = np.nan
        cosines[:, norms <= tolerance] = np.nan
    pair_cos = pair_values(cosines)
    all_coincide = k >= 2 and norms.max() <= tolerance
    with np.errstate(invalid="ignore", divide="ignore"):
        unit_dist = np.sqrt(pair_values(pairwise_sq_distances(centred / norms[:, None])))  # explicit differences
        log_dist = -np.log(unit_dist)
    gnc2_defined = k >= 2 and not at_centre
    summary = {
        "cdnv": strict(np.mean, pair_values(cdnv)),
        "nc2_equiangular": np.nan if at_centre or k < 2 else float(np.std(pair_cos)),
        "nc2_maxangle": np.nan if at_centre or k < 2 else float(np.mean(np.abs(pair_cos + 1.0 / (k - 1)))),
        "nc2_etf": np.nan if at_centre else etf_distance(cosines),
        "inter_cos_max": strict(np.max, pair_values(inter)),
        "inter_cos_mean": strict(np.mean, pair_values(inter)),
        "nc2_tirer": np.nan if all_coincide else tirer_residual(centred @ centred.T),
        "gnc2_dist_var": float(np.var(unit_dist)) if gnc2_defined else np.nan,
        "gnc2_log_var": float(np.var(log_dist)) if gnc2_defined and unit_dist.min() > 1e-7 else np.nan,
    }
    w_cos = np.full((k, k), np.nan)
    if weight is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            unit = centred / norms[:, None]  # M̂ (review eq. 5)
        summary["nc3_etf"] = np.nan if at_centre or all_coincide else etf_distance(weight[ids] @ unit.T)
        summary["nc3_tirer"] = np.nan if all_coincide else tirer_residual(weight[ids] @ centred.T)
        w_norms = np.linalg.norm(weight[ids], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            w_cos = (weight[ids] @ weight[ids].T) / np.outer(w_norms, w_norms)
        summary["w_equiangular"] = float(np.std(pair_values(w_cos))) if k >= 2 else np.nan
        summary["w_maxangle"] = float(np.mean(np.abs(pair_values(w_cos) + 1.0 / (k - 1)))) if k >= 2 else np.nan
    pairs = {
        (int(ids[a]), int(ids[b])): {
            "cdnv": cdnv[a, b],
            "mean_cos": cosines[a, b],
            "inter_cos": inter[a, b],
            "mean_dist": float(np.sqrt(sq[a, b])),
            "w_cos": w_cos[a, b],
        }
        for a, b in zip(*np.triu_indices(k, k=1))
    }
    listed = [(int(ids[a]), int(ids[b])) for a, b in zip(*np.nonzero(np.triu(coincident)))]
    return DensePairs(summary, pairs, listed)


def dense_ties(means: np.ndarray) -> np.ndarray:
    """Each mean replaced by that of the lowest class whose mean is within the coincidence distance."""
    scale = float(np.linalg.norm(means, axis=1).max()) if len(means) else 0.0
    close = np.sqrt(pairwise_sq_distances(means)) <= COINCIDENCE_TOLERANCE * scale
    return means[np.argmax(close, axis=1)]
