"""Run nccli's analyze on in-memory arrays and compare with the float64 oracle."""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from h5files import write_feature_file

from nccli import schema
from nccli.analyze.analysis import AnalyzeConfig, analyze_features


def analyze_arrays(
    folder: Path, features, labels, weight=None, bias=None, *, name="run.h5", file_kwargs=None, **config
):
    """Write one layer 'feat' (the classifier's input when ``weight`` is given), analyze it, return the result."""
    path = write_feature_file(
        Path(folder) / name,
        labels,
        {"feat": features},
        weight=weight,
        bias=bias,
        classifier_layer="feat" if weight is not None else None,
        **(file_kwargs or {}),
    )
    config.setdefault("device", "cpu")
    return analyze_collected(AnalyzeConfig(files=(str(path),), **config))


@dataclass
class Analysis:
    """What ``analyze_features`` returned, with its per-class and per-pair tables as rows (null → NaN)."""

    summary: list[dict]
    classes: list[dict]
    pairs: list[dict]
    warnings: list[str]
    conventions: dict


def analyze_collected(config: AnalyzeConfig) -> Analysis:
    """Run ``analyze_features`` with a pair sink that gathers every batch (small tests only)."""
    batches = []
    result = analyze_features(config, pairs=batches.append)
    pairs = table_rows(pa.Table.from_batches(batches))
    classes = table_rows(pa.concat_tables(result.classes)) if result.classes else []
    return Analysis(result.summary, classes, pairs, result.warnings, result.conventions)


def table_rows(table: pa.Table) -> list[dict]:
    """Rows of an Arrow table, float nulls back to NaN (the library's in-memory convention)."""
    floats = {f.name for f in table.schema if pa.types.is_floating(f.type)}
    return [{k: (math.nan if v is None and k in floats else v) for k, v in row.items()} for row in table.to_pylist()]


def by_class(rows: list[dict]) -> dict:
    return {row[schema.COL_CLASS]: row for row in rows}


def by_pair(rows: list[dict]) -> dict:
    return {(row[schema.COL_CLASS], row[schema.COL_CLASS_B]): row for row in rows}


def assert_close(actual: dict, expected: dict, keys, rtol=1e-9, atol=1e-12, where=""):
    """Every key equal to ``rtol``/``atol``; NaN must match NaN (undefined stays undefined)."""
    for key in keys:
        a, e = actual[key], expected[key]
        if e is None or (isinstance(e, float) and math.isnan(e)):
            assert a is None or math.isnan(a), f"{where}{key}: expected undefined (NaN), got {a}"
        else:
            assert a is not None and not math.isnan(a), f"{where}{key}: got NaN, expected {e}"
            assert np.isclose(a, e, rtol=rtol, atol=atol), f"{where}{key}: {a} != {e}"


def assert_matches_reference(result, reference, rtol=1e-9, atol=1e-12, with_mse=False):
    """Summary, per-class and per-pair tables of a one-layer result equal the oracle's."""
    summary = result.summary[0]
    keys = [k for k in schema.METRIC_COLUMNS if with_mse or not k.startswith("mse_")]
    assert_close(summary, reference.summary, keys, rtol, atol)
    classes = by_class(result.classes)
    assert set(classes) == set(reference.per_class)
    for class_id, expected in reference.per_class.items():
        assert_close(classes[class_id], expected, schema.CLASS_METRICS, rtol, atol, where=f"class {class_id}: ")
    pairs = by_pair(result.pairs)
    assert set(pairs) == set(reference.per_pair)
    for pair, expected in reference.per_pair.items():
        assert_close(pairs[pair], expected, schema.PAIR_METRICS, rtol, atol, where=f"pair {pair}: ")


ABSENT, NEVER_WINS = 3, 6
# What is computed from the logits: over every output of the classifier, present class or not (metrics.md).
LOGIT_COLUMNS = (
    "clf_accuracy",
    "nc4_ncc_mismatch",
    "margin_min",
    "margin_mean",
    "margin_normalized",
    "ce_loss",
    "ce_excess",
)


def absent_winner(seed: int = 0, n: int = 291, k: int = 8, d: int = 6):
    """Labels without classes 3 and 6; W a noisy copy of the class centres, row 3 = row 0 with bias + 0.5."""
    rng = np.random.default_rng(seed)
    present = [c for c in range(k) if c not in (ABSENT, NEVER_WINS)]
    labels = rng.choice(present, n)
    centres = 2.0 * rng.normal(size=(k, d))
    features = centres[labels] + rng.normal(size=(n, d))
    weight = centres + 0.3 * rng.normal(size=(k, d))
    bias = 0.1 * rng.normal(size=k)
    weight[ABSENT], bias[ABSENT] = weight[0], bias[0] + 0.5
    bias[NEVER_WINS] = -50.0
    return features, labels, weight, bias
