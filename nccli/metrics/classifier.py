"""The classifier's own geometry, Tirer's ρ-forms, norms, margins and the cross-entropy (``docs/metrics.md``).

Pure float64 numpy functions of the pass-1 and pass-2 states: ``W`` holds
the rows of present classes (**not** centred, as Papyan et al. plot them),
``M`` the centred means, ``P = I_K − 11ᵀ/K``. Undefined values are NaN; the
caller says why.
"""

import math

import numpy as np


def tirer_distance(etf: float) -> float:
    """‖A − ρP‖_F / ‖A‖_F with the best ρ ≥ 0, from the ETF distance e = ‖A/‖A‖_F − P/√(K−1)‖_F.

    Tirer et al. (seed ``000_*``) ask NC2 as ‖MMᵀ − ρP‖_F → 0 and NC3 as
    ‖WMᵀ − ρ̃P‖_F → 0 "for some ρ > 0". Both A = MMᵀ and A = WMᵀ satisfy A1 = 0
    (M's rows sum to 0), so ⟨A, P⟩ = tr(A), and over ρ ≥ 0 the best is
    ρ = max(tr(A), 0)/(K − 1). With c = ⟨A, P⟩/(‖A‖_F √(K−1)) = 1 − e²/2 the
    relative residual is √(1 − c²) = e·√(1 − e²/4) when c ≥ 0, and exactly 1
    when c < 0 (e > √2: a classifier pointing away from the means, ρ = 0;
    MMᵀ always has c ≥ 0). The ETF distance is accumulated without
    cancellation (a sum of squares where it can reach 0), so this keeps its
    digits at collapse, where ‖A‖²_F − tr(A)²/(K−1) would not.
    """
    if etf * etf >= 2.0:
        return 1.0
    return float(etf * math.sqrt(1.0 - etf * etf / 4.0))


def uniform_duality(duality_cosines: np.ndarray) -> float:
    """``nc3_uniform_duality``: population variance over classes of cos(w_c, μ_c − μ_G) (Wu & Papyan 2024,
    "UNC3"; the reference library's ``similarities(cos=True).var()`` uses ddof = 1). NaN if any is NaN."""
    return float(np.var(duality_cosines)) if len(duality_cosines) > 1 else np.nan


def feature_sq_norm(counts: np.ndarray, means: np.ndarray, scatter: np.ndarray) -> float:
    """‖H‖²_F = Σ_i ‖h_i‖² = Σ_c (scatter_c + n_c‖μ_c‖²): pass 2's centred scatter plus the means, no cancellation."""
    return float(np.sum(scatter) + np.sum(counts * np.einsum("ij,ij->i", means, means)))


def norm_balance(weight_sq_norm: float, features_sq_norm: float) -> float:
    """``norm_balance = ‖W‖_F / ‖H‖_F``, 1 at the max-margin direction (seed ``002_*`` Thm. 3.3)."""
    return math.sqrt(weight_sq_norm / features_sq_norm) if features_sq_norm > 0 else np.nan


# margin_normalized's bound assumes balanced classes: a warning when the smallest count is below this share of
# the largest (most real datasets are a little imbalanced; metrics.md).
BALANCE_RATIO = 0.9


def imbalanced(counts: np.ndarray) -> bool:
    """Whether the smallest class count is below ``BALANCE_RATIO`` × the largest."""
    return len(counts) > 1 and counts.min() < BALANCE_RATIO * counts.max()


def normalized_margin(
    margin_free_min: float, weight_sq_norm: float, features_sq_norm: float, n_samples: float, k: int
) -> float:
    """``margin_normalized = q₀ · 2(K−1)√n / (‖W‖²_F + ‖H‖²_F)``, q₀ the smallest bias-free margin, n = N/K.

    Seed ``002_*`` Lemma 3.1: on balanced data q₀ ≤ (‖W‖²_F + ‖H‖²_F)/(2(K−1)√n),
    with equality iff (W, H) is neurally collapsed with ‖W‖_F = ‖H‖_F (Thm. 3.3).
    """
    total = weight_sq_norm + features_sq_norm
    if k < 2 or not total > 0:
        return np.nan
    return float(margin_free_min * 2.0 * (k - 1) * math.sqrt(n_samples / k) / total)


def optimal_cross_entropy(k: int, alpha: float, beta: float) -> float:
    """Pan's optimum log(1 + (K−1) exp(−(K/(K−1)) αβ)) (seed ``003_*`` Thm. 2.3.1): the CE of an exact
    simplex ETF with RMS feature norm α and RMS classifier-row norm β, no bias."""
    return float(math.log1p((k - 1) * math.exp(-k / (k - 1) * alpha * beta)))


def excess_cross_entropy(
    ce_free: float, k: int, weight_sq_norm: float, features_sq_norm: float, n_samples: float
) -> float:
    """``ce_excess = CE₀ − optimal_cross_entropy(K, α, β)``, α = √(‖H‖²_F/N), β = ‖W‖_F/√K; ≥ 0 on balanced data."""
    if k < 2:
        return np.nan
    alpha, beta = math.sqrt(features_sq_norm / n_samples), math.sqrt(weight_sq_norm / k)
    return float(ce_free - optimal_cross_entropy(k, alpha, beta))
