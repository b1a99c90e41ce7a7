"""``nccli analyze`` under torchrun: each rank reads its part of the rows, rank 0 writes the same
reports as one process.

Real torchrun runs (``python -m torch.distributed.run --standalone --nproc-per-node 2``, gloo on CPU), a
few seconds each: a file of odd N with every option that changes the passes (--means-from, --mse,
--classes, --pairs), a torchrun shard index whose shards do not split at the middle, and two failures (a
file refused before any row is read, a NaN met by rank 1 alone).
"""

import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from h5files import write_feature_file
from typer.testing import CliRunner

import nccli
from nccli.analyze.collectives import _arrays, _rebuilt, rank_rows
from nccli.analyze.plan import row_ranges
from nccli.cli import app
from nccli.io import shards

pytestmark = pytest.mark.slow  # processes, torchrun jobs, kills and whole pipelines: the CI tier

RUN_SECONDS = 180  # a hang fails the test instead of the CI job
N, CLASSES, DIM = 997, 6, 12  # odd N: the ranks' parts differ in size


def torchrun(*args, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "nccli", "analyze", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_SECONDS, check=False)


def one_process(*args) -> None:
    result = CliRunner().invoke(app, ["analyze", *map(str, args)])
    assert result.exit_code == 0, result.output


def rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def assert_same_tables(got: Path, want: Path) -> None:
    """The same rows, keys and values, numbers to 1e-10 relative (nulls and NaN where the other has them)."""
    got_rows, want_rows = rows(got), rows(want)
    assert len(got_rows) == len(want_rows) > 0
    for mine, theirs in zip(got_rows, want_rows):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            other = mine[key]
            if isinstance(value, float) and not math.isnan(value):
                assert other == pytest.approx(value, rel=1e-10, abs=1e-300), (got.name, key)
            elif isinstance(value, float):
                assert other is None or math.isnan(other), (got.name, key)
            else:
                assert other == value, (got.name, key)


def data(seed: int = 0, n: int = N):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    features = rng.normal(size=(n, DIM)) + labels[:, None] * 0.5 + 100.0
    weight = rng.normal(size=(CLASSES, DIM))
    return labels, {"early": np.tanh(features - 100.0), "fc_in": features}, weight, -weight @ np.full(DIM, 100.0)


def feature_file(path: Path, labels, layers, weight, bias) -> Path:
    return write_feature_file(
        path,
        labels,
        layers,
        weight=weight,
        bias=bias,
        classifier_layer="fc_in",
        num_classes=CLASSES,
        chunks=16,
        complete=True,
    )


def compare(folder: Path, inputs: list, options: list) -> None:
    """torchrun and one process on the same inputs and options: the same summary, class and pair tables."""
    outputs = {}
    for name, run in (("many", torchrun), ("one", None)):
        paths = {option: folder / f"{name}-{option.strip('-')}.parquet" for option in ("--out", "--classes", "--pairs")}
        args = [*inputs, *options, *(item for pair in paths.items() for item in pair)]
        if run is None:
            one_process(*args)
        else:
            done = run(*args, cwd=folder)
            assert done.returncode == 0, done.stderr
            assert done.stdout.split() == [str(paths["--out"])]  # rank 0 speaks for the job
        outputs[name] = paths
    for option in outputs["one"]:
        assert_same_tables(outputs["many"][option], outputs["one"][option])
    assert sorted(path.name for path in folder.glob("*.parquet*")) == sorted(
        path.name for paths in outputs.values() for path in paths.values()
    )  # no temporary file left by any rank


def test_a_file_of_odd_size_equals_one_process_with_every_pass_option(tmp_path):
    labels, layers, weight, bias = data()
    path = feature_file(tmp_path / "train.h5", labels, layers, weight, bias)
    other = feature_file(tmp_path / "test.h5", *data(seed=1, n=301))
    options = ["--means-from", path, "--mse", "--weight-decay", "1e-3", "--block-rows", "32"]
    compare(tmp_path, [path, other], options)


def test_a_torchrun_shard_index_equals_one_process(tmp_path):
    """Shards of 400 and 597 rows: each rank reads its own shard, not half of the rows."""
    labels, layers, weight, bias = data()
    index = tmp_path / "features.h5"
    for rank, part in enumerate((slice(0, 400), slice(400, N))):
        shard = Path(shards.shard_path(str(index), rank, 2))
        shard.parent.mkdir(exist_ok=True)
        feature_file(shard, labels[part], {name: values[part] for name, values in layers.items()}, weight, bias)
    shards.write_index(str(index), 2, {})
    compare(tmp_path, [index], ["--pairs-top", "4"])


def test_row_ranges_cover_every_row_once_at_block_boundaries():
    for n, block, parts in [(997, 32, 8), (10, 3, 4), (5, 100, 8), (64, 8, 1)]:
        ranges = row_ranges(n, block, parts)
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(start % block == 0 for start, _ in ranges)
        assert len(ranges) <= parts


def test_ranks_read_their_own_shards_else_block_aligned_parts():
    assert rank_rows(N, 32, 2, np.array([0, 400, N])) == [(0, 400), (400, N)]
    assert rank_rows(N, 32, 2, np.array([0, 100, 400, 700, N])) == [(0, 400), (400, N)]  # two shards each
    assert rank_rows(N, 32, 2, np.array([0, 300, 600, N])) == [(0, 512), (512, N)]  # 3 shards for 2 ranks
    assert rank_rows(N, 32, 2) == [(0, 512), (512, N)]
    assert rank_rows(40, 32, 3) == [(0, 32), (32, 40), (40, 40)]  # fewer blocks than ranks: one reads nothing


def assert_refused(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """One error line, from rank 0, and no traceback from nccli; rank 0 exits 2 and rank 1 non-zero (2, or
    stopped by torchrun once rank 0 has exited)."""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    assert all(fragment in errors[0] for fragment in fragments), errors[0]
    assert str(Path(nccli.__file__).parent) not in done.stderr  # torchrun's own traceback names no nccli file
    exits = dict(re.findall(r"rank\s*:\s*(\d+) \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+)", done.stderr))
    assert done.returncode != 0 and exits.get("0") == "2" and exits.get("1", "0") != "0", done.stderr


def test_a_bad_file_is_refused_in_one_line_before_any_row_is_read(tmp_path):
    good = feature_file(tmp_path / "good.h5", *data())
    (tmp_path / "bad.h5").write_text("not a feature file")
    done = torchrun(good, tmp_path / "bad.h5", "--out", tmp_path / "r.parquet", cwd=tmp_path)
    assert_refused(done, "bad.h5")
    assert sorted(os.listdir(tmp_path)) == ["bad.h5", "good.h5"]


def test_a_nan_met_by_one_rank_stops_the_job_without_a_report(tmp_path):
    labels, layers, weight, bias = data()
    layers["early"][900, 3] = np.nan  # in rank 1's part only: rank 0 has finished its rows when it hears
    path = feature_file(tmp_path / "nan.h5", labels, layers, weight, bias)
    done = torchrun(path, "--out", tmp_path / "r.parquet", "--block-rows", "32", cwd=tmp_path)
    assert_refused(done, "rank 1 of 2", "non-finite feature value", "row 900", "no report was written")
    assert sorted(os.listdir(tmp_path)) == ["nan.h5"]


def test_a_state_travels_as_its_fields_whatever_they_are():
    """Ranks send a state field by field (arrays as they are, numbers as 0-d arrays, None not at all) and
    rebuild it on the shapes of their own: a field added to a state needs no change to the collectives."""

    @dataclass
    class State:
        sums: np.ndarray
        smallest: float = float("inf")
        seen: int = 0
        matrix: object = None

    sent = State(np.arange(6.0).reshape(2, 3), -1.5, 7)
    arrays = _arrays(sent)
    assert [array.shape for array in arrays] == [(2, 3), (), ()]
    received = _rebuilt(State(np.zeros((2, 3))), [array.copy() for array in arrays])
    assert np.array_equal(received.sums, sent.sums) and (received.smallest, received.seen) == (-1.5, 7)
    assert type(received.seen) is int and received.matrix is None


RANK_ONE_SEES_ANOTHER_FILE = """\
import os, sys
import nccli.analyze.collectives as collectives
if os.environ["RANK"] == "1":  # as if rank 1's node held another file under the same path
    collectives._identity = lambda info: "0" * 16
from nccli.cli import main
sys.argv = ["nccli", "analyze", *sys.argv[1:]]
main()
"""


def test_ranks_that_see_other_files_under_one_path_are_refused_before_any_row(tmp_path):
    labels, layers, weight, bias = data(n=101)
    path = feature_file(tmp_path / "f.h5", labels, layers, weight, bias)
    script = tmp_path / "other_file.py"
    script.write_text(RANK_ONE_SEES_ANOTHER_FILE)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    out = tmp_path / "r.parquet"
    done = subprocess.run(
        [*command, str(path), "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=RUN_SECONDS,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False,
    )  # fmt: skip
    assert_refused(done, "rank 1 sees another input than rank 0", "f.h5", "a filesystem every rank shares")
    assert not out.exists()
