"""Hugging Face image classifiers: a ``save_pretrained`` folder and ``hf:ORG/NAME`` from the local cache, with
the image processor's preprocessing, the head as the classifier and the encoder's blocks as layers."""

import shutil

import h5py
import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke
from extract_helpers import random_images, read_datasets, write_npz
from zoo_helpers import SNAPSHOT, cached_repo, tiny_vit_classifier

from nccli import schema

transformers = pytest.importorskip("transformers")

CLASSES = 5


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """A saved tiny ViT classifier, its data (32×32 images of 5 classes) and the model itself."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    model = tiny_vit_classifier(folder, CLASSES)
    images, labels = random_images(n=8, size=32, classes=CLASSES)
    return folder, write_npz(folder.parent / "data.npz", images, labels), images, labels, model


def _processed(folder, images) -> torch.Tensor:
    """The folder's own image processor on the images (the reference for nccli's tensor pipeline)."""
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    return processor(images=list(images), return_tensors="pt")["pixel_values"]


def test_a_model_folder_stores_its_head_its_cls_representation_and_its_blocks(vit, tmp_path):
    folder, data, images, labels, model = vit
    out = tmp_path / "v.h5"
    result = invoke("extract", folder, data, "--out", out, "--workers", 0)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip().splitlines()[0].startswith(f"'{out}': top-1 accuracy")  # nothing of HF's own
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    pixels = _processed(folder, images)
    with torch.no_grad():
        hidden = model.vit(pixels).last_hidden_state[:, 0]  # the [CLS] token after the final norm: the head's input
        logits = model(pixels).logits
    stored = read_datasets(out)
    np.testing.assert_array_equal(stored["classifier/weight"], model.classifier.weight.detach().numpy())
    np.testing.assert_array_equal(stored["classifier/bias"], model.classifier.bias.detach().numpy())
    np.testing.assert_allclose(stored["layers/classifier:input"], hidden.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stored["logits"], logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(stored["labels"], labels)
    with h5py.File(out) as handle:
        assert list(handle["layers"]) == ["classifier", "classifier:input", "vit.layers.0", "vit.layers.1"]
        assert handle["layers/vit.layers.0"].attrs[schema.ATTR_POOLING] == "cls"
        assert list(handle.attrs[schema.ATTR_CLASS_NAMES]) == [f"kind {index}" for index in range(CLASSES)]
        assert handle.attrs[schema.ATTR_CHECKPOINT] == str(folder)
        assert len(handle.attrs[schema.ATTR_CHECKPOINT_SHA256]) == 64
        assert handle.attrs[schema.ATTR_MODEL_LIBRARY] == f"transformers {transformers.__version__}"
        assert schema.ATTR_INIT_SEED not in handle.attrs
        assert "Normalize(mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])" in handle.attrs[schema.ATTR_TRANSFORM]
    assert invoke("analyze", out, "--out", tmp_path / "r.parquet").exit_code == 0


def test_an_explicit_normalisation_replaces_the_image_processors(vit, tmp_path):
    folder, data, images, _, model = vit
    out = tmp_path / "n.h5"
    result = invoke("extract", folder, data, "--normalize", "none", "--layers", "classifier:input", "--out", out)
    assert result.exit_code == 0, result.stderr
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2) / 255  # exactly the given pixels, in [0, 1]
    with torch.no_grad():
        hidden = model.vit(pixels).last_hidden_state[:, 0]
    np.testing.assert_allclose(read_datasets(out)["layers/classifier:input"], hidden.numpy(), rtol=1e-5, atol=1e-5)


def test_a_hub_id_is_read_from_the_local_cache(vit, hub_cache, tmp_path):
    folder, data, _, _, model = vit
    snapshot = cached_repo(hub_cache, "someone/tiny-vit")
    for entry in folder.iterdir():
        shutil.copy(entry, snapshot / entry.name)
    out = tmp_path / "h.h5"
    result = invoke("extract", "hf:someone/tiny-vit", data, "--layers", "classifier:input", "--out", out)
    assert result.exit_code == 0, result.stderr
    np.testing.assert_array_equal(read_datasets(out)["classifier/weight"], model.classifier.weight.detach().numpy())
    with h5py.File(out) as handle:
        assert handle.attrs[schema.ATTR_MODEL] == "hf:someone/tiny-vit"
        assert handle.attrs[schema.ATTR_WEIGHTS] == f"hf:someone/tiny-vit@{SNAPSHOT}"
    assert invoke("models", "hf").stdout.split() == ["hf:someone/tiny-vit"]


def test_a_folder_with_a_config_only_is_built_with_seeded_random_weights(vit, tmp_path):
    _, data, _, _, _ = vit
    folder = tmp_path / "config-only"
    tiny_vit_classifier(folder, CLASSES, weights=False)
    out = tmp_path / "c.h5"
    result = invoke("extract", folder, data, "--init-seed", 4, "--layers", "classifier:input", "--out", out)
    assert result.exit_code == 0, result.stderr
    torch.manual_seed(4)
    expected = transformers.AutoModelForImageClassification.from_config(transformers.AutoConfig.from_pretrained(folder))
    np.testing.assert_array_equal(read_datasets(out)["classifier/weight"], expected.classifier.weight.detach().numpy())
    with h5py.File(out) as handle:
        assert handle.attrs[schema.ATTR_INIT_SEED] == 4


def test_layers_of_a_folder_at_its_processors_size(vit):
    folder = vit[0]
    result = invoke("layers", folder)
    assert result.exit_code == 0, result.stderr
    picks = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("*")]
    assert picks == ["vit.layers.0", "vit.layers.1", "classifier:input", "classifier"]
    assert "17×32" in result.stdout  # 32×32 images: 16 patches and the class token


def _gpt2_folder(path):
    transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        (("{tmp}",), ("is a folder but not a Hugging Face model (it has no config.json)",)),
        (("{gpt2}",), ("is a 'gpt2' model, not an image classifier",)),
        (("hf:no-slash",), ("is not a Hugging Face model id; write hf:ORG/NAME",)),
        (("hf:someone/missing",), ("'someone/missing' is not in the local Hugging Face cache",)),
        (("{vit}", "--weights", "DEFAULT"), ("--weights is not for a Hugging Face model",)),
    ],
)
def test_bad_hugging_face_input_is_one_line(vit, hub_cache, tmp_path, arguments, fragments):
    names = {"tmp": tmp_path, "gpt2": _gpt2_folder(tmp_path / "gpt2"), "vit": vit[0]}
    assert_user_error(invoke("layers", *[argument.format(**names) for argument in arguments]), *fragments)


def test_a_folder_without_an_image_processor_needs_a_normalisation(vit, tmp_path):
    folder = tmp_path / "no-processor"
    tiny_vit_classifier(folder, CLASSES, processor=False)
    result = invoke("extract", folder, vit[1], "--out", tmp_path / "x.h5")
    assert_user_error(result, "say how to normalise the images (the model brings no preprocessing of its own)")
    assert not list(tmp_path.glob("x.h5*"))


def test_a_missing_extra_names_it(vit, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # import transformers raises ImportError
    assert_user_error(invoke("layers", vit[0]), "needs the transformers package", "pip install 'nccli[hf]'")
