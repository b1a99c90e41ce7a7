"""extract refuses, in one line and before writing them, the rows analyze would refuse; the user's model, arch
builder, checkpoint and array files failing anywhere give one line naming what failed, never a traceback.

The models here are importable as ``--arch test_extract_refusals:NAME`` (pytest puts ``tests/`` on sys.path).
"""

import h5py
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
from torch import nn

from nccli import schema

ROWS, BATCH = 8, 2
FLAT = 5  # the sample whose image is one flat colour: the models below misbehave on it, in the third batch


class OnFlatImages(nn.Module):
    """A small convnet that does ``what`` ('nan', 'raise', 'narrow') on a batch holding a flat image."""

    def __init__(self, what: str = "nan"):
        super().__init__()
        self.what = what
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spread = x.flatten(1).std(dim=1).view(-1, 1, 1, 1)
        flat = bool((spread == 0).any())
        if flat and self.what == "raise":
            raise RuntimeError("cannot handle a flat image")
        if self.what == "nan":
            x = x / spread  # 0 / 0 for the flat image
        if flat and self.what == "narrow":
            x = x[..., :4, :4]
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


def nan_model() -> nn.Module:
    torch.manual_seed(0)
    return OnFlatImages("nan")


def raising_model() -> nn.Module:
    torch.manual_seed(0)
    return OnFlatImages("raise")


def narrowing_model() -> nn.Module:
    torch.manual_seed(0)
    return OnFlatImages("narrow")


class Slashed(nn.Module):
    """A network whose first block is named 'stem/conv' (nn.Module names may hold '/', not '.')."""

    def __init__(self):
        super().__init__()
        self.add_module("stem/conv", nn.Conv2d(3, 4, 3, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(getattr(self, "stem/conv")(x)), 1))


def slashed() -> nn.Module:
    torch.manual_seed(0)
    return Slashed()


def failing_builder() -> nn.Module:
    raise ValueError("depth must be even")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("refusals")
    images, labels = random_images(n=ROWS, size=16, classes=4)
    images[FLAT] = 0
    write_npz(directory / "data.npz", images, labels)
    for name in ("nan_model", "raising_model", "narrowing_model", "slashed"):
        torch.save(globals()[name]().state_dict(), directory / f"{name}.pt")
    torch.save(tiny_cnn().state_dict(), directory / "tiny.pt")
    return directory


def _snapshot(directory) -> dict:
    return {str(path): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


def _extract(directory, model: str, out, *options, data=None, normalize=IMAGENET):
    return invoke(
        "extract", directory / f"{model}.pt", data or directory / "data.npz", "--arch",
        f"test_extract_refusals:{model}", *normalize, "--out", out, "--batch-size", BATCH, "--workers", 0, *options,
    )  # fmt: skip


def _assert_kept_partial(out, rows: int) -> None:
    with h5py.File(f"{out}.partial", "r") as handle:
        assert handle.attrs[schema.ATTR_ROWS_WRITTEN] == rows
    assert not out.exists()


@pytest.mark.parametrize(
    ("model", "options", "fragments"),
    [
        ("nan_model", ("--mean", "0", "--std", "1"), ("is not finite (NaN or Inf) for sample 5", "analyze refuses")),
        (
            "raising_model",
            ("--mean", "0", "--std", "1"),
            ("samples 4–5: the model failed on a batch of shape [2, 3, 16, 16]: RuntimeError: cannot handle a flat",),
        ),
        (
            "narrowing_model",
            ("--mean", "0", "--std", "1"),
            ("samples 4–5: layer 'conv' gave 8×4×4 per sample", "not the 8×16×16"),
        ),
    ],
)
def test_the_model_failing_after_the_probe_is_one_line_and_keeps_the_rows_before(
    setup, tmp_path, model, options, fragments
):
    before = _snapshot(setup)
    out = tmp_path / "f.h5"
    result = _extract(setup, model, out, normalize=options)
    assert_user_error(result, *fragments, f"'{out}.partial' keeps the first 4 of {ROWS} rows", "--resume")
    _assert_kept_partial(out, 4)
    assert _snapshot(setup) == before


def test_features_beyond_float16_are_refused_under_dtype_float16(setup, tmp_path):
    images, labels = random_images(n=ROWS, size=16, classes=4)
    data = write_npz(tmp_path / "huge.npz", images.astype(np.float32) / 255, labels)
    before = _snapshot(tmp_path)
    result = invoke(
        "extract", setup / "tiny.pt", data, "--arch", "extract_helpers:tiny_cnn", "--out", tmp_path / "f.h5",
        "--workers", 0, "--mean", "0", "--std", "1e-6", "--dtype", "float16",
    )  # fmt: skip
    assert_user_error(result, "is not finite (NaN or Inf) for sample 0 as stored", "exceeds 65504", "--dtype float32")
    assert _snapshot(tmp_path) == before


def test_a_layer_named_with_a_slash_is_stored_with_it_escaped_and_analyze_reads_it(setup, tmp_path):
    out = tmp_path / "f.h5"
    result = _extract(setup, "slashed", out)
    assert result.exit_code == 0, result.stderr
    assert "layer 'stem/conv' is stored as 'stem%2Fconv'" in result.stderr
    with h5py.File(out, "r") as handle:
        assert sorted(handle[schema.LAYERS]) == ["fc", "fc:input", "stem%2Fconv"]
        assert isinstance(handle[schema.layer_path("stem%2Fconv")], h5py.Dataset)
    result = invoke("analyze", out, "--out", tmp_path / "r.parquet", "--layers", "stem%2Fconv")
    assert result.exit_code == 0, result.stderr


def test_a_classifier_with_non_finite_weights_is_refused_before_any_file(setup, tmp_path):
    state = tiny_cnn().state_dict()
    state["fc.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "diverged.pt")
    result = invoke(
        "extract", tmp_path / "diverged.pt", setup / "data.npz", "--arch", "extract_helpers:tiny_cnn", *IMAGENET,
        "--out", tmp_path / "f.h5", "--workers", 0,
    )  # fmt: skip
    assert_user_error(result, "the last linear layer 'fc' holds a non-finite weight")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["diverged.pt"]


def _array_file(tmp_path, kind: str):
    images, labels = random_images(n=ROWS, size=16, classes=4)
    if kind == "float 0-255":
        return write_npz(tmp_path / "d.npz", images.astype(np.float32), labels)
    if kind == "float nan":
        floats = images.astype(np.float32) / 255
        floats[3, 0, 0, 0] = np.nan
        return write_npz(tmp_path / "d.npz", floats, labels)
    if kind == "uint64 labels":
        wide = labels.astype(np.uint64)
        wide[2] = 2**63
        return write_npz(tmp_path / "d.npz", images, wide)
    with h5py.File(tmp_path / "d.h5", "w") as handle:
        handle.create_group(schema.ARRAY_FILE_IMAGES).create_dataset("0", data=images)
        handle[schema.ARRAY_FILE_LABELS] = labels
    return tmp_path / "d.h5"


@pytest.mark.parametrize(
    ("kind", "fragments"),
    [
        ("float 0-255", ("are floats, read as pixels in [0, 1], but sample 0 holds", "divide 0–255 floats by 255")),
        ("float nan", ("sample 3 holds nan",)),
        ("uint64 labels", ("must fit int64", "9223372036854775808")),
        ("images group", ("/images is a Group; it must be a dataset",)),
    ],
)
def test_array_files_analyze_would_misread_are_refused_before_any_row(setup, tmp_path, kind, fragments):
    data = _array_file(tmp_path, kind)
    before = _snapshot(tmp_path)
    result = invoke(
        "extract", setup / "tiny.pt", data, "--arch", "extract_helpers:tiny_cnn", *IMAGENET, "--out", tmp_path / "f.h5",
        "--workers", 0,
    )  # fmt: skip
    assert_user_error(result, *fragments)
    assert _snapshot(tmp_path) == before


def test_float_images_in_another_scale_pass_with_mean_and_std_in_that_scale(setup, tmp_path):
    images, labels = random_images(n=ROWS, size=16, classes=4)
    common = ("--arch", "extract_helpers:tiny_cnn", "--workers", 0)
    scaled = ("--mean", "127.5", "--std", "63.75")
    result = invoke("extract", setup / "tiny.pt", write_npz(tmp_path / "u8.npz", images, labels), *common,
                 "--out", tmp_path / "u8.h5", "--mean", "0.5", "--std", "0.25")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    floats = write_npz(tmp_path / "f.npz", images.astype(np.float32), labels)
    result = invoke("extract", setup / "tiny.pt", floats, *common, "--out", tmp_path / "f.h5", *scaled)
    assert result.exit_code == 0, result.stderr
    expected, stored = read_datasets(tmp_path / "u8.h5"), read_datasets(tmp_path / "f.h5")
    for path in expected:
        np.testing.assert_allclose(stored[path], expected[path], rtol=1e-5, atol=1e-5, err_msg=path)


@pytest.fixture()
def broken_module(tmp_path, monkeypatch):
    (tmp_path / "broken_arch.py").write_text("raise RuntimeError('half-edited file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "broken_arch"


@pytest.mark.parametrize(
    ("model", "options", "fragments"),
    [
        (
            "tiny.pt",
            ("--arch", "test_extract_refusals:failing_builder"),
            ("calling failing_builder() failed: ValueError: depth must be even",),
        ),
        ("tiny.pt", ("--arch", "broken_arch:build"), ("importing 'broken_arch' failed: RuntimeError: half-edited",)),
        ("tiny.pt", ("--arch", ":"), ("--arch ':' names no callable",)),
        ("garbage.pt", ("--trust-checkpoint",), ("cannot read '{dir}/garbage.pt' as a PyTorch checkpoint",)),
        ("int_keys.pt", ("--arch", "extract_helpers:tiny_cnn"), ("has a int key (0)", "model.state_dict()")),
    ],
)
def test_bad_builders_and_checkpoints_fail_with_one_line(setup, tmp_path, broken_module, model, options, fragments):
    (tmp_path / "garbage.pt").write_bytes(bytes(range(256)) * 4)
    torch.save({0: torch.zeros(3)}, tmp_path / "int_keys.pt")
    source = tmp_path / model if model != "tiny.pt" else setup / model
    before = _snapshot(tmp_path)
    out = tmp_path / "f.h5"
    result = invoke("extract", source, setup / "data.npz", *options, *IMAGENET, "--out", out, "--workers", 0)
    assert_user_error(result, *(fragment.format(dir=tmp_path) for fragment in fragments))
    assert _snapshot(tmp_path) == before
