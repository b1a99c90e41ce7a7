"""``--top-classes`` and ``--min-count``: analyze over some classes equals analyze of a file that holds only their
rows (same ``num_classes``, same classifier), with ``--means-from``, with layer groups and under torchrun; the rule
is in the report's conventions; an empty kept set and a bad value are one line."""

import json
import math
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_helpers import assert_user_error, invoke
from h5files import write_feature_file

import nccli.analyze.analysis
from nccli.analyze.kept_classes import KeptRows
from nccli.metrics.accumulators import ClassMoments
from nccli.metrics.backend import NumpyBackend
from nccli.report import tables

# Rows per class: class 5 absent, four classes tied at 40 (the lower ids win a tie), 9 the largest.
COUNTS = np.array([50, 10, 40, 40, 5, 0, 30, 40, 25, 60, 3, 40])
K, DIM = len(COUNTS), 8


def data(seed: int = 0, counts=COUNTS):
    """Shuffled labels with ``counts`` rows per class, two layers ('fc_in' the classifier's input) and W, b: one
    network (the same centres and classifier whatever the seed), close classes (the NCC rule errs)."""
    network = np.random.default_rng(0)
    centres = 1.5 * network.normal(size=(K, DIM))
    weight = centres + 0.5 * network.normal(size=(K, DIM))
    bias = 0.1 * network.normal(size=K) - weight @ np.full(DIM, 50.0)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(K), counts))
    features = centres[labels] + rng.normal(size=(len(labels), DIM)) + 50.0  # an offset: centring matters
    layers = {"early": np.tanh(features[:, :5] - 50.0), "fc_in": features}
    return labels, layers, weight, bias


def feature_file(path, labels, layers, weight, bias, keep=None):
    """The file of these rows, or of the rows of the classes ``keep`` only (in the same order)."""
    at = slice(None) if keep is None else np.isin(labels, sorted(keep))
    rows = {name: values[at] for name, values in layers.items()}
    return write_feature_file(
        path, labels[at], rows, weight=weight, bias=bias, classifier_layer="fc_in", num_classes=K, chunks=16
    )


class Report(NamedTuple):
    summary: list[dict]
    classes: list[dict]
    pairs: list[dict]
    conventions: dict


def analyze(folder, name, *args) -> Report:
    """``nccli analyze`` with the per-class and per-pair tables."""
    out, classes, pairs = (folder / f"{name}{part}.parquet" for part in ("", "-classes", "-pairs"))
    result = invoke(
        "analyze", *args, "--out", out, "--classes", classes, "--pairs", pairs, "--device", "cpu", "--block-rows", "32"
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    conventions = json.loads(table.schema.metadata[b"conventions"])
    return Report(table.to_pylist(), pq.read_table(classes).to_pylist(), pq.read_table(pairs).to_pylist(), conventions)


TABLES = ("summary", "classes", "pairs")


def assert_same_reports(got: Report, want: Report) -> None:
    """The same summary, class and pair tables."""
    for table in TABLES:
        assert_same_rows(getattr(got, table), getattr(want, table))


def of_file(report: Report, path) -> Report:
    """The rows of one file's layers."""
    return report._replace(
        **{table: [row for row in getattr(report, table) if row["file"] == str(path)] for table in TABLES}
    )


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    """The same rows but for the file's name, numbers to 1e-10 relative, nulls where the other has them."""
    assert len(got) == len(want) > 0
    for mine, theirs in zip(got, want):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            if key == "file":
                continue
            if isinstance(value, float) and not math.isnan(value):
                assert mine[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key
            elif isinstance(value, float) or value is None:
                assert mine[key] is None or math.isnan(mine[key]), key
            else:
                assert mine[key] == value, key


@pytest.mark.parametrize(
    ("options", "kept"),
    [
        (["--top-classes", "4"], {9, 0, 2, 3}),  # 2 and 3 before 7 and 11, all four with 40 rows
        (["--min-count", "30"], {0, 2, 3, 6, 7, 9, 11}),
        (["--top-classes", "5", "--min-count", "45"], {0, 9}),
        (["--top-classes", "50"], set(range(K)) - {5}),  # more than there are: every present class
    ],
)
def test_some_classes_equal_a_file_of_their_rows_only(tmp_path, options, kept):
    labels, layers, weight, bias = data()
    whole = feature_file(tmp_path / "whole.h5", labels, layers, weight, bias)
    only = feature_file(tmp_path / "only.h5", labels, layers, weight, bias, keep=kept)
    report = analyze(tmp_path, "kept", whole, *options, "--mse")
    assert_same_reports(report, analyze(tmp_path, "only", only, "--mse"))
    assert {row["class"] for row in report.classes} == kept
    assert {row["n_samples"] for row in report.summary} == {int(COUNTS[sorted(kept)].sum())}
    assert {row["n_classes"] for row in report.summary} == {len(kept)}


def test_the_conventions_say_the_rule(tmp_path):
    path = feature_file(tmp_path / "whole.h5", *data())
    said = {
        "top": analyze(tmp_path, "top", path, "--top-classes", "4").conventions["kept_classes"],
        "min": analyze(tmp_path, "min", path, "--min-count", "30").conventions["kept_classes"],
        "both": analyze(tmp_path, "both", path, "--top-classes", "4", "--min-count", "30").conventions["kept_classes"],
        "none": analyze(tmp_path, "none", path).conventions["kept_classes"],
    }
    assert said == {
        "top": "the 4 most frequent classes of each file (rows of the others left out; ties to the lower class id)",
        "min": "the classes with at least 30 rows of each file (rows of the others left out)",
        "both": "the 4 most frequent classes with at least 30 rows of each file (rows of the others left out; "
        "ties to the lower class id)",
        "none": None,
    }


def test_means_from_keeps_the_reference_means_of_the_kept_classes_only(tmp_path):
    """The NCC rule picks among the reference's means of the kept classes (those of the analysed file)."""
    kept = {9, 0, 2, 3}
    train, test = data(seed=1, counts=np.full(K, 20)), data(seed=2)
    reference = feature_file(tmp_path / "train.h5", *train)
    reference_only = feature_file(tmp_path / "train-only.h5", *train, keep=kept)
    whole = feature_file(tmp_path / "test.h5", *test)
    only = feature_file(tmp_path / "test-only.h5", *test, keep=kept)
    report = analyze(tmp_path, "kept", whole, "--top-classes", "4", "--means-from", reference)
    assert_same_reports(report, analyze(tmp_path, "only", only, "--means-from", reference_only))
    every = analyze(tmp_path, "every", only, "--means-from", reference).summary
    assert [row["ncc_accuracy"] for row in every] != [row["ncc_accuracy"] for row in report.summary]  # it mattered
    assert report.conventions["ncc_means_from"] == {str(whole): str(reference)}


def test_layer_groups_keep_the_same_classes_decided_once_per_file(tmp_path, monkeypatch):
    """One pair of passes per layer: every group keeps the set the first group's counts decided."""
    labels, layers, weight, bias = data()
    kept = {0, 2, 3, 6, 7, 9, 11}
    whole = feature_file(tmp_path / "whole.h5", labels, layers, weight, bias)
    other = feature_file(tmp_path / "other.h5", *data(seed=3))
    only = feature_file(tmp_path / "only.h5", labels, layers, weight, bias, keep=kept)
    want = analyze(tmp_path, "only", only)
    groups = nccli.analyze.analysis.layer_groups
    monkeypatch.setattr(
        nccli.analyze.analysis, "layer_groups", lambda *args: [(layer,) for group in groups(*args) for layer in group]
    )
    decided = []
    decide = nccli.analyze.analysis.kept_classes
    monkeypatch.setattr(nccli.analyze.analysis, "kept_classes", lambda *args: decided.append(args[2]) or decide(*args))
    report = analyze(tmp_path, "kept", whole, other, "--min-count", "30")
    assert decided == [str(whole), str(other)]
    assert_same_reports(of_file(report, whole), want)


def test_an_empty_kept_set_is_one_line_naming_the_file_and_its_largest_class(tmp_path):
    path = feature_file(tmp_path / "whole.h5", *data())
    out = tmp_path / "r.parquet"
    line = assert_user_error(invoke("analyze", path, "--min-count", "61", "--out", out, "--device", "cpu"))
    assert f"'{path}'" in line and "60 rows" in line and "--min-count 61" in line
    assert not out.exists()


@pytest.mark.parametrize(("option", "value"), [("--top-classes", "0"), ("--min-count", "-3")])
def test_a_value_below_one_is_refused_in_one_line(tmp_path, option, value):
    path = feature_file(tmp_path / "whole.h5", *data())
    out = tmp_path / "r.parquet"
    assert_user_error(invoke("analyze", path, option, value, "--out", out), f"{option} must be ≥ 1, got {value}")
    assert not out.exists()


def test_a_reference_without_any_kept_class_is_one_line(tmp_path):
    counts = np.full(K, 20)
    counts[[9, 0, 2, 3]] = 0
    reference = feature_file(tmp_path / "train.h5", *data(seed=1, counts=counts))
    path = feature_file(tmp_path / "test.h5", *data(seed=2))
    out = tmp_path / "r.parquet"
    result = invoke("analyze", path, "--top-classes", "4", "--means-from", reference, "--out", out, "--device", "cpu")
    assert_user_error(result, "--means-from reference has no rows of the 4 classes kept in", f"'{path}'")
    assert not out.exists()


def test_top_classes_bound_the_pair_table_checked_before_reading(tmp_path, monkeypatch):
    """The full pair table's size is checked against K(K−1)/2 of the kept classes at most."""
    monkeypatch.setattr(tables, "PAIRS_ROWS_MAX", 20)  # 2 layers × 66 pairs of 12 classes; 2 × 6 of 4
    path = feature_file(tmp_path / "whole.h5", *data())
    pairs = tmp_path / "p.parquet"
    refused = invoke("analyze", path, "--out", tmp_path / "r.parquet", "--pairs", pairs, "--device", "cpu")
    assert_user_error(refused, "--pairs would write up to 132 rows")
    kept = invoke(
        "analyze", path, "--top-classes", 4, "--out", tmp_path / "r.parquet", "--pairs", pairs, "--device", "cpu"
    )
    assert kept.exit_code == 0, kept.output
    assert pq.read_table(pairs).num_rows == 12


def test_a_restricted_pass_one_state_is_the_state_of_the_kept_rows_alone():
    rng = np.random.default_rng(4)
    labels, rows = rng.integers(0, 5, 60), rng.normal(size=(60, 3))
    rows[7] = 0.0  # a zero vector: out of the cosine view's unit sums
    kept = np.array([True, False, True, True, False])
    whole, alone = ClassMoments.empty(NumpyBackend(), 5, 3), ClassMoments.empty(NumpyBackend(), 5, 3)
    whole.update(rows, labels)
    alone.update(rows[kept[labels]], labels[kept[labels]])
    restricted = whole.restricted(kept)
    for field in ("count", "mean", "unit_sum", "unit_count"):
        np.testing.assert_allclose(getattr(restricted, field), getattr(alone, field), rtol=1e-14, err_msg=field)


class Blocks:
    """A row source of two blocks, its other attributes plain values."""

    info, classifier, rank_local = "info", None, False

    def __init__(self, labels, rows):
        self.labels, self.rows = labels, rows

    def blocks(self, layers, block_rows, first=0, end=None):
        for at in (slice(0, 3), slice(3, None)):
            yield self.labels[at], {"feat": self.rows[at]}


@pytest.mark.parametrize("as_tensors", [False, True])
def test_kept_rows_yield_each_blocks_kept_rows_and_count_the_others_as_read(as_tensors):
    labels, rows = np.array([0, 2, 1, 2, 2, 0]), np.arange(12.0).reshape(6, 2)
    if as_tensors:
        torch = pytest.importorskip("torch")
        labels, rows = torch.from_numpy(labels), torch.from_numpy(rows)
    left_out = []
    source = KeptRows(Blocks(labels, rows), np.array([True, False, True]), left_out.append)
    blocks = [(np.asarray(got), np.asarray(block["feat"])) for got, block in source.blocks((), 3)]
    assert [got.tolist() for got, _ in blocks] == [[0, 2], [2, 2, 0]]
    assert [block[:, 0].tolist() for _, block in blocks] == [[0.0, 2.0], [6.0, 8.0, 10.0]]
    assert left_out == [1]
    assert (source.info, source.classifier, source.rank_local) == ("info", None, False)


@pytest.mark.slow
def test_top_classes_under_torchrun_equals_one_process(tmp_path):
    from test_distributed_analyze import compare

    labels, layers, weight, bias = data()
    path = feature_file(tmp_path / "whole.h5", labels, layers, weight, bias)
    reference = feature_file(tmp_path / "train.h5", *data(seed=1, counts=np.full(K, 20)))
    compare(
        tmp_path, [path], ["--top-classes", "4", "--min-count", "35", "--means-from", reference, "--block-rows", "32"]
    )
