"""Every metric of analyze equals the naive float64 oracle (tests/reference.py).

Over block sizes, chunk shapes, compressions and stored float widths, with
absent classes, singleton classes, imbalance, K > d and the --means-from
setting. The oracle builds full d×d matrices and uses np.linalg.pinv.
"""

import numpy as np
import pytest
from analysis_helpers import (
    analyze_arrays,
    analyze_collected,
    assert_close,
    assert_matches_reference,
    by_class,
)
from h5files import write_feature_file
from reference import reference_metrics

from nccli import schema
from nccli.analyze.analysis import AnalyzeConfig


def random_layer(seed, n=120, d=7, k=5, spread=2.0, counts=None):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts) if counts is not None else rng.integers(0, k, n)
    labels = rng.permutation(labels)
    centres = rng.normal(size=(labels.max() + 1, d)) * spread
    features = centres[labels] + rng.normal(size=(len(labels), d))
    weight = rng.normal(size=(labels.max() + 1, d))
    bias = rng.normal(size=labels.max() + 1)
    return features, labels, weight, bias


@pytest.mark.parametrize("block_rows", [1, 7, 64, None])
@pytest.mark.parametrize("chunks", [None, 5, 32])
def test_summary_and_tables_equal_reference_for_any_block_and_chunk(tmp_path, block_rows, chunks):
    features, labels, weight, bias = random_layer(seed=1)
    result = analyze_arrays(
        tmp_path, features, labels, weight, bias, block_rows=block_rows, mse=True, file_kwargs={"chunks": chunks}
    )
    assert_matches_reference(result, reference_metrics(features, labels, weight, bias, mse=True), with_mse=True)


@pytest.mark.parametrize(
    "case",
    [
        dict(counts=[40, 1, 30, 1, 50]),  # singleton classes and imbalance
        dict(counts=[60, 3, 10]),  # strong imbalance (μ_G ≠ sample mean)
        dict(k=12, d=4, n=200),  # K > d: Σ_B has rank d, not K − 1
        dict(k=2, d=30, n=50),  # d ≫ K: a rank-1 Σ_B
        dict(k=6, d=80, n=40),  # d > N
    ],
    ids=["singletons", "imbalance", "K>d", "K=2", "d>N"],
)
def test_class_layouts_equal_reference(tmp_path, case):
    features, labels, weight, bias = random_layer(seed=2, **case)
    result = analyze_arrays(tmp_path, features, labels, weight, bias, block_rows=9)
    reference = reference_metrics(features, labels, weight, bias)
    assert_matches_reference(result, reference, rtol=1e-8)
    assert result.conventions["sigma_b_rank"][result.summary[0]["file"]]["feat"] == reference.sigma_b_rank


def test_absent_classes_are_ignored_not_errors(tmp_path):
    features, labels, weight, bias = random_layer(seed=3, k=6)
    keep = (labels != 1) & (labels != 4)
    features, labels = features[keep], labels[keep]
    result = analyze_arrays(tmp_path, features, labels, weight, bias, file_kwargs={"num_classes": 6})
    assert result.summary[0][schema.COL_N_CLASSES] == 4
    assert set(by_class(result.classes)) == {0, 2, 3, 5}
    assert_matches_reference(result, reference_metrics(features, labels, weight, bias, num_classes=6))


@pytest.mark.parametrize(
    "dtype,compression,rtol",
    [(np.float16, "gzip", 1e-9), (np.float32, "lzf", 1e-9), (np.float64, "gzip", 1e-9), (np.float32, None, 1e-9)],
)
def test_stored_width_and_compression(tmp_path, dtype, compression, rtol):
    features, labels, weight, bias = random_layer(seed=4)
    stored = features.astype(dtype)  # the oracle sees exactly what the file holds
    result = analyze_arrays(
        tmp_path, stored, labels, weight, bias, file_kwargs={"dtype": dtype, "compression": compression, "chunks": 16}
    )
    assert_matches_reference(result, reference_metrics(stored.astype(np.float64), labels, weight, bias), rtol=rtol)


def test_means_from_uses_the_reference_files_class_means(tmp_path):
    train_x, train_y, weight, bias = random_layer(seed=5, n=150)
    test_x, test_y, _, _ = random_layer(seed=6, n=90)
    train = write_feature_file(
        tmp_path / "train.h5", train_y, {"feat": train_x}, weight=weight, bias=bias, classifier_layer="feat"
    )
    test = write_feature_file(
        tmp_path / "test.h5", test_y, {"feat": test_x}, weight=weight, bias=bias, classifier_layer="feat", split="test"
    )
    result = analyze_collected(AnalyzeConfig(files=(str(test),), means_from=str(train), device="cpu", block_rows=11))
    train_means = {c: train_x[train_y == c].mean(axis=0) for c in np.unique(train_y)}
    reference = reference_metrics(test_x, test_y, weight, bias, ncc_means=train_means)
    assert_matches_reference(result, reference)
    own = reference_metrics(test_x, test_y, weight, bias)
    assert reference.summary["ncc_accuracy"] != own.summary["ncc_accuracy"]  # the option changes the answer


def test_means_from_can_predict_classes_absent_from_the_test_file(tmp_path):
    """NCC with train means is the train classifier: it may pick a class the test file lacks."""
    train_x, train_y, _, _ = random_layer(seed=7, k=4, n=200, spread=0.3)
    keep = train_y < 3
    test = write_feature_file(tmp_path / "test.h5", train_y[keep], {"feat": train_x[keep]}, num_classes=4)
    train = write_feature_file(tmp_path / "train.h5", train_y, {"feat": train_x}, num_classes=4)
    result = analyze_collected(AnalyzeConfig(files=(str(test),), means_from=str(train), device="cpu"))
    means = np.array([train_x[train_y == c].mean(axis=0) for c in range(4)])
    distances = ((train_x[keep][:, None, :] - means[None]) ** 2).sum(-1)
    expected = np.mean(np.argmin(distances, axis=1) == train_y[keep])
    assert result.summary[0]["ncc_accuracy"] == pytest.approx(expected, abs=1e-15)
    assert (np.argmin(distances, axis=1) == 3).any()  # the case this test is about does occur


def test_several_layers_and_files_in_one_run(tmp_path):
    rows_per_file = []
    paths = []
    for index in range(2):
        features, labels, weight, bias = random_layer(seed=10 + index, d=6)
        wide = np.hstack([features, features**2])
        paths.append(
            write_feature_file(
                tmp_path / f"f{index}.h5",
                labels,
                {"penultimate": features, "early": wide},
                orders={"penultimate": 5, "early": 2},
                weight=weight,
                bias=bias,
                classifier_layer="penultimate",
                epoch=index * 10,
            )
        )
        rows_per_file.append((reference_metrics(wide, labels), reference_metrics(features, labels, weight, bias)))
    result = analyze_collected(AnalyzeConfig(files=tuple(map(str, paths)), device="cpu", block_rows=13))
    assert [(row["file"], row["layer"]) for row in result.summary] == [
        (str(paths[0]), "early"),
        (str(paths[0]), "penultimate"),
        (str(paths[1]), "early"),
        (str(paths[1]), "penultimate"),
    ]
    for row, reference in zip(result.summary, [r for pair in rows_per_file for r in pair]):
        assert_close(row, reference.summary, schema.METRIC_COLUMNS[:-5])
    assert [row[schema.COL_EPOCH] for row in result.summary] == [0, 0, 10, 10]
    assert np.isnan(result.summary[0]["clf_accuracy"])  # classifier metrics only on the classifier layer


def test_layer_globs_select_layers(tmp_path):
    labels = np.arange(30) % 3
    rng = np.random.default_rng(0)
    layers = {name: rng.normal(size=(30, 4)) for name in ("layer1.0", "layer1.1", "layer2.0", "fc")}
    path = write_feature_file(tmp_path / "f.h5", labels, layers)
    result = analyze_collected(AnalyzeConfig(files=(str(path),), layers=("layer1.*", "fc"), device="cpu"))
    assert [row["layer"] for row in result.summary] == ["layer1.0", "layer1.1", "fc"]


def test_effective_depth_is_the_first_layer_with_small_ncc_error(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 50)
    centres = rng.normal(size=(4, 5))
    layers = {
        "noisy": centres[labels] + 5.0 * rng.normal(size=(200, 5)),
        "clean": centres[labels] + 1e-3 * rng.normal(size=(200, 5)),
        "cleaner": centres[labels] + 1e-6 * rng.normal(size=(200, 5)),
    }
    path = write_feature_file(tmp_path / "f.h5", labels, layers, orders={"noisy": 0, "clean": 3, "cleaner": 7})
    result = analyze_collected(AnalyzeConfig(files=(str(path),), device="cpu"))
    assert result.summary[0]["ncc_accuracy"] < 0.99
    assert {row[schema.COL_EFFECTIVE_DEPTH] for row in result.summary} == {3}
    strict = analyze_collected(AnalyzeConfig(files=(str(path),), device="cpu", depth_epsilon=0.0))
    assert strict.summary[0][schema.COL_EFFECTIVE_DEPTH] == 3
    never = analyze_collected(AnalyzeConfig(files=(str(path),), device="cpu", layers=("noisy",)))
    assert never.summary[0][schema.COL_EFFECTIVE_DEPTH] == 0  # no layer reaches ε: the deepest analysed


def test_class_names_reach_the_tables(tmp_path):
    features, labels, weight, bias = random_layer(seed=12, k=3)
    result = analyze_arrays(tmp_path, features, labels, file_kwargs={"class_names": ["cat", "dog", "eel"]})
    assert [row[schema.COL_CLASS_NAME] for row in result.classes] == ["cat", "dog", "eel"]
    assert [(row[schema.COL_CLASS_NAME], row[schema.COL_CLASS_NAME_B]) for row in result.pairs] == [
        ("cat", "dog"),
        ("cat", "eel"),
        ("dog", "eel"),
    ]
