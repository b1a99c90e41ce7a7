"""``nccli measure`` and the token ``extract`` under torchrun (gloo, 2 processes): each rank runs the model over
its contiguous part of DATA; the report equals extract + analyze in one process (1e-10), and the token feature
file's index holds the rows of one process, bit for bit."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from cli_helpers import invoke
from extract_helpers import random_images, tiny_cnn, write_npz
from test_distributed_analyze import assert_refused
from test_measure_cli import _same_reports

from nccli import schema

pytestmark = pytest.mark.slow  # torchrun jobs: the CI tier

RUN_SECONDS = 240
TESTS = Path(__file__).parent
# float32 matrix products round by batch shape: the ranks batch their own windows, so compare window by window
ONE_WINDOW_PER_BATCH = ("--batch-size", 1)
GROUPS_ENTRY = TESTS / "measure_in_groups.py"  # the command line with one layer per group (layer groups)


def torchrun(*args, cwd: Path, entry: tuple[str, ...] = ("-m", "nccli")) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += [*entry, *map(str, args)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_SECONDS, check=False)


@contextlib.contextmanager
def one_thread():
    """torch on one thread, as the ranks (OMP_NUM_THREADS=1): float32 products round by the number of threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def extracted_then_analyzed(folder: Path, common: tuple, tables: bool = False) -> dict[str, Path]:
    """extract + analyze in this process: the reports (summary, and the class and pair tables with ``tables``)."""
    with one_thread():
        assert invoke("extract", *common, "--out", folder / "f.h5").exit_code == 0
    paths = report_paths(folder, "one", tables)
    result = invoke("analyze", folder / "f.h5", *(item for pair in paths.items() for item in pair))
    assert result.exit_code == 0, result.stderr
    return paths


def report_paths(folder: Path, name: str, tables: bool) -> dict[str, Path]:
    options = ("--out", "--classes", "--pairs") if tables else ("--out",)
    return {option: folder / f"{name}-{option.strip('-')}.parquet" for option in options}


def test_measure_of_an_image_model_under_torchrun_equals_extract_then_analyze(tmp_path):
    torch.save(tiny_cnn().state_dict(), tmp_path / "model.pt")
    data = write_npz(tmp_path / "data.npz", *random_images(n=41, size=16))  # odd: the ranks' parts differ
    common = (tmp_path / "model.pt", data, "--arch", "extract_helpers:tiny_cnn", "--normalize", "none")
    one = extracted_then_analyzed(tmp_path, (*common, "--workers", 0), tables=True)
    many = report_paths(tmp_path, "many", tables=True)
    done = torchrun(
        "measure", *common, "--batch-size", 6, *(item for pair in many.items() for item in pair), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(many["--out"])]  # rank 0 speaks for the job
    for option, path in one.items():
        _same_reports(path, many[option])


@pytest.fixture(scope="module")
def language_model(tmp_path_factory):
    pytest.importorskip("transformers")
    from lm_helpers import causal_lm, trained_tokenizer

    folder = tmp_path_factory.mktemp("lm")
    tokenizer = trained_tokenizer()
    causal_lm(folder / "gpt", "gpt2", tokenizer)
    np.random.default_rng(3).integers(0, len(tokenizer), size=131).astype(np.uint16).tofile(folder / "ids.bin")
    return folder / "gpt", folder / "ids.bin"


def test_measure_of_a_language_model_under_torchrun_in_layer_groups_equals_extract_then_analyze(
    language_model, tmp_path
):
    model, ids = language_model
    common = (model, ids, "--token-dtype", "uint16", "--seq-len", 16, "--stride", 11, *ONE_WINDOW_PER_BATCH)
    one = extracted_then_analyzed(tmp_path, common)
    for name, entry in (("many", ("-m", "nccli")), ("groups", (str(GROUPS_ENTRY),))):
        out = tmp_path / f"{name}.parquet"
        done = torchrun("measure", *common, "--out", out, cwd=tmp_path, entry=entry)
        assert done.returncode == 0, done.stderr
        _same_reports(one["--out"], out)


def test_token_extract_under_torchrun_writes_the_rows_of_one_process(language_model, tmp_path):
    model, ids = language_model
    common = (model, ids, "--token-dtype", "uint16", "--seq-len", 16, "--stride", 11, "--layers", "*")
    common += ONE_WINDOW_PER_BATCH
    with one_thread():
        assert invoke("extract", *common, "--out", tmp_path / "one.h5").exit_code == 0
    done = torchrun("extract", *common, "--out", tmp_path / "many.h5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "one.h5") as one, h5py.File(tmp_path / "many.h5") as many:
        assert schema.ATTR_SHARDS in many.attrs
        paths = [schema.LABELS, schema.SAMPLE_INDEX, *(schema.layer_path(name) for name in one[schema.LAYERS])]
        for path in paths:
            np.testing.assert_array_equal(many[path][()], one[path][()])
        np.testing.assert_array_equal(many[schema.CLASSIFIER_WEIGHT][()], one[schema.CLASSIFIER_WEIGHT][()])
        assert many.attrs["num_classes"] == one.attrs["num_classes"]


def test_more_processes_than_token_windows_are_refused_in_one_line(language_model, tmp_path):
    model, ids = language_model
    done = torchrun("measure", model, ids, "--token-dtype", "uint16", "--seq-len", 16, "--max-tokens", 10,
                    "--out", tmp_path / "r.parquet", cwd=tmp_path)  # fmt: skip
    assert_refused(done, "1 token windows for 2 processes: every process needs at least one; start fewer processes")
    assert not (tmp_path / "r.parquet").exists()


def test_a_model_giving_other_rows_under_torchrun_is_refused_by_rank_0_without_a_report(tmp_path):
    data = write_npz(tmp_path / "data.npz", *random_images(n=40, size=16))
    model = f"{TESTS / 'test_measure_cli.py'}:dropping"  # dropout left on: other rows on the second pass
    done = torchrun("measure", model, data, "--normalize", "none", "--out", tmp_path / "r.parquet", cwd=tmp_path)
    assert_refused(done, "rank 0 of 2: the model gave other rows on its second pass", "no report was written")
    assert not (tmp_path / "r.parquet").exists()
