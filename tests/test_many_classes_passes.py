"""Many classes, the passes: pass 1 per block over present classes only, pass 2 tiled over
classes, the Σ_B spectrum from the smaller factor, layer groups under a memory budget, and the torch
backend (on the CPU) equal to numpy. Oracles: explicit float64 loops over classes and rows."""

import numpy as np
import pytest
from h5files import write_feature_file
from typer.testing import CliRunner

import nccli.analyze.plan
import nccli.metrics.numpy_backend
import nccli.metrics.threads
from nccli.analyze.analysis import AnalyzeConfig, analyze_features
from nccli.cli import app
from nccli.io.reader import FeatureFile, read_info
from nccli.metrics import formulas
from nccli.metrics.accumulators import ClassMoments, Decisions
from nccli.metrics.backend import NumpyBackend, TorchBackend
from nccli.metrics.geometry import build_geometry, distinct_rows, ties_exact
from nccli.metrics.numpy_backend import LONG_RUN
from nccli.types import Classifier, ClassMeans


def backends():
    torch = pytest.importorskip("torch")
    assert torch is not None
    return [NumpyBackend(), TorchBackend("cpu")]


def labels_for(case: str, rng) -> tuple[np.ndarray, int]:
    """(labels, num_classes) of the label distributions pass 1 must handle."""
    if case == "two classes":
        return rng.integers(0, 2, 150), 2
    if case == "more classes than rows":  # most classes absent, many singletons
        return rng.choice(np.arange(0, 900, 3), size=120), 1000
    if case == "all run lengths":  # sorted runs of 1 … 2·LONG_RUN rows: both segment_sum paths
        lengths = np.arange(1, 2 * LONG_RUN + 1)
        return np.repeat(rng.permutation(len(lengths)), lengths), len(lengths)
    raise ValueError(case)


def oracle_moments(features: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Per class, with explicit loops: n_c, μ_c, Σ‖h − μ_c‖², Σ ĥ over non-zero rows, their count, Σ_W scatter."""
    d = features.shape[1]
    out = {name: np.zeros(num_classes) for name in ("count", "scatter", "unit_count")}
    out |= {"mean": np.zeros((num_classes, d)), "unit_sum": np.zeros((num_classes, d)), "within": np.zeros((d, d))}
    for c in np.unique(labels):
        rows = features[labels == c]
        mean = rows.mean(axis=0)
        nonzero = rows[np.linalg.norm(rows, axis=1) > 0]
        out["count"][c], out["mean"][c] = len(rows), mean
        out["scatter"][c] = np.sum((rows - mean) ** 2)
        out["unit_sum"][c] = (nonzero / np.linalg.norm(nonzero, axis=1)[:, None]).sum(axis=0)
        out["unit_count"][c] = len(nonzero)
        out["within"] += (rows - mean).T @ (rows - mean)
    return out


@pytest.mark.parametrize("case", ["two classes", "more classes than rows", "all run lengths"])
@pytest.mark.parametrize("order", ["sorted", "shuffled"])
@pytest.mark.parametrize("block", [7, 64, 10_000])
def test_class_moments_equal_the_oracle_whatever_the_labels(case, order, block):
    """Pass 1's first moments, and pass 2's scatter and within-class matrix about pass 1's means."""
    rng = np.random.default_rng(3)
    labels, num_classes = labels_for(case, rng)
    labels = np.sort(labels) if order == "sorted" else rng.permutation(labels)
    features = rng.normal(size=(len(labels), 6)) + 5.0 * labels[:, None] % 7 + 100.0  # a common offset
    features[::11] = 0.0  # zero vectors leave the cosine view only
    expected = oracle_moments(features, labels, num_classes)
    for xp in backends():
        moments = ClassMoments.empty(xp, num_classes, 6)
        for start in range(0, len(labels), block):
            moments.update(xp.features(features[start : start + block]), xp.labels(labels[start : start + block]))
        moments = moments.host()
        spectrum = formulas.between_class_spectrum(moments.class_means().centred)
        geometry = build_geometry(xp, moments, spectrum, moments.class_means(), None)
        centred = Decisions.empty(xp, num_classes, spectrum.rank, within_dim=6)
        for start in range(0, len(labels), block):
            centred.update(
                geometry, xp.features(features[start : start + block]), xp.labels(labels[start : start + block])
            )
        centred = centred.host()
        for name, value in expected.items():
            state = centred if name in ("scatter", "within") else moments
            np.testing.assert_allclose(getattr(state, name), value, rtol=1e-12, atol=1e-9, err_msg=f"{xp.name} {name}")


def test_a_block_state_covers_only_the_classes_in_the_block():
    xp = NumpyBackend()
    labels = np.array([40, 7, 40, 99_999, 7, 7])
    block = ClassMoments.of_block(xp, np.arange(12.0).reshape(6, 2), labels)
    np.testing.assert_array_equal(block.ids, [7, 40, 99_999])
    assert block.mean.shape == (3, 2)
    np.testing.assert_array_equal(block.count, [3, 2, 1])


# --------------------------------------------------------------------------- pass 2


def pass_two_data(seed: int = 5):
    """K = 10 classes, three of them with the same mean as a lower id (5 = 2, 8 = 2, 9 = 6), and a
    classifier with two duplicated rows (logit ties), so the tie rule decides often."""
    rng = np.random.default_rng(seed)
    k, d, n = 10, 4, 300
    labels = rng.permutation(np.arange(n) % k)
    centres = rng.normal(size=(k, d)) * 3
    centres[[5, 8]], centres[9] = centres[2], centres[6]
    noise = rng.normal(size=(n, d))
    noise -= np.array([noise[labels == c].mean(axis=0) for c in range(k)])[labels]  # exact class means
    features = centres[labels] + noise
    weight = rng.normal(size=(k, d))
    weight[7], weight[4] = weight[1], weight[3]
    bias = rng.normal(size=k)
    bias[7], bias[4] = bias[1], bias[3]
    return features, labels, Classifier(weight, bias)


def decisions(xp, features, labels, classifier, tile_classes, block=64):
    k = classifier.weight.shape[0]
    moments = ClassMoments.empty(xp, k, features.shape[1])
    moments.update(xp.features(features), xp.labels(labels))
    moments = moments.host()
    spectrum = formulas.between_class_spectrum(moments.class_means().centred)
    geometry = build_geometry(xp, moments, spectrum, moments.class_means(), classifier, tile_classes)
    state = Decisions.empty(xp, k, spectrum.rank)
    for start in range(0, len(labels), block):
        state.update(geometry, xp.features(features[start : start + block]), xp.labels(labels[start : start + block]))
    return state.host(), moments


def oracle_decisions(features, labels, moments, classifier):
    """NCC and classifier decisions by explicit loops over classes (strict < and >: lowest id on ties)."""
    means = ties_exact(moments.class_means())
    ncc_right = clf_right = mismatch = 0
    margins = []
    for h, y in zip(features, labels):
        distances = [np.sum((h - mean) ** 2) for mean in means.means]
        logits = classifier.weight @ h + classifier.bias
        ncc = means.ids[int(np.argmin(distances))]
        clf = int(np.argmax(logits))
        ncc_right, clf_right, mismatch = ncc_right + (ncc == y), clf_right + (clf == y), mismatch + (ncc != clf)
        margins.append(logits[y] - np.max(np.delete(logits, y)))
    return ncc_right, clf_right, mismatch, min(margins), sum(margins)


@pytest.mark.parametrize("tile_classes", [1, 3, 4, 7, None])
def test_pass_two_tiled_over_classes_equals_one_tile_and_the_oracle(tile_classes):
    features, labels, classifier = pass_two_data()
    whole, moments = decisions(NumpyBackend(), features, labels, classifier, tile_classes=None)
    ncc_right, clf_right, mismatch, margin_min, margin_sum = oracle_decisions(features, labels, moments, classifier)
    assert whole.ncc_correct.sum() == ncc_right and whole.clf_correct.sum() == clf_right
    assert whole.mismatch == mismatch
    assert whole.margin_min == pytest.approx(margin_min, rel=1e-12)
    assert whole.margin_sum == pytest.approx(margin_sum, rel=1e-12)
    for xp in backends():
        tiled, _ = decisions(xp, features, labels, classifier, tile_classes)
        np.testing.assert_array_equal(tiled.ncc_correct, whole.ncc_correct)
        np.testing.assert_array_equal(tiled.clf_correct, whole.clf_correct)
        assert tiled.mismatch == whole.mismatch
        assert tiled.margin_min == pytest.approx(whole.margin_min, rel=1e-12)
        assert tiled.margin_sum == pytest.approx(whole.margin_sum, rel=1e-12)
        np.testing.assert_allclose(tiled.projected_sq, whole.projected_sq, rtol=1e-12)


def test_near_ties_below_float32_resolution_are_decided_in_float64():
    """Rows 1e-10 (relative) nearer one of two classes than the other: float32 cannot tell them
    apart, float64 can. With w_c = μ_c and b_c = −‖μ_c‖²/2 the logits are −‖h − μ_c‖²/2 + const,
    so the classifier has the same near-ties. Expected: explicit float64 distances."""
    rng = np.random.default_rng(8)
    k, d = 12, 6
    means = rng.normal(size=(k, d)) * 3
    a, b = rng.integers(0, k, 400), rng.integers(0, k, 400)
    a, b = a[a != b], b[a != b]
    side = rng.choice([-1.0, 1.0], len(a))
    features = (means[a] + means[b]) / 2 + 1e-10 * side[:, None] * (means[a] - means[b])
    labels = np.where(rng.random(len(a)) < 0.5, a, b)
    distances = ((features[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    expected = distances.argmin(axis=1)
    classifier = Classifier(means, -0.5 * (means**2).sum(axis=1))
    geometry_means = ClassMeans(np.arange(k), means)
    for xp in backends():
        for tile_classes in (1, 5, None):
            moments = ClassMoments.empty(xp, k, d)
            moments.update(xp.features(features), xp.labels(labels))
            moments = moments.host()
            spectrum = formulas.between_class_spectrum(moments.class_means().centred)
            geometry = build_geometry(xp, moments, spectrum, geometry_means, classifier, tile_classes)
            block = geometry.block(xp, xp.features(features))
            ncc = xp.host(geometry.nearest(xp, block))
            scored = geometry.classify(xp, block, xp.labels(labels))
            clf, own, other = (xp.host(v) for v in (scored.prediction, scored.own, scored.other))
            np.testing.assert_array_equal(ncc, expected)
            np.testing.assert_array_equal(clf, expected)
            logits = features @ means.T + classifier.bias
            best_other = np.where(np.arange(k)[None, :] == labels[:, None], -np.inf, logits).max(axis=1)
            np.testing.assert_allclose(own - other, logits[np.arange(len(labels)), labels] - best_other, atol=1e-12)


def test_coincident_means_go_to_the_lowest_class_id_in_every_tile():
    features, labels, classifier = pass_two_data()
    state, _ = decisions(NumpyBackend(), features, labels, classifier, tile_classes=2)
    # classes 5 and 8 share class 2's mean, 9 shares 6's: the NCC rule never picks them
    assert state.ncc_correct[[5, 8, 9]].sum() == 0
    assert state.ncc_correct[[2, 6]].sum() > 0


def test_projections_equal_the_oracle_nc1():
    """Σ_j Σ_i (v_jᵀ(h_i − μ_{y_i}))² / s_j² / N against (1/K) tr(Σ_W Σ_B⁺) with full d × d matrices."""
    features, labels, classifier = pass_two_data()
    state, moments = decisions(NumpyBackend(), features, labels, classifier, tile_classes=3)
    means = moments.class_means()
    spectrum = formulas.between_class_spectrum(means.centred)
    residuals = features - moments.mean[labels]
    sigma_w = residuals.T @ residuals / len(labels)
    sigma_b = means.centred.T @ means.centred / len(means.ids)
    expected = np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=1e-10, hermitian=True)) / len(means.ids)
    assert formulas.nc1(state.projected_sq, spectrum, len(labels)) == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------- spectrum


@pytest.mark.parametrize("k, d", [(40, 6), (7, 7), (2, 5), (300, 20)])
def test_spectrum_routes_agree_with_each_other_and_an_svd(k, d):
    """K ≥ d goes through the d × d factor; the same means padded with zero columns to width > K go
    through the K × K factor: same singular values, same span (as a projector), as a plain SVD."""
    rng = np.random.default_rng(k + d)
    means = rng.normal(size=(k, d)) * np.linspace(1.0, 0.05, d)
    centred = means - means.mean(axis=0)
    tall = formulas.between_class_spectrum(centred)
    wide = formulas.between_class_spectrum(np.hstack([centred, np.zeros((k, k + 3))]))
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    rank = min(k - 1, d)
    assert tall.rank == wide.rank == rank
    for spectrum in (tall, wide):
        np.testing.assert_allclose(spectrum.singular, singular[:rank], rtol=1e-12)
        basis = spectrum.basis[:d]
        np.testing.assert_allclose(basis @ basis.T, vt[:rank].T @ vt[:rank], atol=1e-12)
    np.testing.assert_allclose(wide.basis[d:], 0.0, atol=1e-13)


# --------------------------------------------------------------------------- memory budget


def three_layer_file(path):
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 6, 90)
    layers = {f"l{i}": rng.normal(size=(90, 5)) * (i + 1) + labels[:, None] for i in range(3)}
    weight, bias = rng.normal(size=(6, 5)), rng.normal(size=6)
    return write_feature_file(path, labels, layers, weight=weight, bias=bias, classifier_layer="l2")


def test_a_small_memory_budget_gives_the_same_report_in_more_passes(tmp_path, monkeypatch):
    path = str(three_layer_file(tmp_path / "three.h5"))
    config = AnalyzeConfig(files=(path,), device="cpu", block_rows=16)
    whole = analyze_features(config)
    reads = []
    original = FeatureFile.blocks
    monkeypatch.setattr(
        FeatureFile, "blocks", lambda self, layers, *a: reads.append(len(layers)) or original(self, layers, *a)
    )
    info = read_info(path)  # a budget that one layer fits, but no two
    needs = [nccli.analyze.plan.layer_bytes(NumpyBackend(), info, layer, config) for layer in info.layers]
    monkeypatch.setattr(
        nccli.analyze.plan, "memory_budget", lambda: max(resident + working for resident, working in needs)
    )
    grouped = analyze_features(config)
    assert reads == [1] * 6  # two passes for each of three groups
    assert [row["layer"] for row in grouped.summary] == [row["layer"] for row in whole.summary]
    for ours, theirs in zip(grouped.summary, whole.summary):
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, float):
                np.testing.assert_allclose(ours[key], value, rtol=1e-12, err_msg=key)
            else:
                assert ours[key] == value, key


def test_pieces_on_any_number_of_threads_give_the_same_report_to_the_bit(tmp_path, monkeypatch):
    """Blocks cut into pieces (one task of the thread pool each) whose states merge in row order: the
    pool's size never changes a bit, and the report equals one piece per block to rounding."""
    path = str(three_layer_file(tmp_path / "three.h5"))
    config = AnalyzeConfig(files=(path,), device="cpu", block_rows=40)
    whole = analyze_features(config).summary
    monkeypatch.setattr(nccli.metrics.numpy_backend, "PIECE_BYTES", 1)  # pieces of MIN_PIECE_ROWS rows
    monkeypatch.setattr(nccli.metrics.numpy_backend, "MIN_PIECE_ROWS", 7)
    reports = []
    for threads in (1, 3):
        monkeypatch.setattr(nccli.metrics.threads, "pool_size", lambda threads=threads: threads)
        reports.append(analyze_features(config).summary)
    assert reports[0] == reports[1]
    for ours, theirs in zip(reports[0], whole):
        for key, value in theirs.items():
            if isinstance(value, float):
                np.testing.assert_allclose(ours[key], value, rtol=1e-12, atol=1e-300, err_msg=key)
            else:
                assert ours[key] == value, key


def test_a_layer_that_cannot_fit_is_refused_before_any_row_is_read(tmp_path, monkeypatch):
    path = three_layer_file(tmp_path / "three.h5")
    monkeypatch.setattr(FeatureFile, "blocks", lambda *a: pytest.fail("a row was read"))
    monkeypatch.setattr(nccli.analyze.plan, "memory_budget", lambda: 2**20)
    out = tmp_path / "report.parquet"
    result = CliRunner().invoke(app, ["analyze", str(path), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for fragment in ("'/layers/l0'", "num_classes = 6", "GiB", "memory budget", "more memory"):
        assert fragment in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("tile_classes", [1, 3, 4, 7, None])
def test_pass_two_losses_margins_and_distances_over_class_tiles_equal_the_oracle(tile_classes):
    """Issue 13's pass-2 sums: CE of Wh + b and of Wh (every class, shared rows counted per class), the
    smallest bias-free margin, Σ‖h_i − μ_{y_i}‖ and Σ‖h_i − μ_G‖, by explicit loops in float64."""
    features, labels, classifier = pass_two_data()
    _, moments = decisions(NumpyBackend(), features, labels, classifier, tile_classes=None)
    present = moments.class_means()
    centre = present.means.mean(axis=0)
    ce = free_ce = own_distance = global_distance = 0.0
    free_margins = []
    for h, y in zip(features, labels):
        for total, z in (("ce", classifier.weight @ h + classifier.bias), ("free", classifier.weight @ h)):
            top = z[present.ids].max()
            loss = top + np.log(np.sum(np.exp(z[present.ids] - top))) - z[y]
            ce, free_ce = (ce + loss, free_ce) if total == "ce" else (ce, free_ce + loss)
        free = classifier.weight @ h
        free_margins.append(free[y] - max(free[c] for c in present.ids if c != y))
        own_distance += np.linalg.norm(h - moments.mean[y])
        global_distance += np.linalg.norm(h - centre)
    for xp in backends():
        state, _ = decisions(xp, features, labels, classifier, tile_classes)
        assert state.ce_sum == pytest.approx(ce, rel=1e-12)
        assert state.free_ce_sum == pytest.approx(free_ce, rel=1e-12)
        assert state.free_margin_min == pytest.approx(min(free_margins), rel=1e-12)
        assert state.own_distance_sum == pytest.approx(own_distance, rel=1e-12)
        assert state.global_distance_sum == pytest.approx(global_distance, rel=1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_distinct_rows_equals_pairwise_comparison(seed):
    """Identical rows (−0.0 = +0.0, any width, d = 0 included) share the group of their lowest index."""
    rng = np.random.default_rng(seed)
    k, d = int(rng.integers(1, 12)), int(rng.integers(0, 4))
    matrix = rng.integers(-1, 2, (k, d)).astype(float)
    matrix[matrix == 0] *= rng.choice([1.0, -1.0], size=int((matrix == 0).sum()))
    first, group = distinct_rows(matrix)
    lowest = np.array([min(j for j in range(k) if np.array_equal(matrix[i], matrix[j])) for i in range(k)])
    np.testing.assert_array_equal(first, np.unique(lowest))
    np.testing.assert_array_equal(first[group], lowest)
