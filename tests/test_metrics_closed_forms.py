"""Closed-form cases of seed-notes §2 through the whole analyze path (file → report values).

T2 (Tirer–Bruna optimum, with NC3 = 2 − 2√((K−1)/K) for the bias-free case),
T6 (ETF + exact isotropic noise), T8 (the S2 example), T9 (the MSE
identities), a collapsed layer riding on a large offset, and Gaussian noise
around an ETF (statistical).
"""

import math

import closed_forms as cf
import numpy as np
import pytest
from analysis_helpers import analyze_arrays, assert_close, by_class, by_pair
from reference import reference_metrics


def run(tmp_path, fixture, **config):
    config.setdefault("snr", any(key.startswith("snr_") for key in fixture.expected))
    return analyze_arrays(
        tmp_path,
        fixture.features,
        fixture.labels,
        fixture.weight,
        fixture.bias,
        file_kwargs={"num_classes": fixture.num_classes},
        **config,
    )


def check_expected(result, fixture, rtol=1e-9, atol=1e-10, keys=None):
    assert_close(result.summary[0], fixture.expected, keys or fixture.expected, rtol=rtol, atol=atol)
    classes, pairs = by_class(result.classes), by_pair(result.pairs)
    for class_id, expected in fixture.expected_per_class.items():
        assert_close(classes[class_id], expected, expected, rtol, atol, where=f"class {class_id}: ")
    for pair, expected in fixture.expected_per_pair.items():
        assert_close(pairs[pair], expected, expected, rtol, atol, where=f"pair {pair}: ")


@pytest.mark.parametrize("k,d", [(4, 6), (3, 3), (7, 10)])
def test_t2_tirer_bruna_optimum(tmp_path, k, d):
    fixture = cf.tirer_bruna_optimum(K=k, d=d, n=5, lam_w=0.1, lam_h=0.1)
    result = run(tmp_path, fixture, block_rows=4, mse=True, weight_decay=fixture.weight_decay)
    check_expected(result, fixture)
    # seed-notes M20 (the squared distance) at the bias-free optimum:
    assert result.summary[0]["nc3_duality"] ** 2 == pytest.approx(2 - 2 * math.sqrt((k - 1) / k), rel=1e-12)


def test_t2_fixture_a_numbers(tmp_path):
    """Fixture A of seed-notes: K=4, d=6, n=5, λ_W = λ_H = 0.1."""
    result = run(tmp_path, cf.tirer_bruna_optimum())
    row = result.summary[0]
    assert row["tr_sb"] == pytest.approx(0.675, rel=1e-12)
    assert row["nc3_duality"] ** 2 == pytest.approx(0.267949, abs=1e-6)
    assert row["margin_min"] == pytest.approx(0.9, rel=1e-12)


@pytest.mark.parametrize(
    "params",
    [dict(), dict(K=3, d=6, sigma=0.05, rho=1.0), dict(K=6, d=9, sigma=0.5, rho=3.0, global_mean_norm=4.0)],
    ids=["fixture-C", "small-noise", "shifted"],
)
def test_t6_etf_with_exact_isotropic_noise(tmp_path, params):
    fixture = cf.etf_with_exact_noise(**params)
    check_expected(run(tmp_path, fixture, block_rows=5), fixture)


def test_t6_fixture_c_numbers(tmp_path):
    """K=5, d=8, σ=0.3, ρ=2: nc1 = σ²(K−1)/ρ = 0.18, nc1_tilde = 0.45, cdnv = 0.18."""
    row = run(tmp_path, cf.etf_with_exact_noise()).summary[0]
    assert row["nc1"] == pytest.approx(0.18, rel=1e-12)
    assert row["nc1_tilde"] == pytest.approx(0.45, rel=1e-12)
    assert row["cdnv"] == pytest.approx(0.18, rel=1e-12)
    assert row["tr_sw"] == pytest.approx(8 * 0.3**2, rel=1e-12)


def test_t8_s2_example(tmp_path):
    fixture = cf.s2_example(C=0.7)
    result = run(tmp_path, fixture)
    check_expected(result, fixture)
    row = result.summary[0]
    assert row["nc2_maxangle"] == pytest.approx(4 / 9, rel=1e-12)
    assert row["nc2_equiangular"] == pytest.approx(math.sqrt(2) / 3, rel=1e-12)
    assert row["nc2_etf"] == pytest.approx(math.sqrt(2 - 4 / math.sqrt(6)), rel=1e-12)
    assert row["margin_min"] == pytest.approx(2 * 0.7**2, rel=1e-12)
    assert result.conventions["sigma_b_rank"][row["file"]]["feat"] == 2  # opposite pairs: rank 2, not K − 1


@pytest.mark.parametrize("lam", [0.0, 1e-3, 0.5])
@pytest.mark.parametrize("block_rows", [3, None])
def test_t9_mse_identities_and_values(tmp_path, lam, block_rows):
    fixture = cf.mse_instance(K=4, d=5, n=12, lam=lam)
    row = run(tmp_path, fixture, mse=True, weight_decay=lam, block_rows=block_rows).summary[0]
    assert_close(row, fixture.expected, fixture.expected, rtol=1e-9, atol=1e-12)
    assert row["mse_loss"] == pytest.approx(row["mse_ls"] + row["mse_perp"], rel=1e-10, abs=1e-12)
    assert row["mse_ls"] == pytest.approx(row["mse_nc1"] + row["mse_nc23"], rel=1e-10, abs=1e-12)
    assert row["mse_perp"] >= 0


def test_collapsed_layer_on_a_large_offset_keeps_its_digits(tmp_path):
    """features = 1000 + ETF + 1e-4 noise (float64): no E[x²] − E[x]² cancellation."""
    fixture = cf.offset_collapse(K=4, d=6, n=20, offset=1000.0, noise=1e-4)
    result = run(tmp_path, fixture, block_rows=7)
    check_expected(result, fixture, rtol=1e-6, atol=1e-12)
    row = result.summary[0]
    assert 0 < row["nc1"] < 1e-6 and 0 < row["tr_sw"] < 1e-6  # tiny, and still not 0


def test_offset_collapse_is_exact_even_at_1e6(tmp_path):
    fixture = cf.offset_collapse(K=5, d=8, n=30, offset=1e6, noise=1e-4, seed=3)
    check_expected(run(tmp_path, fixture, block_rows=16), fixture, rtol=1e-4, atol=1e-12)


def test_gaussian_noise_around_an_etf_matches_its_expectations(tmp_path):
    """Statistical: tr_sw within 5 standard deviations of dσ²(n−1)/n; the rest to O(1/√(nK)) relative."""
    k, n = 5, 400
    fixture = cf.gaussian_around_etf(K=k, d=8, n=n, sigma=0.3, seed=11)
    row = run(tmp_path, fixture).summary[0]
    assert abs(row["tr_sw"] - fixture.approx["tr_sw"]) <= 5 * fixture.approx_std["tr_sw"]
    for key in ("tr_sb", "nc1", "nc1_tilde", "cdnv"):
        assert row[key] == pytest.approx(fixture.approx[key], rel=5 / math.sqrt(n * k)), key


@pytest.mark.parametrize("k,d", [(5, 7), (3, 3), (12, 12)])
def test_a_classifier_pointing_away_from_the_means_is_not_collapsed(tmp_path, k, d):
    """W = −√n·M at exact collapse: nc3_tirer = 1 (ρ̃ > 0, seed 000), nc3_etf = nc3_duality = 2, accuracy 0."""
    fixture = cf.anti_aligned_collapse(K=k, d=d)
    check_expected(run(tmp_path, fixture, block_rows=3), fixture, atol=1e-9)


def test_a_random_classifier_with_a_negative_trace_scores_nc3_tirer_one(tmp_path):
    rng = np.random.default_rng(8)
    features, labels = rng.normal(size=(60, 6)), np.arange(60) % 4
    weight = rng.normal(size=(4, 6))
    means = np.array([features[labels == c].mean(axis=0) for c in range(4)])
    if np.trace(weight @ (means - means.mean(axis=0)).T) > 0:
        weight = -weight
    result = analyze_arrays(tmp_path, features, labels, weight, np.zeros(4))
    assert result.summary[0]["nc3_tirer"] == 1.0
    assert result.summary[0]["nc3_tirer"] == reference_metrics(features, labels, weight).summary["nc3_tirer"]
