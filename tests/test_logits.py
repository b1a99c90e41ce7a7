"""The classifier's side of pass 2 (``metrics/logits.py``): decisions, own and best other logits and
cross-entropies from one float32 screen, against a dense float64 oracle over every class.

Regimes: well-separated logits (every row decided from a few float64 candidates), logits spread over a
few nats (rows take float64 tile products), both in one block, a zero and a non-zero bias, shared
classifier rows, tiles of 1 class up to all of them, numpy and torch (on the CPU)."""

import numpy as np
import pytest

from nccli.metrics import formulas, logits
from nccli.metrics.accumulators import ClassMoments
from nccli.metrics.backend import NumpyBackend, TorchBackend
from nccli.metrics.geometry import build_geometry
from nccli.types import Classifier


def oracle(features, labels, weight, bias) -> dict[str, np.ndarray]:
    """Every logit in float64: decision (lowest id on ties), own, best other, −log softmax_own."""
    z = features @ weight.T + bias
    rows = np.arange(len(labels))
    own = z[rows, labels]
    others = z.copy()
    others[rows, labels] = -np.inf
    top, best = z.max(axis=1), z.argmax(axis=1)
    rest = np.exp(z - top[:, None])
    rest[rows, best] = 0.0  # log Σ exp = top + log1p(Σ of the others' exp(z − top)): tiny losses keep their digits
    ce = np.log1p(rest.sum(axis=1)) + (top - own)
    return dict(prediction=z.argmax(axis=1), own=own, other=others.max(axis=1), ce=ce)


def geometry_of(xp, features, labels, weight, bias, tile_classes):
    k, d = weight.shape
    moments = ClassMoments.empty(xp, k, d)
    moments.update(xp.features(features), xp.labels(labels))
    moments = moments.host()
    means = moments.class_means()
    spectrum = formulas.between_class_spectrum(means.centred)
    return build_geometry(xp, moments, spectrum, means, Classifier(weight, bias), tile_classes)


def scored(xp, features, labels, weight, bias, tile_classes, geometry=None):
    geometry = geometry or geometry_of(xp, features, labels, weight, bias, tile_classes)
    block = geometry.block(xp, xp.features(features))
    result = geometry.classify(xp, block, xp.labels(labels))
    return {name: xp.host(getattr(result, name)) for name in logits.ClassifierRows.__dataclass_fields__}


def data(regime: str, bias_scale: float, seed: int = 0):
    """Rows of every class; 'separated': own logits thousands above the others; 'spread': within a few
    nats; 'mixed': half of each."""
    rng = np.random.default_rng(seed)
    k, d, n = 23, 9, 400
    labels = np.r_[np.arange(k), rng.integers(0, k, n - k)]
    weight = rng.normal(size=(k, d))
    scale = {"separated": np.full(n, 40.0), "spread": np.full(n, 0.3), "mixed": np.where(np.arange(n) % 2, 40.0, 0.3)}[
        regime
    ]
    features = scale[:, None] * (weight[labels] + 0.3 * rng.normal(size=(n, d))) + 5.0  # a common offset
    return features, labels, weight, bias_scale * rng.normal(size=k)


def backends():
    pytest.importorskip("torch")
    return [NumpyBackend(), TorchBackend("cpu")]


@pytest.mark.parametrize("regime", ["separated", "spread", "mixed"])
@pytest.mark.parametrize("bias_scale", [0.0, 2.0])
@pytest.mark.parametrize("tile_classes", [1, 4, 23, None])
def test_classify_equals_the_dense_oracle(regime, bias_scale, tile_classes):
    features, labels, weight, bias = data(regime, bias_scale)
    expected = oracle(features, labels, weight, bias)
    free = oracle(features, labels, weight, np.zeros_like(bias))
    for xp in backends():
        got = scored(xp, features, labels, weight, bias, tile_classes)
        np.testing.assert_array_equal(got["prediction"], expected["prediction"])
        for name in ("own", "other"):
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(got[f"free_{name}"], free[name], rtol=1e-12, atol=1e-9)
        # collapsed rows have losses e^{-1000}-small (0 in float64): compare where representable
        np.testing.assert_allclose(got["ce"], expected["ce"], rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(got["free_ce"], free["ce"], rtol=1e-9, atol=1e-300)


def test_tiny_losses_of_separated_rows_keep_their_digits():
    """Collapsed rows: losses e^{−gap}-small (down to 1e-80), from the float64 candidates, against log1p of the
    others' exp(z_c − z_y)."""
    rng = np.random.default_rng(4)
    k, d, n = 6, 4, 60
    weight = rng.normal(size=(k, d)) * 10.0
    labels = np.arange(n) % k
    features = weight[labels] * rng.uniform(0.2, 0.4, (n, 1))
    z = features @ weight.T
    gaps = z - z[np.arange(n), labels][:, None]
    gaps[np.arange(n), labels] = -np.inf
    expected = np.log1p(np.sum(np.exp(gaps), axis=1))
    assert (expected < 1e-12).sum() > n / 4
    got = scored(NumpyBackend(), features, labels, weight, np.zeros(k), None)
    np.testing.assert_allclose(got["ce"], expected, rtol=1e-12)


def test_shared_rows_count_once_per_class_and_go_to_the_lowest_id():
    """Classes 1, 4 and 6 share one classifier row: the loss counts it three times, the decision is class 1."""
    features, labels, weight, bias = data("spread", 1.0, seed=5)
    weight[[4, 6]], bias[[4, 6]] = weight[1], bias[1]
    expected = oracle(features, labels, weight, bias)
    got = scored(NumpyBackend(), features, labels, weight, bias, 3)
    np.testing.assert_array_equal(got["prediction"], expected["prediction"])
    np.testing.assert_allclose(got["other"], expected["other"], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(got["ce"], expected["ce"], rtol=1e-9)


def test_separated_rows_need_no_float64_tile_product(monkeypatch):
    """Logits thousands of nats apart: every row is decided from its few float32 candidates, with no
    float64 tile product; logits within a few nats: rows take float64 tile products."""
    calls = []
    original = logits._exact_tile

    def counted(g, xp, block, views, start, stop, rows, *rest):
        calls.append(len(rows))
        return original(g, xp, block, views, start, stop, rows, *rest)

    monkeypatch.setattr(logits, "_exact_tile", counted)
    rng = np.random.default_rng(6)
    k, d = 200, 16
    weight, bias = rng.normal(size=(k, d)), rng.normal(size=k)
    labels = np.r_[np.arange(k), rng.integers(0, k, 300)]
    noise = rng.normal(size=(len(labels), d))
    for scale, dense in ((400.0, False), (0.05, True)):
        calls.clear()
        features = scale * (weight[labels] + 0.1 * noise)
        got = scored(NumpyBackend(), features, labels, weight, bias, None)  # one tile of 200 classes
        np.testing.assert_array_equal(got["prediction"], oracle(features, labels, weight, bias)["prediction"])
        assert (sum(calls) > 0) == dense


@pytest.mark.parametrize("regime", ["spread", "mixed"])
def test_decisions_and_margins_do_not_depend_on_the_block(regime):
    """Rows classified in one block or in two give the same decision, own and best other logit, bit for
    bit: the float64 tile products of dense rows only feed the loss; best others come from explicit dot
    products of single (row, class) pairs."""
    features, labels, weight, bias = data(regime, 2.0, seed=9)
    xp = NumpyBackend()
    geometry = geometry_of(xp, features, labels, weight, bias, 5)
    whole = scored(xp, features, labels, weight, bias, 5, geometry)
    parts = (slice(0, 137), slice(137, None))
    halves = [scored(xp, features[part], labels[part], weight, bias, 5, geometry) for part in parts]
    for name in ("prediction", "own", "other", "free_own", "free_other"):
        np.testing.assert_array_equal(np.concatenate([half[name] for half in halves]), whole[name], err_msg=name)
