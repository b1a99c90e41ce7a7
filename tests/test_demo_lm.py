"""``nccli demo --lm`` cut down to two checkpoints: the tiny language model's token-level collapse, measured on
the report it writes (the directions the README describes), and its refusals."""

import pyarrow.parquet as pq
import pytest
from cli_helpers import assert_user_error, invoke

from nccli import schema

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # trains a model: the CI tier

STEPS = (1, 200)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from nccli.demo_lm import LanguageDemoConfig, run_language_demo

    out = tmp_path_factory.mktemp("demo-lm")
    return run_language_demo(LanguageDemoConfig(out=str(out), device="cpu", steps=STEPS))


def _final_norm(result, split: str, step: int) -> dict:
    (row,) = [
        row
        for row in pq.read_table(result.report).to_pylist()
        if row[schema.COL_SPLIT] == split and row[schema.COL_EPOCH] == step and row["clf_accuracy"] is not None
    ]
    return row


@pytest.mark.parametrize("split", ["train", "test"])
def test_training_collapses_the_final_norm_in_part(demo, split):
    first, last = _final_norm(demo, split, STEPS[0]), _final_norm(demo, split, STEPS[-1])
    assert last["nc1_tilde"] < first["nc1_tilde"] / 5  # within-class variability falls
    assert last["nc3_duality"] < first["nc3_duality"]  # the LM head turns towards the class means
    assert last["nc4_ncc_mismatch"] < first["nc4_ncc_mismatch"]  # and agrees more with the nearest class mean
    assert last["clf_accuracy"] > 2 * first["clf_accuracy"]
    assert 0 < last["nc1_tilde"]  # not to zero: the grammar's choices give one context several next words


def test_the_report_holds_every_step_split_and_layer_and_the_figure(demo):
    rows = pq.read_table(demo.report).to_pylist()
    assert len(rows) == len(STEPS) * 2 * 3  # two splits, two blocks and the final norm
    assert {row[schema.COL_FILE].rsplit("/", 1)[-1] for row in rows} == {"train.npy", "test.npy"}
    assert [path.name for path in demo.figures] == ["nc_over_epochs.png"] and demo.figures[0].stat().st_size > 0


def test_the_command_line_refuses_without_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    assert_user_error(invoke("demo", "--lm", "--out", tmp_path / "d"), "pip install 'nccli[hf]'")
