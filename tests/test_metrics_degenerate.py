"""Degenerate statistics follow metrics.md: a warning naming file, layer and reason, null values, no crash."""

import math
import warnings

import numpy as np
import pytest
from analysis_helpers import (
    analyze_arrays,
    assert_close,
    assert_matches_reference,
    by_class,
)
from h5files import write_feature_file
from reference import reference_metrics

from nccli import schema
from nccli.analyze.analysis import AnalyzeConfig, analyze_features
from nccli.errors import DegenerateMetricWarning


def analyze_warned(tmp_path, features, labels, weight=None, bias=None, **kwargs):
    with pytest.warns(DegenerateMetricWarning) as record:
        result = analyze_arrays(tmp_path, features, labels, weight, bias, **kwargs)
    messages = [str(w.message) for w in record]
    assert messages == result.warnings
    return result, messages


def test_single_class_reports_nulls_and_warns(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, 4))
    labels = np.full(20, 2)
    weight, bias = rng.normal(size=(3, 4)), rng.normal(size=3)
    result, messages = analyze_warned(tmp_path, features, labels, weight, bias)
    row = result.summary[0]
    nulls = (
        "nc1",
        "nc1_tilde",
        "cdnv",
        "nc2_equinorm",
        "nc2_etf",
        "nc3_duality",
        "nc3_etf",
        "margin_normalized",
        "inter_cos_max",
    )
    for key in nulls:
        assert math.isnan(row[key]), key
    logits = features @ weight.T + bias  # one class present, three outputs: the network still decides among them
    assert row["tr_sw"] > 0 and row["ncc_accuracy"] == 1.0 and row["clf_accuracy"] == np.mean(logits.argmax(1) == 2)
    assert row["margin_min"] == pytest.approx(np.min(logits[:, 2] - logits[:, :2].max(axis=1)), rel=1e-12)
    assert any("K < 2" in m and "run.h5" in m and "'feat'" in m for m in messages)
    assert_matches_reference(result, reference_metrics(features, labels, weight, bias))


def test_coincident_means_give_null_not_infinity(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(10, 5))
    features = np.vstack([base, base[::-1] + 0.0, base[[1, 0, 3, 2, 5, 4, 7, 6, 9, 8]]])  # same mean in all 3 classes
    features = features + 100.0  # riding on an offset: the centred means are rounding noise
    labels = np.repeat([0, 1, 2], 10)
    result, messages = analyze_warned(tmp_path, features, labels)
    row = result.summary[0]
    for key in ("nc1", "nc1_tilde", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc2_etf"):
        assert math.isnan(row[key]), key
    assert any("coincide" in m for m in messages)
    # coincident means are an exact NCC tie: every sample goes to the lowest class id
    assert row["ncc_accuracy"] == pytest.approx(1 / 3, abs=1e-15)
    assert [c["ncc_recall"] for c in result.classes] == [1.0, 0.0, 0.0]
    reference = reference_metrics(features, labels)
    summary = {k: v for k, v in reference.summary.items() if k != "ncc_accuracy"}
    assert_close(row, summary, summary)


def test_one_coincident_pair_nulls_only_what_depends_on_it(tmp_path):
    rng = np.random.default_rng(2)
    cloud = rng.normal(size=(12, 4))
    features = np.vstack([cloud, cloud[::-1], cloud + 5.0])
    labels = np.repeat([0, 1, 2], 12)
    result, messages = analyze_warned(tmp_path, features, labels)
    row = result.summary[0]
    assert math.isnan(row["cdnv"]) and not math.isnan(row["nc1"]) and not math.isnan(row["nc2_equinorm"])
    assert any("0–1" in m and "cdnv" in m for m in messages)
    assert_matches_reference(result, reference_metrics(features, labels))


def test_all_zero_class_and_zero_vectors(tmp_path):
    rng = np.random.default_rng(3)
    features = np.abs(rng.normal(size=(30, 6)))
    labels = np.repeat([0, 1, 2], 10)
    features[labels == 1] = 0.0  # a dead class
    features[[0, 25]] = 0.0  # two dead samples elsewhere (common after ReLU)
    result, messages = analyze_warned(tmp_path, features, labels)
    row = result.summary[0]
    assert math.isnan(row["intra_cos_min"]) and math.isnan(row["inter_cos_max"])
    assert not math.isnan(row["nc1"])
    assert math.isnan(by_class(result.classes)[1]["intra_cos"])
    assert not math.isnan(by_class(result.classes)[0]["intra_cos"])
    assert any("every feature vector is zero in classes 1" in m for m in messages)
    assert any("12 all-zero feature vectors" in m for m in messages)
    assert_matches_reference(result, reference_metrics(features, labels))


def test_a_few_zero_vectors_are_left_out_of_the_cosine_view_only(tmp_path):
    rng = np.random.default_rng(4)
    features = np.abs(rng.normal(size=(40, 5)))
    labels = np.arange(40) % 4
    features[[3, 7]] = 0.0
    result, messages = analyze_warned(tmp_path, features, labels)
    assert messages == [
        f"'{result.summary[0]['file']}': layer 'feat': 2 all-zero feature vectors left out of the cosine view"
    ]
    assert not math.isnan(result.summary[0]["intra_cos_min"])
    assert_matches_reference(result, reference_metrics(features, labels))


@pytest.mark.parametrize(
    "zero_rows, nulls, fragment",
    [
        ([0, 1, 2], ("w_equinorm", "w_equiangular", "w_maxangle", "nc3_duality", "nc3_etf", "nc3_tirer"), "W is zero"),
        ([2], ("w_equiangular", "w_maxangle", "nc3_uniform_duality"), "rows w_c = 0 for classes 2:"),
    ],
    ids=["an untrained head", "one zero row"],
)
def test_a_zero_classifier_row_is_named_in_a_warning(tmp_path, zero_rows, nulls, fragment):
    rng = np.random.default_rng(4)
    labels = np.arange(60) % 3
    features = rng.normal(size=(60, 5)) + labels[:, None]
    weight = rng.normal(size=(3, 5))
    weight[zero_rows] = 0.0
    result, messages = analyze_warned(tmp_path, features, labels, weight, np.zeros(3))
    assert len(messages) == 1 and fragment in messages[0]
    row = result.summary[0]
    assert all(math.isnan(row[column]) for column in nulls)
    assert all(column in messages[0] or "nc3_*" in messages[0] for column in nulls)
    assert not math.isnan(row["clf_accuracy"]) and not math.isnan(row["nc1"])


def test_singleton_classes_are_valid(tmp_path):
    rng = np.random.default_rng(5)
    features = rng.normal(size=(4, 3))
    labels = np.arange(4)
    result = analyze_arrays(tmp_path, features, labels)
    assert result.warnings == []
    assert result.summary[0]["tr_sw"] == 0.0 and result.summary[0]["nc1"] == 0.0
    assert all(row["var"] == 0.0 for row in result.classes)


def test_clean_data_gives_no_warnings(tmp_path):
    rng = np.random.default_rng(6)
    labels = np.arange(60) % 3
    result = analyze_arrays(tmp_path, rng.normal(size=(60, 4)) + labels[:, None], labels)
    assert result.warnings == []
    assert not any(math.isnan(result.summary[0][key]) for key in schema.NC1_METRICS + schema.NC2_METRICS)


def layer_with_counts(counts, seed=0, d=5):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    return rng.normal(size=(len(labels), d)) + labels[:, None], labels, rng.normal(size=(len(counts), d))


def test_the_imbalance_warning_comes_once_per_run_and_only_below_nine_tenths(tmp_path):
    """metrics.md: one warning per run (not per layer or file), only when the smallest class count is below
    0.9 × the largest; the conventions say it always; the warning points at the caller's line."""
    features, labels, weight = layer_with_counts([50, 46, 48])  # 0.92: a little imbalanced, no warning
    even = write_feature_file(
        tmp_path / "even.h5", labels, {"a": features, "b": features}, weight=weight, classifier_layer="b"
    )
    files = [even]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = analyze_features(AnalyzeConfig(files=tuple(map(str, files)), device="cpu"))
    assert result.warnings == [] and "balanced classes only" in result.conventions["margin_normalized"]

    for index, counts in enumerate(([50, 30, 48], [50, 44, 48])):  # 0.6 and 0.88: both below 0.9
        features, labels, weight = layer_with_counts(counts, seed=index)
        path = tmp_path / f"uneven{index}.h5"
        write_feature_file(path, labels, {"a": features, "b": features}, weight=weight, classifier_layer="b")
        files.append(path)
    with pytest.warns(DegenerateMetricWarning) as record:
        result = analyze_features(AnalyzeConfig(files=tuple(map(str, files)), device="cpu"))
    assert len(record) == 1 and record[0].filename == __file__  # the caller's line, not nccli's
    (message,) = result.warnings
    assert "uneven0.h5' (and 1 more file)" in message and "30 to 50 samples per class" in message
