"""Never lose finished work: interrupt, crash, resume, and refuse to replace files unasked."""

import h5py
import pytest
import torch
from cli_helpers import assert_user_error, invoke
from extract_helpers import (
    IMAGENET,
    differences,
    files_in,
    random_images,
    tiny_cnn,
    write_npz,
)

from nccli import schema
from nccli.extract import loop

ROWS, BATCH = 20, 4
STOP_AT_BATCH = 3  # two batches (8 rows) are finished when the third starts


@pytest.fixture()
def setup(tmp_path):
    torch.save(tiny_cnn().state_dict(), tmp_path / "model.pt")
    images, labels = random_images(n=ROWS, size=16, classes=4)
    write_npz(tmp_path / "data.npz", images, labels)
    return tmp_path


def _command(directory, out, *options):
    return (
        "extract",
        directory / "model.pt",
        directory / "data.npz",
        "--arch",
        "extract_helpers:tiny_cnn",
        *IMAGENET,
        "--out",
        out,
        "--batch-size",
        BATCH,
        "--workers",
        0,
        *options,
    )


def _fail_at_batch(monkeypatch, error: BaseException):
    """Make the STOP_AT_BATCH-th forward pass raise ``error``, as Ctrl-C or a crash would mid-run."""
    real, calls = loop.run_batch, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == STOP_AT_BATCH:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "run_batch", failing)


def _assert_identical(a, b):
    assert differences(a, b) == []


@pytest.mark.parametrize("storage", [(), ("--dtype", "float16", "--compression", "gzip"), ("--compression", "lzf")])
def test_interrupted_then_resumed_equals_an_uninterrupted_run(setup, monkeypatch, storage):
    whole, interrupted = setup / "whole.h5", setup / "interrupted.h5"
    assert invoke(*_command(setup, whole, *storage)).exit_code == 0

    with monkeypatch.context() as patch:
        _fail_at_batch(patch, KeyboardInterrupt())
        result = invoke(*_command(setup, interrupted, *storage))
    assert result.exit_code == 130
    assert f"kept 8 of {ROWS} rows in '{interrupted}.partial'" in result.stderr and "--resume" in result.stderr
    assert "Traceback" not in result.stderr
    assert not interrupted.exists()
    with h5py.File(f"{interrupted}.partial", "r") as handle:
        assert not handle.attrs[schema.ATTR_COMPLETE]
        assert handle.attrs[schema.ATTR_ROWS_WRITTEN] == 8

    result = invoke(*_command(setup, interrupted, *storage, "--resume"))
    assert result.exit_code == 0, result.stderr
    assert not (setup / "interrupted.h5.partial").exists()
    _assert_identical(interrupted, whole)


def test_a_crash_keeps_a_resumable_partial_file(setup, monkeypatch):
    out = setup / "f.h5"
    with monkeypatch.context() as patch:
        _fail_at_batch(patch, RuntimeError("simulated crash"))
        result = invoke(*_command(setup, out))
    assert isinstance(result.exception, RuntimeError)  # a bug keeps its traceback
    with h5py.File(f"{out}.partial", "r") as handle:
        assert handle.attrs[schema.ATTR_ROWS_WRITTEN] == 8
    assert invoke(*_command(setup, out, "--resume")).exit_code == 0
    assert invoke(*_command(setup, setup / "whole.h5")).exit_code == 0
    _assert_identical(out, setup / "whole.h5")


def test_resume_with_other_options_is_refused_and_keeps_the_partial(setup, monkeypatch):
    out = setup / "f.h5"
    with monkeypatch.context() as patch:
        _fail_at_batch(patch, KeyboardInterrupt())
        invoke(*_command(setup, out))
    before = (setup / "f.h5.partial").read_bytes()
    result = invoke(*_command(setup, out, "--resume", "--dtype", "float16", "--pool", "max"))
    assert_user_error(result, "cannot resume", "dtype: float32 → float16", "layers", "--overwrite")
    assert (setup / "f.h5.partial").read_bytes() == before


def test_partial_file_without_resume_is_refused(setup, monkeypatch):
    out = setup / "f.h5"
    with monkeypatch.context() as patch:
        _fail_at_batch(patch, KeyboardInterrupt())
        invoke(*_command(setup, out))
    assert_user_error(invoke(*_command(setup, out)), "interrupted extraction", "--resume", "--overwrite")
    result = invoke(*_command(setup, out, "--overwrite"))
    assert result.exit_code == 0, result.stderr
    assert not (setup / "f.h5.partial").exists()


def test_existing_file_is_refused_unless_overwrite_and_skipped_on_resume(setup):
    out = setup / "f.h5"
    assert invoke(*_command(setup, out)).exit_code == 0
    before = out.read_bytes()
    assert_user_error(invoke(*_command(setup, out)), f"'{out}' already exists", "--overwrite")
    assert out.read_bytes() == before

    result = invoke(*_command(setup, out, "--resume"))
    assert result.exit_code == 0 and "already complete" in result.stderr
    assert out.read_bytes() == before
    assert_user_error(invoke(*_command(setup, out, "--resume", "--limit", 4)), "other options", "--overwrite")

    result = invoke(*_command(setup, out, "--overwrite", "--limit", 4))
    assert result.exit_code == 0, result.stderr
    with h5py.File(out, "r") as handle:
        assert handle[schema.LABELS].shape == (4,)


@pytest.mark.parametrize(
    ("out", "fragments"),
    [
        ("{dir}/afile/f.h5", ("'{dir}/afile' is not a directory",)),
        ("/proc/nccli-test/f.h5", ("cannot create directory '/proc/nccli-test'",)),
    ],
)
def test_unwritable_output_fails_with_one_line(setup, out, fragments):
    (setup / "afile").write_text("not a directory")
    out = out.format(dir=setup / "sub")
    (setup / "sub").mkdir()
    (setup / "sub" / "afile").write_text("not a directory")
    before = files_in(setup)
    result = invoke(*_command(setup, out, "--limit", 4))
    assert_user_error(result, *(fragment.format(dir=setup / "sub") for fragment in fragments))
    assert files_in(setup) == before


def test_resume_and_overwrite_together_are_refused(setup):
    assert_user_error(invoke(*_command(setup, setup / "f.h5", "--resume", "--overwrite")), "--resume", "--overwrite")
