"""Accumulators merge exactly (merge(a, b) = one pass over both), and the torch backend equals numpy."""

import itertools
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nccli.metrics import accumulators, formulas
from nccli.metrics.accumulators import ClassMoments, Decisions, moved_class
from nccli.metrics.backend import NumpyBackend, TorchBackend
from nccli.metrics.geometry import build_geometry
from nccli.types import Classifier

NUM_CLASSES, DIM = 4, 5


def data(seed: int, n: int = 60, offset: float = 0.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n)
    features = rng.normal(size=(n, DIM)) + 3 * labels[:, None] + offset
    return features, labels


def one_pass(xp, features, labels):
    state = ClassMoments.empty(xp, NUM_CLASSES, DIM)
    state.update(xp.features(features), xp.labels(labels))
    return state


def assert_moments_equal(a: ClassMoments, b: ClassMoments, rtol=1e-10):
    a, b = a.host(), b.host()
    for name in ("count", "mean", "unit_sum", "unit_count"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=1e-9, err_msg=name)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.integers(0, 60), min_size=1, max_size=6),
    offset=st.sampled_from([0.0, 1e3]),
)
def test_merging_any_split_equals_one_pass(seed, cuts, offset):
    xp = NumpyBackend()
    features, labels = data(seed, offset=offset)
    bounds = [0, *sorted(cuts), len(labels)]
    parts = [one_pass(xp, features[a:b], labels[a:b]) for a, b in itertools.pairwise(bounds)]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    assert_moments_equal(merged, one_pass(xp, features, labels))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.integers(0, 60))
def test_pass_two_states_merge_exactly(seed, cut):
    xp = NumpyBackend()
    features, labels = data(seed)
    moments = one_pass(xp, features, labels).host()
    spectrum = formulas.between_class_spectrum(moments.class_means().centred)
    classifier = Classifier(np.random.default_rng(seed).normal(size=(NUM_CLASSES, DIM)), np.zeros(NUM_CLASSES))
    geometry = build_geometry(xp, moments, spectrum, moments.class_means(), classifier)
    whole = Decisions.of_block(xp, geometry, features, labels, NUM_CLASSES, with_matrix=True)
    halves = Decisions.of_block(xp, geometry, features[:cut], labels[:cut], NUM_CLASSES, with_matrix=True).merge(
        Decisions.of_block(xp, geometry, features[cut:], labels[cut:], NUM_CLASSES, with_matrix=True)
    )
    np.testing.assert_allclose(halves.projected_sq, whole.projected_sq, rtol=1e-12)
    np.testing.assert_allclose(halves.scatter, whole.scatter, rtol=1e-12)
    np.testing.assert_allclose(halves.within, whole.within, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(halves.ncc_correct, whole.ncc_correct)
    np.testing.assert_array_equal(halves.clf_correct, whole.clf_correct)
    assert (halves.mismatch, halves.margin_min) == (whole.mismatch, whole.margin_min)
    assert halves.margin_sum == pytest.approx(whole.margin_sum, rel=1e-12)
    np.testing.assert_array_equal(halves.count, whole.count)
    assert halves.residual_ids is None  # block states (classes present only) merge into a state of all classes
    np.testing.assert_allclose(halves.residual_sum, spread_out(whole), atol=1e-12)
    folded = Decisions.empty(xp, NUM_CLASSES, spectrum.rank, dim=DIM)
    for part in (slice(0, cut), slice(cut, None)):
        folded.update(geometry, features[part], labels[part])
    np.testing.assert_allclose(folded.residual_sum, halves.residual_sum, atol=1e-12)


def spread_out(block: Decisions) -> np.ndarray:
    """A block state's residual sums as a (C, d) array over all classes."""
    out = np.zeros((NUM_CLASSES, DIM))
    out[block.residual_ids] = block.residual_sum
    return out


def pass_two(xp, moments: ClassMoments, features, labels, cuts=()):
    """Pass 2 over ``features`` in blocks cut at ``cuts``, with pass 1's ``moments``: (state, centres, origin)."""
    spectrum = formulas.between_class_spectrum(moments.class_means().centred)
    geometry = build_geometry(xp, moments, spectrum, moments.class_means(), None)
    state = Decisions.empty(xp, NUM_CLASSES, spectrum.rank, dim=DIM)
    bounds = [0, *sorted(cuts), len(labels)]
    for a, b in itertools.pairwise(bounds):
        state.update(geometry, xp.features(features[a:b]), xp.labels(labels[a:b]))
    host = xp.host
    return state.host(), host(geometry.own_centres)[host(geometry.column_of_class)], host(geometry.origin)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.integers(0, 300), max_size=5),
    offset=st.sampled_from([0.0, 1e3, 1e6]),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
)
def test_the_same_rows_in_any_order_and_blocks_are_never_taken_for_other_rows(seed, cuts, offset, dtype):
    """Pass 2 over the rows of pass 1 shuffled and cut otherwise: Σ_{i∈c}(h_i − μ_c) is rounding only, within
    the float64 bound alone (no allowance for recomputed rows)."""
    xp, rng = NumpyBackend(), np.random.default_rng(seed)
    features, labels = data(seed, n=300, offset=offset if dtype is not np.float16 else min(offset, 1e3))
    features = features.astype(dtype).astype(np.float64)
    moments = one_pass(xp, features, labels).host()
    order = rng.permutation(len(labels))
    state, centres, origin = pass_two(xp, moments, features[order], labels[order], cuts)
    with mock.patch.multiple(accumulators, ROW_NOISE=0.0, MEAN_SHIFT=0.0):
        assert moved_class(state, centres, origin) is None


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_rows_that_moved_are_found_with_their_class_and_shift(offset):
    xp = NumpyBackend()
    features, labels = data(3, n=300, offset=offset)
    moments = one_pass(xp, features, labels).host()
    moved = features.copy()
    moved[labels == 2] += np.random.default_rng(4).normal(size=(np.sum(labels == 2), DIM))  # noise on class 2
    state, centres, origin = pass_two(xp, moments, moved, labels)
    found = moved_class(state, centres, origin)
    shift = np.linalg.norm(moved[labels == 2].mean(0) - features[labels == 2].mean(0))
    assert found is not None and found.klass == 2 and found.shift == pytest.approx(shift, rel=1e-9)
    assert str(found).startswith(f"class 2: its rows' mean moved by {shift:.2g}, ")
    recomputed = features * (1 + 1e-5 * np.random.default_rng(5).choice([-1, 1], features.shape))  # rounded otherwise
    assert moved_class(*pass_two(xp, moments, recomputed, labels)) is None


def test_torch_backend_equals_numpy():
    """The CUDA code path, run on the CPU: same kernels, same float64 results."""
    pytest.importorskip("torch")
    features, labels = data(7, n=80)
    torch_state = one_pass(TorchBackend("cpu"), features, labels)
    assert_moments_equal(torch_state, one_pass(NumpyBackend(), features, labels), rtol=1e-12)
    moments = torch_state.host()
    spectrum = formulas.between_class_spectrum(moments.class_means().centred)
    classifier = Classifier(np.random.default_rng(1).normal(size=(NUM_CLASSES, DIM)), np.ones(NUM_CLASSES))
    results = []
    for xp in (NumpyBackend(), TorchBackend("cpu")):
        geometry = build_geometry(xp, moments, spectrum, moments.class_means(), classifier)
        state = Decisions.empty(xp, NUM_CLASSES, spectrum.rank)
        state.update(geometry, xp.features(features), xp.labels(labels))
        results.append(state.host())
    np.testing.assert_allclose(results[0].projected_sq, results[1].projected_sq, rtol=1e-12)
    np.testing.assert_array_equal(results[0].ncc_correct, results[1].ncc_correct)
    np.testing.assert_array_equal(results[0].clf_correct, results[1].clf_correct)
    assert results[0].margin_min == pytest.approx(results[1].margin_min, rel=1e-12)
    np.testing.assert_array_equal(results[0].count, results[1].count)
    np.testing.assert_allclose(results[0].residual_sum, results[1].residual_sum, atol=1e-12)


def test_states_of_a_torch_run_merge_on_the_host_with_numpy_states():
    """A CUDA run's states, moved to the host, merge with states computed anywhere else (they once kept
    their torch backend and raised TypeError on numpy arrays). TorchBackend on the CPU stands in for CUDA."""
    pytest.importorskip("torch")
    features, labels = data(11, n=90)
    torch_part = one_pass(TorchBackend("cpu"), features[:50], labels[:50]).host()
    numpy_part = one_pass(NumpyBackend(), features[50:], labels[50:])
    assert isinstance(torch_part.mean, np.ndarray)
    assert_moments_equal(torch_part.merge(numpy_part), one_pass(NumpyBackend(), features, labels))
    assert_moments_equal(numpy_part.merge(torch_part), one_pass(NumpyBackend(), features, labels))

    moments = one_pass(NumpyBackend(), features, labels)
    spectrum = formulas.between_class_spectrum(moments.class_means().centred)
    classifier = Classifier(np.random.default_rng(2).normal(size=(NUM_CLASSES, DIM)), np.zeros(NUM_CLASSES))
    halves = []
    for xp, rows in ((TorchBackend("cpu"), slice(0, 50)), (NumpyBackend(), slice(50, None))):
        geometry = build_geometry(xp, moments, spectrum, moments.class_means(), classifier)
        state = Decisions.empty(xp, NUM_CLASSES, spectrum.rank)
        state.update(geometry, xp.features(features[rows]), xp.labels(labels[rows]))
        halves.append(state.host())
    merged = halves[0].merge(halves[1])
    geometry = build_geometry(NumpyBackend(), moments, spectrum, moments.class_means(), classifier)
    whole = Decisions.of_block(NumpyBackend(), geometry, features, labels, NUM_CLASSES)
    np.testing.assert_allclose(merged.projected_sq, whole.projected_sq, rtol=1e-12)
    np.testing.assert_array_equal(merged.ncc_correct, whole.ncc_correct)
    np.testing.assert_array_equal(merged.clf_correct, whole.clf_correct)
    assert merged.margin_sum == pytest.approx(whole.margin_sum, rel=1e-12)
