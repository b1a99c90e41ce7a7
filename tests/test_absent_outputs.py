"""What comes from the logits runs over every output of the classifier, present class or not (``docs/metrics.md``,
changed 2026-12-07): a split that lacks a class still sees the network predict it.

The data: class 3 is absent, and its classifier row is class 0's with a larger bias, so it wins every row
that class 0 would have won. Every logit-derived column (decisions, margins, q₀, both cross-entropies) must
equal the float64 oracle over all outputs, through every path: one process and several block sizes, pass 2
over class tiles of several widths (numpy and torch); ``measure_collapse``, ``convert`` and torchrun run the
same data in ``test_entry_points.py``.
"""

import numpy as np
import pytest
from analysis_helpers import (
    ABSENT,
    LOGIT_COLUMNS,
    NEVER_WINS,
    absent_winner,
    analyze_arrays,
    assert_close,
    assert_matches_reference,
    by_class,
)
from reference import reference_metrics

from nccli.metrics.backend import TorchBackend
from nccli.metrics.numpy_backend import NumpyBackend


def test_the_data_has_an_absent_class_that_wins_rows():
    """The premise: over all outputs the network's accuracy is lower than over present classes only."""
    features, labels, weight, bias = absent_winner()
    logits = features @ weight.T + bias
    assert np.sum(logits.argmax(axis=1) == ABSENT) > 20
    present_only = logits.copy()
    present_only[:, [ABSENT, NEVER_WINS]] = -np.inf
    assert np.mean(logits.argmax(axis=1) == labels) < np.mean(present_only.argmax(axis=1) == labels) - 0.05


def oracle(features, labels, weight, bias):
    return reference_metrics(features, labels, weight, bias, num_classes=len(weight))


@pytest.mark.parametrize("block_rows", [7, 64, None])
def test_every_column_equals_the_oracle_over_all_outputs(tmp_path, block_rows):
    features, labels, weight, bias = absent_winner()
    result = analyze_arrays(
        tmp_path, features, labels, weight, bias, file_kwargs={"num_classes": len(weight)}, block_rows=block_rows
    )
    assert_matches_reference(result, oracle(features, labels, weight, bias), rtol=1e-9, atol=1e-11)
    assert ABSENT not in by_class(result.classes)  # the tables stay over present classes


@pytest.mark.parametrize(
    "backend,k,width",
    [("numpy", 8, 1), ("numpy", 8, 3), ("torch", 8, 1), ("torch", 8, 3), ("numpy", 300, 37), ("torch", 300, None)],
)
def test_pass_two_over_class_tiles_includes_every_row_of_w(tmp_path, monkeypatch, backend, k, width):
    """Tiles of ``width`` classes per block of 16 rows (None: every class); K = 300 outputs, 200 of them absent."""
    tile_bytes = NumpyBackend.tile_bytes if width is None else 4 * 16 * width
    monkeypatch.setattr(NumpyBackend, "tile_bytes", tile_bytes)
    if backend == "torch":
        torch_backend = TorchBackend("cpu")
        torch_backend.tile_bytes = tile_bytes
        monkeypatch.setattr("nccli.analyze.analysis.select_backend", lambda device: torch_backend)
    features, labels, weight, bias = absent_winner(seed=k, n=291 if k == 8 else 400, k=k)
    result = analyze_arrays(tmp_path, features, labels, weight, bias, file_kwargs={"num_classes": k}, block_rows=16)
    expected = oracle(features, labels, weight, bias).summary
    assert_close(result.summary[0], expected, LOGIT_COLUMNS, rtol=1e-9, atol=1e-11)
