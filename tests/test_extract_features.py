"""Stored features equal an independent forward pass: torchvision ResNet-18 and a small VisionTransformer.

The references hook the same modules with plain PyTorch, clone outputs when
they are produced and pool by hand; inputs are preprocessed by hand too.
"""

import h5py
import numpy as np
import pytest
import torch
import torchvision
from cli_helpers import assert_user_error, invoke
from extract_helpers import (
    IMAGENET,
    random_images,
    read_datasets,
    reference_inputs,
    reference_outputs,
    tiny_vit,
    write_npz,
)

from nccli import schema

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
# avgpool is not a default pick: its output is fc's input itself, stored once as fc:input.
RESNET_BLOCKS = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """A random-weight ResNet-18 with 10 classes saved as a state_dict, 24 random 32×32 images, and the file."""
    directory = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(model.state_dict(), directory / "resnet18.pt")
    images, labels = random_images()
    data = write_npz(directory / "data.npz", images, labels)
    out = directory / "features.h5"
    result = invoke(
        "extract",
        directory / "resnet18.pt",
        data,
        "--arch",
        "resnet18",
        *IMAGENET,
        "--out",
        out,
        "--batch-size",
        8,
        "--workers",
        0,
    )
    assert result.exit_code == 0, result.stderr
    return model, images, labels, out, directory


def _extract_resnet(directory, out, *options):
    """``nccli extract`` of the fixture's ResNet-18 checkpoint over its data, in the test process."""
    return invoke(
        "extract",
        directory / "resnet18.pt",
        directory / "data.npz",
        "--arch",
        "resnet18",
        *IMAGENET,
        "--out",
        out,
        *options,
        "--workers",
        0,
    )


def test_resnet18_default_layers_equal_an_independent_forward_pass(resnet):
    model, images, labels, out, _ = resnet
    outputs, inputs_of, logits = reference_outputs(model, reference_inputs(images), RESNET_BLOCKS, ["fc"])
    stored = read_datasets(out)
    assert sorted(name.split("/", 1)[1] for name in stored if name.startswith("layers/")) == sorted(
        RESNET_BLOCKS + ["fc:input", "fc"]
    )
    for name in RESNET_BLOCKS:
        expected = outputs[name][0].mean(dim=(2, 3)).numpy()
        for row, (got, want) in enumerate(zip(stored[schema.layer_path(name)], expected, strict=True)):
            np.testing.assert_allclose(got, want, **TOLERANCE, err_msg=f"{name} row {row}")
    np.testing.assert_allclose(stored[schema.layer_path("fc:input")], inputs_of["fc"].numpy(), **TOLERANCE)
    np.testing.assert_allclose(stored[schema.LOGITS], logits.numpy(), **TOLERANCE)
    np.testing.assert_allclose(stored[schema.layer_path("fc")], logits.numpy(), **TOLERANCE)  # the logits layer
    np.testing.assert_array_equal(stored[schema.LABELS], labels)
    np.testing.assert_array_equal(stored[schema.SAMPLE_INDEX], np.arange(len(labels)))
    np.testing.assert_array_equal(stored[schema.CLASSIFIER_WEIGHT], model.fc.weight.detach().numpy())
    np.testing.assert_array_equal(stored[schema.CLASSIFIER_BIAS], model.fc.bias.detach().numpy())


def test_resnet18_file_follows_the_feature_file_spec(resnet):
    _, images, _, out, directory = resnet
    with h5py.File(out, "r") as handle:
        assert handle.attrs[schema.ATTR_FORMAT] == schema.FORMAT_NAME
        assert handle.attrs[schema.ATTR_FORMAT_VERSION] == schema.FORMAT_VERSION
        assert handle.attrs[schema.ATTR_COMPLETE] and handle.attrs[schema.ATTR_ROWS_WRITTEN] == len(images)
        assert handle.attrs[schema.ATTR_NUM_CLASSES] == 10
        assert handle.attrs[schema.ATTR_SPLIT] == "train"
        assert handle[schema.CLASSIFIER].attrs[schema.ATTR_CLASSIFIER_LAYER] == "fc:input"
        for name in schema.PROVENANCE_ATTRS:
            assert name in handle.attrs, name
        assert handle.attrs[schema.ATTR_MODEL] == "resnet18"
        assert handle.attrs[schema.ATTR_CHECKPOINT] == str(directory / "resnet18.pt")
        assert len(handle.attrs[schema.ATTR_CHECKPOINT_SHA256]) == 64
        orders = [
            handle[schema.layer_path(name)].attrs[schema.ATTR_ORDER] for name in RESNET_BLOCKS + ["fc:input", "fc"]
        ]
        assert orders == list(range(len(orders)))
        layer1 = handle[schema.layer_path("layer1")]
        assert list(layer1.attrs[schema.ATTR_SAMPLE_SHAPE]) == [64, 8, 8]
        assert layer1.attrs[schema.ATTR_POOLING] == "avg"
        assert layer1.chunks is not None and layer1.chunks[1] == 64
    assert not (directory / "features.h5.partial").exists()


def test_in_place_relu_does_not_change_captured_outputs(resnet, tmp_path):
    """layer1.0.bn1's output is overwritten by the block's in-place ReLU right after the hook runs."""
    model, images, _, _, directory = resnet
    out = tmp_path / "f.h5"
    result = _extract_resnet(directory, out, "--layers", "layer1.0.bn1,layer1.0.relu#2", "--pool", "flatten")
    assert result.exit_code == 0, result.stderr
    outputs, _, _ = reference_outputs(model, reference_inputs(images), ["layer1.0.bn1", "layer1.0.relu"])
    stored = read_datasets(out)
    bn1 = stored[schema.layer_path("layer1.0.bn1")]
    assert (bn1 < 0).any(), "pre-ReLU values must keep their negatives"
    np.testing.assert_allclose(bn1, outputs["layer1.0.bn1"][0].flatten(1).numpy(), **TOLERANCE)
    second_call = outputs["layer1.0.relu"][1].flatten(1).numpy()
    np.testing.assert_allclose(stored[schema.layer_path("layer1.0.relu#2")], second_call, **TOLERANCE)


def test_module_run_twice_is_refused_by_bare_name_with_its_call_names(resnet, tmp_path):
    _, _, _, _, directory = resnet
    result = _extract_resnet(directory, tmp_path / "f.h5", "--layers", "layer1.0.relu")
    assert_user_error(result, "'layer1.0.relu' runs 2 times", "layer1.0.relu#1", "layer1.0.relu#2", "layer1.0.relu#*")
    assert list(tmp_path.iterdir()) == []


def test_globs_and_max_pooling(resnet, tmp_path):
    model, images, _, _, directory = resnet
    out = tmp_path / "f.h5"
    result = _extract_resnet(directory, out, "--layers", "layer4.1.relu#*,layer3", "--pool", "max")
    assert result.exit_code == 0, result.stderr
    with h5py.File(out, "r") as handle:
        assert sorted(handle[schema.LAYERS]) == ["layer3", "layer4.1.relu#1", "layer4.1.relu#2"]
        assert schema.CLASSIFIER not in handle  # the classifier input was not asked for
        assert schema.LOGITS in handle
        layer3 = handle[schema.layer_path("layer3")][()]
    outputs, _, _ = reference_outputs(model, reference_inputs(images), ["layer3"])
    np.testing.assert_allclose(layer3, outputs["layer3"][0].amax(dim=(2, 3)).numpy(), **TOLERANCE)
    assert "/classifier is not written" in result.stderr


def test_flatten_above_max_dim_is_refused_with_the_layer_size(resnet, tmp_path):
    _, _, _, _, directory = resnet
    result = _extract_resnet(directory, tmp_path / "f.h5", "--pool", "flatten", "--max-dim", 1000)
    assert_user_error(result, "'conv1'", "16384 values", "64×16×16", "--max-dim 1000")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """A tiny torchvision VisionTransformer built through --arch module:callable from its saved state_dict."""
    directory = tmp_path_factory.mktemp("vit")
    model = tiny_vit(num_classes=10).eval()
    torch.save(model.state_dict(), directory / "vit.pt")
    images, labels = random_images(n=20)
    write_npz(directory / "data.npz", images, labels)
    return model, images, labels, directory


def test_vit_default_layers_equal_an_independent_forward_pass(vit):
    model, images, labels, directory = vit
    out = directory / "default.h5"
    result = invoke(
        "extract",
        directory / "vit.pt",
        directory / "data.npz",
        "--arch",
        "extract_helpers:tiny_vit",
        *IMAGENET,
        "--num-classes",
        10,
        "--out",
        out,
        "--batch-size",
        6,
        "--workers",
        0,
    )
    assert result.exit_code == 0, result.stderr
    outputs, inputs_of, logits = reference_outputs(
        model, reference_inputs(images), ["conv_proj", "encoder"], ["heads.head"]
    )
    stored = read_datasets(out)
    assert sorted(name for name in stored if name.startswith("layers/")) == [
        "layers/conv_proj",
        "layers/encoder",
        "layers/heads.head",
        "layers/heads.head:input",
    ]
    np.testing.assert_allclose(
        stored["layers/conv_proj"], outputs["conv_proj"][0].mean(dim=(2, 3)).numpy(), **TOLERANCE
    )
    np.testing.assert_allclose(stored["layers/encoder"], outputs["encoder"][0][:, 0].numpy(), **TOLERANCE)
    np.testing.assert_allclose(stored["layers/heads.head:input"], inputs_of["heads.head"].numpy(), **TOLERANCE)
    np.testing.assert_allclose(stored[schema.LOGITS], logits.numpy(), **TOLERANCE)
    np.testing.assert_allclose(stored["layers/heads.head"], logits.numpy(), **TOLERANCE)
    np.testing.assert_array_equal(stored[schema.LABELS], labels)
    np.testing.assert_array_equal(stored[schema.CLASSIFIER_WEIGHT], model.heads.head.weight.detach().numpy())
    with h5py.File(out, "r") as handle:
        assert handle["layers/encoder"].attrs[schema.ATTR_POOLING] == "cls"
        assert list(handle["layers/encoder"].attrs[schema.ATTR_SAMPLE_SHAPE]) == [17, 32]
        assert handle[schema.CLASSIFIER].attrs[schema.ATTR_CLASSIFIER_LAYER] == "heads.head:input"


def test_vit_mean_token_pooling_and_tuple_outputs(vit):
    """self_attention (nn.MultiheadAttention) returns (output, weights): its first tensor is captured."""
    model, images, _, directory = vit
    out = directory / "tokens.h5"
    attention = "encoder.layers.encoder_layer_0.self_attention"
    result = invoke(
        "extract",
        directory / "vit.pt",
        directory / "data.npz",
        "--arch",
        "extract_helpers:tiny_vit",
        *IMAGENET,
        "--out",
        out,
        "--layers",
        f"encoder,{attention}",
        "--token-pool",
        "mean",
        "--workers",
        0,
    )
    assert result.exit_code == 0, result.stderr
    outputs, _, _ = reference_outputs(model, reference_inputs(images), ["encoder", attention])
    stored = read_datasets(out)
    np.testing.assert_allclose(stored["layers/encoder"], outputs["encoder"][0].mean(dim=1).numpy(), **TOLERANCE)
    np.testing.assert_allclose(stored[f"layers/{attention}"], outputs[attention][0].mean(dim=1).numpy(), **TOLERANCE)


def test_layers_command_lists_shapes_and_marks_default_picks():
    result = invoke("layers", "resnet18", "--num-classes", 10, "--input-size", "3,32,32")
    assert result.exit_code == 0, result.stderr
    lines = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in result.stdout.splitlines()}
    assert lines["layer1"].startswith("*") and lines["layer1"].split()[-1] == "64×8×8"
    assert lines["fc:input"].startswith("*") and lines["fc:input"].split()[-1] == "512"
    assert lines["fc"].startswith("*")  # the logits
    assert not lines["avgpool"].startswith("*")  # its output is fc:input itself
    assert "layer1.0.relu#2" in lines and "layer1.0.relu" not in lines


def test_layers_command_json(vit):
    import json

    _, _, _, directory = vit
    result = invoke(
        "layers",
        directory / "vit.pt",
        "--arch",
        "extract_helpers:tiny_vit",
        "--input-size",
        "3,32,32",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows if row["default"]] == ["conv_proj", "encoder", "heads.head:input", "heads.head"]
    assert next(row for row in rows if row["name"] == "encoder")["shape"] == "17×32"
    assert next(row for row in rows if row["name"] == "heads.head")["type"] == "Linear"


def test_token_pooling_auto_is_cls_only_with_a_class_token():
    from nccli.extract.config import MapPooling, TokenPooling
    from nccli.extract.hooks import LayerCall, Probe, plan_layers

    tokens = LayerCall("blocks", "blocks", 0, "Sequential", (17, 32))
    for has_class_token, expected in ((True, "cls"), (False, "mean")):
        probe = Probe((tokens,), {"blocks": 1}, None, None, has_class_token)
        (plan,) = plan_layers(probe, [tokens], MapPooling.AVG, TokenPooling.AUTO, max_dim=10)
        assert (plan.pooling, plan.width) == (expected, 32)


class ConvHead(torch.nn.Module):
    """A head as timm's dla and dpn have it: pooled maps (N, C, 1, 1) → 1×1 convolution → flatten."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
        self.fc = torch.nn.Conv2d(6, num_classes, 1)
        self.flatten = torch.nn.Flatten(1)

    def forward(self, x):
        return self.flatten(self.fc(self.body(x)))


def conv_head() -> torch.nn.Module:
    torch.manual_seed(3)
    return ConvHead()


def test_a_1x1_convolution_giving_the_output_is_the_classifier(tmp_path):
    data = write_npz(tmp_path / "data.npz", *random_images(n=12, size=16))
    out = tmp_path / "f.h5"
    result = invoke("extract", f"{__file__}:conv_head", data, "--normalize", "none", "--workers", 0, "--out", out)
    assert result.exit_code == 0, result.stderr
    stored = read_datasets(out)
    model = conv_head()
    np.testing.assert_array_equal(stored[schema.CLASSIFIER_WEIGHT], model.fc.weight.detach().numpy()[:, :, 0, 0])
    np.testing.assert_array_equal(stored[schema.CLASSIFIER_BIAS], model.fc.bias.detach().numpy())
    with h5py.File(out) as handle:
        layer = handle[schema.CLASSIFIER].attrs[schema.ATTR_CLASSIFIER_LAYER]
    assert layer == "fc:input"
    logits = stored[schema.layer_path(layer)] @ stored[schema.CLASSIFIER_WEIGHT].T + stored[schema.CLASSIFIER_BIAS]
    np.testing.assert_allclose(logits, stored[schema.LOGITS], **TOLERANCE)  # W and b give the model's logits
