"""Issue 13's columns through the whole analyze path: closed forms, the float64 oracle, --snr, --ood.

The oracle (``reference.py`` / ``reference_more.py``) and the closed forms
(``closed_forms.py``) are checked against each other in ``test_reference.py``;
here analyze is checked against both, over batchings, with absent and
singleton classes and imbalance, on the numpy and the torch backend.
"""

import math

import closed_forms as cf
import numpy as np
import pytest
from analysis_helpers import analyze_arrays, assert_close, assert_matches_reference
from cli_helpers import assert_user_error, invoke
from h5files import write_feature_file
from reference import reference_metrics

from nccli import schema
from nccli.metrics.backend import TorchBackend

NEW_COLUMNS = (
    "nc1_dist_ratio",
    "nc2_tirer",
    "gnc2_dist_var",
    "gnc2_log_var",
    *schema.W_METRICS,
    "nc3_tirer",
    "nc3_uniform_duality",
    *schema.LOSS_METRICS,
    *schema.SNR_METRICS,
    *schema.OOD_METRICS,
)


def random_layer(seed, n=120, d=7, k=5, counts=None, spread=2.0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts) if counts is not None else rng.integers(0, k, n)
    labels = rng.permutation(labels)
    features = rng.normal(size=(labels.max() + 1, d))[labels] * spread + rng.normal(size=(len(labels), d))
    return features, labels, rng.normal(size=(labels.max() + 1, d)), rng.normal(size=labels.max() + 1), rng


def with_ood(tmp_path, features, seed=0, shift=0.5):
    rng = np.random.default_rng(seed)
    ood = rng.normal(size=(30, features.shape[1])) + shift
    path = write_feature_file(tmp_path / "ood.h5", rng.integers(0, 3, len(ood)), {"feat": ood}, num_classes=3)
    return ood, str(path)


@pytest.mark.parametrize("kwargs", [dict(), dict(K=3, d=4, n=1, alpha=0.5), dict(K=6, d=9, n=5, alpha=1.5, beta=0.7)])
@pytest.mark.parametrize("block_rows", [1, 5, None])
def test_self_dual_etf_closed_forms(tmp_path, kwargs, block_rows):
    """ce_excess = 0, Tirer forms, GNC2, w_*, UNC3 and NC5 all 0; margin_normalized = norm_balance = 1 at ‖W‖ = ‖H‖."""
    fixture = cf.self_dual_etf(**kwargs)
    ood_path = write_feature_file(
        tmp_path / "ood.h5", np.zeros(6, dtype=int), {"feat": fixture.extras["ood"]}, num_classes=1
    )
    result = analyze_arrays(
        tmp_path,
        fixture.features,
        fixture.labels,
        fixture.weight,
        fixture.bias,
        block_rows=block_rows,
        ood=str(ood_path),
    )
    assert_close(result.summary[0], fixture.expected, fixture.expected, rtol=1e-9, atol=1e-12)
    if "beta" not in kwargs:
        assert result.summary[0]["margin_normalized"] == pytest.approx(1.0, abs=1e-12)
        assert result.summary[0]["norm_balance"] == pytest.approx(1.0, abs=1e-12)


def test_snr_of_an_etf_with_exact_noise_is_flat(tmp_path):
    K, sigma, rho = 5, 0.3, 2.0
    fixture = cf.etf_with_exact_noise(K=K, d=8, sigma=sigma, rho=rho)
    row = analyze_arrays(
        tmp_path, fixture.features, fixture.labels, fixture.weight, fixture.bias, snr=True, block_rows=7
    ).summary[0]
    assert row["snr_min"] == pytest.approx(math.sqrt(rho) / sigma, rel=1e-12)
    assert row["snr_max"] == pytest.approx(row["snr_min"], rel=1e-12)


@pytest.mark.parametrize(
    "case",
    [dict(), dict(counts=[40, 1, 30, 1, 50]), dict(counts=[60, 3, 10]), dict(k=12, d=4, n=200), dict(k=2, d=30, n=80)],
    ids=["random", "singletons", "imbalance", "K>d", "K=2"],
)
@pytest.mark.parametrize("block_rows", [1, 9, None])
def test_new_columns_equal_the_oracle(tmp_path, case, block_rows):
    features, labels, weight, bias, _ = random_layer(seed=2, **case)
    ood, ood_path = with_ood(tmp_path, features)
    result = analyze_arrays(tmp_path, features, labels, weight, bias, block_rows=block_rows, snr=True, ood=ood_path)
    reference = reference_metrics(features, labels, weight, bias, snr=True, ood_features=ood)
    assert_matches_reference(result, reference, rtol=1e-8, atol=1e-11)
    assert_close(result.summary[0], reference.summary, schema.SNR_METRICS + schema.OOD_METRICS, rtol=1e-8)


def test_absent_classes_and_the_torch_backend(tmp_path, monkeypatch):
    features, labels, weight, bias, _ = random_layer(seed=3, k=6)
    keep = (labels != 1) & (labels != 4)
    features, labels = features[keep], labels[keep]
    reference = reference_metrics(features, labels, weight, bias, num_classes=6, snr=True)
    monkeypatch.setattr("nccli.analyze.analysis.select_backend", lambda device: TorchBackend("cpu"))
    result = analyze_arrays(
        tmp_path, features, labels, weight, bias, file_kwargs={"num_classes": 6}, snr=True, block_rows=11
    )
    assert_matches_reference(result, reference, rtol=1e-8, atol=1e-11)
    assert_close(result.summary[0], reference.summary, NEW_COLUMNS[:-1], rtol=1e-8, atol=1e-11)


def test_collapse_at_large_margins_keeps_the_tiny_losses(tmp_path):
    """Gap αβK/(K−1) = 40: CE ≈ (K−1)e^{−40} ≈ 1e-17 is kept (log1p), and ce_excess is 0 to that scale."""
    fixture = cf.self_dual_etf(K=4, d=6, n=3, alpha=2.0, beta=15.0)
    row = analyze_arrays(tmp_path, fixture.features, fixture.labels, fixture.weight, fixture.bias).summary[0]
    assert row["ce_loss"] == pytest.approx(fixture.expected["ce_loss"], rel=1e-9)
    assert abs(row["ce_excess"]) <= 1e-9 * fixture.expected["ce_loss"]


def test_singular_sigma_w_gives_null_snr_and_a_warning(tmp_path):
    features, labels, weight, bias, _ = random_layer(seed=4, n=9, d=12, k=3)
    with pytest.warns(Warning, match="Σ_W is singular"):
        result = analyze_arrays(tmp_path, features, labels, weight, bias, snr=True)
    row = result.summary[0]
    assert math.isnan(row["snr_min"]) and math.isnan(row["snr_max"])
    assert math.isfinite(row["nc1"])


def test_unequal_class_counts_warn_on_margin_normalized(tmp_path):
    features, labels, weight, bias, _ = random_layer(seed=5, counts=[10, 20, 30])
    with pytest.warns(Warning, match="margin_normalized uses n = N/K"):
        analyze_arrays(tmp_path, features, labels, weight, bias)


# --------------------------------------------------------------------------- bad input for the new options


def test_ood_file_with_other_layers_or_widths_is_refused(tmp_path):
    features, labels, weight, bias, rng = random_layer(seed=6)
    path = write_feature_file(
        tmp_path / "run.h5", labels, {"feat": features}, weight=weight, bias=bias, classifier_layer="feat"
    )
    renamed = write_feature_file(tmp_path / "renamed.h5", labels, {"other": features})
    narrow = write_feature_file(tmp_path / "narrow.h5", labels, {"feat": features[:, :3]})
    out = tmp_path / "r.parquet"
    assert_user_error(invoke("analyze", path, "--ood", renamed, "--out", out), "renamed.h5", "no layer 'feat'", "other")
    assert_user_error(invoke("analyze", path, "--ood", narrow, "--out", out), "narrow.h5", "d = 3", "d = 7")
    assert not out.exists()


def test_snr_and_ood_from_the_command_line(tmp_path):
    features, labels, weight, bias, _ = random_layer(seed=7)
    path = write_feature_file(
        tmp_path / "run.h5", labels, {"feat": features}, weight=weight, bias=bias, classifier_layer="feat"
    )
    _, ood_path = with_ood(tmp_path, features)
    out = tmp_path / "r.parquet"
    result = invoke("analyze", path, "--snr", "--ood", ood_path, "--out", out)
    assert result.exit_code == 0, result.output
    import pyarrow.parquet as pq

    row = pq.read_table(out).to_pylist()[0]
    assert all(math.isfinite(row[name]) for name in NEW_COLUMNS)


def test_snr_without_a_classifier_warns_and_leaves_nulls(tmp_path):
    features, labels, _, _, _ = random_layer(seed=8)
    with pytest.warns(Warning, match=r"snr_\* reported as null \(--snr\)"):
        row = analyze_arrays(tmp_path, features, labels, snr=True).summary[0]
    assert all(math.isnan(row[name]) for name in schema.SNR_METRICS + schema.W_METRICS + schema.LOSS_METRICS)
    assert math.isfinite(row["nc1_dist_ratio"]) and math.isfinite(row["nc2_tirer"])
