"""Tests of the test oracle itself: ``reference.py`` against closed forms,
identities and invariances, and the plain-h5py writer ``h5files.py``."""

from __future__ import annotations

import math

import closed_forms as cf
import h5py
import numpy as np
import pytest
from h5files import write_feature_file
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import reference_metrics

from nccli import schema

CLOSED_TOL = 1e-9


def close(actual: float, expected: float, tol: float = CLOSED_TOL) -> bool:
    return abs(actual - expected) <= tol * max(1.0, abs(expected))


def run(fx: cf.Fixture, **kwargs):
    kwargs.setdefault("mse", any(k.startswith("mse_") for k in fx.expected))
    kwargs.setdefault("snr", any(k.startswith("snr_") for k in fx.expected))
    kwargs.setdefault("ood_features", fx.extras.get("ood"))
    kwargs.setdefault("weight_decay", fx.weight_decay)
    return reference_metrics(fx.features, fx.labels, fx.weight, fx.bias, fx.num_classes, **kwargs)


def assert_fixture(fx: cf.Fixture, tol: float = CLOSED_TOL, features=None) -> None:
    ref = (
        run(fx)
        if features is None
        else reference_metrics(
            features, fx.labels, fx.weight, fx.bias, fx.num_classes, ood_features=fx.extras.get("ood")
        )
    )
    bad = [(k, ref.summary[k], v) for k, v in fx.expected.items() if not close(ref.summary[k], v, tol)]
    for c, values in fx.expected_per_class.items():
        bad += [((c, k), ref.per_class[c][k], v) for k, v in values.items() if not close(ref.per_class[c][k], v, tol)]
    for p, values in fx.expected_per_pair.items():
        bad += [((p, k), ref.per_pair[p][k], v) for k, v in values.items() if not close(ref.per_pair[p][k], v, tol)]
    assert not bad, f"{fx.name}: (metric, reference, expected): {bad}"


def summary_keys_complete(ref) -> None:
    assert set(ref.summary) == set(schema.METRIC_COLUMNS)
    for values in ref.per_class.values():
        assert set(values) == set(schema.CLASS_METRICS)
    for (a, b), values in ref.per_pair.items():
        assert a < b and set(values) == set(schema.PAIR_METRICS)


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(K=3, d=3, n=2, lam_w=0.05, lam_h=0.2, seed=3),
        dict(K=6, d=10, n=4, lam_w=0.3, lam_h=0.01, seed=7),
        dict(K=2, d=5, n=1, lam_w=0.5, lam_h=0.5, seed=1),
    ],
)
def test_tirer_bruna_optimum(kwargs):
    fx = cf.tirer_bruna_optimum(**kwargs)
    assert_fixture(fx)
    summary_keys_complete(run(fx))


def test_fixture_a_numbers():
    """seed-notes T2, Fixture A: c = 0.1, ρ = 0.9, tr Σ_B = 0.675, M20 = 0.267949, q_min = 0.9."""
    fx = cf.tirer_bruna_optimum()
    assert fx.extras["c"] == pytest.approx(0.1) and fx.extras["rho"] == pytest.approx(0.9)
    s = run(fx).summary
    assert s["tr_sb"] == pytest.approx(0.675, abs=1e-12)
    assert s["nc3_duality"] ** 2 == pytest.approx(0.267949, abs=1e-6)
    assert s["margin_min"] == pytest.approx(0.9, abs=1e-12)
    assert s["mse_loss"] == pytest.approx(0.05, abs=1e-12)  # c/2 at λ = λ_W/K; the full UFM L* = 0.095


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(K=3, d=6, sigma=0.1, rho=1.5, seed=2, global_mean_norm=3.0),
        dict(K=2, d=2, sigma=0.2, rho=1.0, seed=4),
        dict(K=4, d=5, sigma=2.0, rho=1.0, seed=5),
    ],
)
def test_etf_with_exact_noise(kwargs):
    fx = cf.etf_with_exact_noise(**kwargs)
    assert_fixture(fx)


def test_fixture_c_numbers():
    """seed-notes T6, Fixture C (K=5, d=8, σ=0.3, ρ=2, n=16)."""
    fx = cf.etf_with_exact_noise(K=5, d=8, sigma=0.3, rho=2.0)
    assert len(fx.labels) == 5 * 16
    ref = run(fx)
    s = ref.summary
    for key, value in dict(nc1=0.18, nc1_tilde=0.45, cdnv=0.18, tr_sw=0.72, tr_sb=1.6).items():
        assert s[key] == pytest.approx(value, abs=1e-12), key
    assert ref.sigma_b_rank == 4
    assert s["ncc_accuracy"] == 1.0 and s["nc4_ncc_mismatch"] == 0.0


def test_exact_noise_nc1_general_rule():
    """T6 general rule: Σ_W = σ²I ⇒ nc1 = σ² Σ_j 1/s_j², s_j the non-zero singular values of M."""
    fx = cf.etf_with_exact_noise(K=4, d=6, sigma=0.25, rho=1.3, seed=9)
    s = np.linalg.svd(fx.extras["M"], compute_uv=False)
    s = s[s > 1e-9 * s[0]]
    assert len(s) == 3
    assert run(fx).summary["nc1"] == pytest.approx(0.25**2 * np.sum(1 / s**2), rel=1e-12)


@pytest.mark.parametrize("C", [0.7, 0.1, 2.5])
def test_s2_example(C):
    assert_fixture(cf.s2_example(C))


@pytest.mark.parametrize("k,d", [(5, 7), (3, 3)])
def test_anti_aligned_collapse(k, d):
    """The oracle, re-derived from the seeds, scores W = −√n·M as far from collapse as it is."""
    assert_fixture(cf.anti_aligned_collapse(K=k, d=d))


def test_s2_example_numbers():
    """seed-notes T8, Fixture B (C = 0.7)."""
    s = run(cf.s2_example(0.7)).summary
    assert s["nc2_maxangle"] == pytest.approx(0.444444, abs=1e-6)
    assert s["nc2_equiangular"] == pytest.approx(0.471405, abs=1e-6)
    assert s["nc2_etf"] == pytest.approx(0.605811, abs=1e-6)
    assert s["nc3_etf"] == pytest.approx(0.605811, abs=1e-6)
    assert s["margin_min"] == pytest.approx(0.98, abs=1e-12)


@pytest.mark.parametrize("kwargs", [dict(), dict(K=3, d=4, n=7, offset=-5e3, noise=1e-5, seed=3)])
def test_offset_collapse_is_translation_invariant(kwargs):
    fx = cf.offset_collapse(**kwargs)
    assert np.array_equal(fx.features - fx.extras["offset"], fx.extras["unshifted"])
    assert_fixture(fx, tol=1e-6)
    tr_sw = fx.expected["tr_sw"]
    assert 0 < tr_sw < 1e-7  # the variances really are tiny next to offset² ~ 1e6


def test_gaussian_around_etf_statistics():
    fx = cf.gaussian_around_etf(K=5, d=8, n=150, sigma=0.3, seed=11)
    ref = run(fx)
    s = ref.summary
    assert abs(s["tr_sw"] - fx.approx["tr_sw"]) < 5 * fx.approx_std["tr_sw"]
    for c in range(5):
        assert abs(ref.per_class[c]["var"] - fx.approx["var"]) < 5 * fx.approx_std["var"]
    for key in ("tr_sb", "nc1", "nc1_tilde", "cdnv"):
        assert s[key] == pytest.approx(fx.approx[key], rel=0.1), key
    assert s["nc2_etf"] < 0.1 and s["ncc_accuracy"] > 0.95


@pytest.mark.parametrize("lam", [0.0, 1e-3, 0.1, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_mse_instance(lam, seed):
    fx = cf.mse_instance(K=4, d=5, n=12, lam=lam, seed=seed)
    assert ("mse_nc1" in fx.expected) == (lam == 0)
    assert_fixture(fx)


# --------------------------------------------------------------------------- MSE identities (T9)


def random_layer(rng, K, d, n_per_class, num_classes=None, absent=()):
    """Clustered random features; ``n_per_class`` an int or a list (imbalanced)."""
    num_classes = num_classes or K
    classes = [c for c in range(num_classes) if c not in absent][:K]
    sizes = n_per_class if isinstance(n_per_class, list) else [n_per_class] * len(classes)
    labels = np.concatenate([np.full(m, c) for c, m in zip(classes, sizes)])
    centres = 2.0 * rng.standard_normal((num_classes, d))
    features = centres[labels] + rng.standard_normal((len(labels), d))
    perm = rng.permutation(len(labels))
    return features[perm], labels[perm]


def assert_mse_identities(s, tol=1e-10):
    scale = max(1.0, abs(s["mse_loss"]))
    assert abs(s["mse_loss"] - (s["mse_ls"] + s["mse_perp"])) <= tol * scale
    assert abs(s["mse_ls"] - (s["mse_nc1"] + s["mse_nc23"])) <= tol * max(1.0, abs(s["mse_ls"]))
    assert s["mse_perp"] >= -tol * scale and s["mse_nc1"] >= -tol and s["mse_nc23"] >= -tol


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    lam=st.sampled_from([0.0, 1e-6, 1e-3, 0.05, 0.5, 3.0]),
    imbalanced=st.booleans(),
    absent=st.booleans(),
    with_bias=st.booleans(),
)
def test_mse_identities_random(seed, lam, imbalanced, absent, with_bias):
    rng = np.random.default_rng(seed)
    K, d, num_classes = 4, 5, 6
    sizes = [3, 9, 5, 14] if imbalanced else 8
    X, y = random_layer(rng, K, d, sizes, num_classes, absent=(1,) if absent else ())
    W = rng.standard_normal((num_classes, d))
    b = rng.standard_normal(num_classes) if with_bias else None
    s = reference_metrics(X, y, W, b, num_classes, mse=True, weight_decay=lam).summary
    assert_mse_identities(s)


def test_mse_perp_vanishes_at_the_least_squares_classifier():
    rng = np.random.default_rng(5)
    X, y = random_layer(rng, 3, 4, [6, 10, 7])
    for lam in (0.0, 0.2):
        N = len(y)
        Ht = np.vstack([X.T, np.ones(N)])
        W_ls = np.eye(3)[:, y] @ Ht.T @ np.linalg.inv(Ht @ Ht.T + N * lam * np.eye(5))
        s = reference_metrics(X, y, W_ls[:, :4], W_ls[:, 4], mse=True, weight_decay=lam).summary
        assert abs(s["mse_perp"]) < 1e-12
        assert s["mse_loss"] == pytest.approx(s["mse_ls"], rel=1e-12)
        assert_mse_identities(s)


def test_mse_singular_a_uses_min_norm_solution():
    """λ = 0 with a dead feature (A singular): finite values and both identities."""
    rng = np.random.default_rng(2)
    X, y = random_layer(rng, 3, 4, 5)
    X[:, 2] = 0.0
    s = reference_metrics(X, y, rng.standard_normal((3, 4)), rng.standard_normal(3), mse=True).summary
    assert all(math.isfinite(s[k]) for k in schema.MSE_METRICS)
    assert_mse_identities(s)


def test_mse_not_reported_unless_asked():
    rng = np.random.default_rng(0)
    X, y = random_layer(rng, 3, 4, 5)
    s = reference_metrics(X, y, rng.standard_normal((3, 4))).summary
    assert all(math.isnan(s[k]) for k in schema.MSE_METRICS)
    s = reference_metrics(X, y, mse=True).summary  # no weight: no MSE
    assert all(math.isnan(s[k]) for k in schema.MSE_METRICS + schema.NC3_METRICS)


# --------------------------------------------------------------------------- independent cross-checks


def test_cosine_view_matches_mean_of_unit_vectors_identity():
    """T10 (Pan Lemma 2.4.4): intra_c = ‖ĥ_c‖², inter_cc' = ĥ_c·ĥ_c', ĥ_c the mean unit vector."""
    rng = np.random.default_rng(3)
    X, y = random_layer(rng, 4, 6, [5, 1, 7, 3])
    X[0] = 0.0  # a single zero vector is left out of the cosine view
    ref = reference_metrics(X, y)
    unit = {}
    for c in range(4):
        rows = X[(y == c) & (np.linalg.norm(X, axis=1) > 0)]
        unit[c] = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).mean(axis=0)
    for c in range(4):
        assert ref.per_class[c]["intra_cos"] == pytest.approx(unit[c] @ unit[c], abs=1e-13)
    for (a, b), values in ref.per_pair.items():
        assert values["inter_cos"] == pytest.approx(unit[a] @ unit[b], abs=1e-13)


def test_single_zero_vector_only_leaves_the_cosine_view():
    rng = np.random.default_rng(4)
    X, y = random_layer(rng, 3, 5, 6)
    X_zero = np.vstack([X, np.zeros(5)])
    y_zero = np.append(y, 1)
    with_zero = reference_metrics(X_zero, y_zero).summary
    without = reference_metrics(X, y).summary
    for k in schema.COSINE_METRICS:
        assert with_zero[k] == pytest.approx(without[k], abs=1e-14)
    assert with_zero["tr_sw"] != pytest.approx(without["tr_sw"], rel=1e-6)


def test_nc1_matches_projection_onto_the_span_of_the_means():
    """nc1 for d ≫ N: ``Σ_B⁺ = K V S⁻² Vᵀ`` from the SVD ``M = U S Vᵀ`` (rank K−1)."""
    rng = np.random.default_rng(8)
    K, d = 4, 60
    X, y = random_layer(rng, K, d, [3, 2, 4, 3])
    ref = reference_metrics(X, y)
    means = np.array([X[y == c].mean(axis=0) for c in range(K)])
    M = means - means.mean(axis=0)
    _, s, Vt = np.linalg.svd(M, full_matrices=False)
    keep = s > 1e-8 * s[0]
    V, s = Vt[keep].T, s[keep]
    D = X - means[y]
    sigma_w = D.T @ D / len(y)
    nc1 = np.trace(V.T @ sigma_w @ V @ np.diag(1 / s**2))  # (1/K)·K
    assert ref.sigma_b_rank == K - 1 == len(s)
    assert ref.summary["nc1"] == pytest.approx(nc1, rel=1e-9)


def test_cdnv_and_nc2_by_hand():
    # class 0: {0, 2} → μ = 1, V = 1; class 1: {5, 5, 8} → μ = 6, V = 2 (1-D)
    X = np.array([[0.0], [2.0], [5.0], [5.0], [8.0]])
    y = np.array([0, 0, 1, 1, 1])
    ref = reference_metrics(X, y)
    assert ref.summary["cdnv"] == pytest.approx((1 + 2) / (2 * 25))
    assert ref.summary["tr_sw"] == pytest.approx((1 + 1 + 1 + 1 + 4) / 5)
    assert ref.summary["tr_sb"] == pytest.approx(2.5**2)  # μ_G = 3.5 (mean of means)
    assert ref.summary["nc2_equinorm"] == 0.0 and ref.summary["nc2_maxangle"] == 0.0
    assert ref.per_pair[(0, 1)]["mean_cos"] == pytest.approx(-1.0)
    assert ref.summary["nc1"] == pytest.approx(((8 / 5) / 2.5**2) / 2)


def test_ncc_ties_go_to_the_lowest_present_class():
    # class 3: {-1, -1} → μ = -1; class 5: {0, 2} → μ = 1; the sample at 0 is a tie → 3
    X = np.array([[-1.0], [-1.0], [0.0], [2.0]])
    y = np.array([3, 3, 5, 5])
    ref = reference_metrics(X, y, num_classes=7)
    assert ref.summary["ncc_accuracy"] == 0.75
    assert ref.per_class[5]["ncc_recall"] == 0.5
    assert set(ref.per_class) == {3, 5} and set(ref.per_pair) == {(3, 5)}


def test_the_classifier_decides_over_every_output_present_class_or_not():
    """metrics.md: what comes from the logits runs over all num_classes outputs, as the network decides."""
    rng = np.random.default_rng(1)
    X, y = random_layer(rng, 3, 4, 5, num_classes=4, absent=(2,))
    W = np.zeros((4, 4))
    b = np.array([1.0, 0.0, 100.0, 0.5])  # absent class 2 dominates: the network predicts it for every row
    s = reference_metrics(X, y, W, b, num_classes=4).summary
    assert s["clf_accuracy"] == 0.0 and s["nc4_ncc_mismatch"] == 1.0
    margins = b[y] - 100.0
    assert s["margin_min"] == -100.0 and s["margin_mean"] == pytest.approx(margins.mean())
    assert s["ce_loss"] == pytest.approx(np.mean(np.log(np.exp(b).sum()) - b[y]))


def test_ncc_means_replace_this_datas_means():
    rng = np.random.default_rng(6)
    X, y = random_layer(rng, 3, 4, 6)
    other = {0: X[y == 1].mean(axis=0), 1: X[y == 0].mean(axis=0), 2: X[y == 2].mean(axis=0)}
    swapped = reference_metrics(X, y, ncc_means=other)
    plain = reference_metrics(X, y)
    assert plain.summary["ncc_accuracy"] > 0.9 and swapped.summary["ncc_accuracy"] < 0.6
    array_form = np.array([other[c] for c in range(3)])
    assert reference_metrics(X, y, ncc_means=array_form).summary["ncc_accuracy"] == swapped.summary["ncc_accuracy"]
    assert swapped.summary["nc1"] == plain.summary["nc1"]  # only the NCC rule changes
    with pytest.raises(ValueError):
        reference_metrics(X, y, ncc_means={0: other[0], 1: other[1]})


# --------------------------------------------------------------------------- invariances


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 100.0))
def test_invariances(seed, scale):
    rng = np.random.default_rng(seed)
    X, y = random_layer(rng, 4, 5, [4, 6, 3, 5])
    W, b = rng.standard_normal((4, 5)), rng.standard_normal(4)
    base = reference_metrics(X, y, W, b)
    perm = rng.permutation(len(y))
    permuted = reference_metrics(X[perm], y[perm], W, b)
    for k in schema.METRIC_COLUMNS:
        assert permuted.summary[k] == pytest.approx(base.summary[k], rel=1e-9, abs=1e-12, nan_ok=True), k
    Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))  # h ↦ s Q h, W ↦ W Qᵀ / s keeps the logits
    moved = reference_metrics(scale * X @ Q.T, y, W @ Q.T / scale, b)
    scale_dependent = ("tr_sw", "tr_sb", "margin_normalized", "norm_balance")  # ‖W‖ and ‖H‖ scale apart
    scale_free = [k for k in schema.METRIC_COLUMNS if k not in scale_dependent and k not in schema.OPT_IN_METRICS]
    for k in scale_free:
        assert moved.summary[k] == pytest.approx(base.summary[k], rel=1e-8, abs=1e-10, nan_ok=True), k
    assert moved.summary["tr_sw"] == pytest.approx(scale**2 * base.summary["tr_sw"], rel=1e-9)
    shift = rng.standard_normal(5) * 10
    shifted = reference_metrics(X + shift, y, W, b - W @ shift)
    for k in cf.TRANSLATION_INVARIANT:
        assert shifted.summary[k] == pytest.approx(base.summary[k], rel=1e-8, abs=1e-10), k


# --------------------------------------------------------------------------- degenerate cases


NAN_IF_ONE_CLASS = {
    "nc1",
    "nc1_tilde",
    "cdnv",
    *schema.NC2_METRICS,
    *schema.NC3_METRICS,
    *schema.W_METRICS,
    "margin_normalized",
    "ce_excess",
    "inter_cos_max",
    "inter_cos_mean",
    *schema.SNR_METRICS,
    *schema.OOD_METRICS,
}
NAN_IF_COINCIDENT = {"nc1", "nc1_tilde", "cdnv", *schema.NC2_METRICS, *schema.NC3_METRICS}


def test_one_class():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 3))
    y = np.full(6, 2)
    W = rng.standard_normal((3, 3))
    ref = reference_metrics(X, y, W, mse=True)
    summary_keys_complete(ref)
    for k in schema.METRIC_COLUMNS:
        assert math.isnan(ref.summary[k]) == (k in NAN_IF_ONE_CLASS), k
    assert ref.summary["tr_sb"] == 0.0 and ref.summary["ncc_accuracy"] == 1.0
    logits = X @ W.T  # one class present, three outputs: the logits still decide among all three
    assert ref.summary["clf_accuracy"] == np.mean(logits.argmax(axis=1) == 2)
    assert ref.summary["margin_min"] == pytest.approx(np.min(logits[:, 2] - logits[:, :2].max(axis=1)))
    assert ref.sigma_b_rank == 0 and ref.n_classes == 1 and ref.per_pair == {}
    assert math.isnan(ref.per_class[2]["duality_cos"]) and ref.per_class[2]["mean_norm"] == 0.0


def test_coincident_means():
    rng = np.random.default_rng(1)
    v = rng.standard_normal(4) + 0.1  # inexact centring: the means agree only to rounding
    a, c = rng.standard_normal(4), rng.standard_normal(4)
    X = np.array([v + a, v - a, v + c, v - c, v + 2 * c, v - 2 * c])
    y = np.array([0, 0, 1, 1, 1, 1])
    ref = reference_metrics(X, y, rng.standard_normal((2, 4)), rng.standard_normal(2))
    for k in schema.METRIC_COLUMNS:
        if k not in schema.OPT_IN_METRICS:
            assert math.isnan(ref.summary[k]) == (k in NAN_IF_COINCIDENT), k
    assert ref.summary["tr_sb"] == 0.0 and ref.sigma_b_rank == 0
    assert math.isnan(ref.per_pair[(0, 1)]["cdnv"]) and math.isnan(ref.per_pair[(0, 1)]["mean_cos"])
    assert ref.per_pair[(0, 1)]["mean_dist"] < 1e-12
    assert ref.summary["ncc_accuracy"] == pytest.approx(2 / 6)  # every tie goes to class 0
    assert "nc1" in ref.undefined


def test_partially_coincident_means():
    """Two of three means coincide: cdnv NaN (one pair undefined), nc1 finite on rank-1 Σ_B."""
    rng = np.random.default_rng(2)
    u, a = rng.standard_normal(3), rng.standard_normal(3)
    X = np.array([a, -a, 0.5 * a, -0.5 * a, u + a, u - a])
    y = np.array([0, 0, 1, 1, 2, 2])
    ref = reference_metrics(X, y)
    assert math.isnan(ref.summary["cdnv"]) and math.isnan(ref.per_pair[(0, 1)]["cdnv"])
    assert math.isfinite(ref.per_pair[(0, 2)]["cdnv"])
    assert ref.sigma_b_rank == 1 and math.isfinite(ref.summary["nc1"]) and math.isfinite(ref.summary["nc2_etf"])


def test_zero_centred_mean():
    """Means v−u, v, v+u: the middle class sits on μ_G, its direction is undefined."""
    rng = np.random.default_rng(3)
    v, u, e = rng.standard_normal(3), rng.standard_normal(3), 0.1 * rng.standard_normal(3)
    X = np.array([v - u + e, v - u - e, v + e, v - e, v + u + e, v + u - e])
    y = np.array([0, 0, 1, 1, 2, 2])
    ref = reference_metrics(X, y, rng.standard_normal((3, 3)))
    assert math.isfinite(ref.summary["nc2_equinorm"]) and math.isfinite(ref.summary["nc1"])
    for k in ("nc2_equiangular", "nc2_maxangle", "nc2_etf"):
        assert math.isnan(ref.summary[k]), k
    assert math.isnan(ref.per_class[1]["duality_cos"]) and math.isnan(ref.per_pair[(0, 1)]["mean_cos"])
    assert ref.per_pair[(0, 2)]["mean_cos"] == pytest.approx(-1.0)


def test_all_zero_class():
    rng = np.random.default_rng(4)
    X, y = random_layer(rng, 3, 4, 5)
    X[y == 1] = 0.0
    ref = reference_metrics(X, y, rng.standard_normal((3, 4)))
    for k in schema.METRIC_COLUMNS:
        if k not in schema.OPT_IN_METRICS:
            assert math.isnan(ref.summary[k]) == (k in schema.COSINE_METRICS), k
    assert math.isnan(ref.per_class[1]["intra_cos"]) and math.isfinite(ref.per_class[0]["intra_cos"])
    assert math.isnan(ref.per_pair[(0, 1)]["inter_cos"]) and math.isfinite(ref.per_pair[(0, 2)]["inter_cos"])
    assert ref.per_class[1]["var"] == 0.0


def test_one_sample_class_is_valid():
    rng = np.random.default_rng(5)
    X, y = random_layer(rng, 3, 4, [1, 4, 6])
    ref = reference_metrics(X, y, rng.standard_normal((3, 4)))
    assert ref.per_class[0]["var"] == 0.0 and ref.per_class[0]["intra_cos"] == pytest.approx(1.0)
    assert all(math.isfinite(ref.summary[k]) for k in schema.METRIC_COLUMNS if k not in schema.OPT_IN_METRICS)


def test_no_samples():
    ref = reference_metrics(np.zeros((0, 3)), np.zeros(0, dtype=int))
    summary_keys_complete(ref)
    assert all(math.isnan(v) for v in ref.summary.values()) and ref.n_samples == 0


def test_absent_classes_are_ignored():
    rng = np.random.default_rng(6)
    X, y = random_layer(rng, 3, 4, 5)
    relabelled = np.array([0, 4, 7])[y]
    a = reference_metrics(X, y).summary
    b = reference_metrics(X, relabelled, num_classes=9)
    assert set(b.per_class) == {0, 4, 7}
    for k in schema.METRIC_COLUMNS:
        assert b.summary[k] == pytest.approx(a[k], rel=1e-12, nan_ok=True), k


def test_bad_input_raises():
    X = np.ones((3, 2))
    with pytest.raises(ValueError):
        reference_metrics(X, np.array([0, 1, 3]), num_classes=3)
    with pytest.raises(ValueError):
        reference_metrics(X, np.array([0, 1, 1]), weight=np.ones((3, 2)))  # 3 rows but num_classes = 2
    with pytest.raises(ValueError):
        reference_metrics(np.array([[np.nan, 1.0]]), np.array([0]))


def test_float16_input_is_accumulated_in_float64():
    rng = np.random.default_rng(7)
    X, y = random_layer(rng, 3, 4, 5)
    X16 = X.astype(np.float16)
    a = reference_metrics(X16, y).summary
    b = reference_metrics(X16.astype(np.float64), y).summary
    assert a == pytest.approx(b, nan_ok=True)


# --------------------------------------------------------------------------- h5files


def test_h5_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 20)
    layers = {"layer1.0.relu": rng.standard_normal((20, 5)), "avgpool": rng.standard_normal((20, 4))}
    W, b = rng.standard_normal((3, 4)), rng.standard_normal(3)
    path = write_feature_file(
        tmp_path / "f.h5",
        labels,
        layers,
        weight=W,
        bias=b,
        classifier_layer="avgpool",
        logits=rng.standard_normal((20, 3)),
        num_classes=3,
        class_names=["cat", "dög", "emu"],
        split="test",
        epoch=7,
        model="resnet18",
        complete=True,
        extra_root_attrs={"rows_written": 20, "dataset": "cifar10"},
        layer_attrs={"avgpool": {schema.ATTR_POOLING: "avg", schema.ATTR_SAMPLE_SHAPE: np.array([4, 1, 1])}},
        sample_index=np.arange(20),
    )
    with h5py.File(path, "r") as f:
        assert f.attrs[schema.ATTR_FORMAT] == schema.FORMAT_NAME
        assert f.attrs[schema.ATTR_FORMAT_VERSION] == schema.FORMAT_VERSION
        assert f.attrs[schema.ATTR_NUM_CLASSES] == 3 and f.attrs[schema.ATTR_EPOCH] == 7
        assert list(f.attrs[schema.ATTR_CLASS_NAMES]) == ["cat", "dög", "emu"]
        assert f.attrs[schema.ATTR_SPLIT] == "test" and f.attrs[schema.ATTR_MODEL] == "resnet18"
        assert isinstance(f.attrs[schema.ATTR_SPLIT], str)
        assert bool(f.attrs[schema.ATTR_COMPLETE]) is True
        assert f.attrs[schema.ATTR_ROWS_WRITTEN] == 20 and f.attrs["dataset"] == "cifar10"
        np.testing.assert_array_equal(f[schema.LABELS][()], labels)
        assert list(f[schema.LAYERS]) == sorted(layers)  # h5py lists names alphabetically; order is the attr
        for i, (name, data) in enumerate(layers.items()):
            ds = f[schema.layer_path(name)]
            np.testing.assert_array_equal(ds[()], data)
            assert ds.attrs[schema.ATTR_ORDER] == i and ds.chunks is None and ds.dtype == np.float64
        assert f[schema.layer_path("avgpool")].attrs[schema.ATTR_POOLING] == "avg"
        np.testing.assert_array_equal(f[schema.CLASSIFIER_WEIGHT][()], W)
        np.testing.assert_array_equal(f[schema.CLASSIFIER_BIAS][()], b)
        assert f[schema.CLASSIFIER].attrs[schema.ATTR_CLASSIFIER_LAYER] == "avgpool"
        assert f[schema.LOGITS].shape == (20, 3) and f[schema.SAMPLE_INDEX].shape == (20,)


@pytest.mark.parametrize(
    ("dtype", "chunks", "compression", "expect_chunks"),
    [
        (np.float16, 7, "gzip", (7, 6)),
        (np.float32, True, None, "auto"),
        (np.float64, None, "lzf", "auto"),
        (np.float32, 100, None, (25, 6)),
        (None, None, None, None),
    ],
)
def test_h5_storage_options(tmp_path, dtype, chunks, compression, expect_chunks):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((25, 6))
    path = write_feature_file(
        tmp_path / "s.h5", np.zeros(25, dtype=int), {"fc": data}, dtype=dtype, chunks=chunks, compression=compression
    )
    with h5py.File(path, "r") as f:
        ds = f[schema.layer_path("fc")]
        assert ds.dtype == (dtype or np.float64)
        assert ds.compression == compression
        if expect_chunks == "auto":
            assert ds.chunks is not None
        else:
            assert ds.chunks == expect_chunks
        np.testing.assert_array_equal(ds[()], data.astype(dtype or np.float64))


def test_h5_orders_and_omit(tmp_path):
    layers = {"a": np.zeros((2, 1)), "b": np.zeros((2, 1)), "c": np.zeros((2, 1))}
    path = write_feature_file(
        tmp_path / "o.h5", [0, 1], layers, orders={"a": 5, "b": 2, "c": 9}, omit=("nccli_format", "labels", "order:c")
    )
    with h5py.File(path, "r") as f:
        assert schema.ATTR_FORMAT not in f.attrs and schema.ATTR_FORMAT_VERSION in f.attrs
        assert schema.LABELS not in f
        assert f[schema.layer_path("a")].attrs[schema.ATTR_ORDER] == 5
        assert f[schema.layer_path("b")].attrs[schema.ATTR_ORDER] == 2
        assert schema.ATTR_ORDER not in f[schema.layer_path("c")].attrs
        assert schema.ATTR_NUM_CLASSES not in f.attrs and schema.CLASSIFIER not in f
    path = write_feature_file(tmp_path / "p.h5", [0, 1], layers, orders=[3, 1, 2], omit=("order", "format_version"))
    with h5py.File(path, "r") as f:
        assert all(schema.ATTR_ORDER not in f[schema.layer_path(n)].attrs for n in layers)
        assert schema.ATTR_FORMAT_VERSION not in f.attrs
    with pytest.raises(ValueError):
        write_feature_file(tmp_path / "q.h5", [0], {"a": np.zeros((1, 1))}, omit=("bogus",))


def test_h5_file_feeds_the_reference(tmp_path):
    """Round trip through a float32 file: the reference on what was read equals the one on the cast data."""
    fx = cf.etf_with_exact_noise()
    path = write_feature_file(
        tmp_path / "r.h5",
        fx.labels,
        {"penultimate": fx.features},
        weight=fx.weight,
        bias=fx.bias,
        classifier_layer="penultimate",
        dtype=np.float32,
        chunks=10,
    )
    with h5py.File(path, "r") as f:
        X = f[schema.layer_path("penultimate")][()]
        y = f[schema.LABELS][()]
        W = f[schema.CLASSIFIER_WEIGHT][()]
    a = reference_metrics(X, y, W).summary
    b = reference_metrics(fx.features.astype(np.float32), fx.labels, fx.weight).summary
    assert a == pytest.approx(b, nan_ok=True)
    assert a["nc1"] == pytest.approx(0.18, rel=1e-5)


# --------------------------------------------------------------------------- closed forms and bounds


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(K=3, d=4, n=1, alpha=0.5),
        dict(K=6, d=9, n=5, alpha=1.5, beta=0.7, seed=3),
        dict(K=2, d=3, n=2, alpha=3.0, beta=0.2, seed=1),
    ],
)
def test_self_dual_etf(kwargs):
    """ce_excess = 0 at any norms; margin_normalized = norm_balance = 1 exactly when ‖W‖_F = ‖H‖_F."""
    fx = cf.self_dual_etf(**kwargs)
    assert_fixture(fx)
    s = run(fx).summary
    if "beta" not in kwargs:
        assert s["margin_normalized"] == pytest.approx(1.0, abs=1e-12) and s["norm_balance"] == pytest.approx(
            1.0, abs=1e-12
        )


def test_snr_closed_form_of_an_etf_with_exact_noise():
    """ETF means of norm r, Σ_W = σ²I exactly: every ω_j = r√(K/(K−1))/σ, so snr_min = snr_max."""
    K, sigma, rho = 5, 0.3, 2.0
    fx = cf.etf_with_exact_noise(K=K, d=8, sigma=sigma, rho=rho)
    r = math.sqrt(rho * (K - 1) / K)
    s = run(fx).summary
    assert s["snr_min"] == pytest.approx(r * math.sqrt(K / (K - 1)) / sigma, rel=1e-12)
    assert s["snr_max"] == pytest.approx(s["snr_min"], rel=1e-12)


def test_snr_is_null_when_sigma_w_is_singular():
    rng = np.random.default_rng(8)
    X, y = random_layer(rng, 3, 6, [2, 2, 2])  # N = 6 rows, d = 6: rank Σ_W ≤ N − K = 3
    ref = reference_metrics(X, y, rng.standard_normal((3, 6)), snr=True)
    assert math.isnan(ref.summary["snr_min"]) and "singular" in ref.undefined["snr_min"]


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(2, 6),
    n=st.integers(1, 6),
    d=st.integers(2, 8),
    spread=st.floats(0.0, 5.0),
    bias_scale=st.floats(0.0, 3.0),
)
def test_balanced_bounds(seed, k, n, d, spread, bias_scale):
    """Balanced data: margin_normalized ≤ 1 (ULPM Lemma 3.1) and ce_excess ≥ 0 (Pan Thm. 2.3.1), any W, b."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(k), n))
    X = spread * rng.standard_normal((k, d))[y] + rng.standard_normal((k * n, d))
    W = rng.standard_normal((k, d)) * rng.uniform(0.1, 3.0)
    s = reference_metrics(X, y, W, bias_scale * rng.standard_normal(k)).summary
    assert s["margin_normalized"] <= 1 + 1e-12
    assert s["ce_excess"] >= -1e-12
