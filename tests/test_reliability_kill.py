"""SIGKILL `nccli extract` at a few points and --resume each time: the file equals an uninterrupted run's;
SIGKILL a rank of `torchrun … nccli analyze` near its end: the report is published or not, and rank 0 says which.

A fast subset of ``tests/benchmarks/reliability_kill.py`` (which kills one run at 24 points): while the
partial file is created, inside an HDF5 flush, after a batch and while finishing, with gzip compression
(partial files of compressed runs were the ones a kill mid-flush made unreadable before the writer kept
HDF5 metadata fixed after creation).
"""

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import invoke, load_benchmark
from h5files import good_file
from test_distributed_analyze import RUN_SECONDS, assert_same_tables

import nccli
from nccli.io import writer

pytestmark = pytest.mark.slow  # processes, torchrun jobs, kills and whole pipelines: the CI tier


@pytest.fixture(scope="module")
def harness():
    return load_benchmark("reliability_kill")


def reference_file(harness, directory: Path, settings, monkeypatch) -> Path:
    """The uninterrupted run, in this process (no start-up cost), with the children's writer settings."""
    monkeypatch.setattr(writer, "CHUNK_BYTES", settings.chunk_bytes)
    reference = directory / "reference.h5"
    result = invoke(*harness.extract_args(reference, settings.compression, settings.limit))
    assert result.exit_code == 0, result.stderr
    return reference


def test_killed_at_each_kind_of_point_then_resumed_equals_an_uninterrupted_run(harness, tmp_path, monkeypatch):
    settings = harness.Settings(flush_seconds=0.01, chunk_bytes=4096, compression="gzip", limit=240)
    rng = random.Random(0)
    points = [
        harness.KillPoint("create", 0, random.Random(rng.random())),
        harness.KillPoint("flush", 60, random.Random(rng.random())),
        harness.KillPoint("batch", 130, random.Random(rng.random())),
        harness.KillPoint("finish", 0, random.Random(rng.random())),
    ]
    reference = reference_file(harness, tmp_path, settings, monkeypatch)
    outcome = harness.kill_and_resume(tmp_path, points, settings, log=lambda line: None, reference=reference)
    assert outcome.failures == []
    assert outcome.kills == len(points), outcome.kinds
    assert outcome.identical
    assert sorted(path.name for path in tmp_path.iterdir()) == ["killed.h5", "reference.h5"]


EARLIER = b"an earlier report"
# Rank 1 of a torchrun analyze dies at KILL_AT: "merged" (at the job's last agreement, every rank's rows
# merged, before rank 0 publishes), "published" (once rank 0 has renamed the report into place) or "barrier"
# (in the job's final barrier, after every rank has posted its end).
KILL_RANK_ONE = """\
import os, signal, sys, time
import torch.distributed as dist
import nccli.analyze.collectives as collectives

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def at_last_agreement(self, agree=collectives.Group.agree_to_publish):
    if os.environ["KILL_AT"] == "merged":
        die()
    agree(self)
    if os.environ["KILL_AT"] == "published":
        out = sys.argv[sys.argv.index("--out") + 1]
        while open(out, "rb").read() == EARLIER:
            time.sleep(0.05)
        die()

if os.environ["RANK"] == "1":
    collectives.Group.agree_to_publish = at_last_agreement
    if os.environ["KILL_AT"] == "barrier":
        dist.barrier = die
from nccli.cli import main
sys.argv = ["nccli", "analyze", *sys.argv[1:]]
main()
""".replace("EARLIER", repr(EARLIER))


def killed_analyze(folder: Path, kill_at: str) -> subprocess.CompletedProcess:
    script = folder / "kill_rank_one.py"
    script.write_text(KILL_RANK_ONE)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    command += [str(folder / "f.h5"), "--out", str(folder / "r.parquet"), "--classes", str(folder / "c.parquet")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT": kill_at}
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=RUN_SECONDS)


def exit_codes(done: subprocess.CompletedProcess) -> dict[str, str]:
    """Each failed rank's exit code, from torchrun's summary (a rank that exited 0 is not in it)."""
    return dict(re.findall(r"rank\s*:\s*(\d+) \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+)", done.stderr))


def analyze_folder(folder: Path) -> Path:
    good_file(folder / "f.h5", n=301, seed=4)
    for name in ("r.parquet", "c.parquet"):
        (folder / name).write_bytes(EARLIER)
    return folder


def test_a_rank_killed_before_the_last_agreement_leaves_the_earlier_report(tmp_path):
    done = killed_analyze(analyze_folder(tmp_path), "merged")
    assert done.returncode != 0 and exit_codes(done) == {"0": "130", "1": "-9"}, done.stderr
    assert "interrupted" in done.stderr.splitlines() and done.stdout == ""
    assert str(Path(nccli.__file__).parent) not in done.stderr  # no traceback from nccli
    assert (tmp_path / "r.parquet").read_bytes() == (tmp_path / "c.parquet").read_bytes() == EARLIER
    assert sorted(os.listdir(tmp_path)) == ["c.parquet", "f.h5", "kill_rank_one.py", "r.parquet"]


@pytest.mark.parametrize("kill_at", ["published", "barrier"])
def test_a_rank_killed_after_the_report_is_published_leaves_it_and_rank_0_says_so(tmp_path, kill_at):
    done = killed_analyze(analyze_folder(tmp_path), kill_at)
    assert done.returncode != 0 and exit_codes(done) == {"1": "-9"}, done.stderr  # rank 0 exited 0
    assert done.stdout.split() == [str(tmp_path / "r.parquet")]
    warning = "warning: a rank stopped or failed after the reports were published (torchrun exits non-zero)"
    assert any(line.startswith(warning) for line in done.stderr.splitlines()), done.stderr
    assert str(Path(nccli.__file__).parent) not in done.stderr  # no traceback from the final barrier
    one = tmp_path / "one"
    one.mkdir()
    assert (
        invoke("analyze", tmp_path / "f.h5", "--out", one / "r.parquet", "--classes", one / "c.parquet").exit_code == 0
    )
    for name in ("r.parquet", "c.parquet"):
        assert_same_tables(tmp_path / name, one / name)  # every rank's rows
    assert sorted(os.listdir(tmp_path)) == ["c.parquet", "f.h5", "kill_rank_one.py", "one", "r.parquet"]
