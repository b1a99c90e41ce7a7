"""One harness (as torchmetrics' ``_class_test``): every way into the metrics gives the naive oracle's numbers on
the same cases — ``analyze_features`` on a file, ``measure_collapse`` on batches in memory, ``convert`` of
arrays then analyze, and ``analyze`` under torchrun (two processes, slow tier).

The cases: random classes, an absent class whose classifier row wins rows (every logit column runs over all
outputs), singleton and strongly imbalanced classes. Every summary column is compared with
``tests/reference.py`` to 1e-9 relative; the per-class tables where the entry point writes them.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from analysis_helpers import absent_winner, analyze_collected, assert_close, assert_matches_reference
from h5files import write_feature_file
from reference import reference_metrics

from nccli import schema
from nccli.analyze.config import AnalyzeConfig
from nccli.analyze.measure import measure_collapse
from nccli.convert import ConvertConfig, convert_features

COLUMNS = [name for name in schema.METRIC_COLUMNS if not name.startswith(("mse_", "snr_", "nc5_"))]


def random_classes(seed: int = 1):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, 150)
    features = 2.0 * rng.normal(size=(5, 6))[labels] + rng.normal(size=(150, 6)) + 10.0
    return features, labels, rng.normal(size=(5, 6)), rng.normal(size=5)


def imbalanced(seed: int = 2):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(4), [1, 60, 3, 25]))
    features = 3.0 * rng.normal(size=(4, 5))[labels] + rng.normal(size=(len(labels), 5))
    return features, labels, rng.normal(size=(4, 5)), np.zeros(4)


CASES = {"random": random_classes, "absent-winner": absent_winner, "imbalanced": imbalanced}


def feature_file(folder: Path, features, labels, weight, bias) -> Path:
    return write_feature_file(
        folder / "run.h5", labels, {"feat": features}, weight=weight, bias=bias, classifier_layer="feat",
        num_classes=len(weight), chunks=16,
    )  # fmt: skip


def through_analyze(folder: Path, features, labels, weight, bias) -> dict:
    config = AnalyzeConfig(files=(str(feature_file(folder, features, labels, weight, bias)),), device="cpu")
    return analyze_collected(config)


def through_measure(folder: Path, features, labels, weight, bias) -> dict:
    batches = [(features[start : start + 32], labels[start : start + 32]) for start in range(0, len(labels), 32)]
    (row,) = measure_collapse(batches, num_classes=len(weight), classifier=(weight, bias), device="cpu")
    return row


def through_convert(folder: Path, features, labels, weight, bias) -> dict:
    arrays = folder / "arrays.npz"
    np.savez(arrays, feat=features, labels=labels, weight=weight, bias=bias)
    out = folder / "converted.h5"
    convert_features(ConvertConfig(sources=(str(arrays),), out=str(out), features=("feat",), num_classes=len(weight)))
    return analyze_collected(AnalyzeConfig(files=(str(out),), device="cpu"))


def through_torchrun(folder: Path, features, labels, weight, bias) -> dict:
    path, out = feature_file(folder, features, labels, weight, bias), folder / "r.parquet"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "nccli", "analyze", str(path), "--out", str(out), "--block-rows", "16", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    (row,) = pq.read_table(out).to_pylist()
    return {key: np.nan if value is None else value for key, value in row.items()}


ENTRIES = {
    "analyze": through_analyze,
    "measure_collapse": through_measure,
    "convert": through_convert,
    "torchrun": pytest.param(through_torchrun, marks=pytest.mark.slow),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("entry", ENTRIES.values(), ids=ENTRIES.keys())
def test_every_entry_point_gives_the_oracles_numbers(tmp_path, case, entry):
    features, labels, weight, bias = CASES[case]()
    reference = reference_metrics(features, labels, weight, bias, num_classes=len(weight))
    result = entry(tmp_path, features, labels, weight, bias)
    if isinstance(result, dict):  # one summary row
        assert_close(result, reference.summary, COLUMNS, rtol=1e-9, atol=1e-11)
    else:  # the summary and the per-class and per-pair tables
        assert_matches_reference(result, reference, rtol=1e-9, atol=1e-11)
