"""Hostile inputs of issue 25, replayed through the command line: a fast subset of
``tests/benchmarks/reliability_hostile.py`` (refused in one line, nothing the user owns destroyed, names escaped,
a Parquet declaring millions of rows bounded)."""

import pytest
from cli_helpers import load_benchmark

hostile = load_benchmark("reliability_hostile")
FAST = (
    "index-foreign-shard",
    "means-from-order",
    "float32-1e19",
    "ood-is-out",
    "planted-lock",
    "planted-partial",
    "out-star",
    "uint64-2^63",
    "npy-negative-dims",
    "escapes-error",
    "report-2M-rows",
)
CASES = {case.name: case for case in hostile.CASES}


@pytest.mark.parametrize("name", FAST)
def test_a_hostile_input_is_refused_cleanly_or_computed_exactly(tmp_path, name):
    rows = hostile.run([CASES[name]], tmp_path, log=lambda line: None)
    assert rows[0]["held"], rows[0]["why"]


def test_every_case_has_a_distinct_name_and_the_fast_ones_exist():
    assert len(CASES) == len(hostile.CASES) >= 20
    assert set(FAST) <= set(CASES)
