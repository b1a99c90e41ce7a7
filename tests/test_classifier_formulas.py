"""The pure formulas of nccli/metrics/classifier.py against naive float64 numpy."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nccli.metrics import classifier as clf
from nccli.metrics.backend import NumpyBackend, TorchBackend
from nccli.metrics.logits import RunningLogSumExp
from nccli.metrics.tiles import etf_distance


def naive_tirer(a: np.ndarray) -> float:
    """min over ρ ≥ 0 of ‖A − ρP‖_F / ‖A‖_F (seed 000: "for some ρ > 0"), by a grid search refined in closed form."""
    k = a.shape[0]
    p = np.eye(k) - 1.0 / k
    grid = np.linspace(0.0, 2.0 * np.linalg.norm(a) / np.linalg.norm(p), 2001)
    rho = grid[np.argmin([np.linalg.norm(a - r * p) for r in grid])]
    if rho > 0:  # an interior minimum of the parabola: its vertex exactly
        rho = np.sum(a * p) / np.sum(p * p)
    return float(np.linalg.norm(a - rho * p) / np.linalg.norm(a))


@pytest.mark.parametrize("k,d", [(2, 3), (5, 8), (12, 4)])
def test_tirer_distance_from_the_etf_distance(k, d):
    """⟨A, P⟩ = tr(A) when M's rows sum to 0, so ‖A − ρP‖/‖A‖ = e√(1 − e²/4) for tr(A) ≥ 0, and 1 below."""
    rng = np.random.default_rng(k)
    m = rng.normal(size=(k, d))
    m -= m.mean(axis=0)
    w = rng.normal(size=(k, d))
    for x in (m, w, -m, -w):
        assert clf.tirer_distance(etf_distance(x, m, tile=3)) == pytest.approx(naive_tirer(x @ m.T), rel=1e-12)
    assert clf.tirer_distance(etf_distance(-m, m, tile=3)) == 1.0  # anti-aligned: ρ̃ = 0, the whole of A is left


def test_tirer_distance_is_one_exactly_when_the_trace_is_not_positive():
    rng = np.random.default_rng(3)
    m = rng.normal(size=(6, 9))
    m -= m.mean(axis=0)
    for _ in range(20):
        w = rng.normal(size=(6, 9))
        trace = np.trace(w @ m.T)
        value = clf.tirer_distance(etf_distance(w, m, tile=4))
        assert (value == 1.0) == (trace <= 0), trace


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1), cuts=st.lists(st.integers(1, 9), min_size=1, max_size=4), scale=st.floats(0.1, 60.0)
)
def test_running_logsumexp_is_independent_of_the_class_tiles(seed, cuts, scale):
    rng = np.random.default_rng(seed)
    k = sum(cuts)
    logits = scale * rng.normal(size=(7, k))
    multiplicity = rng.integers(1, 3, k).astype(float)
    own = logits[np.arange(7), rng.integers(0, k, 7)]
    tiled = RunningLogSumExp(NumpyBackend(), 7)
    start = 0
    for width in cuts:
        tiled.add(logits[:, start : start + width], multiplicity[start : start + width])
        start += width
    top = logits.max(axis=1)
    naive = top + np.log(np.sum(multiplicity * np.exp(logits - top[:, None]), axis=1)) - own
    np.testing.assert_allclose(tiled.cross_entropy(own), naive, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("xp", [NumpyBackend(), TorchBackend("cpu")], ids=["numpy", "torch"])
def test_tiny_losses_keep_their_digits(xp):
    """Gap 50: CE = log(1 + 3e^{−50}) ≈ 5.8e-22, which log(Σ exp) would round to 0."""
    logits = np.array([[50.0, 0.0, 0.0, 0.0]])
    partition = RunningLogSumExp(xp, 1)
    partition.add(xp.constant(logits))
    loss = float(xp.host(partition.cross_entropy(xp.constant(logits[:, 0])))[0])
    assert loss == pytest.approx(3 * math.exp(-50), rel=1e-12)


def test_optimal_cross_entropy_is_that_of_an_exact_simplex_etf():
    k, alpha, beta = 6, 2.0, 1.5
    unit = math.sqrt(k / (k - 1)) * (np.eye(k) - 1.0 / k)  # unit rows, cos −1/(K−1)
    logits = (beta * unit) @ (alpha * unit).T
    ce = np.mean([np.log(np.exp(z).sum()) - z[c] for c, z in enumerate(logits)])
    assert clf.optimal_cross_entropy(k, alpha, beta) == pytest.approx(ce, rel=1e-12)
