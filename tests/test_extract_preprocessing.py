"""Preprocessing is never guessed, and every extract with logits ends with the classifier's accuracy.

Without ``--weights``, ``--mean``/``--std`` or ``--normalize none|imagenet`` must say how the images are
normalised: features of wrongly normalised images look plausible and are wrong. With weights, either replaces
their own preprocessing. The top-1 accuracy of the
stored logits is printed and recorded, so a model fed the wrong inputs shows at once.

The models here are importable as ``--arch test_extract_preprocessing:NAME`` (pytest puts ``tests/`` on sys.path).
"""

import json

import h5py
import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke
from extract_helpers import (
    IMAGENET,
    IMAGENET_MEAN,
    IMAGENET_STD,
    files_in,
    random_images,
    read_datasets,
    reference_inputs,
    reference_outputs,
    tiny_cnn,
    unit_inputs,
    write_npz,
)
from PIL import Image
from torch import nn

from nccli import schema
from nccli.errors import UsageError
from nccli.extract import loop

ARCH = ("--arch", "extract_helpers:tiny_cnn")
ROWS = 12
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
REFUSAL = (
    "say how to normalise the images of '{data}': --mean M --std S (the statistics the model was trained with), "
    "--normalize none (pixels in [0, 1]) or --normalize imagenet (ImageNet's mean and std)"
)


def tied(num_classes: int = 4) -> nn.Module:
    """Every logit 0: every row's argmax is a tie, which goes to class 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, num_classes))
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("preprocessing")
    torch.save(tiny_cnn().state_dict(), directory / "model.pt")
    torch.save(tied().state_dict(), directory / "tied.pt")
    images, labels = random_images(n=ROWS, size=16)
    write_npz(directory / "data.npz", images, labels)
    return directory, images, labels


def _extract(directory, out, *options, model="model.pt", arch=ARCH):
    return invoke("extract", directory / model, directory / "data.npz", *arch, "--out", out, "--workers", 0, *options)


def _accuracy_line(result, out) -> str:
    lines = [line for line in result.stderr.splitlines() if "top-1 accuracy" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"'{out}': top-1 accuracy of the model's logits on these "), lines[0]
    return lines[0]


def _numpy_accuracy(path) -> float:
    stored = read_datasets(path)
    return np.count_nonzero(np.argmax(stored[schema.LOGITS], axis=1) == stored[schema.LABELS]) / len(
        stored[schema.LABELS]
    )


def _recorded(path):
    with h5py.File(path, "r") as handle:
        return handle.attrs.get(schema.ATTR_LOGITS_ACCURACY), handle.attrs[schema.ATTR_TRANSFORM]


# --- never guess the normalisation --------------------------------------------------------------------------


def test_an_array_file_without_a_normalisation_is_refused_naming_the_choices_and_nothing_is_written(setup, tmp_path):
    directory, _, _ = setup
    data = directory / "data.npz"
    before = files_in(tmp_path)
    result = invoke("extract", directory / "model.pt", data, *ARCH, "--out", tmp_path / "f.h5", "--workers", 0)
    line = assert_user_error(result)
    assert line == "error: " + REFUSAL.format(data=data)
    assert files_in(tmp_path) == before  # no file, no .partial


def test_an_image_folder_and_a_named_dataset_are_refused_alike(setup, tmp_path):
    directory, images, _ = setup
    (tmp_path / "folder" / "a").mkdir(parents=True)
    Image.fromarray(images[0]).save(tmp_path / "folder" / "a" / "0.png")
    for data in (tmp_path / "folder", "cifar10"):
        result = invoke("extract", directory / "model.pt", data, *ARCH, "--out", tmp_path / "f.h5")
        assert_user_error(result, REFUSAL.format(data=data))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["folder"]


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (("--normalize", "none", "--mean", "0.5"), ("--normalize none and --mean both say how to normalise",)),
        (
            ("--normalize", "imagenet", "--mean", "0.5", "--std", "0.2"),
            ("--normalize imagenet and --mean/--std both say", "pass --mean and --std, or --normalize"),
        ),
        (("--mean", "0.5"), ("--mean without --std: pass both",)),
        (("--std", "0.2"), ("--std without --mean: pass both",)),
    ],
)
def test_contradicting_or_half_normalisations_are_refused_in_one_line(setup, tmp_path, options, fragments):
    directory, _, _ = setup
    result = invoke("extract", "resnet18", directory / "data.npz", "--out", tmp_path / "f.h5", *options)
    assert_user_error(result, *fragments)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def cached_resnet18(tmp_path, monkeypatch):
    """torchvision's IMAGENET1K_V1 resnet18 weights (random here) in a test torch hub cache."""
    from torchvision import models

    weights = models.ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    (tmp_path / "torch_home" / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(2)
    model = models.resnet18().eval()
    torch.save(model.state_dict(), tmp_path / "torch_home" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1])
    return model


def test_an_explicit_normalisation_replaces_the_weights_own_preprocessing(setup, tmp_path, cached_resnet18):
    directory, images, _ = setup
    common = ("resnet18", directory / "data.npz", "--weights", "IMAGENET1K_V1", "--layers", "fc:input")
    transforms = {}
    for name, options in (("own", ()), ("none", ("--normalize", "none")), ("imagenet", IMAGENET)):
        result = invoke("extract", *common, *options, "--out", tmp_path / f"{name}.h5", "--workers", 0)
        assert result.exit_code == 0, result.stderr
        with h5py.File(tmp_path / f"{name}.h5") as handle:
            transforms[name] = handle.attrs[schema.ATTR_TRANSFORM]
    assert "ImageClassification" in transforms["own"] and "resize_size=[256]" in transforms["own"]
    assert "ImageClassification" not in transforms["none"] and "Normalize" not in transforms["none"]
    for name, inputs in (("none", unit_inputs(images)), ("imagenet", reference_inputs(images))):
        _, captured, _ = reference_outputs(cached_resnet18, inputs, [], inputs_of=["fc"])
        stored = read_datasets(tmp_path / f"{name}.h5")[schema.layer_path("fc:input")]
        np.testing.assert_allclose(stored, captured["fc"].numpy(), **TOLERANCE)  # exactly the given pixels
    resized = invoke("extract", *common, "--resize", 8, "--out", tmp_path / "r.h5")
    assert_user_error(resized, "--resize is for your own preprocessing; the model's own resizes the images")


def test_the_python_api_refuses_too(setup, tmp_path):
    from nccli import ExtractConfig
    from nccli.extract import ModelOptions

    directory, _, _ = setup
    common = {"models": str(directory / "model.pt"), "out": str(tmp_path / "f.h5"), "model": ModelOptions(arch=ARCH[1])}
    with pytest.raises(UsageError) as refused:
        ExtractConfig(data=str(directory / "data.npz"), **common)
    assert str(refused.value) == REFUSAL.format(data=directory / "data.npz")
    with pytest.raises(UsageError, match="both say how to normalise"):
        ExtractConfig(data=str(directory / "data.npz"), normalize="none", mean=(0.5,), std=(0.2,), **common)
    with pytest.raises(UsageError, match="--normalize must be one of none, imagenet, got 'zscore'"):
        ExtractConfig(data=str(directory / "data.npz"), normalize="zscore", **common)
    assert ExtractConfig(data="fake:4", **common).normalize == "none"  # random pixels: nothing to match
    weights = ExtractConfig(data="fake:4", model=ModelOptions(weights="DEFAULT"), models="resnet18", out="f")
    assert weights.normalize is None  # the weights' own transforms
    assert list(tmp_path.iterdir()) == []


def test_fake_data_prefix_is_the_datasets_one():
    from nccli.extract import config, datasets

    assert config.FAKE_DATA_PREFIX == datasets.FAKE_PREFIX


def test_normalize_none_stores_the_model_on_the_raw_unit_pixels(setup, tmp_path):
    directory, images, labels = setup
    out = tmp_path / "none.h5"
    result = _extract(directory, out, "--normalize", "none")
    assert result.exit_code == 0, result.stderr
    model = tiny_cnn()
    outputs, inputs_of, logits = reference_outputs(model, unit_inputs(images), ["block"], ["fc"])
    stored = read_datasets(out)
    np.testing.assert_allclose(stored[schema.layer_path("fc:input")], inputs_of["fc"].numpy(), **TOLERANCE)
    np.testing.assert_allclose(stored[schema.layer_path("block")], outputs["block"][0].mean(dim=(2, 3)), **TOLERANCE)
    np.testing.assert_allclose(stored[schema.LOGITS], logits.numpy(), **TOLERANCE)
    np.testing.assert_array_equal(stored[schema.LABELS], labels)
    _, transform = _recorded(out)
    assert "ConvertImageDtype" in transform and "Normalize" not in transform


def test_normalize_imagenet_is_the_old_default_and_equals_imagenet_mean_and_std(setup, tmp_path):
    directory, images, _ = setup
    result = _extract(directory, tmp_path / "imagenet.h5", *IMAGENET)
    assert result.exit_code == 0, result.stderr
    spelled = ("--mean", ",".join(map(str, IMAGENET_MEAN)), "--std", ",".join(map(str, IMAGENET_STD)))
    assert _extract(directory, tmp_path / "spelled.h5", *spelled).exit_code == 0
    _, inputs_of, logits = reference_outputs(tiny_cnn(), reference_inputs(images), [], ["fc"])
    stored, same = read_datasets(tmp_path / "imagenet.h5"), read_datasets(tmp_path / "spelled.h5")
    np.testing.assert_allclose(stored[schema.layer_path("fc:input")], inputs_of["fc"].numpy(), **TOLERANCE)
    np.testing.assert_allclose(stored[schema.LOGITS], logits.numpy(), **TOLERANCE)
    for path, values in stored.items():
        np.testing.assert_array_equal(same[path], values, err_msg=path)
    _, transform = _recorded(tmp_path / "imagenet.h5")
    assert "Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])" in transform


def test_help_teaches_the_choices():
    result = invoke("extract", "--help")
    text = " ".join(result.stdout.replace("│", " ").split())
    for phrase in ("--normalize", "none|imagenet", "none keeps the pixels in [0, 1]", "one of --mean/--std or"):
        assert phrase in text, phrase


# --- the accuracy of the stored logits ----------------------------------------------------------------------


@pytest.mark.parametrize("storage", [(), ("--dtype", "float16", "--compression", "lzf")])
def test_the_printed_accuracy_is_the_stored_logits_and_is_recorded(setup, tmp_path, storage):
    directory, _, _ = setup
    out = tmp_path / "f.h5"
    result = _extract(directory, out, *IMAGENET, "--batch-size", 5, *storage)
    assert result.exit_code == 0, result.stderr
    expected = _numpy_accuracy(out)
    recorded, _ = _recorded(out)
    assert recorded == expected
    assert _accuracy_line(result, out).endswith(f"on these {ROWS} samples: {expected:.4f}")
    record = json.loads(invoke("info", out, "--format", "json").stdout)[0]
    assert record["logits_accuracy"] == expected


def test_tied_logits_count_as_the_lowest_class(setup, tmp_path):
    directory, _, _ = setup
    out = tmp_path / "tied.h5"
    arch = ("--arch", "test_extract_preprocessing:tied", "--num-classes", 4)
    data = write_npz(tmp_path / "four.npz", *random_images(n=ROWS, size=16, classes=4))
    result = invoke("extract", directory / "tied.pt", data, *arch, "--normalize", "none", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert _recorded(out)[0] == np.count_nonzero(read_datasets(out)[schema.LABELS] == 0) / ROWS == 0.25


def test_a_resumed_run_records_the_accuracy_of_all_its_rows(setup, tmp_path, monkeypatch):
    directory, _, _ = setup
    out = tmp_path / "f.h5"
    real, calls = loop.run_batch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "run_batch", interrupted)
        assert _extract(directory, out, *IMAGENET, "--batch-size", 4).exit_code == 130
    with h5py.File(f"{out}.partial", "r") as handle:
        assert np.isnan(handle.attrs[schema.ATTR_LOGITS_ACCURACY])  # a placeholder until the file is finished
    result = _extract(directory, out, *IMAGENET, "--batch-size", 4, "--resume")
    assert result.exit_code == 0, result.stderr
    assert _recorded(out)[0] == _numpy_accuracy(out)
    assert _accuracy_line(result, out).endswith(f"on these {ROWS} samples: {_numpy_accuracy(out):.4f}")


def _two_class_folder(images, folder, count: int):
    """An ImageFolder of the first ``count`` images, alternately in class0 and class1."""
    for index in range(count):
        (folder / f"class{index % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(folder / f"class{index % 2}" / f"{index}.png")
    return folder


def test_unreadable_samples_left_out_are_left_out_of_the_accuracy(setup, tmp_path):
    _, images, _ = setup
    folder = _two_class_folder(images, tmp_path / "folder", 6)
    (folder / "class0" / "2.png").write_bytes(b"not an image")
    torch.save(tiny_cnn(num_classes=2).state_dict(), tmp_path / "two.pt")
    out = tmp_path / "f.h5"
    result = invoke(
        "extract", tmp_path / "two.pt", folder, *ARCH, "--num-classes", 2, *IMAGENET, "--out", out,
        "--batch-size", 2, "--workers", 0, "--skip-unreadable",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert len(read_datasets(out)[schema.LABELS]) == 5
    assert _recorded(out)[0] == _numpy_accuracy(out)
    assert _accuracy_line(result, out).endswith(f"on these 5 samples: {_numpy_accuracy(out):.4f}")


def test_a_file_without_logits_has_no_accuracy_and_prints_none(setup, tmp_path):
    directory, images, _ = setup
    folder = _two_class_folder(images, tmp_path / "folder", 4)
    out = tmp_path / "f.h5"
    result = invoke("extract", directory / "model.pt", folder, *ARCH, *IMAGENET, "--out", out, "--workers", 0)
    assert result.exit_code == 0, result.stderr  # 10 outputs for 2 classes: no /logits
    assert schema.LOGITS not in read_datasets(out)
    assert _recorded(out)[0] is None
    assert "accuracy" not in result.stderr
    assert json.loads(invoke("info", out, "--format", "json").stdout)[0]["logits_accuracy"] is None
