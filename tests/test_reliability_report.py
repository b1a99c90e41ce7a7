"""The report is never half-written: killed or failing mid-write, `analyze` leaves the earlier report or the new
one whole; and a second `analyze` writing the same report is refused, naming the first."""

import errno
import os
import secrets

import pyarrow.parquet as pq
import pytest
from cli_helpers import assert_user_error, invoke, load_benchmark
from h5files import good_file

from nccli.io.lock import OutputLock, lock_path

pytestmark = pytest.mark.slow  # processes, torchrun jobs, kills and whole pipelines: the CI tier


def test_killed_while_writing_the_report_leaves_the_earlier_or_the_new_one_whole(tmp_path):
    harness = load_benchmark("reliability_report")
    tally = harness.kill_runs(
        tmp_path, kills=3, seed=1, log=lambda line: None
    )  # at a random time, mid-write, mid-rename
    assert tally["failures"] == []
    assert tally["old"] + tally["new"] + tally["mixed"] == 3


def test_a_write_failing_midway_keeps_every_earlier_output(tmp_path, monkeypatch):
    outputs = [tmp_path / name for name in ("r.parquet", "c.parquet", "p.parquet")]
    for path in outputs:
        path.write_bytes(b"earlier " + path.name.encode())
    real_write, calls = pq.write_table, []

    def failing_write(table, where, **kwargs):
        calls.append(where)
        if len(calls) == 2:  # the second table: half of it reaches the disk, then the disk is full
            real_write(table.slice(0, table.num_rows // 2), where, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)
        real_write(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", failing_write)
    path = good_file(tmp_path / "f.h5")
    result = invoke("analyze", path, "--out", outputs[0], "--classes", outputs[1], "--pairs", outputs[2])
    assert_user_error(result, "No space left on device")
    for output in outputs:
        assert output.read_bytes() == b"earlier " + output.name.encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["f.h5", *(p.name for p in outputs)])


def test_a_second_analyze_of_the_same_report_is_refused_naming_the_first(tmp_path):
    path, out = good_file(tmp_path / "f.h5"), tmp_path / "r.parquet"
    out.write_bytes(b"earlier report")
    with OutputLock(out):
        assert_user_error(
            invoke("analyze", path, "--out", out), f"'{out}' is being written by another process", f"pid {os.getpid()}"
        )
        assert_user_error(invoke("analyze", path, "--out", tmp_path / "other.parquet", "--pairs", out), "being written")
    assert out.read_bytes() == b"earlier report"
    stale = tmp_path / f".r.parquet.{secrets.token_hex(6)}.tmp"  # what a killed writer leaves
    stale.write_bytes(b"half a report")
    result = invoke("analyze", path, "--out", out)
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).num_rows == 2
    assert not stale.exists() and not os.path.exists(lock_path(out))
