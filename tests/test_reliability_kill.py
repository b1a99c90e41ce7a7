"""SIGKILL `nccli extract` at a few points and --resume each time: the file equals an uninterrupted run's.

A fast subset of ``tests/benchmarks/reliability_kill.py`` (which kills one run at 24 points): while the
partial file is created, inside an HDF5 flush, after a batch and while finishing, with gzip compression
(partial files of compressed runs were the ones a kill mid-flush made unreadable before the writer kept
HDF5 metadata fixed after creation).
"""

import random
from pathlib import Path

import pytest
from cli_helpers import invoke, load_benchmark

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
