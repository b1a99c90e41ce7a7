"""Many classes (metrics.md, "Many classes"): pair statistics over tiles equal the dense K × K computation.

The oracle is tests/dense.py (full matrices, explicit differences). Tiles of
1, a few, K − 1, K and more than K classes; K = 2; K > N with absent and
singleton classes; coincident and nearly coincident means on a large offset;
both branches of the ETF distances (K − 1 > d and K ≤ d + 1).
"""

import math
import tracemalloc
from typing import NamedTuple

import numpy as np
import pytest
from dense import dense_pairs, dense_ties

from nccli.metrics import threads as threads_module
from nccli.metrics import tiles
from nccli.metrics.accumulators import ClassMoments, Decisions
from nccli.metrics.backend import select_backend
from nccli.metrics.formulas import Spectrum, between_class_spectrum
from nccli.metrics.geometry import build_geometry, ties_exact
from nccli.metrics.layer import summarize_layer
from nccli.types import Classifier, ClassMeans

XP = select_backend("cpu")
RTOL, ATOL = 1e-12, 1e-15
PAIR_METRICS = ("cdnv", "mean_cos", "inter_cos", "mean_dist", "w_cos")


class States(NamedTuple):
    moments: ClassMoments
    spectrum: Spectrum
    decisions: Decisions


def states_of(features, labels, num_classes) -> States:
    """Both passes over the rows, without a classifier (these tests are about the pair statistics)."""
    features, labels = XP.features(np.asarray(features)), XP.labels(np.asarray(labels))
    moments = ClassMoments.empty(XP, num_classes, features.shape[1])
    moments.update(features, labels)
    spectrum = between_class_spectrum(moments.class_means().centred)
    decisions = Decisions.empty(XP, num_classes, spectrum.rank)
    decisions.update(build_geometry(XP, moments, spectrum, moments.class_means(), None), features, labels)
    return States(moments, spectrum, decisions)


def summarize(states: States, weight=None, tile=None, per_pair=True):
    """summarize_layer of both passes' states; with ``per_pair`` the tiles go to a per-pair consumer."""
    classifier = Classifier(weight, np.zeros(len(weight))) if weight is not None else None
    tiles, warnings = [], []
    metrics = summarize_layer(
        states.moments,
        states.spectrum,
        states.decisions,
        classifier,
        warnings.append,
        tiles.append if per_pair else None,
        tile,
    )
    rows = {}
    for t in (tile.pairs() for tile in tiles):
        for index, pair in enumerate(zip(t.class_a.tolist(), t.class_b.tolist())):
            assert pair not in rows, f"pair {pair} in two tiles"
            rows[pair] = {name: getattr(t, name)[index] for name in PAIR_METRICS}
    return metrics, rows, warnings


def same(actual: float, expected: float, where: str, rtol=RTOL, atol=ATOL) -> None:
    if math.isnan(expected):
        assert math.isnan(actual), f"{where}: expected NaN, got {actual}"
    else:
        assert actual == pytest.approx(expected, rel=rtol, abs=atol), where


def case(name: str):
    rng = np.random.default_rng(CASES.index(name))
    if name == "K=37, K-1>d":
        labels = rng.integers(0, 37, 400)
        features = rng.normal(size=(37, 6))[labels] + rng.normal(size=(400, 6))
        return features, labels, 37, rng.normal(size=(37, 6))
    if name == "K=2":
        labels = np.repeat([0, 1], [7, 4])
        return rng.normal(size=(11, 5)) + labels[:, None], labels, 2, rng.normal(size=(2, 5))
    if name == "K<=d+1":
        labels = np.arange(90) % 9
        return rng.normal(size=(9, 16))[labels] * 3 + rng.normal(size=(90, 16)), labels, 9, rng.normal(size=(9, 16))
    if name == "K>N, absent and singletons":
        labels = rng.integers(0, 80, 50)
        return rng.normal(size=(50, 3)), labels, 80, rng.normal(size=(80, 3))
    if name == "coincident on an offset":
        labels = np.repeat(np.arange(12), 5)
        features = rng.normal(size=(12, 4))[labels] + 0.3 * rng.normal(size=(60, 4))
        features[labels == 7] = features[labels == 3]  # the same rows: exactly the same mean
        features[labels == 10] = features[labels == 3][::-1]  # same rows, other order: the same mean to rounding
        return features + 100.0, labels, 12, rng.normal(size=(12, 4))
    if name == "nearly coincident on an offset":
        labels = np.repeat(np.arange(10), 4)
        features = rng.normal(size=(10, 5))[labels] + 0.3 * rng.normal(size=(40, 5))
        features[labels == 1] = features[labels == 0] + 1e-7  # distinct, but far below the norms
        return features + 100.0, labels, 10, rng.normal(size=(10, 5))
    if name == "near a simplex ETF":
        k, d = 6, 8
        etf = np.eye(k, d) - np.eye(k, d).mean(axis=0)  # simplex-ETF directions: small nc2_etf and nc3_etf
        labels = np.repeat(np.arange(k), 6)
        features = 5 * etf[labels] + 1e-5 * rng.normal(size=(len(labels), d))
        return features, labels, k, 2 * etf + 1e-6 * rng.normal(size=(k, d))
    raise ValueError(name)


CASES = [
    "K=37, K-1>d",
    "K=2",
    "K<=d+1",
    "K>N, absent and singletons",
    "coincident on an offset",
    "nearly coincident on an offset",
    "near a simplex ETF",
]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("tile", [1, 4, 5, 36, 37, 100])
def test_tiled_pair_statistics_equal_the_dense_computation(name, tile):
    features, labels, num_classes, weight = case(name)
    states = states_of(features, labels, num_classes)
    metrics, rows, warnings = summarize(states, weight, tile)
    dense = dense_pairs(states.moments, states.decisions.scatter, weight)
    for key, expected in dense.summary.items():
        same(metrics.summary[key], expected, f"{name}, tile {tile}: {key}")
    assert set(rows) == set(dense.pairs)
    for pair, expected in dense.pairs.items():
        for key in PAIR_METRICS:
            same(float(rows[pair][key]), float(expected[key]), f"{name}, tile {tile}: pair {pair} {key}")
    listed = [w for w in warnings if w.startswith("coincident class means")]
    if dense.coincident:
        assert listed == [
            f"coincident class means for pairs {', '.join(f'{a}–{b}' for a, b in dense.coincident)}: cdnv reported "
            "as null"
        ]
    else:
        assert listed == []


def same_summaries(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("tile", [3, 37])
def test_the_summary_is_the_same_with_or_without_a_per_pair_consumer(name, tile):
    """The statistics never come from the consumer's arrays: the same numbers, and the same warnings."""
    features, labels, num_classes, weight = case(name)
    states = states_of(features, labels, num_classes)
    with_pairs, _, warnings = summarize(states, weight, tile)
    alone, rows, alone_warnings = summarize(states, weight, tile, per_pair=False)
    assert rows == {} and alone_warnings == warnings
    assert same_summaries(dict(alone.summary), dict(with_pairs.summary))


@pytest.mark.parametrize("threads", [1, 3])
def test_the_number_of_threads_does_not_change_a_bit(monkeypatch, threads):
    """Strips are fixed by the tile and merged in row order: any pool gives the same numbers exactly."""
    rng = np.random.default_rng(14)
    labels = np.arange(600) % 150
    states = states_of(rng.normal(size=(150, 7))[labels] + rng.normal(size=(600, 7)), labels, 150)
    weight = rng.normal(size=(150, 7))
    usual, _, _ = summarize(states, weight, tile=41, per_pair=False)
    monkeypatch.setattr(threads_module, "pool_size", lambda: threads)
    other, _, _ = summarize(states, weight, tile=41, per_pair=False)
    assert same_summaries(dict(other.summary), dict(usual.summary))


def test_every_tile_size_gives_the_same_summary_and_class_table():
    features, labels, num_classes, weight = case("K>N, absent and singletons")
    states = states_of(features, labels, num_classes)
    whole, _, whole_warnings = summarize(states, weight, tile=1000)
    for tile in (1, 2, 3, 17):
        tiled, _, warnings = summarize(states, weight, tile)
        assert warnings == whole_warnings
        for key, value in whole.summary.items():
            same(tiled.summary[key], value, f"tile {tile}: {key}")
        for key, column in whole.classes.items():
            np.testing.assert_array_equal(tiled.classes[key], column)


def test_coincident_pairs_are_listed_first_ten_then_counted():
    labels = np.repeat(np.arange(14), 2)
    features = np.zeros((28, 3)) + 7.0  # 14 classes, one mean: 91 coincident pairs
    features[labels >= 12] += np.array([1.0, 2.0, 3.0])  # but 12 and 13 stand apart from the rest
    states = states_of(features, labels, 14)
    _, _, warnings = summarize(states, tile=4)
    listed = [w for w in warnings if w.startswith("coincident class means")]
    expected = dense_pairs(states.moments, states.decisions.scatter).coincident
    assert len(expected) == 67
    shown = ", ".join(f"{a}–{b}" for a, b in expected[:10])
    assert listed == [f"coincident class means for pairs {shown} and 57 more: cdnv reported as null"]


@pytest.mark.parametrize("budget", [None, 8 * 16 * 3 * 2])  # chunks of 2 candidate pairs
def test_ncc_ties_without_a_k_by_k_matrix(monkeypatch, budget):
    if budget:
        monkeypatch.setattr(tiles, "TILE_BYTES", budget)
    rng = np.random.default_rng(11)
    means = rng.normal(size=(40, 3)) + 50.0
    means[[5, 11, 30]] = means[2]  # a group of four
    means[8] = means[7] + 1e-14 * 50  # within the coincidence distance
    means[14] = means[13] + 1e-9 * 50  # outside it
    means[20:26] = means[19]  # a run of equal means: many candidates in one window
    means[31] = means[32] * (1 + 1e-15)  # the lower id second
    ids = np.arange(40) * 3
    tied = ties_exact(ClassMeans(ids, means))
    np.testing.assert_array_equal(tied.means, dense_ties(means))
    np.testing.assert_array_equal(tied.ids, ids)
    zeros = np.zeros((5, 3))  # tolerance 0: exactly equal means only
    np.testing.assert_array_equal(ties_exact(ClassMeans(ids[:5], zeros)).means, dense_ties(zeros))


def test_tiled_etf_distance_takes_both_branches_exactly():
    """K − 1 > d uses the ⟨·, P⟩ identity; K ≤ d + 1 sums tiles: both equal the dense distance."""
    rng = np.random.default_rng(12)
    for k, d in [(40, 5), (6, 5), (5, 9), (2, 1)]:
        x, y = rng.normal(size=(k, d)), rng.normal(size=(k, d))
        y -= y.mean(axis=0)
        gram = x @ y.T
        centring = np.eye(k) - 1.0 / k
        expected = np.linalg.norm(gram / np.linalg.norm(gram) - centring / np.sqrt(k - 1))
        for tile in (1, 3, 64):
            assert tiles.etf_distance(x, y, tile) == pytest.approx(expected, rel=RTOL), (k, d, tile)


def test_memory_stays_at_one_tile_not_k_by_k():
    """K = 3000: a K × K float64 matrix would be 72 MB; the tiled summary peaks at a few tiles."""
    rng = np.random.default_rng(13)
    k, d = 3000, 4
    labels = np.arange(2 * k) % k
    states = states_of(rng.normal(size=(2 * k, d)) + labels[:, None] % 7, labels, k)
    tracemalloc.start()
    try:
        summarize_layer(*states, None, lambda _: None, None, 256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 256 * 256 * 8 + 50 * k * d * 8, f"peak {peak / 2**20:.1f} MiB"
