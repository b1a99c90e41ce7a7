"""The extract and layers commands as a user meets them: help, options, the Python API, device choices."""

import re

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke
from extract_helpers import (
    IMAGENET,
    random_images,
    read_datasets,
    tiny_cnn,
    write_npz,
)

from nccli import schema

ARCH = ("--arch", "extract_helpers:tiny_cnn")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli")
    torch.save(tiny_cnn().state_dict(), directory / "model.pt")
    images, labels = random_images(n=8, size=16)
    write_npz(directory / "data.npz", images, labels)
    return directory


@pytest.mark.parametrize(
    ("command", "phrases"),
    [
        (
            "extract",
            (
                "MODEL",
                "DATA",
                "--out",
                "--arch",
                "--weights",
                "--trust-checkpoint",
                "--per-class",
                "--normalize",
                "--layers",
                "--pool",
                "--token-pool",
                "--max-dim",
                "--device",
                "--precision",
                "--dtype",
                "--compression",
                "--resume",
                "--overwrite",
                "--workers",
                "--batch-size",
                "fake:N",
            ),
        ),
        ("layers", ("MODEL", "--input-size", "--arch", "--format", "default picks")),
    ],
)
def test_help_teaches_every_option(command, phrases):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", result.stdout).split())  # undo rich's boxes and wrapping
    for phrase in phrases:
        assert phrase in text, phrase


def test_success_prints_the_path_and_only_the_accuracy_off_a_terminal(setup, tmp_path):
    out = tmp_path / "f.h5"
    result = invoke("extract", setup / "model.pt", setup / "data.npz", *ARCH, *IMAGENET, "--out", out, "--workers", 0)
    assert result.exit_code == 0
    assert result.stdout == f"{out}\n"
    (line,) = result.stderr.splitlines()  # no progress bar on a pipe; the accuracy, a check on the whole run
    assert line.startswith(f"'{out}': top-1 accuracy of the model's logits on these 8 samples: ")


def test_python_api(setup, tmp_path):
    from nccli import ExtractConfig, extract_features
    from nccli.extract import ModelOptions

    config = ExtractConfig(
        models=str(setup / "model.pt"),
        data=str(setup / "data.npz"),
        out=str(tmp_path / "f.h5"),
        model=ModelOptions(arch="extract_helpers:tiny_cnn"),
        normalize="imagenet",
        layers=("conv1", "fc:input"),
        workers=0,
    )
    (result,) = extract_features(config)
    assert result.path == str(tmp_path / "f.h5") and result.rows == 8
    assert result.layers == ("conv1", "fc:input") and not result.skipped
    assert 0 <= result.logits_accuracy <= 1


def test_bf16_autocast_stays_close_to_fp32(setup, tmp_path):
    common = (setup / "model.pt", setup / "data.npz", *ARCH, *IMAGENET, "--workers", 0, "--device", "cpu")
    assert invoke("extract", *common, "--out", tmp_path / "fp32.h5").exit_code == 0
    result = invoke("extract", *common, "--out", tmp_path / "bf16.h5", "--precision", "bf16")
    assert result.exit_code == 0, result.stderr
    fp32, bf16 = read_datasets(tmp_path / "fp32.h5"), read_datasets(tmp_path / "bf16.h5")
    assert bf16[schema.layer_path("fc:input")].dtype == np.float32
    np.testing.assert_allclose(bf16[schema.LOGITS], fp32[schema.LOGITS], atol=0.1)


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (("--mean", "0.5,x"), ("--mean takes comma-separated numbers, got '0.5,x'",)),
        (("--mean", "0.1,0.2"), ("--mean takes 1 or 3 comma-separated numbers, got 2",)),
        (("--std", "0"), ("--std must be positive",)),
        (("--channels", "2"), ("--channels must be 1 or 3, got 2",)),
        (("--batch-size", "0"), ("--batch-size must be a positive integer, got 0",)),
        (("--workers", "-1"), ("--workers must be 0 or more",)),
        (("--device", "tpu"), ("--device 'tpu'",)),
        (("--layers", "layer9"), ("no layer 'layer9' runs in the model's forward pass",)),
        (("--layers", "conv*,nothing*"), ("--layers 'nothing*' matches no layer",)),
        (("--layers", "relu"), ("'relu' runs 2 times per forward pass", "relu#1, relu#2")),
    ],
)
def test_bad_options_fail_with_one_line_and_leave_nothing(setup, tmp_path, options, fragments):
    out = tmp_path / "f.h5"
    result = invoke("extract", setup / "model.pt", setup / "data.npz", *ARCH, *IMAGENET, "--out", out, *options)
    assert_user_error(result, *fragments)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(setup, tmp_path):
    out = tmp_path / "f.h5"
    result = invoke(
        "extract", setup / "model.pt", setup / "data.npz", *ARCH, *IMAGENET, "--out", out, "--device", "cuda"
    )
    assert_user_error(result, "no CUDA device is available", "--device cpu")


def test_layers_command_csv_and_bad_input_size(setup):
    result = invoke("layers", setup / "model.pt", *ARCH, "--input-size", "3,16,16", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "name,type,shape,default"
    assert "relu#2,ReLU,16×8×8,True" in lines
    assert_user_error(
        invoke("layers", setup / "model.pt", *ARCH, "--input-size", "3,x"),
        "--input-size takes comma-separated integers",
    )
    assert_user_error(
        invoke("layers", setup / "model.pt", *ARCH, "--input-size", "1,16,16"),
        "the model failed on a batch of shape [2, 1, 16, 16]",
    )
