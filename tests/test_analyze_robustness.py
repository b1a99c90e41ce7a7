"""analyze's errors at the right depth (issue 12): HDF5 errors are translated where files are read, a bug in the
analysis keeps its traceback, inputs are opened one at a time, and a worker pool that cannot start fails in one line."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cli_helpers import invoke, snapshot
from h5files import good_file

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


def test_a_worker_pool_that_cannot_start_under_a_memory_limit_fails_in_one_line(tmp_path):
    """Address space for hardly one more thread (``ulimit -v``): --jobs 2 says so at once instead of hanging."""
    path = good_file(tmp_path / "a.h5", n=200)
    out = tmp_path / "r.parquet"
    code = INVOKE.format(tests=str(TESTS)) + (
        "import threading\n"
        f"warm = invoke('analyze', {str(path)!r}, '--out', {str(tmp_path / 'warm.parquet')!r}, '--device', 'cpu')\n"
        "assert warm.exit_code == 0, warm.output  # every module the command needs is loaded\n"
        "threading.stack_size(16 * 2**20)  # whatever `ulimit -s` says: a thread needs more than the headroom\n"
        "size = next(int(line.split()[1]) * 1024 for line in open('/proc/self/status') if line.startswith('VmSize'))\n"
        "hard = resource.getrlimit(resource.RLIMIT_AS)[1]\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 4 * 2**20, hard))  # the soft limit, as `ulimit -Sv`\n"
        f"result = invoke('analyze', {str(path)!r}, '--out', {str(out)!r}, '--jobs', '2')\n"
        "resource.setrlimit(resource.RLIMIT_AS, (hard, hard))\n"
        "print(json.dumps({'exit': result.exit_code, 'stderr': result.stderr, 'output': result.output}))"
    )
    outcome = run_python(code, timeout=240)
    assert outcome["exit"] == 2, outcome["output"]
    lines = outcome["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --jobs 2: cannot start the worker processes"), lines
    assert "ulimit -v" in lines[0] and "--jobs 1" in lines[0] and "Traceback" not in outcome["output"]
    assert not out.exists()


def test_a_worker_that_dies_at_start_fails_in_one_line(tmp_path):
    """A worker process that cannot start (here: no Python for it to run) breaks the pool: one line, exit 2."""
    path = good_file(tmp_path / "a.h5", n=200)
    before = snapshot(tmp_path)
    code = INVOKE.format(tests=str(TESTS)) + (
        "import os\n"
        "from multiprocessing import resource_tracker\n"
        "resource_tracker.ensure_running()  # started before the environment is broken: only the workers fail\n"
        f"os.environ['PYTHONHOME'] = {str(tmp_path / 'no-python-here')!r}  # for the processes started from now on\n"
        f"result = invoke('analyze', {str(path)!r}, '--out', {str(tmp_path / 'r.parquet')!r}, '--jobs', '2')\n"
        "print(json.dumps({'exit': result.exit_code, 'stderr': result.stderr, 'output': result.output}))"
    )
    outcome = run_python(code)
    assert outcome["exit"] == 2, outcome["output"]
    lines = outcome["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --jobs 2: cannot start the worker processes"), lines
    assert "Traceback" not in outcome["output"]
    assert snapshot(tmp_path) == before


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
