"""inter_cos_max and inter_cos_mean without a float64 product per pair (nccli/metrics/inter.py).

The max is screened in float32 and decided in float64: it must be the
float64 value of the largest pair even where float32 orders near-ties the
other way, whatever the tiles; the mean comes from block sums and must equal
the sum over pairs, exactly 0 for orthogonal classes.
"""

import math

import numpy as np
import pytest

from nccli.metrics import inter

RTOL = 1e-12


def exact_pairs(a: np.ndarray) -> np.ndarray:
    """a_c·a_c' for every c < c', each from the same float64 dot product the screen decides with."""
    rows, cols = np.triu_indices(len(a), k=1)
    return np.einsum("ij,ij->i", a[rows], a[cols])


def near_ties(seed: int = 0) -> np.ndarray:
    """Rows of norm < 1 with a cluster whose pair values differ below float32 resolution."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(60, 24))
    a /= 1.5 * np.linalg.norm(a, axis=1, keepdims=True)
    base = a[5] * 1.4
    for index, row in enumerate((11, 23, 24, 41, 58)):  # pairs among these: ≈ 0.87, spread ~1e-11
        a[row] = base + 1e-11 * rng.normal(size=24) * (index + 1)
    return a


def test_near_ties_are_decided_in_float64_whatever_the_tiles():
    a = near_ties()
    values = exact_pairs(a)
    single = a.astype(np.float32)
    rows, cols = np.triu_indices(len(a), k=1)
    approx = np.einsum("ij,ij->i", single[rows], single[cols])
    assert np.argmax(approx) != np.argmax(values)  # float32 alone would pick another pair
    for tile in (1, 2, 5, 7, 59, 60, 64):
        assert inter.pair_max(a, tile) == values.max(), tile


def test_the_largest_pair_anywhere_in_a_tile_or_on_its_diagonal():
    rng = np.random.default_rng(1)
    for k, d in ((2, 3), (3, 1), (37, 6), (101, 9)):
        a = rng.normal(size=(k, d))
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        a[k // 2] = a[k - 1]  # the largest pair: two identical rows
        for tile in (1, 4, k - 1 or 1, k, k + 3):
            assert inter.pair_max(a, tile) == exact_pairs(a).max(), (k, tile)


def test_pair_sum_equals_the_sum_over_pairs():
    rng = np.random.default_rng(2)
    for k in (2, 255, 256, 600):  # around and across the blocks of PAIR_SUM_ROWS
        a = rng.normal(size=(k, 8)) + 0.3
        assert inter.pair_sum(a) == pytest.approx(float(np.sum(exact_pairs(a))), rel=RTOL), k


def test_orthogonal_classes_sum_to_exactly_zero():
    a = np.eye(300, 400) * np.linspace(0.5, 1.0, 300)[:, None]
    assert inter.pair_sum(a) == 0.0
    assert inter.inter_class_cosines(a * 3, np.full(300, 3.0), 7) == (0.0, 0.0)


def test_undefined_for_one_class_or_a_class_of_zero_vectors():
    unit_sum = np.ones((3, 2))
    assert all(math.isnan(v) for v in inter.inter_class_cosines(unit_sum[:1], np.ones(1), 4))
    unit_sum[1] = 0.0
    assert all(math.isnan(v) for v in inter.inter_class_cosines(unit_sum, np.array([2.0, 0.0, 1.0]), 4))


def test_values_are_those_of_the_cosine_view():
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 5, 50).astype(float)
    unit_sum = rng.normal(size=(50, 5)) * counts[:, None] / 3.0
    values = (unit_sum @ unit_sum.T) / np.outer(counts, counts)  # as tests/dense.py has it
    upper = values[np.triu_indices(50, k=1)]
    largest, mean = inter.inter_class_cosines(unit_sum, counts, 8)
    assert largest == pytest.approx(upper.max(), rel=RTOL) and mean == pytest.approx(upper.mean(), rel=RTOL)
