"""The MSE decomposition of Han, Papyan & Donoho (ICLR 2022), Theorems 1–2, sample-weighted.

Extended features h̃ = [h; 1], W̃ = [W, b] (all C classes), one-hot targets:

    L(W̃)   = (1/2N) Σ_i ‖W̃h̃_i − e_{y_i}‖² + (λ/2)‖W̃‖_F²
           = (1/2N) Σ_c n_c ‖W̃μ̃_c − e_c‖² + (1/2) tr(W̃ (Σ̃_W + λI) W̃ᵀ)

(the residuals h̃_i − μ̃_c sum to zero within each class), so every term
follows from the class counts, the means and the centred within-class scatter
matrix of pass 2. A = Σ̃_W + Σ_c (n_c/N) μ̃_c μ̃_cᵀ + λI = (1/N) Σ_i h̃_i h̃_iᵀ + λI,
W̃_LS = (Σ_c (n_c/N) e_c μ̃_cᵀ) A⁺. This is the one metric that needs a
(d+1)² matrix, hence :data:`MSE_MAX_DIM`.
"""

import numpy as np

from nccli import schema
from nccli.metrics.accumulators import ClassMoments, Decisions
from nccli.types import Classifier

MSE_MAX_DIM = 4096


def _loss_parts(weight_ext: np.ndarray, means_ext: np.ndarray, shares: np.ndarray, within_ext: np.ndarray, lam: float):
    """(NC2/3-type term, NC1-type term) of L(W̃): the two halves of the identity above."""
    fit = weight_ext @ means_ext.T - np.eye(weight_ext.shape[0])  # column c: W̃μ̃_c − e_c
    between = 0.5 * float(np.sum(shares * np.sum(fit**2, axis=0)))
    within = 0.5 * float(np.sum((weight_ext @ within_ext) * weight_ext)) + 0.5 * lam * float(np.sum(weight_ext**2))
    return between, within


def mse_decomposition(
    moments: ClassMoments, decisions: Decisions, classifier: Classifier, weight_decay: float
) -> dict[str, float]:
    """``mse_loss``, ``mse_ls``, ``mse_perp``, ``mse_nc1``, ``mse_nc23`` (``docs/metrics.md``): the counts and means of
    pass 1, the within-class matrix of pass 2."""
    count = moments.count
    n = count.sum()
    num_classes, dim = moments.mean.shape
    shares = count / n
    means_ext = np.hstack([moments.mean, np.ones((num_classes, 1))])
    within_ext = np.zeros((dim + 1, dim + 1))
    within_ext[:dim, :dim] = decisions.within / n
    second_moment = within_ext + (means_ext * shares[:, None]).T @ means_ext
    gram = second_moment + weight_decay * np.eye(dim + 1)
    cross = means_ext * shares[:, None]  # row c: (n_c/N) μ̃_cᵀ = (1/N) Σ_{i∈c} e_c h̃_iᵀ
    weight_ls = cross @ np.linalg.pinv(gram, hermitian=True)
    weight_ext = np.hstack([classifier.weight, classifier.bias[:, None]])

    loss_between, loss_within = _loss_parts(weight_ext, means_ext, shares, within_ext, weight_decay)
    ls_between, ls_within = _loss_parts(weight_ls, means_ext, shares, within_ext, weight_decay)
    gap = weight_ext - weight_ls
    loss, least_squares, perp = (
        loss_between + loss_within,
        ls_between + ls_within,
        0.5 * float(np.sum((gap @ gram) * gap)),
    )
    return dict(zip(schema.MSE_METRICS, (loss, least_squares, perp, ls_within, ls_between)))
