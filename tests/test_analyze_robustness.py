"""analyze's errors at the right depth: HDF5 errors are translated where files are read, a bug in the
analysis keeps its traceback and inputs are opened one at a time."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_helpers import assert_user_error, invoke, snapshot
from h5files import good_file, write_feature_file

from nccli.io import shards

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), OSError(5, "Input/output error")])
def test_an_error_in_the_analysis_is_not_blamed_on_the_file(tmp_path, monkeypatch, error):
    """What metric code (or a GPU) raises inside the analysis is not 'cannot read (truncated or corrupt file?)'."""
    import nccli.analyze.analysis

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(nccli.analyze.analysis, "summarize_layer", failing)
    path = good_file(tmp_path / "a.h5")
    before = snapshot(tmp_path)
    result = invoke("analyze", path, "--out", tmp_path / "r.parquet", "--device", "cpu")
    assert result.exit_code == 1 and result.exception is error  # a bug: its own exception, with its traceback
    assert "corrupt" not in result.output
    assert snapshot(tmp_path) == before


def run_python(code: str, timeout: float = 300) -> dict:
    """Run ``code`` in a fresh interpreter (for process-wide limits); it prints one JSON object last."""
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=TESTS, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


INVOKE = """
import json, resource, sys
sys.path.insert(0, {tests!r})
from cli_helpers import invoke
"""


def test_more_files_than_open_file_descriptors(tmp_path):
    """80 files under a 64-descriptor limit: each input is open only while it is read."""
    paths = [str(good_file(tmp_path / f"f{index:02d}.h5", n=12, d=3, seed=index, epoch=index)) for index in range(80)]
    before = snapshot(tmp_path)
    out = tmp_path / "r.parquet"
    code = INVOKE.format(tests=str(TESTS)) + (
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        f"result = invoke('analyze', *{paths!r}, '--out', {str(out)!r}, '--device', 'cpu', '--layers', 'fc_in')\n"
        "print(json.dumps({'exit': result.exit_code, 'output': result.output}))"
    )
    outcome = run_python(code)
    assert outcome["exit"] == 0, outcome["output"]
    assert pq.read_table(out).column("file").to_pylist() == paths
    assert {name: data for name, data in snapshot(tmp_path).items() if name != "r.parquet"} == before


def test_a_file_that_changed_since_its_validation_is_refused(tmp_path):
    """Inputs are validated at the start and read later: a file replaced in between is not read as the old one."""
    import dataclasses

    from nccli.errors import FeatureFileError
    from nccli.io.reader import open_feature_file, read_info

    path = good_file(tmp_path / "a.h5")
    validated = read_info(path)
    good_file(path, n=44)  # rewritten with more rows
    with pytest.raises(FeatureFileError, match="changed since it was validated"):
        with open_feature_file(path, probed=True, expected=validated):
            pass
    with open_feature_file(path, probed=True, expected=dataclasses.replace(validated, n_samples=44)) as feature_file:
        assert feature_file.info.n_samples == 44


def test_an_index_whose_shard_is_of_another_extraction_is_refused(tmp_path):
    """A torchrun index reads its shards' rows: a shard replaced by one of another checkpoint (or epoch, model,
    data) must not be analysed as part of it."""
    index = tmp_path / "features.h5"
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4
    layers = {"fc_in": rng.normal(size=(40, 5))}
    identity = {"model": "resnet18", "checkpoint_sha256": "aa" * 32, "epoch": 3}
    for rank in range(2):
        shard = Path(shards.shard_path(str(index), rank, 2))
        shard.parent.mkdir(exist_ok=True)
        part = slice(20 * rank, 20 * rank + 20)
        write_feature_file(
            shard, labels[part], {k: v[part] for k, v in layers.items()}, extra_root_attrs=identity, complete=True
        )
    shards.write_index(str(index), 2, {})
    out = tmp_path / "r.parquet"
    assert invoke("analyze", index, "--out", out).exit_code == 0
    replaced = Path(shards.shard_path(str(index), 1, 2))
    write_feature_file(replaced, labels[20:], {k: v[20:] for k, v in layers.items()},
                       extra_root_attrs={**identity, "checkpoint_sha256": "bb" * 32}, complete=True)  # fmt: skip
    result = invoke("analyze", index, "--out", tmp_path / "other.parquet")
    assert_user_error(result, "features.h5", "rank-00001-of-00002.h5", "is not of this extraction", "checkpoint_sha256")


@pytest.mark.parametrize(("scale", "dtype", "dim"), [(1e19, np.float32, 64), (1e155, np.float64, 4)])
def test_finite_features_too_large_for_the_arithmetic_are_refused_in_one_line(tmp_path, scale, dtype, dim):
    """float32 features near 1e19 overflow pass 2's float32 screens (an NCC accuracy of 1/3 instead of 1 was
    reported), float64 near 1e155 their squares: refused before any decision, with the fix."""
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    features = (rng.normal(size=(3, dim))[labels] * scale + rng.normal(size=(60, dim)) * scale / 100).astype(dtype)
    path, out = write_feature_file(tmp_path / "big.h5", labels, {"x": features}), tmp_path / "r.parquet"
    assert_user_error(invoke("analyze", path, "--out", out), "feature values too large", "divide the features")
    assert not out.exists()
    scaled = write_feature_file(tmp_path / "scaled.h5", labels, {"x": (features / scale).astype(dtype)})
    assert invoke("analyze", scaled, "--out", out).exit_code == 0
    assert pq.read_table(out).column("ncc_accuracy").to_pylist() == [1.0]
