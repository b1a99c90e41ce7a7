"""The signal-to-noise spectrum of Han, Papyan & Donoho (ICLR 2022, seed ``004_*`` §4), opt-in ``--snr``.

SNR = Σ_W^{−1/2} Mᵀ (d × K, M the centred means); its non-zero singular
values ω_1 ≥ … are the class separations in units of within-class noise
(Def. 2). NC1 ⇔ every ω_j → ∞; NC2 ⇔ ω_max/ω_min → 1 (Cor. 1). Needs the
d × d within-class scatter matrix of pass 2 (as the MSE decomposition, hence
the same width limit) and Σ_W positive definite.
"""

from collections.abc import Callable

import numpy as np

from nccli import schema

EPS = np.finfo(np.float64).eps


def snr_extremes(within_scatter: np.ndarray, n_samples: float, centred_means: np.ndarray) -> tuple[float, float] | None:
    """(ω_min, ω_max) over the top min(K−1, d) singular values of Σ_W^{−1/2} Mᵀ; None if Σ_W is singular.

    With Σ_W = V Λ Vᵀ: Σ_W^{−1/2} Mᵀ = V Λ^{−1/2} VᵀMᵀ, whose singular values
    are those of M V Λ^{−1/2} (V is orthogonal). Singular: an eigenvalue
    ≤ λ_max · d · ε (Σ_W's rounding level), where Σ_W^{−1/2} is meaningless.
    """
    k, d = centred_means.shape
    eigenvalues, vectors = np.linalg.eigh(within_scatter / n_samples)
    if k < 2 or not eigenvalues[-1] > 0 or eigenvalues[0] <= eigenvalues[-1] * d * EPS:
        return None
    whitened = (centred_means @ vectors) / np.sqrt(eigenvalues)
    omega = np.linalg.svd(whitened, compute_uv=False)[: min(k - 1, d)]
    return float(omega.min()), float(omega.max())


def snr_columns(moments, decisions, warn: Callable[[str], None]) -> dict[str, float]:
    """``snr_min``, ``snr_max`` from pass 2's within-class matrix; none (null) with a warning when Σ_W is singular."""
    present = moments.class_means()
    extremes = snr_extremes(decisions.within, float(moments.count.sum()), present.centred)
    if extremes is None:
        if len(present.ids) >= 2:
            warn(
                "Σ_W is singular (fewer samples than dimensions, or a dead feature): snr_min, snr_max reported as null"
            )
        return {}
    return dict(zip(schema.SNR_METRICS, extremes))
