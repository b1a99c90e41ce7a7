"""``nccli plot``: figures from synthetic reports, their sizes and formats, and bad input."""

import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from typer.testing import CliRunner  # noqa: E402

from nccli import schema  # noqa: E402
from nccli.cli import app  # noqa: E402
from nccli.report import panels, plots  # noqa: E402

NC1, EQUINORM, NCC_ACC, CLF_ACC, MARGIN_MIN = (
    schema.METRIC_BY_NAME[name].name for name in ("nc1", "nc2_equinorm", "ncc_accuracy", "clf_accuracy", "margin_min")
)
EPOCHS = (1, 10, 100, 300)
SPLITS = ("train", "test")
LAYERS = ("stem", "layer1.0.relu", "avgpool")
EPOCH_PIXELS, DEPTH_PIXELS = panels.figure_pixels(9), panels.figure_pixels(7)
INT_COLUMNS = {
    schema.COL_EPOCH,
    schema.COL_LAYER_ORDER,
    schema.COL_N_SAMPLES,
    schema.COL_N_CLASSES,
    schema.COL_DIM,
    schema.COL_EFFECTIVE_DEPTH,
}
STR_COLUMNS = {schema.COL_FILE, schema.COL_SPLIT, schema.COL_MODEL, schema.COL_LAYER}
CLASSIFIER_ONLY = {
    column.name
    for column in schema.METRICS
    if column.applies_to == schema.CLASSIFIER_LAYER and column.family in ("nc3", "ncc", "w", "loss")
}
ALL_NULL = set(schema.MSE_METRICS) | set(schema.COSINE_METRICS) | {MARGIN_MIN}

runner = CliRunner()


def _row(split: str, epoch: int | None, order: int, layer: str) -> dict:
    """Plausible values: collapse grows with the epoch and the depth, test lags behind train."""
    strength = (1 + order) * (1 if epoch is None else epoch) * (1.0 if split == "train" else 0.3)
    row = {column: None for column in schema.SUMMARY_COLUMNS}
    row.update(
        {
            schema.COL_FILE: f"features/{split}_{epoch}.h5",
            schema.COL_SPLIT: split,
            schema.COL_EPOCH: epoch,
            schema.COL_MODEL: "resnet18",
            schema.COL_LAYER: layer,
            schema.COL_LAYER_ORDER: order,
            schema.COL_N_SAMPLES: 500,
            schema.COL_N_CLASSES: 10,
            schema.COL_DIM: 64,
            schema.COL_EFFECTIVE_DEPTH: 2,
        }
    )
    for number, metric in enumerate(schema.METRIC_COLUMNS):
        if metric in CLASSIFIER_ONLY and layer != LAYERS[-1]:
            row[metric] = float("nan")  # analyze writes undefined metrics as NaN, others may write null
        elif metric not in ALL_NULL:
            row[metric] = (1 + number) / strength
    accuracy = 1.0 if split == "train" and strength >= 30 else 1 - 0.5 / strength
    row[NCC_ACC] = accuracy
    if layer == LAYERS[-1]:
        row[CLF_ACC] = accuracy
    return row


def _write_report(path: Path, rows: list[dict], columns=schema.SUMMARY_COLUMNS) -> Path:
    def kind(column):
        return pa.int64() if column in INT_COLUMNS else pa.string() if column in STR_COLUMNS else pa.float64()

    table = pa.Table.from_pylist(rows, schema=pa.schema([(column, kind(column)) for column in columns]))
    pq.write_table(table, path)
    return path


@pytest.fixture
def report(tmp_path) -> Path:
    rows = [
        _row(split, epoch, order, layer) for split in SPLITS for epoch in EPOCHS for order, layer in enumerate(LAYERS)
    ]
    return _write_report(tmp_path / "report.parquet", rows)


def _png_pixels(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def _plot(*args: str):
    return runner.invoke(app, ["plot", *map(str, args)])


def _assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_default_figures_are_pngs_of_the_documented_size(report, tmp_path):
    out = tmp_path / "figures"
    result = _plot(report, "--out", out)
    assert result.exit_code == 0, result.output
    expected = [out / f"{plots.EPOCHS_FILE}.png"] + [out / f"{plots.DEPTH_FILE}_{split}.png" for split in SPLITS]
    assert result.stdout.split() == [str(path) for path in expected]
    assert sorted(out.iterdir()) == sorted(expected)  # no temporary files left behind
    for path in expected:
        assert path.stat().st_size > 10_000
        assert _png_pixels(path) == (EPOCH_PIXELS if path.stem == plots.EPOCHS_FILE else DEPTH_PIXELS)
    assert EPOCH_PIXELS == (1600, 1060) and DEPTH_PIXELS == (1600, 720)


@pytest.mark.parametrize(
    "kind, stems",
    [
        ("epochs", [plots.EPOCHS_FILE]),
        ("depth", [f"{plots.DEPTH_FILE}_{split}" for split in SPLITS]),
    ],
)
def test_each_kind_alone(report, tmp_path, kind, stems):
    result = _plot(report, "--out", tmp_path / "out", "--kind", kind)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(f"{stem}.png" for stem in stems)


def test_chosen_metrics_set_the_panels_and_the_size(report, tmp_path):
    out = tmp_path / "out"
    result = _plot(report, "--out", out, "--metrics", f"{NC1}, {EQUINORM}")
    assert result.exit_code == 0, result.output
    for path in out.iterdir():
        assert _png_pixels(path) == panels.figure_pixels(2) == (800, 380)


@pytest.mark.parametrize("fmt, magic", [("svg", b"<svg"), ("pdf", b"%PDF")])
def test_vector_formats(report, tmp_path, fmt, magic):
    out = tmp_path / "out"
    result = _plot(report, "--out", out, "--format", fmt, "--kind", "epochs")
    assert result.exit_code == 0, result.output
    path = out / f"{plots.EPOCHS_FILE}.{fmt}"
    assert list(out.iterdir()) == [path]
    assert magic in path.read_bytes()[:400] and path.stat().st_size > 5_000


def test_layer_option_follows_that_layer(report, tmp_path):
    result = _plot(report, "--out", tmp_path / "out", "--kind", "epochs", "--layer", LAYERS[1])
    assert result.exit_code == 0, result.output
    # Classifier-only metrics are null on that layer: skipped, and said so.
    assert f"warning: metric '{CLF_ACC}' is null" in result.stderr
    assert _png_pixels(tmp_path / "out" / f"{plots.EPOCHS_FILE}.png") == panels.figure_pixels(5)


def test_all_null_metric_is_skipped_with_a_warning(report, tmp_path):
    result = _plot(report, "--out", tmp_path / "out", "--kind", "epochs", "--metrics", f"{NC1},{MARGIN_MIN}")
    assert result.exit_code == 0, result.output
    assert f"warning: metric '{MARGIN_MIN}' is null on every row" in result.stderr
    assert _png_pixels(tmp_path / "out" / f"{plots.EPOCHS_FILE}.png") == panels.figure_pixels(1)


def test_only_null_metrics_is_an_error(report, tmp_path):
    result = _plot(report, "--out", tmp_path / "out", "--metrics", MARGIN_MIN)
    assert result.exit_code == 2
    assert "error: nothing to plot" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_report_without_epochs(tmp_path):
    rows = [_row(split, None, order, layer) for split in SPLITS for order, layer in enumerate(LAYERS)]
    report = _write_report(tmp_path / "no_epochs.parquet", rows)
    result = _plot(report, "--out", tmp_path / "a", "--kind", "epochs")
    _assert_user_error(result, "no epoch", str(report))
    assert not (tmp_path / "a").exists()
    # The default draws what it can: the depthwise profiles, one line per file.
    result = _plot(report, "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert f"warning: no epochs in '{report}'; drawing the depthwise figures only" in result.stderr
    assert sorted(path.name for path in (tmp_path / "b").iterdir()) == [
        f"{plots.DEPTH_FILE}_{split}.png" for split in sorted(SPLITS)
    ]


def test_report_of_one_epoch(tmp_path):
    """A figure over epochs of single points says nothing: the default draws the depthwise figures, and says so."""
    rows = [_row(split, 10, order, layer) for split in SPLITS for order, layer in enumerate(LAYERS)]
    report = _write_report(tmp_path / "one_epoch.parquet", rows)
    result = _plot(report, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"warning: one epoch (10) in '{report}'; drawing the depthwise figures only\n"
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == [
        f"{plots.DEPTH_FILE}_{split}.png" for split in sorted(SPLITS)
    ]
    result = _plot(report, "--out", tmp_path / "b", "--kind", "epochs")
    _assert_user_error(
        result, f"in '{report}' have one epoch (10), so nothing can be plotted over epochs", "--kind depth"
    )
    assert not (tmp_path / "b").exists()


def test_missing_report(tmp_path):
    _assert_user_error(
        _plot(tmp_path / "nope.parquet", "--out", tmp_path / "out"), "no such report file", "nope.parquet"
    )
    assert not (tmp_path / "out").exists()


def test_file_that_is_not_parquet(tmp_path):
    bogus = tmp_path / "report.parquet"
    bogus.write_text("file,layer\n")
    _assert_user_error(_plot(bogus, "--out", tmp_path / "out"), f"'{bogus}': not a Parquet file")
    assert not (tmp_path / "out").exists()


def test_parquet_that_is_not_a_report(tmp_path):
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), other)
    _assert_user_error(_plot(other, "--out", tmp_path / "out"), "is not an nccli report", repr(schema.COL_SPLIT))
    assert not (tmp_path / "out").exists()


def test_unknown_metric(report, tmp_path):
    _assert_user_error(_plot(report, "--out", tmp_path / "out", "--metrics", f"{NC1},nc9"), "unknown metric 'nc9'", NC1)
    assert not (tmp_path / "out").exists()


def test_unknown_layer(report, tmp_path):
    _assert_user_error(_plot(report, "--out", tmp_path / "out", "--layer", "fc"), "layer 'fc' not found", LAYERS[0])


def test_two_rows_for_one_point_is_an_error(report, tmp_path):
    rows = pq.read_table(report).to_pylist()
    twin = dict(rows[0], **{schema.COL_FILE: "features/copy.h5"})
    mixed = _write_report(tmp_path / "mixed.parquet", rows + [twin])
    _assert_user_error(_plot(mixed, "--out", tmp_path / "out", "--kind", "epochs", "--layer", LAYERS[0]), "two rows")


def test_library_returns_the_written_paths(report, tmp_path):
    paths = plots.plot_report(report, tmp_path / "lib", metrics=[NC1], fmt="svg", kind="depth")
    assert paths == [tmp_path / "lib" / f"{plots.DEPTH_FILE}_{split}.svg" for split in SPLITS]


def test_other_commands_do_not_import_matplotlib():
    code = "import sys, nccli.cli; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _figures(monkeypatch, report, tmp_path, **kwargs) -> list:
    """The matplotlib figures plot_report draws, instead of writing them."""
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda figure, path, fmt: drawn.append(figure) or path)
    plots.plot_report(report, tmp_path / "unused", **kwargs)
    return drawn


def _panel(figure, title: str):
    return next(ax for ax in figure.axes if ax.get_title() == title)


def test_nc2_panels_draw_the_classifier_rows_beside_the_class_means(report, tmp_path, monkeypatch):
    """Papyan et al. Figs. 2–4: each NC2 panel holds the class means' line and the classifier rows' line."""
    (figure,) = _figures(monkeypatch, report, tmp_path, kind="epochs")
    rows = [row for row in pq.read_table(report).to_pylist() if row[schema.COL_LAYER] == LAYERS[-1]]
    for shared in panels.SHARED_PANELS[1:4]:
        ax = _panel(figure, shared.title)
        labels = ax.get_legend_handles_labels()[1]
        for split in SPLITS:
            assert f"{split} class means" in labels and f"{split} classifier rows" in labels
        for line in ax.get_lines():
            split, _, name = line.get_label().partition(" ")
            if split not in SPLITS:
                continue  # the marker of the first zero-error epoch
            metric = shared.metrics[shared.names.index(name)]
            expected = sorted((row[schema.COL_EPOCH], row[metric]) for row in rows if row[schema.COL_SPLIT] == split)
            assert list(line.get_ydata()) == [value for _, value in expected]


def test_margin_and_loss_panels_over_epochs(report, tmp_path, monkeypatch):
    (figure,) = _figures(monkeypatch, report, tmp_path, kind="epochs")
    margin, ce_loss, ce_excess = (
        schema.METRIC_BY_NAME[name].name for name in ("margin_normalized", "ce_loss", "ce_excess")
    )
    assert _panel(figure, schema.METRIC_BY_NAME[margin].title).get_lines()
    loss = _panel(figure, panels.SHARED_PANELS[-1].title)
    assert panels.SHARED_PANELS[-1].metrics == (ce_loss, ce_excess)
    assert len([line for line in loss.get_lines() if line.get_label().startswith("train")]) == 2


def test_a_shared_panel_left_with_one_metric_takes_its_title(report, tmp_path, monkeypatch):
    """Off the classifier layer the classifier rows are null: the NC2 panels show the means alone."""
    with pytest.warns(Warning):
        (figure,) = _figures(monkeypatch, report, tmp_path, kind="epochs", layer=LAYERS[1])
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert schema.METRIC_BY_NAME[EQUINORM].title in titles
    assert panels.SHARED_PANELS[1].title not in titles
