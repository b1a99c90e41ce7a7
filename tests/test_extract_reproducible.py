"""--resume of a randomly initialised torchvision model (no --weights): the network is rebuilt from its recorded
--init-seed, and a partial file is continued only by the very network, weights hash and all, that started it."""

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import h5py
import pytest
import torch
from cli_helpers import assert_user_error, invoke
from extract_helpers import (
    IMAGENET,
    differences,
    random_images,
    write_npz,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from nccli import schema
from nccli.extract import loop

MODEL = "shufflenet_v2_x0_5"  # a torchvision model that builds and runs in a fraction of a second
ROWS, BATCH = 12, 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The data and the file of an uninterrupted run."""
    directory = tmp_path_factory.mktemp("reproducible")
    images, labels = random_images(n=ROWS, size=16, classes=4)
    write_npz(directory / "data.npz", images, labels)
    result = invoke(*_command(directory, directory / "whole.h5"))
    assert result.exit_code == 0, result.stderr
    return directory


def _command(directory: Path, out: Path, *options):
    return (
        "extract", MODEL, directory / "data.npz", "--num-classes", 4, *IMAGENET, "--out", out,
        "--batch-size", BATCH, "--workers", 0, *options,
    )  # fmt: skip


def _interrupt_at(patch, batch: int) -> None:
    """Ctrl-C at the ``batch``-th forward pass, as a user would press it mid-run."""
    real, calls = loop.run_batch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == batch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    patch.setattr(loop, "run_batch", interrupted)


def _interrupted_then_resumed(directory: Path, out: Path, batch: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        _interrupt_at(patch, batch)
        assert invoke(*_command(directory, out)).exit_code == 130
    torch.manual_seed(batch)  # the process's random state must not matter to the network built
    result = invoke(*_command(directory, out, "--resume"))
    assert result.exit_code == 0, result.stderr


def test_the_seed_is_recorded_and_the_same_command_builds_the_same_network(data, tmp_path):
    torch.manual_seed(1)
    assert invoke(*_command(data, tmp_path / "again.h5")).exit_code == 0
    assert differences(tmp_path / "again.h5", data / "whole.h5") == []
    with h5py.File(data / "whole.h5", "r") as handle:
        assert handle.attrs[schema.ATTR_INIT_SEED] == 0
    assert invoke(*_command(data, tmp_path / "other.h5", "--init-seed", 1)).exit_code == 0
    assert schema.layer_path("fc:input") in differences(tmp_path / "other.h5", data / "whole.h5")


def test_a_resumed_random_init_run_equals_an_uninterrupted_one(data, tmp_path):
    _interrupted_then_resumed(data, tmp_path / "f.h5", batch=3)
    assert differences(tmp_path / "f.h5", data / "whole.h5") == []


@settings(max_examples=5, deadline=None)
@given(batch=st.integers(1, ROWS // BATCH))
def test_resuming_after_an_interruption_at_any_batch_equals_an_uninterrupted_run(data, batch):
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "f.h5"
        _interrupted_then_resumed(data, out, batch)
        assert differences(out, data / "whole.h5") == []


def test_a_killed_random_init_run_resumes_to_the_uninterrupted_file(data, tmp_path):
    """SIGKILL in a child process at the fourth batch; the resumed file equals the uninterrupted one, row by row."""
    child = textwrap.dedent(
        """
        import os, signal, sys, time
        from nccli.cli import app
        from nccli.extract import loop
        from nccli.io import writer

        writer.FLUSH_SECONDS = 0.0  # every batch the writer thread takes reaches the disk at once
        real, calls = loop.run_batch, []
        real_flush, flushed = writer.FeatureWriter.flush, []

        def flush(self):
            real_flush(self)
            flushed.append(self.rows_written)

        def killed(*args, **kwargs):
            calls.append(1)
            if len(calls) == 4:
                deadline = time.monotonic() + 60
                while not any(flushed) and time.monotonic() < deadline:  # rows on disk, however busy the machine
                    time.sleep(0.01)
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        writer.FeatureWriter.flush = flush
        loop.run_batch = killed
        app([str(arg) for arg in sys.argv[1:]], prog_name="nccli")
        """
    )
    out = tmp_path / "f.h5"
    command = [sys.executable, "-c", child, *map(str, _command(data, out))]
    process = subprocess.run(command, check=False, capture_output=True, env=os.environ, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    with h5py.File(f"{out}.partial", "r") as handle:
        assert 0 < handle.attrs[schema.ATTR_ROWS_WRITTEN] < ROWS
    result = invoke(*_command(data, out, "--resume"))
    assert result.exit_code == 0, result.stderr
    assert differences(out, data / "whole.h5") == []


def test_resume_is_refused_when_the_rebuilt_network_differs(data, tmp_path, monkeypatch):
    """The same seed under another torch (simulated: one weight changed) would give another network."""
    import torchvision

    out = tmp_path / "f.h5"
    with pytest.MonkeyPatch.context() as patch:
        _interrupt_at(patch, 3)
        assert invoke(*_command(data, out)).exit_code == 130
    before = Path(f"{out}.partial").read_bytes()
    real = torchvision.models.get_model

    def other_torch(*args, **kwargs):
        model = real(*args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] += 1
        return model

    monkeypatch.setattr(torchvision.models, "get_model", other_torch)
    result = invoke(*_command(data, out, "--resume"))
    assert_user_error(result, f"cannot resume '{out}.partial'", "the network built now differs", "--overwrite")
    assert Path(f"{out}.partial").read_bytes() == before and not out.exists()


def test_resume_with_another_init_seed_is_refused(data, tmp_path):
    out = tmp_path / "f.h5"
    with pytest.MonkeyPatch.context() as patch:
        _interrupt_at(patch, 3)
        assert invoke(*_command(data, out)).exit_code == 130
    before = Path(f"{out}.partial").read_bytes()
    assert_user_error(invoke(*_command(data, out, "--resume", "--init-seed", 5)), "cannot resume", "init_seed: 0 → 5")
    assert Path(f"{out}.partial").read_bytes() == before
