"""``nccli extract`` under torchrun: shards, the index over them, resume per shard, failures.

Real torchrun runs (``python -m torch.distributed.run --standalone --nproc-per-node 2``, gloo on CPU) on
the bundled digits MLP; each run costs a few seconds of torch imports, so the module makes three.

Every comparison with a single-process extraction uses ``--batch-size 50`` with ``--limit 301``: the ranks'
parts are rows [0, 150) and [150, 301), so every batch of either rank is also a batch of the single
process. With other batches the float32 features differ in the last bits (the GEMM's blocking depends on
the batch size), and the metrics would differ at 1e-8, not because of sharding.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_helpers import assert_user_error, invoke
from extract_helpers import read_datasets

from nccli import distributed, schema
from nccli.errors import DistributedError, UsageError
from nccli.extract.distributed import ADVICE
from nccli.io import shards

pytestmark = pytest.mark.slow  # processes, torchrun jobs, kills and whole pipelines: the CI tier

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
ROWS, BATCH, RESUMED_ROWS = 301, 50, 50  # RESUMED_ROWS: a whole batch, so the resumed batches stay aligned
ARGS = (
    str(SAMPLE / "checkpoints" / "epoch_300.pt"),
    str(SAMPLE / "digits_test.npz"),
    "--arch",
    f"{SAMPLE / 'digits_mlp.py'}:digits_mlp",
    "--mean",
    "0.3053",
    "--std",
    "0.3758",
    "--limit",
    str(ROWS),
    "--batch-size",
    str(BATCH),
    "--device",
    "cpu",
    "--workers",
    "0",
)
RUN_SECONDS = 180  # a hang fails the test instead of the CI job


def torchrun(out: Path, *extra: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "nccli", "extract", *ARGS, "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_SECONDS, check=False)


def analyze(path: Path, out: Path) -> dict[str, dict]:
    result = invoke("analyze", path, "--out", out)
    assert result.exit_code == 0, result.stderr
    return {row[schema.COL_LAYER]: row for row in pq.read_table(out).to_pylist()}


def shard_files(index: Path) -> list[Path]:
    with h5py.File(index, "r") as handle:
        return [index.parent / name for name in handle.attrs[schema.ATTR_SHARDS]]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A 2-process extraction (``out/features.h5`` and ``out/features.shards/``) and a single-process one."""
    root = tmp_path_factory.mktemp("distributed")
    done = torchrun(root / "out" / "features.h5", cwd=root)
    assert done.returncode == 0, done.stderr
    single = invoke("extract", *ARGS, "--out", root / "single.h5")
    assert single.exit_code == 0, single.stderr
    return root, done


def test_shards_cover_every_sample_exactly_once(extracted):
    root, done = extracted
    index = root / "out" / "features.h5"
    assert done.stdout.split() == [str(index)]  # rank 0 prints the result, the other rank nothing
    files = shard_files(index)
    assert [path.name for path in files] == ["rank-00000-of-00002.h5", "rank-00001-of-00002.h5"]
    assert sorted(os.listdir(root / "out")) == ["features.h5", "features.shards"]
    parts = [read_datasets(path)[schema.SAMPLE_INDEX] for path in files]
    assert [len(part) for part in parts] == [150, 151]
    together = np.concatenate(parts)
    assert np.array_equal(together, np.arange(ROWS))  # --limit 301: the first 301 samples, each once
    with h5py.File(index, "r") as handle:
        assert handle.attrs[schema.ATTR_COMPLETE] and handle.attrs[schema.ATTR_ROWS_WRITTEN] == ROWS
        assert list(handle.attrs[schema.ATTR_SHARD_OFFSETS]) == [0, 150, ROWS]
        assert handle[schema.LABELS].is_virtual and handle[schema.layer_path("block1")].is_virtual
        assert np.array_equal(handle[schema.SAMPLE_INDEX][()], together)


def test_the_index_reads_as_one_file_equal_to_a_single_process_extraction(extracted):
    root, _ = extracted
    sharded, single = read_datasets(root / "out" / "features.h5"), read_datasets(root / "single.h5")
    assert sharded.keys() == single.keys()
    for path, values in single.items():
        assert np.array_equal(sharded[path], values), path
    with h5py.File(root / "out" / "features.h5", "r") as a, h5py.File(root / "single.h5", "r") as b:
        assert json.loads(a.attrs[schema.ATTR_EXTRACT_OPTIONS]) == json.loads(b.attrs[schema.ATTR_EXTRACT_OPTIONS])
        assert dict(a[schema.layer_path("block2")].attrs).keys() == dict(b[schema.layer_path("block2")].attrs).keys()
        assert a[schema.CLASSIFIER].attrs[schema.ATTR_CLASSIFIER_LAYER] == "classifier:input"


def test_each_shard_records_the_accuracy_of_its_rows_and_the_index_that_of_all(extracted):
    root, done = extracted
    index = root / "out" / "features.h5"
    accuracies = {}
    for path in [*shard_files(index), index, root / "single.h5"]:
        stored = read_datasets(path)
        correct = np.count_nonzero(np.argmax(stored[schema.LOGITS], axis=1) == stored[schema.LABELS])
        with h5py.File(path, "r") as handle:
            accuracies[path.name] = handle.attrs[schema.ATTR_LOGITS_ACCURACY]
        assert accuracies[path.name] == correct / len(stored[schema.LABELS]), path
    assert accuracies["features.h5"] == accuracies["single.h5"]
    printed = [line for line in done.stderr.splitlines() if "top-1 accuracy" in line]  # by rank 0 only
    assert printed == [
        f"'{index}': top-1 accuracy of the model's logits on these {ROWS} samples: {accuracies['features.h5']:.4f}"
    ]


def assert_same_metrics(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert got.keys() == want.keys()
    for layer, row in want.items():
        for column in schema.METRIC_COLUMNS:
            a, b = got[layer][column], row[column]
            if b is None or math.isnan(b):
                assert a is None or math.isnan(a), (layer, column, a)
            else:
                assert a == pytest.approx(b, rel=1e-10, abs=1e-300), (layer, column)


def test_analyze_of_the_index_equals_the_single_process_file(extracted, tmp_path):
    root, _ = extracted
    assert_same_metrics(
        analyze(root / "out" / "features.h5", tmp_path / "a.parquet"),
        analyze(root / "single.h5", tmp_path / "b.parquet"),
    )


def test_the_index_finds_its_shards_from_another_directory_and_when_moved(extracted, tmp_path, monkeypatch):
    root, _ = extracted
    want = analyze(root / "single.h5", tmp_path / "want.parquet")
    moved = tmp_path / "moved"
    shutil.copytree(root / "out", moved)  # the index and its .shards folder, together
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # shard names are relative to the index's folder, not to the working directory
    assert_same_metrics(analyze(moved / "features.h5", tmp_path / "moved.parquet"), want)
    assert_same_metrics(analyze(Path("..") / "moved" / "features.h5", tmp_path / "relative.parquet"), want)


def test_an_index_whose_shard_is_missing_is_refused(extracted, tmp_path):
    root, _ = extracted
    shutil.copytree(root / "out", tmp_path / "out")
    os.remove(tmp_path / "out" / "features.shards" / "rank-00001-of-00002.h5")
    result = invoke("analyze", tmp_path / "out" / "features.h5", "--out", tmp_path / "r.parquet")
    assert_user_error(result, "features.h5")  # the missing rows read as label -1, which readers refuse
    assert not (tmp_path / "r.parquet").exists()


def make_partial(complete: Path, partial: Path, rows: int) -> None:
    """What a rank killed after ``rows`` rows leaves: ``rows_written = rows``, ``complete = False``, the rest unset."""
    shutil.copyfile(complete, partial)
    with h5py.File(partial, "r+") as handle:
        handle.attrs[schema.ATTR_COMPLETE] = False
        handle.attrs[schema.ATTR_ROWS_WRITTEN] = rows
        for name in handle[schema.LAYERS]:
            handle[schema.layer_path(name)][rows:] = 0


def test_a_failed_rank_stops_the_job_cleanly_and_resume_finishes_only_its_shard(extracted, tmp_path):
    root, _ = extracted
    index = tmp_path / "features.h5"
    folder = tmp_path / "features.shards"
    blocker = folder / "rank-00001-of-00002.h5.partial"
    blocker.mkdir(parents=True)  # rank 1 cannot resume this "partial file"; rank 0 extracts its shard
    failed = torchrun(index, "--resume", cwd=tmp_path)
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, failed.stderr  # rank 0 speaks for the job
    assert "rank 1 of 2: cannot resume" in errors[0] and "--resume" in errors[0]
    assert not index.exists() and failed.stdout == ""
    first = folder / "rank-00000-of-00002.h5"
    with h5py.File(first, "r") as handle:
        assert handle.attrs[schema.ATTR_COMPLETE]
    kept = first.stat().st_mtime_ns

    blocker.rmdir()
    make_partial(root / "out" / "features.shards" / "rank-00001-of-00002.h5", blocker, RESUMED_ROWS)
    resumed = torchrun(index, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert first.stat().st_mtime_ns == kept  # the complete shard is skipped
    assert not blocker.exists()
    got, want = read_datasets(index), read_datasets(root / "out" / "features.h5")
    for path, values in want.items():
        assert np.array_equal(got[path], values), path


def test_overwrite_by_a_single_process_replaces_the_index_and_its_shards(extracted, tmp_path):
    root, _ = extracted
    shutil.copytree(root / "out", tmp_path / "out")
    (tmp_path / "out" / "features.shards" / "notes.txt").write_text("the user's")
    result = invoke("extract", *ARGS, "--out", tmp_path / "out" / "features.h5", "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "out" / "features.shards")) == ["notes.txt"]  # only nccli's files go
    assert not shards.is_index(str(tmp_path / "out" / "features.h5"))
    got, want = read_datasets(tmp_path / "out" / "features.h5"), read_datasets(root / "single.h5")
    assert all(np.array_equal(got[path], values) for path, values in want.items())


def test_resume_with_another_number_of_processes_is_refused(tmp_path):
    folder = tmp_path / "features.shards"
    folder.mkdir()
    (folder / "rank-00000-of-00002.h5").touch()
    (folder / "rank-00001-of-00002.h5.partial").touch()
    with pytest.raises(UsageError, match="2-process extraction but this run has 3"):
        shards.check_existing(str(tmp_path / "features.h5"), 3, resume=True, overwrite=False)
    result = invoke("extract", *ARGS, "--out", tmp_path / "features.h5", "--resume")  # one process
    assert_user_error(result, "'" + str(folder) + "'", "2-process", "--overwrite")
    result = invoke("extract", *ARGS, "--out", tmp_path / "features.h5")
    assert_user_error(result, "holds the shards of an earlier extraction", "--resume")


def test_a_single_process_partial_file_is_not_resumed_by_several(tmp_path):
    (tmp_path / "features.h5.partial").touch()
    with pytest.raises(UsageError, match="started by a single process"):
        shards.check_existing(str(tmp_path / "features.h5"), 2, resume=True, overwrite=False)


@pytest.mark.parametrize("rows, ranks", [(301, 2), (7, 3), (4, 4), (1000, 7)])
def test_parts_are_contiguous_disjoint_and_even(rows, ranks):
    bounds = shards.shard_bounds(rows, ranks)
    sizes = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == rows and (sizes >= 1).all() and sizes.max() - sizes.min() <= 1


def test_the_environment_says_whether_this_is_a_job():
    assert distributed.launch_from_env({}) is None
    assert distributed.launch_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None  # one process: a plain file
    launch = distributed.launch_from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (launch.rank, launch.world, launch.local_rank) == (5, 8, 1)
    with pytest.raises(DistributedError, match="must be integers"):
        distributed.launch_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    assert distributed.rank_device("cpu", 3) == "cpu"


def test_the_job_summary_is_one_line():
    same = distributed.summary(["failed:'x.h5' already exists"] * 3, 3)
    assert same == "'x.h5' already exists"
    mixed = distributed.summary(["stopped", "failed:disk full", "stopped", "failed:disk full"], 4, ADVICE)
    assert mixed.startswith("ranks 1, 3 of 4: disk full; ") and "--resume" in mixed and "\n" not in mixed
