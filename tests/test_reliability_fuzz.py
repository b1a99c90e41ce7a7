"""Hostile and broken feature files: each is accepted, or refused with one line naming the file; never a traceback,
a hang, a crash or a memory blow-up, and never silently read from outside the file.

A fast subset of ``tests/benchmarks/reliability_fuzz.py`` (hypothesis-generated defects and harmless variations,
and byte-level mutations of real files, judged through the command line in a worker process), then the named
cases one by one with their messages, and the probe that keeps an HDF5 hang or crash out of nccli.
"""

import faulthandler
import os
import re
import signal
import time

import h5py
import numpy as np
import pytest
from cli_helpers import assert_user_error, invoke, load_benchmark

from nccli.errors import FeatureFileError
from nccli.io import reader, sources

pytestmark = pytest.mark.slow  # processes, torchrun jobs, kills and whole pipelines: the CI tier

fuzz = load_benchmark("reliability_fuzz")
BASE = {
    "seed": 1,
    "n": 24,
    "k": 3,
    "dims": [4, 5],
    "dtype": "float32",
    "storage": "chunked",
    "classifier": True,
    "names": True,
    "latest": False,
}


def test_a_generated_and_mutated_corpus_is_handled_cleanly(tmp_path):
    cases = fuzz.corpus(tmp_path, generated=50, mutated=50, seed=7)
    failures = []
    counts = fuzz.run(cases, seconds=90, log=failures.append)
    assert failures == []
    assert counts["accepted"] > 15 and counts["refused"] > 35
    assert counts["peak_rss_mb"] < 1024


def _build(tmp_path, *changes):
    recipe = {**BASE, "changes": [[change, 1] for change in changes]}
    return fuzz.build(recipe, tmp_path / "case")


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ("labels-external-link", ("'/labels'", "external link", "other.h5", "inside the feature file")),
        ("layers-external-link", ("'/layers'", "external link")),
        ("layer-soft-to-external", ("'/outside'", "external link")),
        ("labels-link-cycle", ("'/labels'", "cycle")),
        ("layer-external-storage", ("'/layers/layer1'", "external files")),
        ("vds-missing-source", ("'/layers/layer1'", "layer.shards/part1.h5", "missing", "fill values")),
        ("vds-not-hdf5-source", ("'/labels'", "labels.shards/part1.h5", "cannot be opened")),
        ("vds-gap", ("'/layers/layer1'", "fill values")),
        ("vds-short-source", ("'/labels'", "labels.shards/part1.h5", "past the shape")),
        ("vds-source-dataset-missing", ("'/labels'", "no such dataset")),
        ("layer-unwritten", ("'/layers/layer1'", "never written")),
        ("layer-nan", ("'/layers/layer1'", "NaN or Inf", "in row 1")),
        ("labels-negative", ("'/labels'", "label -2")),
        ("labels-complex", ("'/labels'", "integer", "complex64")),
        ("layer-string", ("'/layers/layer1'", "float16/32/64")),
        ("layer-3d", ("'/layers/layer1'", "2-D")),
        ("empty", ("N = 0",)),
        ("layer-d0", ("'/layers/layer1'", "d = 0")),
        ("num-classes-huge", ("num_classes = 10000000000", "GiB")),
        ("classifier-huge", ("'/classifier/weight'", "never written")),
        ("attribute-huge", ("attribute 'model'", "bytes (limit")),
        ("format-array", ("'nccli_format'", "must be a string")),
        ("format-bad-utf8", ("'nccli_format'", "must be a string")),
        ("version-bool", ("'format_version'", "integer")),
        ("complete-string", ("'complete'", "boolean")),
        ("order-array", ("'/layers/layer1'", "'order'", "integer")),
        ("class-names-ints", ("'class_names'", "strings")),
    ],
)
def test_each_kind_of_hostile_file_is_refused_with_what_is_wrong(tmp_path, change, fragments):
    path = _build(tmp_path, change)
    out = tmp_path / "r.parquet"
    assert_user_error(invoke("analyze", path, "--out", out), str(path), *fragments)
    assert not out.exists()


@pytest.mark.parametrize(
    "change", ["vds-complete", "vds-layer-complete", "labels-soft-link", "layer-soft-link", "layer-odd-chunks"]
)
def test_virtual_datasets_over_existing_sources_and_soft_links_inside_the_file_are_read(tmp_path, change):
    plain = _build(tmp_path / "plain")
    path = _build(tmp_path, change)
    for out, file in ((tmp_path / "a.parquet", plain), (tmp_path / "b.parquet", path)):
        result = invoke("analyze", file, "--out", out)
        assert result.exit_code == 0, result.output
    import pyarrow.parquet as pq

    plain_rows, rows = (
        pq.read_table(tmp_path / "a.parquet").to_pylist(),
        pq.read_table(tmp_path / "b.parquet").to_pylist(),
    )
    for left, right in zip(plain_rows, rows, strict=True):
        assert left["nc1"] == pytest.approx(right["nc1"], rel=1e-6) and left["ncc_accuracy"] == right["ncc_accuracy"]


def test_a_virtual_dataset_source_is_found_where_hdf5_finds_it(tmp_path, monkeypatch):
    """Relative names beside the VDS file (not the working directory); HDF5_VDS_PREFIX first."""
    path = _build(tmp_path, "vds-complete")
    monkeypatch.chdir(tmp_path.parent)
    assert invoke("analyze", path, "--out", tmp_path / "r.parquet").exit_code == 0
    moved = tmp_path / "elsewhere"
    (tmp_path / "case" / "labels.shards").rename(moved)
    assert_user_error(invoke("analyze", path, "--out", tmp_path / "r.parquet"), "labels.shards/part0.h5", "missing")
    (moved / "labels.shards").mkdir()
    for part in moved.glob("part*.h5"):
        part.rename(moved / "labels.shards" / part.name)
    monkeypatch.setenv("HDF5_VDS_PREFIX", str(moved))
    assert sources.locate_source("labels.shards/part0.h5", str(path)) == str(
        (moved / "labels.shards" / "part0.h5").resolve()
    )
    result = invoke("analyze", path, "--out", tmp_path / "r.parquet")
    assert result.exit_code == 0, result.output


def test_non_hdf5_bytes_and_truncations_are_refused(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(os.urandom(5000))
    assert_user_error(invoke("analyze", junk, "--out", tmp_path / "r.parquet"), str(junk), "not an HDF5 file")
    real = fuzz.real_files(tmp_path / "real")[0]
    data = real.read_bytes()
    for cut in (0, 7, 100, 2048, len(data) // 2, len(data) - 1):
        truncated = tmp_path / f"cut{cut}.h5"
        truncated.write_bytes(data[:cut])
        result = invoke("analyze", truncated, "--out", tmp_path / "r.parquet")
        assert_user_error(result, str(truncated))


def _hang(*args, **kwargs):
    time.sleep(3600)


def _crash(*args, **kwargs):
    faulthandler.disable()  # pytest's would print the child's stack
    os.kill(os.getpid(), signal.SIGSEGV)


@pytest.mark.parametrize(
    ("behaviour", "fragment"), [(_hang, "did not finish"), (_crash, "crashes the HDF5 library (SIGSEGV)")]
)
def test_a_file_that_makes_hdf5_hang_or_crash_is_refused_without_hanging_or_crashing(
    tmp_path, monkeypatch, behaviour, fragment
):
    """The probe validates in a forked child first; here the child's validation is made to hang or crash."""
    path = _build(tmp_path)
    monkeypatch.setattr(reader, "validate", behaviour)  # only the forked child calls it: the probe runs first
    started = time.monotonic()
    with pytest.raises(FeatureFileError, match=re.escape(fragment)):
        reader.probe(str(path), seconds=2)
    assert time.monotonic() - started < 30


def test_hostile_headers_are_refused_before_anything_of_their_size_is_allocated(tmp_path):
    """A row wider than nccli reads (2**24 + 1 floats), stored compressed in a tiny file: refused before reading."""
    path = tmp_path / "wide.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["nccli_format"], handle.attrs["format_version"] = ("nccli.features", 1)
        handle["labels"] = np.zeros(1, dtype=np.int64)
        layer = handle.create_dataset(
            "layers/x", shape=(1, 2**24 + 1), dtype="f4", chunks=(1, 2**22), compression="gzip"
        )
        layer[...] = 0.0  # every chunk written: one 64 MiB row (512 MiB as float64 blocks) in a few kilobytes
        layer.attrs["order"] = 0
    assert path.stat().st_size < 2**20
    assert_user_error(
        invoke("analyze", path, "--out", tmp_path / "r.parquet"), "'/layers/x'", "width d = 16777217", "limit"
    )
