"""Accumulators merge exactly (merge(a, b) = one pass over both), and the torch backend equals numpy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nccli.metrics import formulas
from nccli.metrics.accumulators import ClassMoments, Decisions
from nccli.metrics.backend import NumpyBackend, TorchBackend, select_backend
from nccli.metrics.geometry import build_geometry
from nccli.metrics.layer import Classifier, ClassMeans

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
    parts = [one_pass(xp, features[a:b], labels[a:b]) for a, b in zip(bounds, bounds[1:])]
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
    spectrum = formulas.between_class_spectrum(ClassMeans.of(moments).centred)
    classifier = Classifier(np.random.default_rng(seed).normal(size=(NUM_CLASSES, DIM)), np.zeros(NUM_CLASSES))
    geometry = build_geometry(xp, moments, spectrum, ClassMeans.of(moments), classifier)
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


def test_torch_backend_equals_numpy():
    """The CUDA code path, run on the CPU: same kernels, same float64 results."""
    pytest.importorskip("torch")
    features, labels = data(7, n=80)
    torch_state = one_pass(TorchBackend("cpu"), features, labels)
    assert_moments_equal(torch_state, one_pass(NumpyBackend(), features, labels), rtol=1e-12)
    moments = torch_state.host()
    spectrum = formulas.between_class_spectrum(ClassMeans.of(moments).centred)
    classifier = Classifier(np.random.default_rng(1).normal(size=(NUM_CLASSES, DIM)), np.ones(NUM_CLASSES))
    results = []
    for xp in (NumpyBackend(), TorchBackend("cpu")):
        geometry = build_geometry(xp, moments, spectrum, ClassMeans.of(moments), classifier)
        state = Decisions.empty(xp, NUM_CLASSES, spectrum.rank)
        state.update(geometry, xp.features(features), xp.labels(labels))
        results.append(state.host())
    np.testing.assert_allclose(results[0].projected_sq, results[1].projected_sq, rtol=1e-12)
    np.testing.assert_array_equal(results[0].ncc_correct, results[1].ncc_correct)
    np.testing.assert_array_equal(results[0].clf_correct, results[1].clf_correct)
    assert results[0].margin_min == pytest.approx(results[1].margin_min, rel=1e-12)


def test_device_selection():
    assert isinstance(select_backend("cpu"), NumpyBackend)
    assert select_backend("auto").name in ("cpu", "cuda")


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
    spectrum = formulas.between_class_spectrum(ClassMeans.of(moments).centred)
    classifier = Classifier(np.random.default_rng(2).normal(size=(NUM_CLASSES, DIM)), np.zeros(NUM_CLASSES))
    halves = []
    for xp, rows in ((TorchBackend("cpu"), slice(0, 50)), (NumpyBackend(), slice(50, None))):
        geometry = build_geometry(xp, moments, spectrum, ClassMeans.of(moments), classifier)
        state = Decisions.empty(xp, NUM_CLASSES, spectrum.rank)
        state.update(geometry, xp.features(features[rows]), xp.labels(labels[rows]))
        halves.append(state.host())
    merged = halves[0].merge(halves[1])
    geometry = build_geometry(NumpyBackend(), moments, spectrum, ClassMeans.of(moments), classifier)
    whole = Decisions.of_block(NumpyBackend(), geometry, features, labels, NUM_CLASSES)
    np.testing.assert_allclose(merged.projected_sq, whole.projected_sq, rtol=1e-12)
    np.testing.assert_array_equal(merged.ncc_correct, whole.ncc_correct)
    np.testing.assert_array_equal(merged.clf_correct, whole.clf_correct)
    assert merged.margin_sum == pytest.approx(whole.margin_sum, rel=1e-12)
