"""The partial feature file survives kills and full disks, and has one writer at a time.

* Once created, writing rows changes no HDF5 metadata but the one header block holding ``rows_written``
  (so a kill, even mid-flush, leaves a file HDF5 opens, at its last flush; the kills themselves are in
  ``test_reliability_kill.py``).
* A full disk (every write point failed in turn; a real full tmpfs; a file-size limit): one line, and the
  partial file resumable to the right rows (``tests/benchmarks/reliability_diskfull.py --quick``).
* A second writer of the same file is refused with the first one named; a SIGKILLed writer's lock does
  not block the next run.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import BENCHMARKS, assert_user_error, invoke
from extract_helpers import IMAGENET, random_images, tiny_cnn, write_npz

from nccli import schema
from nccli.io import writer
from nccli.io.guarded import GuardedFile
from nccli.io.lock import OutputLock, lock_path
from nccli.io.writer import FeatureWriter, RowDataset, partial_path

PAGE = 4096
ROWS = 90


def _datasets():
    return [
        RowDataset(schema.LABELS, None, "int64"),
        RowDataset(schema.layer_path("a"), 16, "float32", {schema.ATTR_ORDER: 0}),
        RowDataset(schema.layer_path("b"), 5, "float16", {schema.ATTR_ORDER: 1}),
    ]


def _rows(start, stop):
    rows = np.arange(start, stop)
    return {
        schema.LABELS: rows,
        schema.layer_path("a"): np.repeat(rows[:, None], 16, axis=1).astype(np.float32),
        schema.layer_path("b"): np.repeat(rows[:, None], 5, axis=1).astype(np.float16),
    }


def _chunk_extents(path) -> list[tuple[int, int]]:
    extents = []
    with h5py.File(path, "r") as handle:
        for spec in _datasets():
            dataset = handle[spec.path]
            for index in range(dataset.id.get_num_chunks()):
                info = dataset.id.get_chunk_info(index)
                extents.append((info.byte_offset, info.byte_offset + info.size))
    return extents


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_once_created_the_partial_file_changes_only_rows_and_one_header_block(tmp_path, monkeypatch, compression):
    """Every write that changes a byte after creation lands in a row chunk, or in one block below a page."""
    changed: list[tuple[int, int]] = []
    real_write = GuardedFile.write

    def recording_write(self, data):
        view = memoryview(data).cast("B")
        before = os.pread(self._fd, len(view), self._position)
        if before.ljust(len(view), b"\0") != bytes(view):
            changed.append((self._position, len(view)))
        return real_write(self, data)

    monkeypatch.setattr(writer, "FLUSH_SECONDS", 0.0)  # a flush after every write
    monkeypatch.setattr(writer, "CHUNK_BYTES", 256)  # many chunks
    path = str(tmp_path / "f.h5")
    attrs = {schema.ATTR_FORMAT: schema.FORMAT_NAME, schema.ATTR_FORMAT_VERSION: 1, schema.ATTR_COMMAND: "x" * 2000}
    partial = FeatureWriter.create(path, ROWS, _datasets(), attrs, {"run": 1}, compression)
    monkeypatch.setattr(GuardedFile, "write", recording_write)
    flushes = 0
    for start in range(0, 50, 7):
        partial.write(start, _rows(start, min(start + 7, 50)))
        flushes += 1
    partial.close()
    resumed = FeatureWriter.resume(path, {"run": 1})
    for start in range(50, ROWS - 10, 9):
        resumed.write(start, _rows(start, min(start + 9, ROWS - 10)))
        flushes += 1
    resumed.close()

    chunks = _chunk_extents(partial_path(path))
    outside = [
        (offset, size) for offset, size in changed if not any(a <= offset and offset + size <= b for a, b in chunks)
    ]
    blocks = set(outside)
    assert len(blocks) == 1, blocks  # the root object header block holding rows_written, always the same
    ((offset, size),) = blocks
    assert offset // PAGE == (offset + size - 1) // PAGE  # one write within one page: a kill cannot tear it
    assert len(outside) == flushes  # once per flush: rows_written raised
    with h5py.File(partial_path(path), "r") as handle:
        assert handle.attrs[schema.ATTR_ROWS_WRITTEN] == ROWS - 10
        assert handle[schema.LAYERS]["a"].compression is None  # compressed only when finished


def test_a_full_disk_gives_one_line_and_a_resumable_partial_file():
    """Every write failed in turn, a real full tmpfs where allowed, and a file-size limit."""
    script = BENCHMARKS / "reliability_diskfull.py"
    command = [sys.executable, str(script), "--quick", "--limit", "240"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    for case in report["every write"]:
        assert case["failures"] == [] and case["clean"] == case["write points"] > 20
    command_line = report["command line"]
    limited = command_line["RLIMIT_FSIZE"]
    assert limited["exit code"] == 2 and limited["one line"] and "File too large" in limited["message"]
    assert limited["identical"]
    if "tmpfs" in command_line:  # where user namespaces are allowed: a real ENOSPC after some flushes
        full = command_line["tmpfs"]
        assert full["exit code"] == 2 and full["one line"] and "No space left on device" in full["message"]
        assert full["rows kept"] > 0 and f"first {full['rows kept']} rows are kept" in full["message"]
        assert full["identical"]


@pytest.fixture()
def data(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save(tiny_cnn().state_dict(), tmp_path / "model.pt")
    images, labels = random_images(n=12, size=16, classes=4)
    write_npz(tmp_path / "data.npz", images, labels)
    return tmp_path


def _extract(directory, out, *options):
    arch = ("--arch", "extract_helpers:tiny_cnn", *IMAGENET)
    return invoke(
        "extract", directory / "model.pt", directory / "data.npz", *arch, "--out", out, "--workers", 0, *options
    )


def test_a_second_extract_of_the_same_file_is_refused_naming_the_first(data):
    out = data / "f.h5"
    with OutputLock(out):
        for options in ((), ("--overwrite",), ("--resume",)):
            result = _extract(data, out, *options)
            assert_user_error(result, f"'{out}' is being written by another process", f"pid {os.getpid()}", "wait")
        Path(partial_path(str(out))).write_bytes(b"")  # a partial file in progress is not an interrupted one
        assert_user_error(_extract(data, out), "is being written by another process")
        os.remove(partial_path(str(out)))
    assert _extract(data, out).exit_code == 0
    assert not Path(lock_path(out)).exists()


def test_a_killed_writer_leaves_no_lock_that_blocks(data):
    out = data / "f.h5"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from nccli.io.lock import OutputLock; OutputLock({str(out)!r}).acquire(); print(1, flush=True); input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "1"
        assert_user_error(_extract(data, out, "--overwrite"), f"pid {holder.pid}")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert Path(lock_path(out)).exists()  # left by the killed process, but no longer locked
    result = _extract(data, out, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert not Path(lock_path(out)).exists()
