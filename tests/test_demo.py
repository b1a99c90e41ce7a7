"""The demo pipeline on a cut-down setting: two checkpoints, a subset of the digits.

Checks the directions the README promises, measured on the report the demo writes:
on the penultimate layer nc1 falls ≥ 10× from the first to the last epoch;
at the last epoch nc1 decreases with depth, train NCC accuracy is 1 and test
nc1 (with the train means) is above train nc1.
"""

import math

import pyarrow.parquet as pq
import pytest
import stored_reports
from typer.testing import CliRunner

from nccli import schema
from nccli.cli import app
from nccli.demo import DemoConfig, penultimate_rows, run_demo

pytestmark = pytest.mark.slow  # processes, torchrun jobs, kills and whole pipelines: the CI tier


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo(DemoConfig(out=str(out), checkpoints=(1, 300), limit=450, device="cpu"))


def rows(result, split, epoch):
    return sorted(
        (
            r
            for r in pq.read_table(result.report).to_pylist()
            if r[schema.COL_SPLIT] == split and r[schema.COL_EPOCH] == epoch
        ),
        key=lambda r: r[schema.COL_LAYER_ORDER],
    )


def test_penultimate_nc1_collapses_over_training(demo):
    penultimate = {(r["split"], r["epoch"]): r for r in penultimate_rows(demo.summary)}
    assert penultimate[("train", 1)]["nc1"] >= 10 * penultimate[("train", 300)]["nc1"]


def test_nc1_decreases_with_depth_at_the_last_epoch(demo):
    layers = rows(demo, "train", 300)
    assert len(layers) >= 4
    nc1 = [r["nc1"] for r in layers]
    assert all(later <= earlier for earlier, later in zip(nc1, nc1[1:])), nc1
    assert nc1[-1] < nc1[0] / 10


def test_train_ncc_accuracy_is_one_and_test_collapse_is_weaker(demo):
    last_train = rows(demo, "train", 300)[-1]
    last_test = rows(demo, "test", 300)[-1]
    assert last_train["ncc_accuracy"] == 1.0
    assert last_test["nc1"] > last_train["nc1"]
    assert not math.isnan(last_test["ncc_accuracy"])


def test_figures_are_written(demo):
    names = sorted(path.name for path in demo.figures)
    assert names == ["nc_depth_test.png", "nc_depth_train.png", "nc_over_epochs.png"]
    assert all(path.stat().st_size > 10_000 for path in demo.figures)


def test_demo_command_rejects_a_missing_sample_folder(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--sample-data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "sample data not found" in result.stderr and "Traceback" not in result.output


def test_the_demo_report_is_the_stored_one_bit_for_bit(demo):
    """A redesign changes no number (tests/stored_reports.py; `python tests/stored_reports.py` re-stores)."""
    assert dict(checkpoints=(1, 300), limit=450, device="cpu") == stored_reports.DEMO  # the fixture's setting
    stored_reports.assert_as_stored("demo", demo.report)
