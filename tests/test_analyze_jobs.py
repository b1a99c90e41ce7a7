"""`analyze --jobs N`: row ranges on worker processes, states merged, the same numbers as one process."""

import math

import numpy as np
import pytest
from analysis_helpers import analyze_collected
from h5files import write_feature_file
from typer.testing import CliRunner

from nccli.analyze.analysis import AnalyzeConfig
from nccli.analyze.plan import row_ranges
from nccli.cli import app


def feature_files(folder, count=2):
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        labels = rng.integers(0, 6, 997)  # odd size: ranges of unequal length
        features = rng.normal(size=(997, 12)) + labels[:, None] * 0.5 + 100.0
        weight = rng.normal(size=(6, 12))
        paths.append(
            str(
                write_feature_file(
                    folder / f"f{index}.h5",
                    labels,
                    {"early": np.tanh(features - 100.0), "fc_in": features},
                    weight=weight,
                    bias=-weight @ np.full(12, 100.0),
                    classifier_layer="fc_in",
                    chunks=16,
                )
            )
        )
    return paths


def test_jobs_equal_one_process(tmp_path):
    files = tuple(feature_files(tmp_path))
    reference = files[0]
    common = dict(files=files, means_from=reference, mse=True, weight_decay=1e-3, block_rows=32, device="cpu")
    single = analyze_collected(AnalyzeConfig(**common, jobs=1))
    parallel = analyze_collected(AnalyzeConfig(**common, jobs=2))
    assert len(single.summary) == len(parallel.summary) == 4
    for rows_one, rows_many in (
        (single.summary, parallel.summary),
        (single.classes, parallel.classes),
        (single.pairs, parallel.pairs),
    ):
        assert len(rows_one) == len(rows_many)
        for one, many in zip(rows_one, rows_many):
            assert_same_row(one, many)


def assert_same_row(one: dict, many: dict) -> None:
    assert one.keys() == many.keys()
    for key, a in one.items():
        b = many[key]
        if isinstance(a, float):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-10, abs=1e-14), key
        else:
            assert a == b, key


def test_row_ranges_cover_every_row_once_at_block_boundaries():
    for n, block, parts in [(997, 32, 8), (10, 3, 4), (5, 100, 8), (64, 8, 1)]:
        ranges = row_ranges(n, block, parts)
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(start % block == 0 for start, _ in ranges)
        assert len(ranges) <= parts


def test_a_workers_error_is_one_clean_line(tmp_path):
    labels = np.arange(200) % 4
    features = np.ones((200, 3)) * labels[:, None]
    features[150, 1] = np.nan
    path = write_feature_file(tmp_path / "nan.h5", labels, {"x": features}, chunks=10)
    result = CliRunner().invoke(
        app, ["analyze", str(path), "--out", str(tmp_path / "r.parquet"), "--jobs", "2", "--block-rows", "10"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip() == f"error: '{path}': '/layers/x': non-finite feature value (NaN or Inf) in row 150"
    assert not (tmp_path / "r.parquet").exists()
