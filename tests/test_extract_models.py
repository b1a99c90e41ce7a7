"""Every MODEL kind gives the same features; bad models fail with one clear line.

Kinds: a state_dict and its wrappers ({'state_dict'}, {'model'},
{'model_state_dict'}), DDP's ``module.`` prefix, safetensors, a torch.export
program, a pickled module (refused, then accepted with --trust-checkpoint),
a torchvision name, and several checkpoints with their epochs.
"""

import urllib.error

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
from safetensors.torch import save_file

from nccli import schema

ARCH = ("--arch", "extract_helpers:tiny_cnn")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Checkpoints of one tiny CNN in every supported form, the data, and the features of the plain state_dict."""
    directory = tmp_path_factory.mktemp("models")
    model = tiny_cnn().eval()
    state_dict = model.state_dict()
    torch.save(state_dict, directory / "plain.pt")
    torch.save({"state_dict": state_dict, "epoch": 7}, directory / "lightning_like.ckpt")
    torch.save({"model": state_dict}, directory / "model_key.pth")
    torch.save({"model_state_dict": state_dict, "optimizer": {"lr": 0.1}}, directory / "model_state_dict_key.pt")
    torch.save({"module." + key: value for key, value in state_dict.items()}, directory / "ddp.pt")
    untracked = {key: value for key, value in state_dict.items() if not key.endswith("num_batches_tracked")}
    torch.save(untracked, directory / "no_batch_counters.pt")
    save_file({key: value.contiguous() for key, value in state_dict.items()}, directory / "weights.safetensors")
    images, labels = random_images(n=20, size=16)
    data = write_npz(directory / "data.npz", images, labels)
    reference = directory / "reference.h5"
    result = invoke("extract", directory / "plain.pt", data, *ARCH, *IMAGENET, "--out", reference, "--workers", 0)
    assert result.exit_code == 0, result.stderr
    return model, directory, data, read_datasets(reference)


def _features(directory, model_file, data, *options):
    out = directory / (model_file.name + ".h5")
    result = invoke("extract", model_file, data, *IMAGENET, "--out", out, "--workers", 0, "--overwrite", *options)
    assert result.exit_code == 0, result.stderr
    return read_datasets(out)


@pytest.mark.parametrize(
    "checkpoint",
    [
        "lightning_like.ckpt",
        "model_key.pth",
        "model_state_dict_key.pt",
        "ddp.pt",
        "weights.safetensors",
        "no_batch_counters.pt",
    ],
)
def test_state_dict_wrappers_prefixes_and_safetensors_give_the_same_file(setup, checkpoint):
    _, directory, data, reference = setup
    stored = _features(directory, directory / checkpoint, data, *ARCH)
    assert stored.keys() == reference.keys()
    for path, values in reference.items():
        np.testing.assert_array_equal(stored[path], values, err_msg=path)


def test_exported_program_is_hooked_through_unflatten(setup):
    model, directory, data, reference = setup
    example = torch.zeros(2, 3, 16, 16)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(program, directory / "program.pt2")
    stored = _features(directory, directory / "program.pt2", data, "--trust-checkpoint")
    assert stored.keys() == reference.keys()  # the same layers, classifier and logits
    for path, values in reference.items():
        np.testing.assert_allclose(stored[path], values, rtol=1e-5, atol=1e-6, err_msg=path)
    with h5py.File(directory / "program.pt2.h5", "r") as handle:
        assert handle[schema.CLASSIFIER].attrs[schema.ATTR_CLASSIFIER_LAYER] == "fc:input"


def test_pickled_module_is_refused_without_trust_and_loaded_with_it(setup, tmp_path):
    model, _, data, reference = setup
    torch.save(model, tmp_path / "whole.pt")
    before = files_in(tmp_path)
    result = invoke("extract", tmp_path / "whole.pt", data, *IMAGENET, "--out", tmp_path / "f.h5", "--workers", 0)
    assert_user_error(result, "pickled Python objects", "arbitrary code", "--trust-checkpoint")
    assert files_in(tmp_path) == before
    stored = _features(tmp_path, tmp_path / "whole.pt", data, "--trust-checkpoint")
    for path, values in reference.items():
        np.testing.assert_array_equal(stored[path], values, err_msg=path)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_is_refused_with_the_reason(setup, tmp_path):
    model, _, data, _ = setup
    torch.jit.script(model).save(str(tmp_path / "scripted.pt"))
    result = invoke("extract", tmp_path / "scripted.pt", data, *IMAGENET, "--out", tmp_path / "f.h5")
    assert_user_error(result, "TorchScript", "forward hooks", ".pt2")


def test_torchvision_name_with_num_classes(setup, tmp_path):
    _, _, data, _ = setup
    result = invoke(
        "extract", "resnet18", data, *IMAGENET, "--num-classes", 10, "--out", tmp_path / "f.h5", "--workers", 0,
        "--epoch", 3,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    with h5py.File(tmp_path / "f.h5", "r") as handle:
        assert handle[schema.LOGITS].shape == (20, 10)
        assert handle.attrs[schema.ATTR_MODEL] == "resnet18" and handle.attrs[schema.ATTR_CHECKPOINT] == ""
        assert handle.attrs[schema.ATTR_EPOCH] == 3


def test_weights_that_are_not_cached_offline_fail_clearly(setup, tmp_path, monkeypatch):
    _, _, data, _ = setup

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    result = invoke("extract", "resnet18", data, "--weights", "IMAGENET1K_V1", "--out", tmp_path / "f.h5")
    assert_user_error(
        result, "ResNet18_Weights.IMAGENET1K_V1", "not in the torch hub cache", str(tmp_path / "torch_home")
    )
    assert not (tmp_path / "f.h5").exists()


def test_unknown_weights_name_lists_the_choices(setup, tmp_path):
    _, _, data, _ = setup
    result = invoke("extract", "resnet18", data, "--weights", "IMAGENET", "--out", tmp_path / "f.h5")
    assert_user_error(result, "'IMAGENET' is not a weights name of 'resnet18'", "IMAGENET1K_V1, DEFAULT")


def test_several_checkpoints_write_one_file_each_with_its_epoch(setup, tmp_path):
    model, _, data, reference = setup
    runs = tmp_path / "runs"
    runs.mkdir()
    for epoch in (3, 12):
        torch.save(model.state_dict(), runs / f"epoch_{epoch:03d}.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 40}, runs / "last.pt")
    out = tmp_path / "features"
    result = invoke(
        "extract", str(runs / "epoch_*.pt"), runs / "last.pt", data, *ARCH, *IMAGENET, "--out", out, "--workers", 0
    )
    assert result.exit_code == 0, result.stderr
    written = sorted(path.name for path in out.iterdir())
    assert written == ["epoch_003.h5", "epoch_012.h5", "last.h5"]
    assert result.stdout.split() == [str(out / name) for name in written]
    for name, epoch in zip(written, (3, 12, 40), strict=True):
        with h5py.File(out / name, "r") as handle:
            assert handle.attrs[schema.ATTR_EPOCH] == epoch
        np.testing.assert_array_equal(
            read_datasets(out / name)[schema.layer_path("fc:input")], reference[schema.layer_path("fc:input")]
        )


def test_epoch_option_is_refused_for_several_checkpoints(setup, tmp_path):
    _, directory, data, _ = setup
    result = invoke(
        "extract", directory / "plain.pt", directory / "ddp.pt", data, *ARCH, *IMAGENET, "--out", tmp_path, "--epoch", 1
    )
    assert_user_error(result, "--epoch")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        (("resnt18",), ("'resnt18' is neither a checkpoint file nor a torchvision model", "did you mean 'resnet18'")),
        (("missing/model.pt",), ("checkpoint file 'missing/model.pt' does not exist",)),
        (("{dir}/plain.pt",), ("holds a state_dict; pass --arch",)),
        (("{dir}/plain.pt", "--arch", "resnt18"), ("--arch 'resnt18' is not a torchvision model", "'resnet18'")),
        (("{dir}/plain.pt", "--arch", "extract_helpers:tiny_cn"), ("has no callable 'tiny_cn'", "'tiny_cnn'")),
        (("{dir}/plain.pt", "--arch", "no_such_module:build"), ("cannot import 'no_such_module'",)),
        (("{dir}/plain.pt", "--arch", "missing.py:build"), ("file 'missing.py' does not exist",)),
        (
            ("{dir}/plain.pt", "--arch", "resnet18"),
            (
                "does not fit --arch 'resnet18'",
                "missing keys layer1.0.conv1.weight",
                "unexpected keys conv1.bias, block.0.weight",
                "shape mismatch conv1.weight (checkpoint [8, 3, 3, 3], model [64, 3, 7, 7])",
            ),
        ),
        (("{dir}/plain.pt", "--arch", "extract_helpers:tiny_cnn", "--num-classes", "5"), ("shape mismatch fc.weight",)),
    ],
)
def test_bad_models_fail_with_one_line_and_leave_nothing(setup, tmp_path, arguments, fragments):
    _, directory, data, _ = setup
    arguments = [argument.format(dir=directory) for argument in arguments]
    result = invoke("extract", *arguments, data, *IMAGENET, "--out", tmp_path / "f.h5")
    assert_user_error(result, *fragments)
    assert list(tmp_path.iterdir()) == []
