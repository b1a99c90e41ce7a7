"""`nccli info FILE...`: what a feature file holds, as a table for people and JSON for scripts; `nccli layers` given
a feature file points to it."""

import json

import numpy as np
import pytest
from cli_helpers import assert_user_error, invoke, invoke_with_columns, snapshot
from h5files import good_file, not_hdf5, write_feature_file

COMMAND = "nccli extract resnet18 cifar10 --out run.h5 --layers layer1,layer2,layer3,layer4,fc:input --pool avg"


def described(folder):
    """A file with every optional part, and a bare one."""
    full = good_file(
        folder / "full.h5",
        epoch=3,
        model="resnet18",
        split="test",
        num_classes=6,  # classes 4 and 5 have no sample
        weight=np.ones((6, 5)),
        bias=np.zeros(6),
        logits=np.zeros((40, 6), dtype=np.float32),
        dtype=np.float16,
        layer_attrs={"block": {"pooling": "avg", "sample_shape": np.array([7, 2, 2])}},
        extra_root_attrs={"dataset": "cifar10", "command": COMMAND},
    )
    bare = good_file(folder / "bare.h5", n=12, k=3, weight=None, bias=None, classifier_layer=None)
    return full, bare


def test_json_describes_every_file(tmp_path):
    full, bare = described(tmp_path)
    before = snapshot(tmp_path)
    result = invoke("info", full, bare, "--format", "json")
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.stdout)
    assert {
        key: first[key] for key in ("path", "n_samples", "num_classes", "classes_present", "split", "epoch", "model")
    } == {
        "path": str(full),
        "n_samples": 40,
        "num_classes": 6,
        "classes_present": 4,
        "split": "test",
        "epoch": 3,
        "model": "resnet18",
    }
    assert first["provenance"] == {"model": "resnet18", "dataset": "cifar10", "command": COMMAND}
    assert first["layers"] == [
        {"name": "block", "order": 0, "width": 7, "dtype": "float16", "pooling": "avg", "sample_shape": [7, 2, 2]},
        {"name": "fc_in", "order": 1, "width": 5, "dtype": "float16", "pooling": None, "sample_shape": None},
    ]
    assert first["classifier_layer"] == "fc_in" and first["logits"] is True
    assert second["classifier_layer"] is None and second["logits"] is False and second["epoch"] is None
    assert second["split"] == "train" and second["classes_present"] == second["num_classes"] == 3
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("width", [40, 80, 200])
def test_table_for_people_fits_the_terminal(tmp_path, width):
    full, bare = described(tmp_path)
    result = invoke_with_columns(width, "info", full, bare)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width
    joined = "".join(line.rstrip() for line in lines)  # a long path may fold at a narrow width
    assert joined.startswith(str(full)) and str(bare) in joined
    for fact in ("samples", "40", "6 (4 present)", "test", "resnet18", "on layer 'fc_in'", "cifar10", "block", "fc_in"):
        assert fact in result.stdout, fact
    if width == 200:
        assert "7×2×2" in result.stdout and "float16" in result.stdout and result.stderr == ""
    else:
        note = result.stderr.strip().splitlines()
        assert all(line.startswith("note: ") and "--format json" in line for line in note)


def test_a_bad_file_is_one_line(tmp_path):
    good = good_file(tmp_path / "good.h5")
    bad = not_hdf5(tmp_path / "bad.h5")
    incomplete = good_file(tmp_path / "partial.h5", complete=False)
    before = snapshot(tmp_path)
    assert_user_error(invoke("info", good, bad), str(bad), "not an HDF5 file")
    assert_user_error(invoke("info", incomplete, "--format", "json"), str(incomplete), "complete")
    assert_user_error(invoke("info", tmp_path / "none.h5"), "none.h5", "no such file")
    assert snapshot(tmp_path) == before


def test_quoted_globs_are_described_in_epoch_order(tmp_path):
    """The same expansion as analyze's: natural order among plain paths, and a pattern matching nothing is one line."""
    (tmp_path / "test").mkdir()
    paths = {epoch: good_file(tmp_path / "test" / f"epoch_{epoch}.h5", epoch=epoch) for epoch in (10, 2, 1)}
    bare = good_file(tmp_path / "bare.h5")
    result = invoke("info", bare, tmp_path / "test" / "epoch_*.h5", "--format", "json")
    assert result.exit_code == 0, result.output
    assert [record["path"] for record in json.loads(result.stdout)] == [str(bare), *(str(paths[e]) for e in (1, 2, 10))]
    pattern = tmp_path / "train" / "*.h5"
    assert_user_error(invoke("info", pattern), f"pattern '{pattern}' matches no file")


@pytest.mark.parametrize("command", [("layers",), ("extract",)])
def test_layers_and_extract_given_a_feature_file_as_the_model_point_to_info(tmp_path, command):
    path = good_file(tmp_path / "run.h5")
    before = snapshot(tmp_path)
    extra = ("fake:4", "--out", tmp_path / "out.h5") if command == ("extract",) else ()
    assert_user_error(invoke(*command, path, *extra), str(path), "not a model", f"nccli info {path}")
    assert snapshot(tmp_path) == before


def test_names_from_a_file_reach_the_terminal_escaped(tmp_path):
    """Layer, split and model names are the file's: escape sequences in them (clear the screen, write the
    clipboard) are printed escaped in tables, errors and warnings alike (nccli.errors.printable)."""
    hostile = "fc\x1b[2J\x1b]52;c;aGk=\x07"
    labels = np.arange(12) % 3
    path = write_feature_file(
        tmp_path / "f.h5", labels, {hostile: np.random.default_rng(0).normal(size=(12, 4))},
        extra_root_attrs={"split": "test\x1b[1A", "model": "m\u202eodel"},
    )  # fmt: skip
    shown = invoke("info", path)
    assert shown.exit_code == 0, shown.output
    refused = invoke("analyze", path, "--layers", "nope", "--out", tmp_path / "r.parquet")
    assert_user_error(refused, "fc\\x1b[2J\\x1b]52;c;aGk=\\x07")
    for output in (shown.stdout + shown.stderr, refused.stderr):
        assert "\x1b" not in output and "\u202e" not in output and "\x07" not in output
    assert "fc\\x1b[2J" in shown.stdout and "test\\x1b[1A" in shown.stdout and "m\\u202eodel" in shown.stdout


def test_the_table_always_says_how_many_classes_are_present(tmp_path):
    result = invoke("info", good_file(tmp_path / "a.h5"))
    assert result.exit_code == 0 and "4 (4 present)" in result.stdout


def test_a_markdown_report_escapes_names_and_csv_keeps_them(tmp_path):
    """Markdown is read by people, like the terminal table; csv is data for programs, kept as written."""
    hostile = "fc\x1b[2J"
    labels = np.arange(12) % 3
    path = write_feature_file(tmp_path / "f.h5", labels, {hostile: np.random.default_rng(0).normal(size=(12, 4))})
    assert invoke("analyze", path, "--out", tmp_path / "r.parquet").exit_code == 0
    markdown = invoke("report", tmp_path / "r.parquet", "--format", "markdown")
    assert markdown.exit_code == 0 and "\x1b" not in markdown.stdout and "fc\\x1b[2J" in markdown.stdout
    assert hostile in invoke("report", tmp_path / "r.parquet", "--format", "csv").stdout
