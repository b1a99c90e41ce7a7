"""Fixtures with known metric values, from the closed forms of seed-notes §2.

Every generator returns a :class:`Fixture` whose ``expected`` values come from
the closed formulas (T2, T6, T8, T9 of ``docs/seed-notes.md``),
*not* from ``reference.py``; ``test_reference.py`` checks the oracle against
them. The one exception is :func:`offset_collapse`, whose point is a
comparison between shifted and unshifted data (see there).

Rows are shuffled (seeded) wherever there is more than one sample per class:
nccli must work from labels, never from the sample order.

Metric names are those of ``docs/metrics.md`` (``nccli.schema``). Note that
``nc3_duality`` there is the *unsquared* distance, while seed-notes' M20 is its
square.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Fixture:
    """Features (N, d) float64, labels (N,), optional classifier, known values.

    ``expected``: summary column → exact value (compare to ~1e-9).
    ``expected_per_class`` / ``expected_per_pair``: class id (pair ``(c, c')``,
    c < c') → {column → value}. MSE entries assume ``mse=True`` and
    ``weight_decay``. ``approx`` / ``approx_std``: expectations and standard
    deviations of random quantities (statistical fixtures only). ``extras``:
    anything else a fixture documents (e.g. the unshifted features).
    """

    name: str
    features: np.ndarray
    labels: np.ndarray
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    num_classes: int | None = None
    weight_decay: float = 0.0
    expected: dict[str, float] = field(default_factory=dict)
    expected_per_class: dict[int, dict[str, float]] = field(default_factory=dict)
    expected_per_pair: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)
    approx: dict[str, float] = field(default_factory=dict)
    approx_std: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


# What is exactly 0 when the class means form a simplex ETF and W is proportional to them (self-dual): the
# Tirer forms, the hyperspherical-uniformity variances, the classifier's own geometry and uniform duality.
SELF_DUAL_ETF_ZEROS = dict.fromkeys(
    ("nc2_tirer", "gnc2_dist_var", "gnc2_log_var", "w_equinorm", "w_equiangular", "w_maxangle", "nc3_tirer",
     "nc3_uniform_duality"),
    0.0,
)  # fmt: skip


# --------------------------------------------------------------------------- helpers


def orthonormal_columns(d: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A random d×k matrix U with ``UᵀU = I_k`` (needs d ≥ k)."""
    if d < k:
        raise ValueError(f"need d >= {k}, got d = {d}")
    q, r = np.linalg.qr(rng.standard_normal((d, k)))
    return q * np.sign(np.diag(r))


def centring_matrix(K: int) -> np.ndarray:
    """``P_K = I_K − (1/K) 1 1ᵀ``."""
    return np.eye(K) - np.ones((K, K)) / K


def etf_centred_means(K: int, U: np.ndarray, rho: float) -> np.ndarray:
    """K×d centred means ``M = √ρ P_K Uᵀ``: ``MMᵀ = ρ P_K`` (T1), so every
    ``‖m_c‖² = ρ(K−1)/K``, cosines −1/(K−1), ``‖m_c − m_c'‖² = 2ρ``."""
    return math.sqrt(rho) * centring_matrix(K) @ U[:, :K].T


def _pairs(K: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(K) for b in range(a + 1, K)]


def _shuffle(rng, features, labels):
    perm = rng.permutation(len(labels))
    return features[perm], labels[perm]


# --------------------------------------------------------------------------- T2


def tirer_bruna_optimum(
    K: int = 4, d: int = 6, n: int = 5, lam_w: float = 0.1, lam_h: float = 0.1, seed: int = 0
) -> Fixture:
    """T2: global minimiser of the bias-free UFM (Tirer & Bruna 2022; S0:48-58).

    ``c = √(λ_H λ_W) < 1``, ``ρ = (1 − c)√(λ_W/λ_H)``; uncentred means
    ``H̄ = √ρ U`` (orthonormal U, d×K, so ``H̄ᵀH̄ = ρ I``), every sample equal
    to its class mean, ``W = √(λ_H/λ_W) H̄ᵀ``, no bias. Then ``W H̄ = (1 − c) I``.

    Known values: NC1 family 0 and ``tr_sb = ρ(K−1)/K``; NC2 family 0;
    ``nc3_etf = 0`` (``WMᵀ = (1 − c)P``) but ``nc3_duality =
    √(2 − 2√((K−1)/K))`` (W aligns with the *uncentred* means, T3); NCC and
    classifier exact, every margin ``1 − c``; raw features orthogonal, so
    intra = 1 and inter = 0; ``duality_cos = √((K−1)/K)``, ``mean_cos =
    −1/(K−1)``, ``mean_dist = √(2ρ)``. MSE at ``weight_decay = λ_W/K`` (the
    same objective minus the λ_H term): ``mse_loss = c²/2 + λ_H ρ/2 = c/2``.
    Fixture A of seed-notes: defaults (K=4, d=6, n=5, λ = 0.1) give c = 0.1,
    ρ = 0.9, tr_sb = 0.675, nc3_duality² = 0.267949.
    """
    c = math.sqrt(lam_h * lam_w)
    if c >= 1:
        raise ValueError("need sqrt(lam_h * lam_w) < 1 (otherwise the minimiser is 0)")
    rho = (1 - c) * math.sqrt(lam_w / lam_h)
    rng = np.random.default_rng(seed)
    U = orthonormal_columns(d, K, rng)
    Hbar = math.sqrt(rho) * U  # d×K, columns = uncentred class means
    W = math.sqrt(lam_h / lam_w) * Hbar.T
    labels = np.repeat(np.arange(K), n)
    features, labels = _shuffle(rng, Hbar.T[labels].copy(), labels)

    expected = dict(
        tr_sw=0.0,
        tr_sb=rho * (K - 1) / K,
        nc1=0.0,
        nc1_tilde=0.0,
        cdnv=0.0,
        nc2_equinorm=0.0,
        nc2_equiangular=0.0,
        nc2_maxangle=0.0,
        nc2_etf=0.0,
        nc3_duality=math.sqrt(2 - 2 * math.sqrt((K - 1) / K)),
        nc3_etf=0.0,
        ncc_accuracy=1.0,
        clf_accuracy=1.0,
        nc4_ncc_mismatch=0.0,
        margin_min=1 - c,
        margin_mean=1 - c,
        intra_cos_min=1.0,
        intra_cos_mean=1.0,
        inter_cos_max=0.0,
        inter_cos_mean=0.0,
        mse_loss=c / 2,
        **_t2_issue13(K, n, c, rho, lam_w, lam_h),
    )
    w_norm = math.sqrt(lam_h / lam_w * rho)
    per_class = {
        k: dict(
            n=float(n),
            var=0.0,
            mean_norm=math.sqrt(rho * (K - 1) / K),
            intra_cos=1.0,
            ncc_recall=1.0,
            clf_recall=1.0,
            duality_cos=math.sqrt((K - 1) / K),
            w_norm=w_norm,
        )
        for k in range(K)
    }
    per_pair = {
        p: dict(cdnv=0.0, mean_cos=-1 / (K - 1), inter_cos=0.0, mean_dist=math.sqrt(2 * rho), w_cos=0.0)
        for p in _pairs(K)
    }
    return Fixture(
        "tirer_bruna_optimum",
        features,
        labels,
        W,
        None,
        K,
        lam_w / K,
        expected,
        per_class,
        per_pair,
        extras=dict(c=c, rho=rho, U=U),
    )


def _t2_issue13(K: int, n: int, c: float, rho: float, lam_w: float, lam_h: float) -> dict[str, float]:
    """The issue-13 columns at the T2 optimum: W's rows are an orthogonal frame of equal norms
    (w_cos = 0, so ``w_maxangle = 1/(K−1)``); ``W Mᵀ = (1 − c)P`` and ``MMᵀ = ρP`` (Tirer forms 0);
    bias-free logits ``(1 − c)e_k``: ``CE = log(1 + (K−1)e^{−(1−c)})``, every margin ``1 − c``;
    ``‖H‖² = Knρ``, ``‖W‖² = Kρλ_H/λ_W``; Pan's optimum with ``α = √ρ``, ``β = √(ρλ_H/λ_W)``."""
    sq_h, sq_w = K * n * rho, K * rho * lam_h / lam_w
    alpha, beta = math.sqrt(rho), math.sqrt(rho * lam_h / lam_w)
    ce = math.log(1 + (K - 1) * math.exp(-(1 - c)))
    return dict(
        nc1_dist_ratio=0.0,
        nc2_tirer=0.0,
        gnc2_dist_var=0.0,
        gnc2_log_var=0.0,
        w_equinorm=0.0,
        w_equiangular=0.0,
        w_maxangle=1 / (K - 1),
        nc3_tirer=0.0,
        nc3_uniform_duality=0.0,
        norm_balance=math.sqrt(sq_w / sq_h),
        margin_normalized=(1 - c) * 2 * (K - 1) * math.sqrt(n) / (sq_w + sq_h),
        ce_loss=ce,
        ce_excess=ce - math.log(1 + (K - 1) * math.exp(-K / (K - 1) * alpha * beta)),
    )


# --------------------------------------------------------------------------- T6


def etf_with_exact_noise(
    K: int = 5, d: int = 8, sigma: float = 0.3, rho: float = 2.0, seed: int = 0, global_mean_norm: float = 0.0
) -> Fixture:
    """T6: simplex-ETF centred means with *exact* isotropic within-class noise.

    ``M = √ρ P_K Uᵀ`` (G = ρP_K), class means ``μ_k = μ_G + m_k`` with μ_G of
    norm ``global_mean_norm`` orthogonal to U (needs d > K when non-zero);
    each class has n = 2d samples ``μ_k ± √d σ e_j`` (j = 1..d), whose mean is
    exactly μ_k and covariance exactly σ²I. Classifier ``W = M``, zero bias.

    Closed forms: ``tr_sw = dσ²``, ``tr_sb = ρ(K−1)/K``,
    SNR (Han et al., S4 Def. 2): Σ_W = σ²I and M has K − 1 singular values √ρ, so
    every ``ω_j = √ρ/σ`` (= r√(K/(K−1))/σ with r = ‖μ_c − μ_G‖): ``snr_min = snr_max``;
    W = M is an ETF: ``w_*``, ``nc2_tirer``, ``nc3_tirer``, ``gnc2_*``, ``nc3_uniform_duality`` 0;
    ``nc1 = σ²(K−1)/ρ``, ``nc1_tilde = dσ²K/(ρ(K−1))``, ``cdnv = dσ²/(2ρ)``,
    NC2 family 0, ``nc3_duality = nc3_etf = 0``; per class ``var = dσ²``,
    ``mean_norm = √(ρ(K−1)/K)``, ``duality_cos = 1``; per pair ``mean_cos =
    −1/(K−1)``, ``mean_dist = √(2ρ)``.

    Margins: ``z_k − z_c = ρ + ⟨m_k − m_c, δ⟩`` for a class-k sample with
    deviation δ, so with ``δ = s√dσ e_j``: ``q = ρ + min_{c≠k} s√dσ(m_k − m_c)_j``;
    ``margin_min = ρ − √dσ max_{k≠c} ‖m_k − m_c‖_∞``. NCC and the classifier
    make the same decision (equal ‖μ_c‖), so when ``margin_min > 0`` both are
    exact: ``ncc_accuracy = clf_accuracy = 1``, ``nc4_ncc_mismatch = 0``
    (only then are these entries included). The cosine view depends on U and is
    not included.

    Fixture C (K=5, d=8, σ=0.3, ρ=2, n=16): nc1 = 0.18, nc1_tilde = 0.45,
    cdnv = 0.18, tr_sw = 0.72, tr_sb = 1.6.
    """
    if global_mean_norm and d <= K:
        raise ValueError("a non-zero global mean orthogonal to U needs d > K")
    rng = np.random.default_rng(seed)
    U = orthonormal_columns(d, K + (1 if global_mean_norm else 0), rng)
    M = etf_centred_means(K, U, rho)
    mu_g = global_mean_norm * U[:, K] if global_mean_norm else np.zeros(d)
    step = math.sqrt(d) * sigma
    rows, labels, gaps = [], [], []
    for k in range(K):
        for j in range(d):
            for s in (1.0, -1.0):
                delta = np.zeros(d)
                delta[j] = s * step
                rows.append(mu_g + M[k] + delta)
                labels.append(k)
                gaps.append(rho + min(s * step * (M[k, j] - M[c, j]) for c in range(K) if c != k))
    features, labels_arr = _shuffle(rng, np.array(rows), np.array(labels))

    sup = max(float(np.max(np.abs(M[a] - M[b]))) for a, b in _pairs(K))
    margin_min = rho - step * sup
    expected = dict(
        tr_sw=d * sigma**2,
        tr_sb=rho * (K - 1) / K,
        nc1=sigma**2 * (K - 1) / rho,
        nc1_tilde=d * sigma**2 * K / (rho * (K - 1)),
        cdnv=d * sigma**2 / (2 * rho),
        nc2_equinorm=0.0,
        nc2_equiangular=0.0,
        nc2_maxangle=0.0,
        nc2_etf=0.0,
        nc3_duality=0.0,
        nc3_etf=0.0,
        margin_min=margin_min,
        margin_mean=float(np.mean(gaps)),
        **SELF_DUAL_ETF_ZEROS,
        snr_min=math.sqrt(rho) / sigma,
        snr_max=math.sqrt(rho) / sigma,
    )
    per_class = {
        k: dict(
            n=float(2 * d),
            var=d * sigma**2,
            mean_norm=math.sqrt(rho * (K - 1) / K),
            duality_cos=1.0,
            w_norm=math.sqrt(rho * (K - 1) / K),
        )
        for k in range(K)
    }
    if margin_min > 1e-6 * rho:
        expected.update(ncc_accuracy=1.0, clf_accuracy=1.0, nc4_ncc_mismatch=0.0)
        for k in range(K):
            per_class[k].update(ncc_recall=1.0, clf_recall=1.0)
    per_pair = {
        p: dict(cdnv=d * sigma**2 / (2 * rho), mean_cos=-1 / (K - 1), mean_dist=math.sqrt(2 * rho), w_cos=-1 / (K - 1))
        for p in _pairs(K)
    }
    return Fixture(
        "etf_with_exact_noise",
        features,
        labels_arr,
        M.copy(),
        np.zeros(K),
        K,
        0.0,
        expected,
        per_class,
        per_pair,
        extras=dict(U=U, M=M, mu_g=mu_g),
    )


# --------------------------------------------------------------------------- T8


def s2_example(C: float = 0.7) -> Fixture:
    """T8: S2 Example 3.1, a perfectly separating KKT point that is not NC.

    K = 4, n = 1, d = 4, ``W = H = C·B`` with
    ``B = [[1,−1,0,0],[−1,1,0,0],[0,0,1,−1],[0,0,−1,1]]``; μ_G = 0, M = C·B.
    Centred-mean cosines over the 6 pairs: ``[−1, 0, 0, 0, 0, −1]``.

    Known values: NC1 family 0 (n = 1, distinct means), ``tr_sb = ‖M‖²/K =
    2C²``; ``nc2_equinorm = 0``; ``nc2_equiangular = std = √2/3`` (ddof 0);
    ``nc2_maxangle = 4/9``; ``nc2_etf = nc3_etf = √(2 − 4/√6)``
    (``⟨B, P⟩ = 4``, ``‖B‖_F = 2√2``); ``nc3_duality = 0`` (W = M);
    logits ``Z = 2C²B``: NCC and classifier exact, every margin ``2C²``;
    raw features = centred means, so intra = 1, ``inter_cos_max = 0``,
    ``inter_cos_mean = −1/3``.
    """
    B = np.array([[1, -1, 0, 0], [-1, 1, 0, 0], [0, 0, 1, -1], [0, 0, -1, 1]], dtype=np.float64)
    H = C * B
    labels = np.arange(4)
    K = 4
    expected = dict(
        tr_sw=0.0,
        tr_sb=2 * C**2,
        nc1=0.0,
        nc1_tilde=0.0,
        cdnv=0.0,
        nc2_equinorm=0.0,
        nc2_equiangular=math.sqrt(2) / 3,
        nc2_maxangle=4 / 9,
        nc2_etf=math.sqrt(2 - 4 / math.sqrt(6)),
        nc3_etf=math.sqrt(2 - 4 / math.sqrt(6)),
        nc3_duality=0.0,
        ncc_accuracy=1.0,
        clf_accuracy=1.0,
        nc4_ncc_mismatch=0.0,
        margin_min=2 * C**2,
        margin_mean=2 * C**2,
        intra_cos_min=1.0,
        intra_cos_mean=1.0,
        inter_cos_max=0.0,
        inter_cos_mean=-1 / 3,
        **_t8_issue13(C),
    )
    per_class = {
        k: dict(
            n=1.0,
            var=0.0,
            mean_norm=math.sqrt(2) * C,
            intra_cos=1.0,
            ncc_recall=1.0,
            clf_recall=1.0,
            duality_cos=1.0,
            w_norm=math.sqrt(2) * C,
        )
        for k in range(K)
    }
    opposite = {(0, 1), (2, 3)}
    per_pair = {
        p: dict(
            cdnv=0.0,
            mean_cos=-1.0 if p in opposite else 0.0,
            inter_cos=-1.0 if p in opposite else 0.0,
            mean_dist=(2 * math.sqrt(2) if p in opposite else 2.0) * C,
            w_cos=-1.0 if p in opposite else 0.0,
        )
        for p in _pairs(K)
    }
    return Fixture("s2_example", H.copy(), labels, H.copy(), None, K, 0.0, expected, per_class, per_pair)


def _t8_issue13(C: float) -> dict[str, float]:
    """The issue-13 columns of the S2 example: W = M, so the W geometry repeats the means'
    (``w_equiangular = √2/3``, ``w_maxangle = 4/9``) and ``nc3_tirer = nc2_tirer = 1/√3`` (seed-notes M14);
    normalised distances 2 (two opposite pairs) and √2 (four orthogonal ones); ``‖W‖ = ‖H‖ = 2√2 C``;
    logits of a sample ``2C²`` (own), ``−2C²`` (partner), 0, 0: ``q₀ = 2C²``,
    ``margin_normalized = 2C²·2·3·1/(16C²) = 3/4``; ``α = β = √2 C``."""
    distances = np.array([2.0, 2.0] + [math.sqrt(2)] * 4)
    g = 2 * C**2
    ce = math.log(math.exp(g) + math.exp(-g) + 2) - g
    return dict(
        nc1_dist_ratio=0.0,
        nc2_tirer=1 / math.sqrt(3),
        gnc2_dist_var=float(np.var(distances)),
        gnc2_log_var=float(np.var(np.log(1 / distances))),
        w_equinorm=0.0,
        w_equiangular=math.sqrt(2) / 3,
        w_maxangle=4 / 9,
        nc3_tirer=1 / math.sqrt(3),
        nc3_uniform_duality=0.0,
        norm_balance=1.0,
        margin_normalized=0.75,
        ce_loss=ce,
        ce_excess=ce - math.log(1 + 3 * math.exp(-4 / 3 * g)),
    )


# --------------------------------------------------------------------------- self-dual ETF


def self_dual_etf(
    K: int = 5, d: int = 7, n: int = 4, alpha: float = 2.0, beta: float | None = None, seed: int = 0
) -> Fixture:
    """Collapse at given norms (seed-notes T7; Pan Thm. 2.3.1; ULPM Lemma 3.1 and Thm. 3.3).

    Unit simplex-ETF directions m_c (cos −1/(K−1), Σ_c m_c = 0), every sample of
    class c equal to ``α m_c``, bias-free classifier ``w_c = β m_c`` (default
    ``β = α√n``, which makes ``‖W‖_F = ‖H‖_F``). Needs d > K: OOD rows
    ``extras['ood']`` along a direction orthogonal to every class mean.

    Known values: every logit gap ``αβK/(K−1)``, so ``CE = log(1 + (K−1)e^{−αβK/(K−1)})``,
    which is Pan's optimum at these norms (α the RMS feature norm, β the RMS row
    norm): ``ce_excess = 0``; ``q₀ = αβK/(K−1)``, ``‖W‖² = Kβ²``, ``‖H‖² = Knα²``:
    ``margin_normalized = 2αβ√n/(β² + nα²)`` (1 iff β = α√n) and
    ``norm_balance = β/(α√n)``; the geometry columns 0; ``nc5_ood_orthogonality = 0``.
    """
    beta = alpha * math.sqrt(n) if beta is None else beta
    if d <= K:
        raise ValueError("needs d > K (an OOD direction orthogonal to the class means)")
    rng = np.random.default_rng(seed)
    U = orthonormal_columns(d, K + 1, rng)
    unit = etf_centred_means(K, U, K / (K - 1))  # unit rows
    labels = np.repeat(np.arange(K), n)
    features, labels = _shuffle(rng, alpha * unit[labels], labels)
    gap = alpha * beta * K / (K - 1)
    ce = math.log1p((K - 1) * math.exp(-gap))
    expected = dict(
        nc1_dist_ratio=0.0,
        **SELF_DUAL_ETF_ZEROS,
        margin_min=gap,
        margin_normalized=2 * alpha * beta * math.sqrt(n) / (beta**2 + n * alpha**2),
        norm_balance=beta / (alpha * math.sqrt(n)),
        ce_loss=ce,
        ce_excess=0.0,
        nc5_ood_orthogonality=0.0,
    )
    ood = np.outer(np.arange(1.0, 7.0), U[:, K])  # six rows along one direction orthogonal to the means
    return Fixture("self_dual_etf", features, labels, beta * unit, np.zeros(K), K, 0.0, expected, extras=dict(ood=ood))


# --------------------------------------------------------------------------- cancellation


TRANSLATION_INVARIANT = (
    "tr_sw",
    "tr_sb",
    "nc1",
    "nc1_tilde",
    "cdnv",
    "nc2_equinorm",
    "nc2_equiangular",
    "nc2_maxangle",
    "nc2_etf",
    "nc3_duality",
    "nc3_etf",
    "ncc_accuracy",
    "clf_accuracy",
    "nc4_ncc_mismatch",
    "margin_min",
    "margin_mean",
)
"""Summary metrics unchanged by ``h ↦ h + o`` (classifier ones provided the bias
is shifted to ``b − W o``). Not invariant: the cosine view (raw, uncentred
features) and the MSE family (λ penalises the shifted bias, and A becomes
ill-conditioned)."""
TRANSLATION_INVARIANT_CLASS = ("n", "var", "mean_norm", "ncc_recall", "clf_recall", "duality_cos")
TRANSLATION_INVARIANT_PAIR = ("cdnv", "mean_cos", "mean_dist")


def offset_collapse(
    K: int = 4, d: int = 6, n: int = 20, offset: float = 1000.0, noise: float = 1e-4, seed: int = 0
) -> Fixture:
    """Nearly collapsed features far from the origin: a cancellation trap.

    ``features = offset·1 + (μ_k + noise·N(0, I))`` with unit-norm simplex-ETF
    centred means μ_k (float64). Naive ``E[h²] − E[h]²`` loses ~all digits of
    the 1e-8 variances here; centred accumulation keeps ~1e-9 relative error.
    Classifier: ``W = M̂`` (the means), ``bias = −W (offset·1)`` so that the
    logits equal those of the unshifted data.

    ``expected`` holds only translation-invariant metrics
    (:data:`TRANSLATION_INVARIANT`, ``..._CLASS``, ``..._PAIR``), computed by
    the *reference* on the unshifted features ``features − offset`` (exact in
    float64 by Sterbenz's lemma) with zero bias: the check is "shifting by
    ``offset`` changes nothing", so compare with ``rtol ≈ 1e-6`` (rounding of
    the shifted values alone perturbs the 1e-4 deviations at ~1e-9 relative).
    ``extras['unshifted']`` holds those unshifted features.
    """
    from reference import reference_metrics  # the one fixture defined by the oracle

    if abs(offset) < 4:
        raise ValueError("offset must be large (the point of the fixture)")
    rng = np.random.default_rng(seed)
    M = etf_centred_means(K, orthonormal_columns(d, K, rng), K / (K - 1))  # unit-norm rows
    labels = np.repeat(np.arange(K), n)
    base = M[labels] + noise * rng.standard_normal((K * n, d))
    base, labels = _shuffle(rng, base, labels)
    features = base + offset
    unshifted = features - offset  # exact: Sterbenz
    W = M.copy()
    bias = -W @ np.full(d, offset)
    ref = reference_metrics(unshifted, labels, weight=W, bias=np.zeros(K), num_classes=K)
    expected = {k: ref.summary[k] for k in TRANSLATION_INVARIANT}
    per_class = {c: {k: v[k] for k in TRANSLATION_INVARIANT_CLASS} for c, v in ref.per_class.items()}
    per_pair = {p: {k: v[k] for k in TRANSLATION_INVARIANT_PAIR} for p, v in ref.per_pair.items()}
    return Fixture(
        "offset_collapse",
        features,
        labels,
        W,
        bias,
        K,
        0.0,
        expected,
        per_class,
        per_pair,
        extras=dict(unshifted=unshifted, offset=offset),
    )


# --------------------------------------------------------------------------- statistical


def gaussian_around_etf(
    K: int = 5, d: int = 8, n: int = 200, sigma: float = 0.3, seed: int = 0, rho: float = 2.0
) -> Fixture:
    """Simplex-ETF means (``MMᵀ = ρP``) plus Gaussian noise N(0, σ²I), n per class.

    Only approximate values (seed-notes T6, last bullet), in ``approx``:
    ``E[tr_sw] = dσ²(n−1)/n`` (exact expectation; ``N·tr_sw/σ² ~ χ²`` with
    ``dK(n−1)`` degrees of freedom, so ``approx_std['tr_sw'] =
    σ²√(2dK(n−1))/N``); ``E[V_c]`` the same; ``E[tr_sb] = ρ(K−1)/K +
    dσ²(K−1)/(Kn)`` (exact expectation: the estimated means carry noise);
    ``nc1 ≈ σ²(K−1)/ρ`` (leading order in 1/n); ``nc1_tilde ≈ E[tr_sw]/E[tr_sb]``;
    ``cdnv ≈ E[V]/(2ρ + 2dσ²/n)``. Use for tests with tolerances of several
    standard deviations, or relative O(1/√(nK)).
    """
    rng = np.random.default_rng(seed)
    M = etf_centred_means(K, orthonormal_columns(d, K, rng), rho)
    labels = np.repeat(np.arange(K), n)
    features = M[labels] + sigma * rng.standard_normal((K * n, d))
    features, labels = _shuffle(rng, features, labels)
    N = K * n
    e_sw = d * sigma**2 * (n - 1) / n
    e_sb = rho * (K - 1) / K + d * sigma**2 * (K - 1) / (K * n)
    approx = dict(
        tr_sw=e_sw,
        tr_sb=e_sb,
        nc1=sigma**2 * (K - 1) / rho,
        nc1_tilde=e_sw / e_sb,
        cdnv=e_sw / (2 * rho + 2 * d * sigma**2 / n),
        var=e_sw,
    )
    approx_std = dict(
        tr_sw=sigma**2 * math.sqrt(2 * d * K * (n - 1)) / N, var=sigma**2 * math.sqrt(2 * d * (n - 1)) / n
    )
    return Fixture(
        "gaussian_around_etf", features, labels, num_classes=K, approx=approx, approx_std=approx_std, extras=dict(M=M)
    )


# --------------------------------------------------------------------------- T9


def mse_instance(K: int = 4, d: int = 5, n: int = 12, lam: float = 0.0, seed: int = 0) -> Fixture:
    """T9: random balanced data (n per class, all K present) and a random
    ``W, b``, for the Han et al. identities ``mse_loss = mse_ls + mse_perp`` and
    ``mse_ls = mse_nc1 + mse_nc23``.

    ``expected`` (independent formulas, not the oracle's path):
    ``W̃_LS`` from the ridge form ``Y H̃ᵀ (H̃H̃ᵀ + NλI)⁻¹`` (M50), then
    ``mse_loss``/``mse_ls`` from the matrix form ``(1/2N)‖W̃H̃ − Y‖_F² +
    (λ/2)‖W̃‖_F²`` and ``mse_perp = ½ tr(ΔAΔᵀ)``. At λ = 0 also the
    *unextended* balanced forms (S4 eqs. 16-18, T5): ``W_LS = (1/K) Mᵀ Σ_T⁻¹``,
    ``mse_nc1 = ½ tr(W_LS Σ_W W_LSᵀ)``, ``mse_nc23 = (1/2K)‖W_LS M − P_K‖_F²``
    (M here d×K). Needs N = Kn > d + 1.
    """
    if K * n <= d + 1:
        raise ValueError("need N > d + 1 for a well-posed least-squares fit")
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.standard_normal((K, d))
    labels = np.repeat(np.arange(K), n)
    features = centres[labels] + rng.standard_normal((K * n, d))
    features, labels = _shuffle(rng, features, labels)
    W = rng.standard_normal((K, d))
    b = rng.standard_normal(K)
    N = K * n

    Ht = np.vstack([features.T, np.ones(N)])  # (d+1)×N, columns h̃_i
    Y = np.eye(K)[:, labels]  # K×N
    Wt = np.hstack([W, b[:, None]])
    W_ls = Y @ Ht.T @ np.linalg.inv(Ht @ Ht.T + N * lam * np.eye(d + 1))
    A = Ht @ Ht.T / N + lam * np.eye(d + 1)

    def loss(Wm):
        return float(np.linalg.norm(Wm @ Ht - Y) ** 2) / (2 * N) + lam / 2 * float(np.linalg.norm(Wm) ** 2)

    delta = Wt - W_ls
    expected = dict(mse_loss=loss(Wt), mse_ls=loss(W_ls), mse_perp=0.5 * float(np.trace(delta @ A @ delta.T)))
    if lam == 0:
        means = np.array([features[labels == k].mean(axis=0) for k in range(K)])
        mu_g = means.mean(axis=0)
        Mc = (means - mu_g).T  # d×K
        Dt = features - mu_g
        sigma_t = Dt.T @ Dt / N
        Dw = features - means[labels]
        sigma_w = Dw.T @ Dw / N
        W_un = Mc.T @ np.linalg.inv(sigma_t) / K
        expected["mse_nc1"] = 0.5 * float(np.trace(W_un @ sigma_w @ W_un.T))
        expected["mse_nc23"] = float(np.linalg.norm(W_un @ Mc - centring_matrix(K)) ** 2) / (2 * K)
    return Fixture("mse_instance", features, labels, W, b, K, lam, expected)


def anti_aligned_collapse(K: int = 5, d: int = 7, n: int = 4, rho: float = 2.0, seed: int = 0) -> Fixture:
    """Exact collapse (every sample at its class mean, ``M = √ρ P_K Uᵀ``) with a classifier pointing exactly
    *away* from the means: ``W = −√n M``, no bias (metrics.md, the 2026-12-07 fixes).

    Closed forms: ``W/‖W‖_F = −M/‖M‖_F``, so ``nc3_duality = ‖−2M/‖M‖_F‖_F = 2``; the means are equinorm, so
    ``M̂ = M/r`` and ``WM̂ᵀ = −(√n/r) ρ P``: ``nc3_etf = ‖−P/√(K−1) − P/√(K−1)‖_F = 2``; ``tr(WMᵀ) < 0``, so
    the best ρ̃ ≥ 0 is 0 and ``nc3_tirer = 1``. Logits of a class-k sample: ``z_k = −√n r²`` and
    ``z_c = √n r²/(K−1)`` (c ≠ k, a tie won by the lowest other id): ``clf_accuracy = 0``,
    ``nc4_ncc_mismatch = 1`` (the NCC is exact), every ``q = −√n r² K/(K−1)``. ``ncc_accuracy = 1``, NC1 and
    NC2 all 0.
    """
    rng = np.random.default_rng(seed)
    M = etf_centred_means(K, orthonormal_columns(d, K, rng), rho)
    features, labels = _shuffle(rng, np.repeat(M, n, axis=0), np.repeat(np.arange(K), n))
    r_sq = rho * (K - 1) / K
    margin = -math.sqrt(n) * r_sq * K / (K - 1)
    expected = dict(
        tr_sw=0.0,
        nc2_equinorm=0.0,
        nc2_etf=0.0,
        nc3_duality=2.0,
        nc3_etf=2.0,
        nc3_tirer=1.0,
        ncc_accuracy=1.0,
        clf_accuracy=0.0,
        nc4_ncc_mismatch=1.0,
        margin_min=margin,
        margin_mean=margin,
    )
    return Fixture("anti_aligned_collapse", features, labels, -math.sqrt(n) * M, np.zeros(K), K, 0.0, expected)
