"""timm models by name (``timm:NAME``): random seeded weights, pretrained weights from the local cache,
checkpoints, and the refusals — every check against timm's own calls."""

import h5py
import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke
from extract_helpers import random_images, read_datasets, unit_inputs, write_npz
from zoo_helpers import cached_repo

from nccli import schema

timm = pytest.importorskip("timm")

CLASSES = 5
SIDE = 235  # timm's resnet18 evaluation resize: 224 / crop_pct 0.95


@pytest.fixture(scope="module")
def images_file(tmp_path_factory):
    images, labels = random_images(n=10, size=32, classes=CLASSES)
    return write_npz(tmp_path_factory.mktemp("timm") / "data.npz", images, labels), images, labels


def _seeded(name: str, seed: int, **kwargs):
    """The network the issue names: ``torch.manual_seed(S); timm.create_model(NAME)``."""
    torch.manual_seed(seed)
    return timm.create_model(name, **kwargs).eval()


@pytest.mark.parametrize(
    ("name", "head", "stages"),
    [
        ("resnet18", "fc", ["act1", "layer1", "layer2", "layer3", "layer4"]),
        ("convnext_atto", "head.fc", ["stages.0", "stages.1", "stages.2", "stages.3"]),
        ("vit_tiny_patch16_224", "head", [f"blocks.{index}" for index in range(12)]),
    ],
)
def test_a_timm_model_by_name_stores_its_head_and_its_pre_logits_row_for_row(images_file, tmp_path, name, head, stages):
    data, images, labels = images_file
    size = 224 if name.startswith("vit") else 32  # timm's ViT takes its own input size only
    out = tmp_path / "f.h5"
    result = invoke(
        "extract", f"timm:{name}", data, "--num-classes", CLASSES, "--init-seed", 7, "--normalize", "none",
        *(("--resize", size) if size != 32 else ()), "--out", out, "--workers", 0,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    model = _seeded(name, 7, num_classes=CLASSES)
    inputs = unit_inputs(images)
    if size != 32:
        inputs = torch.nn.functional.interpolate(inputs, size=size, mode="bilinear", antialias=True)
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(inputs), pre_logits=True)
        logits = model(inputs)
    stored = read_datasets(out)
    np.testing.assert_array_equal(stored["classifier/weight"], model.get_classifier().weight.detach().numpy())
    np.testing.assert_array_equal(stored["classifier/bias"], model.get_classifier().bias.detach().numpy())
    np.testing.assert_allclose(stored[f"layers/{head}:input"], pre_logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stored["logits"], logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(stored["labels"], labels)
    with h5py.File(out) as handle:
        assert sorted(handle["layers"]) == sorted([*stages, f"{head}:input", head])
        assert handle.attrs[schema.ATTR_MODEL] == f"timm:{name}"
        assert handle.attrs[schema.ATTR_INIT_SEED] == 7
        assert handle.attrs[schema.ATTR_MODEL_LIBRARY] == f"timm {timm.__version__}"
        assert handle[schema.CLASSIFIER].attrs[schema.ATTR_CLASSIFIER_LAYER] == f"{head}:input"
    assert invoke("analyze", out, "--out", tmp_path / "r.parquet").exit_code == 0


def test_another_init_seed_builds_another_network(images_file, tmp_path):
    data, _, _ = images_file
    for seed in (0, 1):
        result = invoke(
            "extract", "timm:resnet18", data, "--num-classes", CLASSES, "--init-seed", seed, "--normalize", "none",
            "--out", tmp_path / f"{seed}.h5", "--workers", 0, "--layers", "fc:input",
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
    first, second = (read_datasets(tmp_path / f"{seed}.h5")["classifier/weight"] for seed in (0, 1))
    np.testing.assert_array_equal(first, _seeded("resnet18", 0, num_classes=CLASSES).fc.weight.detach().numpy())
    assert not np.array_equal(first, second)


def test_layers_lists_timm_stages_at_the_models_input_size():
    result = invoke("layers", "timm:vit_tiny_patch16_224", "--format", "json")
    assert result.exit_code == 0, result.stderr
    import json

    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["blocks.0"]["default"] and rows["blocks.0"]["shape"] == "197×192"  # 224×224: 196 patches + class
    assert rows["head:input"]["default"] and rows["head"]["default"]
    assert not rows["blocks.0.attn"]["default"]


def test_a_distilled_head_is_not_one_linear_layer_so_no_classifier_is_written(images_file, tmp_path):
    data, _, _ = images_file
    out = tmp_path / "d.h5"
    result = invoke(
        "extract", "timm:deit_tiny_distilled_patch16_224", data, "--num-classes", CLASSES, "--normalize", "none",
        "--resize", 224, "--layers", "blocks.11", "--out", out, "--workers", 0,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "the model's head is not one linear layer" in result.stderr
    with h5py.File(out) as handle:
        assert schema.CLASSIFIER not in handle and schema.LOGITS in handle


def _cache_resnet18(hub_cache, classes: int = 1000) -> torch.nn.Module:
    """timm's default resnet18 weights (random here) in the test's Hugging Face cache, as timm saves them."""
    from safetensors.torch import save_file

    model = _seeded("resnet18", 3, num_classes=classes)
    folder = cached_repo(hub_cache, timm.models.get_pretrained_cfg("resnet18").hf_hub_id)
    save_file(model.state_dict(), folder / "model.safetensors")
    return model


def test_pretrained_weights_come_from_the_cache_with_their_own_preprocessing(hub_cache, tmp_path):
    cached = _cache_resnet18(hub_cache)
    images, labels = random_images(n=4, size=SIDE, classes=CLASSES)  # timm resizes to 235 = 224 / 0.95: no change
    data = write_npz(tmp_path / "data.npz", images, labels)
    out = tmp_path / "p.h5"
    result = invoke("extract", "timm:resnet18", data, "--weights", "DEFAULT", "--out", out, "--workers", 0)
    assert result.exit_code == 0, result.stderr
    config = timm.data.resolve_model_data_config(cached)
    reference = timm.data.create_transform(**config)  # timm's own evaluation transform (PIL in, tensor out)
    from PIL import Image

    by_timm = torch.stack([reference(Image.fromarray(image)) for image in images])
    start = round((SIDE - 224) / 2)  # the recipe by hand: no resize at 235 = 224 / crop_pct, crop, scale, normalise
    cropped = torch.from_numpy(images).permute(0, 3, 1, 2)[:, :, start : start + 224, start : start + 224] / 255
    by_hand = (cropped - torch.tensor(config["mean"]).view(1, 3, 1, 1)) / torch.tensor(config["std"]).view(1, 3, 1, 1)
    stored = read_datasets(out)
    np.testing.assert_array_equal(stored["classifier/weight"], cached.fc.weight.detach().numpy())
    with torch.no_grad():
        for inputs in (by_hand, by_timm):
            pre_logits = cached.forward_head(cached.forward_features(inputs), pre_logits=True)
            np.testing.assert_allclose(stored["layers/fc:input"], pre_logits.numpy(), rtol=1e-5, atol=1e-5)
    with h5py.File(out) as handle:
        transform = handle.attrs[schema.ATTR_TRANSFORM]
        assert "Resize(size=235, interpolation=bicubic" in transform and "CenterCrop(size=(224, 224))" in transform
        assert "Normalize(mean=[0.485, 0.456, 0.406]" in transform
        assert handle.attrs[schema.ATTR_WEIGHTS] == "resnet18.a1_in1k"
        assert schema.ATTR_INIT_SEED not in handle.attrs
        assert handle.attrs[schema.ATTR_CLASS_NAMES][0].startswith("tench")
    assert "Normalize" not in _transform_with(hub_cache, data, tmp_path, "--normalize", "none")


def _transform_with(hub_cache, data, tmp_path, *options) -> str:
    """The transform attribute of a pretrained resnet18's file extracted with ``options``."""
    out = tmp_path / "o.h5"
    result = invoke("extract", "timm:resnet18", data, "--weights", "DEFAULT", *options, "--out", out, "--workers", 0)
    assert result.exit_code == 0, result.stderr
    with h5py.File(out) as handle:
        return handle.attrs[schema.ATTR_TRANSFORM]


def test_a_checkpoint_fits_timm_as_weights_and_as_arch(images_file, tmp_path):
    data, _, _ = images_file
    model = _seeded("resnet18", 5, num_classes=CLASSES)
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    common = ("--normalize", "none", "--layers", "fc:input", "--workers", 0)
    as_weights = invoke(
        "extract", "timm:resnet18", data, "--weights", tmp_path / "ckpt.pt", "--out", tmp_path / "w.h5", *common
    )
    as_arch = invoke(
        "extract", tmp_path / "ckpt.pt", data, "--arch", "timm:resnet18", "--out", tmp_path / "a.h5", *common
    )
    for result, out in ((as_weights, "w.h5"), (as_arch, "a.h5")):
        assert result.exit_code == 0, result.stderr
        np.testing.assert_array_equal(
            read_datasets(tmp_path / out)["classifier/weight"], model.fc.weight.detach().numpy()
        )
        with h5py.File(tmp_path / out) as handle:
            assert handle.attrs[schema.ATTR_EPOCH] == 3 and len(handle.attrs[schema.ATTR_CHECKPOINT_SHA256]) == 64


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        (("timm:resnet19",), ("'resnet19' is not a timm model name", "did you mean 'resnet18'")),
        (("timm:resnet18", "--weights", "nosuchtag"), ("'nosuchtag' is not a pretrained tag of timm's 'resnet18'",)),
        (("timm:resnet18.a1_in1k", "--weights", "tv_in1k"), ("names the tag 'a1_in1k' and --weights 'tv_in1k'",)),
        (
            ("timm:resnet18", "--weights", "DEFAULT"),
            ("'resnet18.a1_in1k' are not in the Hugging Face cache", "HF_HUB_OFFLINE=0"),
        ),
        (("timm:resnet34", "--weights", "{ckpt}"), ("does not fit 'timm:resnet34'", "missing keys")),
        (("timm:resnet18", "--arch", "resnet18"), ("--arch builds the network for a checkpoint",)),
    ],
)
def test_bad_timm_input_is_one_line(hub_cache, tmp_path, arguments, fragments):
    torch.save(_seeded("resnet18", 0).state_dict(), tmp_path / "r18.pt")
    arguments = [str(argument).format(ckpt=tmp_path / "r18.pt") for argument in arguments]
    assert_user_error(invoke("layers", *arguments), *fragments)


def test_a_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "timm", None)  # import timm raises ImportError
    assert_user_error(invoke("layers", "timm:resnet18"), "needs the timm package", "pip install 'nccli[timm]'")
    assert_user_error(invoke("models", "timm"), "pip install 'nccli[timm]'")


def test_models_lists_a_zoos_names_as_model_takes_them():
    result = invoke("models", "timm", "convnext_at*")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == [f"timm:{name}" for name in timm.list_models("convnext_at*")]
    tagged = invoke("models", "timm", "resnet18.*", "--pretrained").stdout.split()
    assert "timm:resnet18.a1_in1k" in tagged
    from torchvision import models

    assert invoke("models", "torchvision").stdout.split() == sorted(models.list_models(module=models))


def test_a_head_wrapping_one_linear_layer_is_that_layer():
    """timm's ClassifierHead (sequencer2d_s) is not an nn.Linear but holds one: its W is the classifier's."""
    import json

    result = invoke("layers", "timm:sequencer2d_s", "--format", "json")
    assert result.exit_code == 0, result.stderr
    defaults = [row["name"] for row in json.loads(result.stdout) if row["default"]]
    assert defaults[-2:] == ["head.fc:input", "head.fc"]


def test_a_1x1_convolution_head_is_the_classifier(images_file, tmp_path):
    """dla's get_classifier() is a 1×1 Conv2d on the pooled maps: its (out, C) weight is W, its input the row."""
    data, images, _ = images_file
    out = tmp_path / "f.h5"
    common = ("--num-classes", CLASSES, "--init-seed", 2, "--normalize", "none", "--workers", 0)
    assert invoke("extract", "timm:dla34", data, *common, "--layers", "fc:input", "--out", out).exit_code == 0
    model = _seeded("dla34", 2, num_classes=CLASSES)
    stored = read_datasets(out)
    np.testing.assert_array_equal(stored["classifier/weight"], model.fc.weight.detach().numpy()[:, :, 0, 0])
    with torch.no_grad():
        logits = model(unit_inputs(images)).numpy()
    found = stored["layers/fc:input"] @ stored["classifier/weight"].T + stored["classifier/bias"]
    np.testing.assert_allclose(found, logits, rtol=1e-4, atol=1e-4)


def test_a_model_whose_output_no_linear_layer_gives_says_so(tmp_path):
    out = tmp_path / "s.h5"
    result = invoke("extract", "squeezenet1_0", "fake:4", "--num-classes", 10, "--resize", 64, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "no linear layer (nn.Linear on (N, d) inputs) gives the model's output; /classifier is not written" in (
        result.stderr
    )
    with h5py.File(out) as handle:
        assert schema.CLASSIFIER not in handle and schema.LOGITS in handle
