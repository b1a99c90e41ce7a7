"""No code runs from a model file unless the user says --trust-checkpoint; --arch FILE.py runs that file only.

Each hostile file carries a payload that creates a marker file when unpickled; the tests first show that the
payload is live (plain unpickling creates the marker), then that nccli refuses the file with one line and the
marker never appears.
"""

import io
import os
import textwrap
import zipfile

import pytest
import torch
from cli_helpers import assert_user_error, invoke
from extract_helpers import IMAGENET, random_images, tiny_cnn, write_npz
from safetensors.torch import save_file

from nccli.extract import checkpoints


class Payload:
    """Unpickling this calls ``open(marker, "w")``: code from the file, run by the loader."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def data(tmp_path):
    images, labels = random_images(n=8, size=16)
    return write_npz(tmp_path / "data.npz", images, labels)


def _extract(model, data, out, *options):
    return invoke("extract", model, data, *IMAGENET, "--out", out, "--workers", 0, *options)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_malicious_pickle_does_not_run_without_trust(tmp_path, data, zip_format):
    marker, evil = tmp_path / "marker", tmp_path / "evil.pt"
    state = {"state_dict": tiny_cnn().state_dict(), "extra": Payload(marker)}
    torch.save(state, evil, _use_new_zipfile_serialization=zip_format)

    result = _extract(evil, data, tmp_path / "f.h5", "--arch", "extract_helpers:tiny_cnn")
    assert_user_error(result, str(evil), "pickled Python objects", "arbitrary code", "--trust-checkpoint")
    assert not marker.exists()
    assert not (tmp_path / "f.h5").exists() and not (tmp_path / "f.h5.partial").exists()

    torch.load(evil, weights_only=False)  # the payload is live: plain unpickling runs it
    assert marker.exists()


def _malicious_program(tmp_path, marker):
    """A real torch.export program whose sample inputs are replaced by the payload; torch.export.load falls
    back to weights_only=False for them (torch/_export/serde/serialize.py) and so runs it."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    torch.export.save(torch.export.export(model, (torch.zeros(2, 3, 16, 16),)), tmp_path / "clean.pt2")
    payload = io.BytesIO()
    torch.save(Payload(marker), payload)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(tmp_path / "clean.pt2") as source, zipfile.ZipFile(evil, "w") as target:
        for info in source.infolist():
            replaced = info.filename.endswith("sample_inputs/model.pt")
            target.writestr(info, payload.getvalue() if replaced else source.read(info.filename))
    return evil


def test_a_torch_export_program_needs_trust_because_loading_one_can_run_code(tmp_path, data):
    marker = tmp_path / "marker"
    evil = _malicious_program(tmp_path, marker)

    result = _extract(evil, data, tmp_path / "f.h5")
    assert_user_error(result, str(evil), "torch.export", "arbitrary code", "--trust-checkpoint")
    assert_user_error(invoke("layers", evil), "torch.export", "--trust-checkpoint")
    assert not marker.exists()

    with pytest.raises(Exception):  # noqa: B017 - the payload is not an input; what matters is the marker
        torch.export.load(evil)
    assert marker.exists()


def test_an_old_torch_refuses_pickles_without_trust_but_reads_safetensors(tmp_path, data, monkeypatch):
    model = tiny_cnn()
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, tmp_path / "w.safetensors")
    arch = ("--arch", "extract_helpers:tiny_cnn")
    assert checkpoints.torch_is_safe()  # the torch this project pins

    for version in ("2.9.1+cu128", "2.5.1", "2.10.0a0+git1234"):
        monkeypatch.setattr(torch, "__version__", version)
        assert not checkpoints.torch_is_safe()
        result = _extract(tmp_path / "plain.pt", data, tmp_path / "f.h5", *arch)
        assert_user_error(
            result, f"torch {version}", "CVE-2025-32434", "CVE-2026-24747", "2.10", ".safetensors", "--trust-checkpoint"
        )
    assert _extract(tmp_path / "w.safetensors", data, tmp_path / "s.h5", *arch).exit_code == 0
    assert _extract(tmp_path / "plain.pt", data, tmp_path / "t.h5", *arch, "--trust-checkpoint").exit_code == 0
    monkeypatch.setattr(torch, "__version__", "2.10.0")
    assert checkpoints.torch_is_safe()


ARCH_FILE = """
import pathlib
from torch import nn

pathlib.Path(__file__).with_suffix(".ran").touch()  # this file ran


def net(num_classes: int = 4):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, num_classes))
"""


def test_arch_file_runs_only_the_file_named(tmp_path, data):
    """Two files of the same name in two folders each run when named; a neighbour nobody imports never runs."""
    outputs = []
    for folder in ("one", "two"):
        directory = tmp_path / folder
        directory.mkdir()
        (directory / "model.py").write_text(textwrap.dedent(ARCH_FILE))
        (directory / "neighbour.py").write_text("import pathlib\npathlib.Path(__file__).with_suffix('.ran').touch()\n")
        torch.manual_seed(len(folder))
        torch.save(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4)).state_dict(), directory / "w.pt"
        )
    for folder in ("one", "two"):
        directory = tmp_path / folder
        assert not (directory / "model.ran").exists()
        out = tmp_path / f"{folder}.h5"
        result = _extract(directory / "w.pt", data, out, "--arch", f"{directory / 'model.py'}:net")
        assert result.exit_code == 0, result.stderr
        assert (directory / "model.ran").exists(), f"--arch {folder}/model.py did not run its own file"
        outputs.append(out)
    assert not any(tmp_path.glob("*/neighbour.ran"))
    assert all(str(tmp_path) not in entry for entry in __import__("sys").path)
    assert os.path.getsize(outputs[0]) > 0
