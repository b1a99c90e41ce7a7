"""Every DATA kind: array files (.npz in each layout, .h5), image folders, fake:N; subsets; bad data."""

import h5py
import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke
from extract_helpers import (
    IMAGENET,
    files_in,
    random_images,
    read_datasets,
    tiny_cnn,
    write_npz,
)
from PIL import Image

from nccli import schema

ARCH = ("--arch", "extract_helpers:tiny_cnn")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    torch.save(tiny_cnn().state_dict(), directory / "model.pt")
    images, labels = random_images(n=18, size=16, classes=3)
    write_npz(directory / "nhwc.npz", images, labels)
    return directory, images, labels


def _extract(directory, data, out, *options, model="model.pt", normalize=IMAGENET):
    result = invoke("extract", directory / model, data, *ARCH, *normalize, "--out", out, "--workers", 0, *options)
    assert result.exit_code == 0, result.stderr
    return read_datasets(out)


def _assert_same_rows(a: dict, b: dict, exact: bool = True):
    assert a.keys() == b.keys()
    for path, values in a.items():
        if exact:
            np.testing.assert_array_equal(values, b[path], err_msg=path)
        else:
            np.testing.assert_allclose(values, b[path], rtol=1e-5, atol=1e-6, err_msg=path)


@pytest.mark.parametrize("layout", ["nchw", "float"])
def test_npz_layouts_give_the_same_features(setup, tmp_path, layout):
    directory, images, labels = setup
    reference = _extract(directory, directory / "nhwc.npz", tmp_path / "nhwc.h5")
    stored = images.transpose(0, 3, 1, 2) if layout == "nchw" else images.astype(np.float32) / np.float32(255)
    data = write_npz(tmp_path / f"{layout}.npz", stored, labels)
    _assert_same_rows(_extract(directory, data, tmp_path / f"{layout}.h5"), reference, exact=layout == "nchw")


def test_grey_images_with_channels_and_one_value_mean_std(setup, tmp_path):
    directory, images, labels = setup
    grey = images[..., 0]
    rgb = write_npz(tmp_path / "rgb.npz", np.repeat(grey[..., None], 3, axis=3), labels)
    options = ("--mean", "0.5", "--std", "0.25")
    reference = _extract(directory, rgb, tmp_path / "rgb.h5", normalize=options)
    grey_file = write_npz(tmp_path / "grey.npz", grey, labels)
    stored = _extract(directory, grey_file, tmp_path / "grey.h5", "--channels", 3, normalize=options)
    _assert_same_rows(stored, reference)


def test_h5_array_file_read_by_a_worker_process(setup, tmp_path):
    directory, images, labels = setup
    reference = _extract(directory, directory / "nhwc.npz", tmp_path / "npz.h5")
    with h5py.File(tmp_path / "arrays.h5", "w") as handle:
        handle[schema.ARRAY_FILE_IMAGES] = images
        handle[schema.ARRAY_FILE_LABELS] = labels
    result = invoke(
        "extract",
        directory / "model.pt",
        tmp_path / "arrays.h5",
        *ARCH,
        *IMAGENET,
        "--out",
        tmp_path / "h5.h5",
        "--workers",
        1,
        "--batch-size",
        4,
    )
    assert result.exit_code == 0, result.stderr
    _assert_same_rows(read_datasets(tmp_path / "h5.h5"), reference)


def test_image_folder_matches_the_same_pixels_as_an_array_file(setup, tmp_path):
    directory, images, labels = setup
    folder = tmp_path / "folder"
    names = ["cat", "dog", "eel"]
    order = []  # ImageFolder reads classes and files in sorted order
    for label, name in enumerate(names):
        (folder / name).mkdir(parents=True)
        for index in np.flatnonzero(labels == label):
            Image.fromarray(images[index]).save(folder / name / f"{index:03d}.png")
            order.append(index)
    reference = _extract(directory, write_npz(tmp_path / "same.npz", images[order], labels[order]), tmp_path / "npz.h5")
    stored = _extract(directory, folder, tmp_path / "folder.h5")
    # The folder declares 3 classes and the model has 10 outputs: no /logits or /classifier.
    assert schema.LOGITS not in stored and schema.CLASSIFIER_WEIGHT not in stored
    _assert_same_rows(stored, {path: reference[path] for path in stored})
    with h5py.File(tmp_path / "folder.h5", "r") as handle:
        assert list(handle.attrs[schema.ATTR_CLASS_NAMES]) == names
        assert handle.attrs[schema.ATTR_NUM_CLASSES] == 3


def test_image_folder_with_mixed_sizes_needs_resize(setup, tmp_path):
    directory, images, _ = setup
    folder = tmp_path / "folder"
    (folder / "a").mkdir(parents=True)
    Image.fromarray(images[0]).save(folder / "a" / "small.png")
    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(folder / "a" / "wide.png")
    result = invoke(
        "extract", directory / "model.pt", folder, *ARCH, *IMAGENET, "--out", tmp_path / "f.h5", "--workers", 1
    )
    assert_user_error(result, f"image '{folder / 'a' / 'wide.png'}'", "is 3×20×24", "are 3×16×16", "--resize")
    assert not (tmp_path / "f.h5.partial").exists()  # the first batch failed: no rows to keep
    stored = _extract(directory, folder, tmp_path / "resized.h5", "--resize", 12)
    assert stored[schema.LABELS].tolist() == [0, 0]
    with h5py.File(tmp_path / "resized.h5", "r") as handle:
        assert list(handle[schema.layer_path("conv1")].attrs[schema.ATTR_SAMPLE_SHAPE]) == [8, 12, 12]


def test_fake_data_needs_no_normalisation_and_records_none(setup, tmp_path):
    directory, _, _ = setup
    stored = _extract(directory, "fake:12", tmp_path / "fake.h5", "--batch-size", 5, normalize=())
    assert stored[schema.LABELS].shape == (12,)
    assert set(stored[schema.LABELS]) <= set(range(10))
    with h5py.File(tmp_path / "fake.h5", "r") as handle:
        assert handle.attrs[schema.ATTR_NUM_CLASSES] == 10
        assert "fake:12" in handle.attrs[schema.ATTR_DATASET]
        assert "Normalize" not in handle.attrs[schema.ATTR_TRANSFORM]  # pixels in [0, 1], as --normalize none


def test_per_class_subset_is_balanced_seeded_and_in_dataset_order(setup, tmp_path):
    directory, _, labels = setup
    first = _extract(directory, directory / "nhwc.npz", tmp_path / "a.h5", "--per-class", 2, "--seed", 1)
    again = _extract(directory, directory / "nhwc.npz", tmp_path / "b.h5", "--per-class", 2, "--seed", 1)
    other = _extract(directory, directory / "nhwc.npz", tmp_path / "c.h5", "--per-class", 2, "--seed", 2)
    index = first[schema.SAMPLE_INDEX]
    assert np.bincount(first[schema.LABELS]).tolist() == [2, 2, 2]
    assert np.all(np.diff(index) > 0)
    np.testing.assert_array_equal(labels[index], first[schema.LABELS])
    np.testing.assert_array_equal(again[schema.SAMPLE_INDEX], index)
    assert not np.array_equal(other[schema.SAMPLE_INDEX], index)


def test_limit_keeps_the_first_rows(setup, tmp_path):
    directory, _, _ = setup
    full = _extract(directory, directory / "nhwc.npz", tmp_path / "full.h5")
    first = _extract(directory, directory / "nhwc.npz", tmp_path / "first.h5", "--limit", 5)
    assert first[schema.SAMPLE_INDEX].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(first[schema.layer_path("fc:input")], full[schema.layer_path("fc:input")][:5])


def _bad_npz(tmp_path, kind):
    images, labels = random_images(n=6, size=16, classes=3)
    if kind == "float labels":
        np.savez(tmp_path / "bad.npz", x=images, y=labels + 0.5)
    elif kind == "negative labels":
        np.savez(tmp_path / "bad.npz", x=images, y=labels - 1)
    elif kind == "no y":
        np.savez(tmp_path / "bad.npz", x=images, labels=labels)
    elif kind == "count":
        np.savez(tmp_path / "bad.npz", x=images, y=labels[:4])
    return tmp_path / "bad.npz"


@pytest.mark.parametrize(
    ("kind", "fragments"),
    [
        ("float labels", ("have dtype float64, not integers",)),
        ("negative labels", ("must be ≥ 0, found -1",)),
        ("no y", ("lacks array y", "it has x, labels")),
        ("count", ("has 6 images but 4 labels",)),
    ],
)
def test_bad_array_files_fail_with_one_line_and_leave_nothing(setup, tmp_path, kind, fragments):
    directory, _, _ = setup
    data = _bad_npz(tmp_path, kind)
    before = files_in(tmp_path)
    result = invoke("extract", directory / "model.pt", data, *ARCH, *IMAGENET, "--out", tmp_path / "f.h5")
    assert_user_error(result, *fragments)
    assert files_in(tmp_path) == before


@pytest.mark.parametrize(
    ("data", "options", "fragments"),
    [
        ("missing.npz", (), ("array file 'missing.npz' does not exist",)),
        ("missing_dir/", (), ("'missing_dir/' does not exist",)),
        ("cifar1", (), ("did you mean 'cifar10'",)),
        ("cifar10", ("--root", "{tmp}/empty"), ("cifar10 (train) not found under --root", "--download")),
        ("fake:zero", (), ("fake:N needs a positive number",)),
        ("{tmp}/x.npz", ("--download",), ("--download fetches the named torchvision datasets only",)),
    ],
)
def test_missing_and_unknown_data_fail_with_one_line(setup, tmp_path, data, options, fragments):
    directory, _, _ = setup
    options = [option.format(tmp=tmp_path) for option in options]
    result = invoke(
        "extract", directory / "model.pt", data.format(tmp=tmp_path), *ARCH, *IMAGENET, "--out", tmp_path / "f.h5",
        *options,
    )  # fmt: skip
    assert_user_error(result, *fragments)
    assert list(tmp_path.iterdir()) == []
