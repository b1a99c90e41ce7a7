"""The neural-collapse formulas of ``docs/metrics.md``, as pure float64 numpy functions.

Notation (Kothapalli's review, §2.3): K present classes, centred means
M = [μ_c − μ_G] (K × d) with μ_G the mean of class means, Σ_W normalised by N,
Σ_B = MᵀM/K, P = I_K − 11ᵀ/K. Undefined values are NaN; deciding *why*
(and warning) is the caller's job. Statistics over pairs of classes, which
must never build a K × K matrix, are in :mod:`nccli.metrics.pairs`.
"""

from dataclasses import dataclass

import numpy as np

EPS = np.finfo(np.float64).eps
# Two means closer than this fraction of the largest mean norm are coincident:
# far above float64 rounding of features that ride on a common offset.
COINCIDENCE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Spectrum:
    """Σ_B's kept eigen-directions: Σ_B⁺ = V diag(K/s²) Vᵀ with V = ``basis`` (d × rank)."""

    basis: np.ndarray
    singular: np.ndarray

    @property
    def rank(self) -> int:
        return len(self.singular)


def between_class_spectrum(centred_means: np.ndarray) -> Spectrum:
    """Σ_B = MᵀM/K from the smaller of the d × d and K × K problems.

    Σ_B's eigenvalues are s²/K, s the singular values of M; keep those with
    s² > s_max²·max(K, d)·ε, at most K − 1 (Σ_B has rank ≤ K − 1 by centring,
    and ≤ d). Σ_B⁺ lives in the span V of the kept right singular vectors, so
    nc1 never needs a d × d matrix (Papyan et al. 2020; review eq. 4).

    M is never decomposed whole (an SVD of K × d would also build the K × d
    left factor). K ≥ d: M = QR, R (d × d) with RᵀR = MᵀM; the SVD of R gives
    s and V. K < d: Mᵀ = QR, R (K × K) with RᵀR = MMᵀ; Rᵀ = USWᵀ gives s and
    V = QW. Orthogonal factors keep the backward stability of an SVD of M:
    s_j to ε·s_max absolutely, where the eigenvalues of the Gram matrix MᵀM
    itself would carry errors ε·s_max² (squaring the condition number, and
    nc1 weighs each direction by 1/s_j²).
    """
    k, d = centred_means.shape
    if k < 2 or not centred_means.any():
        return Spectrum(np.zeros((d, 0)), np.zeros(0))
    if k >= d:
        triangular = np.linalg.qr(centred_means, mode="r")
        _, singular, vt = np.linalg.svd(triangular)
        basis = vt.T
    else:
        orthogonal, triangular = np.linalg.qr(centred_means.T)
        _, singular, wt = np.linalg.svd(triangular.T)
        basis = orthogonal @ wt.T
    kept = int(np.count_nonzero(singular**2 > singular[0] ** 2 * max(k, d) * EPS))
    rank = min(k - 1, kept)
    return Spectrum(np.ascontiguousarray(basis[:, :rank]), singular[:rank])


def nc1(projected_sq: np.ndarray, spectrum: Spectrum, n_samples: int) -> float:
    """(1/K) tr(Σ_W Σ_B⁺) = (1/N) Σ_j Σ_i (v_jᵀ(h_i − μ_{y_i}))² / s_j²."""
    if spectrum.rank == 0:
        return np.nan
    return float(np.sum(projected_sq / spectrum.singular**2) / n_samples)


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is 0."""
    return float(numerator / denominator) if denominator > 0 else np.nan


def equinorm(norms: np.ndarray) -> float:
    """std_c ‖μ_c − μ_G‖ / mean_c ‖μ_c − μ_G‖ (population std; Papyan et al. Fig. 2)."""
    return ratio(np.std(norms), np.mean(norms))


def duality_distance(weight: np.ndarray, centred_means: np.ndarray) -> float:
    """‖W/‖W‖_F − M/‖M‖_F‖_F, not squared (Papyan et al. Fig. 5)."""
    w_norm, m_norm = np.linalg.norm(weight), np.linalg.norm(centred_means)
    if not (w_norm > 0 and m_norm > 0):
        return np.nan
    return float(np.linalg.norm(weight / w_norm - centred_means / m_norm))


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a_c, b_c) for each row c; NaN where either row is zero."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def intra_cosines(unit_sum: np.ndarray, unit_count: np.ndarray) -> np.ndarray:
    """intra_c = ‖Σ_i ĥ_i‖² / n_c² over non-zero h_i, pairs i = j included (Pan 2023, Lemma 2.4.4)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("ij,ij->i", unit_sum, unit_sum) / unit_count**2


def strict_min(values: np.ndarray) -> float:
    """min; NaN if there are no values or any is NaN (an undefined part makes the summary undefined)."""
    return float(np.min(values)) if len(values) and not np.isnan(values).any() else np.nan


def strict_mean(values: np.ndarray) -> float:
    """mean; NaN if there are no values or any is NaN."""
    return float(np.mean(values)) if len(values) and not np.isnan(values).any() else np.nan
