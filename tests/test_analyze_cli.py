"""`nccli analyze` and `nccli report` from the command line: the report's layout, formats and bad input."""

import csv
import io
import json
import math

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_helpers import assert_user_error, invoke
from h5files import good_file, not_hdf5, write_feature_file

from nccli import __version__, schema
from nccli.globs import names_matching
from nccli.io.reader import read_info

# --------------------------------------------------------------------------- quoted globs


def epoch_files(folder, epochs=(10, 2, 1)):
    """folder/epoch_E.h5 per epoch, written out of order."""
    folder.mkdir()
    return {epoch: good_file(folder / f"epoch_{epoch}.h5", seed=epoch, epoch=epoch) for epoch in epochs}


def analysed_files(out):
    """The report's files, one entry per file (each has two layers)."""
    return pq.read_table(out).column("file").to_pylist()[::2]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("analyze", "f.h5", "--bogus", "1"), ("No such option: --bogus", "see `nccli analyze --help`")),
        (("analyze",), ("Missing argument 'files'", "see `nccli analyze --help`")),
        (("extract", "resnet18", "fake:4", "--split", "nope", "--out", "f.h5"), ("Invalid value for '--split'",)),
        (("nosuch",), ("No such command 'nosuch'", "see `nccli --help`")),
    ],
    ids=["unknown option", "missing argument", "bad choice", "unknown command"],
)
def test_a_usage_error_is_one_line_naming_the_help(args, fragments):
    assert_user_error(invoke(*args), *fragments)


def test_quoted_globs_expand_in_epoch_order_among_plain_paths(tmp_path):
    """A pattern gives the files the shell would give, in natural order (epoch_2 before epoch_10); a file named
    twice is analysed twice, as a repeated path always was."""
    test = epoch_files(tmp_path / "test")
    plain = good_file(tmp_path / "plain.h5", seed=5)
    out, by_hand = tmp_path / "r.parquet", tmp_path / "by_hand.parquet"
    result = invoke("analyze", plain, tmp_path / "test" / "epoch_*.h5", test[1], "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    expected = [plain, test[1], test[2], test[10], test[1]]
    assert analysed_files(out) == [str(path) for path in expected]
    assert invoke("analyze", *expected, "--out", by_hand, "--device", "cpu").exit_code == 0
    assert pq.read_table(out).to_pylist() == pq.read_table(by_hand).to_pylist()


def test_a_glob_that_matches_no_file_is_one_line_and_writes_nothing(tmp_path):
    good = good_file(tmp_path / "good.h5")
    (tmp_path / "epoch_9.h5").mkdir()  # a folder is not a feature file
    out = tmp_path / "r.parquet"
    for pattern in (tmp_path / "none" / "*.h5", tmp_path / "epoch_?.h5"):
        assert_user_error(invoke("analyze", good, pattern, "--out", out), f"pattern '{pattern}' matches no file")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["epoch_9.h5", "good.h5"]


def test_a_file_named_with_glob_characters_is_that_file(tmp_path):
    path = good_file(tmp_path / "run[1].h5")
    result = invoke("analyze", path, "--out", tmp_path / "r.parquet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert analysed_files(tmp_path / "r.parquet") == [str(path)]


# --------------------------------------------------------------------------- the report


def test_report_columns_types_order_and_metadata(tmp_path):
    first = good_file(tmp_path / "a.h5", epoch=3, model="resnet18", split="test")
    second = good_file(tmp_path / "b.h5", seed=1)
    out = tmp_path / "report.parquet"
    result = invoke("analyze", first, second, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert tuple(table.column_names) == schema.SUMMARY_COLUMNS
    types = {field.name: str(field.type) for field in table.schema}
    assert types["epoch"] == types["layer_order"] == types["ncc_effective_depth"] == "int64"
    assert all(types[name] == "double" for name in schema.METRIC_COLUMNS)
    rows = table.to_pylist()
    assert [(r["file"], r["layer"]) for r in rows] == [
        (str(first), "block"),
        (str(first), "fc_in"),
        (str(second), "block"),
        (str(second), "fc_in"),
    ]
    assert rows[0]["split"] == "test" and rows[0]["epoch"] == 3 and rows[0]["model"] == "resnet18"
    assert rows[2]["split"] == "train" and rows[2]["epoch"] is None
    assert rows[0]["clf_accuracy"] is None and rows[1]["clf_accuracy"] is not None  # null, not NaN, where N/A
    assert rows[1]["mse_loss"] is None  # opt-in
    metadata = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert metadata[schema.META_VERSION] == __version__
    assert "analyze" in metadata[schema.META_COMMAND]
    assert json.loads(metadata[schema.META_PROVENANCE])[str(first)]["model"] == "resnet18"
    conventions = json.loads(metadata[schema.META_CONVENTIONS])
    assert conventions["sigma_b_rank"][str(first)] == {"block": 3, "fc_in": 3}
    assert {"global_mean", "sigma_w", "sigma_b", "std", "pinv_cutoff"} <= set(conventions)
    assert json.loads(metadata[schema.META_WARNINGS]) == []


def test_classes_and_pairs_tables(tmp_path):
    path = good_file(tmp_path / "a.h5", class_names=["a", "b", "c", "d"])
    result = invoke(
        "analyze",
        path,
        "--out",
        tmp_path / "r.parquet",
        "--classes",
        tmp_path / "c.parquet",
        "--pairs",
        tmp_path / "p.parquet",
        "--layers",
        "fc_in",
    )
    assert result.exit_code == 0, result.output
    classes = pq.read_table(tmp_path / "c.parquet")
    assert classes.column_names[:6] == ["file", "split", "epoch", "layer", "class", "class_name"]
    assert classes.num_rows == 4 and classes.column("class_name").to_pylist() == ["a", "b", "c", "d"]
    pairs = pq.read_table(tmp_path / "p.parquet")
    assert pairs.num_rows == 6 and {"cdnv", "mean_cos", "inter_cos", "mean_dist", "class_b"} <= set(pairs.column_names)


def test_means_from_and_mse_from_the_command_line(tmp_path):
    train, test = good_file(tmp_path / "train.h5"), good_file(tmp_path / "test.h5", seed=5, split="test")
    out = tmp_path / "r.parquet"
    result = invoke("analyze", test, "--means-from", train, "--mse", "--weight-decay", "0.01", "--out", out)
    assert result.exit_code == 0, result.output
    row = pq.read_table(out).to_pylist()[1]
    assert row["mse_loss"] == pytest.approx(row["mse_ls"] + row["mse_perp"], rel=1e-10)
    conventions = json.loads(pq.read_table(out).schema.metadata[b"conventions"])
    assert str(train) in conventions["ncc_means"] and conventions["mse"]["weight_decay"] == 0.01


def test_degenerate_warnings_are_one_line_each_on_stderr(tmp_path):
    labels = np.zeros(10, dtype=int)
    path = write_feature_file(tmp_path / "one.h5", labels, {"x": np.random.default_rng(0).normal(size=(10, 3))})
    result = invoke("analyze", path, "--out", tmp_path / "r.parquet")
    assert result.exit_code == 0
    assert result.stderr.startswith("warning: ") and "K < 2" in result.stderr and "Traceback" not in result.stderr
    assert pq.read_table(tmp_path / "r.parquet").to_pylist()[0]["nc1"] is None


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "markdown"])
def test_report_formats_for_pipes_keep_every_column_and_digit(tmp_path, fmt):
    out = tmp_path / "r.parquet"
    invoke("analyze", good_file(tmp_path / "a.h5"), "--out", out)
    table = pq.read_table(out).to_pylist()
    result = invoke("report", out, "--format", fmt)
    assert result.exit_code == 0, result.output
    text = result.stdout
    if fmt in ("csv", "tsv"):
        rows = list(csv.DictReader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t"))
        assert list(rows[0]) == list(schema.SUMMARY_COLUMNS)
        assert float(rows[1]["nc1"]) == table[1]["nc1"]  # full precision
        assert rows[0]["clf_accuracy"] == ""  # null → empty cell
    elif fmt == "json":
        rows = json.loads(text)
        assert rows[1]["nc1"] == table[1]["nc1"] and rows[0]["clf_accuracy"] is None
    else:
        lines = text.splitlines()
        assert lines[0].startswith("| file | split |") and len(lines) == 2 + len(table)


def test_report_table_xlsx_and_columns(tmp_path):
    out = tmp_path / "r.parquet"
    invoke("analyze", good_file(tmp_path / "a.h5"), "--out", out)
    table = invoke("report", out)
    assert table.exit_code == 0 and "nc1" in table.stdout and "fc_in" in table.stdout
    chosen = invoke("report", out, "--format", "csv", "--columns", "layer,nc1")
    assert chosen.stdout.splitlines()[0] == "layer,nc1"
    workbook_path = tmp_path / "r.xlsx"
    assert invoke("report", out, "--format", "xlsx", "--output", workbook_path).exit_code == 0
    openpyxl = pytest.importorskip("openpyxl")
    sheet = openpyxl.load_workbook(workbook_path).active
    assert [cell.value for cell in sheet[1]] == list(schema.SUMMARY_COLUMNS)
    assert_user_error(invoke("report", out, "--format", "xlsx"), "--output")
    assert_user_error(invoke("report", out, "--columns", "nope"), "unknown column 'nope'")
    assert_user_error(invoke("report", tmp_path / "missing.parquet"), "no such report file")


# --------------------------------------------------------------------------- bad input


def corrupt(path):
    """A feature file with its second half cut off."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_FILES = {
    "not-hdf5": (not_hdf5, ("not an HDF5 file",)),
    "truncated": (lambda p: corrupt(good_file(p, n=4000, d=64)), ("bad.h5",)),
    "missing-format": (lambda p: good_file(p, omit=("nccli_format",)), ("nccli_format",)),
    "wrong-version": (lambda p: good_file(p, extra_root_attrs={"format_version": 2}), ("format_version", "2")),
    "missing-labels": (lambda p: good_file(p, omit=("labels",)), ("'/labels'", "missing")),
    "missing-layers": (
        lambda p: good_file(p, omit=("layers",), weight=None, bias=None, classifier_layer=None),
        ("'/layers'",),
    ),
    "missing-order": (lambda p: good_file(p, omit=("order:block",)), ("'/layers/block'", "'order'")),
    "row-count": (
        lambda p: write_feature_file(p, np.arange(10) % 2, {"x": np.zeros((9, 3))}),
        ("'/layers/x'", "9 rows", "10"),
    ),
    "label-range": (
        lambda p: good_file(p, num_classes=3, weight=np.ones((3, 5)), bias=np.zeros(3)),
        ("'/labels'", "label 3 outside [0, 3)"),
    ),
    "negative-label": (lambda p: write_feature_file(p, np.array([0, 1, -1, 1]), {"x": np.ones((4, 2))}), ("label -1",)),
    "float-labels": (
        lambda p: write_feature_file(p, np.array([0.0, 1.0]), {"x": np.ones((2, 2))}),
        ("'/labels'", "integer"),
    ),
    "nan-feature": (
        lambda p: write_feature_file(
            p, np.arange(30) % 3, {"x": np.where(np.arange(90).reshape(30, 3) == 52, np.nan, 1.0)}
        ),
        ("'/layers/x'", "row 17", "non-finite"),
    ),
    "incomplete": (lambda p: good_file(p, complete=False), ("complete", "--resume")),
    "classifier-width": (
        lambda p: good_file(p, weight=np.ones((4, 6))),
        ("'/classifier/weight'", "width 6", "'fc_in'", "width 5"),
    ),
    "classifier-layer": (lambda p: good_file(p, classifier_layer="nowhere"), ("'/classifier'", "'nowhere'")),
    "huge-num-classes": (
        lambda p: write_feature_file(p, np.arange(4) % 2, {"x": np.ones((4, 512))}, num_classes=10**9),
        ("num_classes = 1000000000", "GiB"),
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_fails_cleanly_and_keeps_the_earlier_report(tmp_path, case):
    make, fragments = BAD_FILES[case]
    bad = make(tmp_path / "bad.h5")
    out = tmp_path / "report.parquet"
    out.write_bytes(b"earlier report")
    result = invoke("analyze", good_file(tmp_path / "good.h5"), bad, "--out", out, "--block-rows", "8")
    assert_user_error(result, str(bad), *fragments)
    assert out.read_bytes() == b"earlier report"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bad.h5", "good.h5", "report.parquet"])


def test_option_errors(tmp_path):
    path = good_file(tmp_path / "a.h5")
    out = tmp_path / "r.parquet"
    assert_user_error(invoke("analyze", path, "--out", out, "--layers", "layer9*"), "'layer9*'", "block, fc_in")
    assert_user_error(invoke("analyze", path, "--out", tmp_path / "no" / "r.parquet"), "does not exist")
    assert_user_error(invoke("analyze", path, "--out", tmp_path), "is a directory")
    assert_user_error(invoke("analyze", path, "--out", out, "--weight-decay", "0.1"), "--mse")
    assert_user_error(invoke("analyze", path, "--out", out, "--device", "tpu"), "--device")
    assert_user_error(invoke("analyze", tmp_path / "none.h5", "--out", out), "none.h5", "no such file")
    for value in ("nan", "inf", "-1"):
        refused = invoke("analyze", path, "--out", out, "--mse", "--weight-decay", value)
        assert_user_error(refused, "--weight-decay must be a finite number ≥ 0")
    assert_user_error(invoke("analyze", path, "--out", out, "--epsilon", "nan"), "--epsilon must be in [0, 1]")
    assert not out.exists()


def test_the_ood_file_is_an_input_the_report_may_not_replace(tmp_path):
    path, ood = good_file(tmp_path / "a.h5"), good_file(tmp_path / "ood.h5", seed=3)
    before = ood.read_bytes()
    assert_user_error(invoke("analyze", path, "--ood", ood, "--out", ood), "is the input file", "ood.h5")
    assert ood.read_bytes() == before


def test_means_from_must_match_layers_and_classes(tmp_path):
    test = good_file(tmp_path / "test.h5")
    other_layers = good_file(tmp_path / "other.h5", layers={"fc_in": np.zeros((40, 5)) + np.arange(40)[:, None] % 4})
    other_classes = good_file(tmp_path / "k5.h5", k=5)
    out = tmp_path / "r.parquet"
    assert_user_error(invoke("analyze", test, "--means-from", other_layers, "--out", out), "other.h5", "'block'")
    assert_user_error(invoke("analyze", test, "--means-from", other_classes, "--out", out), "k5.h5", "5 classes", "4")
    assert not out.exists()


@pytest.mark.parametrize("option", ["--mse", "--snr"])
def test_the_d_by_d_options_refuse_wide_layers(tmp_path, option):
    rng = np.random.default_rng(0)
    labels = np.arange(6) % 2
    path = write_feature_file(
        tmp_path / "w.h5",
        labels,
        {"wide": rng.normal(size=(6, 4097))},
        weight=np.ones((2, 4097)),
        classifier_layer="wide",
    )
    out = tmp_path / "r.parquet"
    assert_user_error(invoke("analyze", path, option, "--out", out), option, "d = 4097", "4096")
    assert not out.exists()


def test_files_written_by_other_tools_with_odd_layouts(tmp_path):
    """Plain h5py, string attrs as bytes, labels uint8, features float16 with lzf chunks of 3 rows."""
    path = tmp_path / "other.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as handle:
        handle.attrs["nccli_format"] = np.bytes_("nccli.features")
        handle.attrs["format_version"] = np.int32(1)
        handle.create_dataset("labels", data=(np.arange(50) % 5).astype(np.uint8))
        layer = handle.create_dataset(
            "layers/emb", data=rng.normal(size=(50, 6)).astype(np.float16), chunks=(3, 6), compression="lzf"
        )
        layer.attrs["order"] = np.int64(0)
        handle.create_dataset("extra/whatever", data=[1, 2, 3])  # ignored
    result = invoke("analyze", path, "--out", tmp_path / "r.parquet")
    assert result.exit_code == 0, result.output
    assert not math.isnan(pq.read_table(tmp_path / "r.parquet").to_pylist()[0]["nc1"])


def test_every_command_has_help():
    for command in ("analyze", "report", "extract", "layers", "plot", "info"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Usage" in result.stdout, command
    assert invoke("--version").stdout.strip() == f"nccli {__version__}"


def test_analyze_on_the_cpu_does_not_import_torch(tmp_path):
    """Start-up counts: torch is ~1 s to import and analyze has no use for it without a GPU."""
    import subprocess
    import sys

    path = good_file(tmp_path / "a.h5")
    code = (
        "import sys; from typer.testing import CliRunner; from nccli.cli import app\n"
        f"result = CliRunner().invoke(app, ['analyze', {str(path)!r}, '--out', {str(tmp_path / 'r.parquet')!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "print('torch' in sys.modules)"
    )
    env_without_gpu = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env_without_gpu, check=True
    )
    assert completed.stdout.strip().splitlines()[-1] == "False"


def test_layers_select_a_name_first_then_a_glob_as_extract_does(tmp_path):
    """--layers (nccli.globs.names_matching): a layer named with glob characters is that layer; a pattern
    selects every layer it matches; one that selects none is one line naming the layers."""
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 3
    layers = {name: rng.normal(size=(12, 4)) for name in ("block[0]", "block0", "blockA", "fc")}
    path = write_feature_file(tmp_path / "f.h5", labels, layers)
    info = read_info(str(path))
    assert [layer.name for layer in info.select_layers(("block[0]",))] == ["block[0]"]
    assert [layer.name for layer in info.select_layers(("block[0A]",))] == ["block0", "blockA"]
    assert [layer.name for layer in info.select_layers(("fc", "block*"))] == ["block[0]", "block0", "blockA", "fc"]
    result = invoke("analyze", path, "--layers", "conv*", "--out", tmp_path / "r.parquet")
    assert_user_error(result, "--layers 'conv*' matches no layer", "block[0], block0, blockA, fc")
    assert names_matching("layer4.*", ["layer4.0", "layer40", "layer4.1.relu"]) == ["layer4.0", "layer4.1.relu"]
