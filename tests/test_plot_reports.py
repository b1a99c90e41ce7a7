"""``nccli plot`` of several reports (a run's train and test reports, several runs), the classifier rows of both
splits, the columns read and the footer checked before any row; reports written by ``analyze`` itself."""

import os

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from cli_helpers import assert_user_error, invoke  # noqa: E402
from h5files import good_file  # noqa: E402

from nccli import schema  # noqa: E402
from nccli.analyze.analysis import AnalyzeConfig, analyze_features  # noqa: E402
from nccli.analyze.outputs import write_report  # noqa: E402
from nccli.errors import UsageError  # noqa: E402
from nccli.report import panels, plots  # noqa: E402
from nccli.report.plotted_rows import KEYS, ROWS_MAX  # noqa: E402

EPOCHS = (1, 3, 10)
SPLITS = ("train", "test")
NC1, CLF_ACC = schema.METRIC_BY_NAME["nc1"].name, schema.METRIC_BY_NAME["clf_accuracy"].name
NC2_PANELS = panels.SHARED_PANELS[1:4]  # each: the class means' metric, then the classifier rows'


def analyzed(files: list[str], out: str, **config) -> None:
    write_report(analyze_features(AnalyzeConfig(files=tuple(files), device="cpu", **config)), out, "nccli analyze")


def write_run(folder, monkeypatch, seed: int = 0, together: bool = False) -> list:
    """A run as the README's workflow writes it, in ``folder``: per epoch a train and a test file of one checkpoint
    (one classifier W), named relative to the folder; train.parquet and test.parquet (the test files with the train
    means of their epoch), or one report of both (``together``). The paths of the reports."""
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    files = {split: [f"features/{split}/epoch_{epoch}.h5" for epoch in EPOCHS] for split in SPLITS}
    for number, epoch in enumerate(EPOCHS):
        weight = np.random.default_rng([seed, epoch]).normal(size=(4, 5)) * epoch
        for offset, split in enumerate(SPLITS):
            os.makedirs(f"features/{split}", exist_ok=True)
            path = files[split][number]
            good_file(path, seed=seed * 100 + 2 * number + offset, split=split, epoch=epoch, model="m", weight=weight)
    if together:
        analyzed(files["train"] + files["test"], "report.parquet", means_from="features/train")
        return [folder / "report.parquet"]
    analyzed(files["train"], "train.parquet")
    analyzed(files["test"], "test.parquet", means_from="features/train")
    return [folder / "train.parquet", folder / "test.parquet"]


def figures(monkeypatch, reports, tmp_path, **kwargs) -> list:
    """The matplotlib figures plot_report draws, instead of writing them."""
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda figure, path, fmt: drawn.append(figure) or path)
    plots.plot_report(reports, tmp_path / "unused", **kwargs)
    return drawn


def lines_of(figure) -> list[list[tuple]]:
    """Per panel, each line's label and data."""
    return [
        [(line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()]
        for ax in figure.axes
    ]


def panel(figure, title: str):
    return next(ax for ax in figure.axes if ax.get_title() == title)


def classifier_rows(report) -> list[dict]:
    return sorted(
        (row for row in pq.read_table(report).to_pylist() if row[CLF_ACC] is not None),
        key=lambda row: row[schema.COL_EPOCH],
    )


def test_the_train_and_test_reports_of_a_run_draw_what_one_report_of_both_draws(tmp_path, monkeypatch):
    apart = write_run(tmp_path / "apart", monkeypatch)
    together = write_run(tmp_path / "together", monkeypatch, together=True)
    out = tmp_path / "figures"
    result = invoke("plot", *apart, "--out", out)
    assert result.exit_code == 0, result.output
    names = [f"{plots.EPOCHS_FILE}.png", *(f"{plots.DEPTH_FILE}_{split}.png" for split in SPLITS)]
    assert result.stdout.split() == [str(out / name) for name in names]
    assert sorted(path.name for path in out.iterdir()) == sorted(names)

    drawn_apart = figures(monkeypatch, apart, tmp_path)
    drawn_together = figures(monkeypatch, together, tmp_path)
    assert len(drawn_apart) == len(drawn_together) == 3  # over epochs, then through depth per split
    for one, other in zip(drawn_apart, drawn_together):
        assert lines_of(one) == lines_of(other)
    assert "— train.parquet, test.parquet" in drawn_apart[0].texts[0].get_text()
    labels = panel(drawn_apart[0], schema.METRIC_BY_NAME[NC1].title).get_legend_handles_labels()[1]
    assert labels == ["train", "test"]  # the splits tell the two reports apart


def test_the_classifier_rows_of_both_splits_show(tmp_path, monkeypatch):
    """A checkpoint's W is the same for its train and test rows: the test line, drawn over the train line, has
    larger open markers and gaps, on top, so that the train line shows through it."""
    train, test = write_run(tmp_path / "run", monkeypatch)
    (figure,) = figures(monkeypatch, [train, test], tmp_path, kind="epochs")
    for shared in NC2_PANELS:
        lines = {line.get_label(): line for line in panel(figure, shared.title).get_lines()}
        below, above = lines["train classifier rows"], lines["test classifier rows"]
        expected = [row[shared.metrics[1]] for row in classifier_rows(train)]
        assert list(below.get_ydata()) == list(above.get_ydata()) == expected
        assert [row[shared.metrics[1]] for row in classifier_rows(test)] == expected
        assert below.get_markerfacecolor() != "none" and above.get_markerfacecolor() == "none"
        assert above.get_markersize() > below.get_markersize() and above.get_zorder() > below.get_zorder()
        assert lines["test class means"].get_markerfacecolor() != "none"  # lines that differ keep their style

    # Drawn: the train line's colour (C0) shows in the panel beside the test line's (C1).
    from matplotlib import colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    w_equinorm = NC2_PANELS[0].metrics[1]
    (figure,) = figures(monkeypatch, [train, test], tmp_path, kind="epochs", metrics=[w_equinorm])
    ax = figure.axes[0]
    ax.get_legend().remove()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    x0, y0, x1, y1 = (round(v) for v in ax.get_window_extent().extents)
    pixels = np.asarray(canvas.buffer_rgba())[canvas.get_width_height()[1] - y1 : -y0 or None, x0:x1, :3]
    for color in ("C0", "C1"):
        rgb = np.array(colors.to_rgb(color)) * 255
        assert (np.abs(pixels - rgb).max(axis=-1) < 40).sum() > 100, color


def test_several_runs_draw_a_line_per_report(tmp_path, monkeypatch):
    """Two runs whose files have the same (relative) names: their lines stay apart, named by their reports."""
    first = write_run(tmp_path / "a", monkeypatch, seed=1)
    second = write_run(tmp_path / "b", monkeypatch, seed=2)
    monkeypatch.chdir(tmp_path)
    result = invoke("plot", "*/train.parquet", "--out", "figures", "--kind", "epochs")  # a quoted glob
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [f"figures/{plots.EPOCHS_FILE}.png"]
    assert (tmp_path / "figures" / f"{plots.EPOCHS_FILE}.png").stat().st_size > 10_000

    reports = [first[0], second[0], first[1]]
    over_epochs, depth_train, depth_test = figures(monkeypatch, reports, tmp_path)
    assert "— a/train.parquet, b/train.parquet, a/test.parquet" in over_epochs.texts[0].get_text()
    nc1 = {
        line.get_label(): list(line.get_ydata())
        for line in panel(over_epochs, schema.METRIC_BY_NAME[NC1].title).get_lines()
    }
    assert nc1 == {
        f"{name} · {split}": [row[NC1] for row in classifier_rows(report)]
        for name, split, report in zip(
            ("a/train.parquet", "b/train.parquet", "a/test.parquet"), ("train", "train", "test"), reports
        )
    }  # and no zero-train-error line: the runs would have one each
    for ax in depth_train.axes[: len(panels.DEPTH_METRICS)]:
        drawn = [line for line in ax.get_lines() if len(line.get_xdata())]
        assert len(drawn) == 2 * len(EPOCHS)  # a line per file of each run
        assert {line.get_marker() for line in drawn} == {"o", "s"}  # a marker per report
    assert depth_train.axes[0].get_legend_handles_labels()[1] == ["a/train.parquet", "b/train.parquet"]
    assert "— a/test.parquet" in depth_test.texts[0].get_text()


@pytest.fixture
def run(tmp_path, monkeypatch) -> list:
    return write_run(tmp_path / "run", monkeypatch)


def other_layers(tmp_path) -> str:
    conv = np.random.default_rng(0).normal(size=(40, 3)) + np.arange(40)[:, None] % 4
    good_file(tmp_path / "other.h5", layers={"conv": conv}, weight=None, classifier_layer=None)
    analyzed([str(tmp_path / "other.h5")], str(tmp_path / "other.parquet"))
    return str(tmp_path / "other.parquet")


def not_a_report(tmp_path) -> str:
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "table.parquet")
    return str(tmp_path / "table.parquet")


def retyped(report, column: str) -> str:
    """The report with ``column`` written as strings (a table another tool changed)."""
    table = pq.read_table(report)
    index = table.column_names.index(column)
    strings = pa.array([None if value is None else str(value) for value in table.column(column).to_pylist()])
    pq.write_table(table.set_column(index, column, strings), report.parent / f"{column}-as-text.parquet")
    return str(report.parent / f"{column}-as-text.parquet")


REFUSED = {
    "metric values as text": (lambda run, tmp: [retyped(run[0], "nc1")], ["column 'nc1' holds string, not double"]),
    "epochs as text": (lambda run, tmp: [retyped(run[0], "epoch")], ["column 'epoch' holds string, not int64"]),
    "a report twice": (lambda run, tmp: [run[0], run[1], run[0]], ["is given twice; give each report once"]),
    "a report twice, spelled otherwise": (
        lambda run, tmp: [run[0], run[0].parent / ".." / run[0].parent.name / run[0].name],
        ["is given twice (first as '"],
    ),
    "a table that is not a report": (
        lambda run, tmp: [run[0], not_a_report(tmp)],
        ["table.parquet' is not an nccli report"],
    ),
    "the layer missing in one": (
        lambda run, tmp: [run[0], other_layers(tmp), "--layer", "fc_in"],
        ["layer 'fc_in' not found in '", "other.parquet'; layers are: conv"],
    ),
    "a glob of no report": (
        lambda run, tmp: [run[0], tmp / "nothing*.parquet"],
        ["report pattern '", "matches no file"],
    ),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_what_cannot_be_drawn_together_is_refused_in_one_line(run, tmp_path, case):
    arguments, fragments = REFUSED[case]
    assert_user_error(invoke("plot", *arguments(run, tmp_path), "--out", tmp_path / "out"), *fragments)
    assert not (tmp_path / "out").exists()


def test_the_library_takes_one_report_or_several_and_refuses_none(run, tmp_path):
    assert plots.plot_report(run[0], tmp_path / "one", kind="depth") == [tmp_path / "one" / "nc_depth_train.png"]
    assert plots.plot_report(run, tmp_path / "two", kind="depth") == [
        tmp_path / "two" / f"{plots.DEPTH_FILE}_{split}.png" for split in SPLITS
    ]
    with pytest.raises(UsageError, match="no report given"):
        plots.plot_report([], tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_only_the_columns_the_panels_need_are_read(run, tmp_path, monkeypatch):
    read, columns = pq.read_table, []
    monkeypatch.setattr(
        pq, "read_table", lambda path, **kwargs: columns.append(kwargs["columns"]) or read(path, **kwargs)
    )
    assert invoke("plot", *run, "--out", tmp_path / "a", "--kind", "depth", "--metrics", NC1).exit_code == 0
    assert columns == [[*KEYS, schema.COL_MODEL, CLF_ACC, NC1]] * 2
    columns.clear()
    assert invoke("plot", *run, "--out", tmp_path / "b").exit_code == 0
    expected = {*KEYS, schema.COL_MODEL, *panels.EPOCH_METRICS, *panels.DEPTH_METRICS}
    assert [set(read) for read in columns] == [expected] * 2  # of the report's many columns


def test_a_small_file_declaring_millions_of_rows_is_refused_before_any_row_is_read(tmp_path, monkeypatch):
    rows = 2_000_000
    same = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)), pa.array(["x"]))
    columns = {column: same for column in KEYS if column not in (schema.COL_EPOCH, schema.COL_LAYER_ORDER)}
    columns |= {
        schema.COL_EPOCH: pa.array(np.ones(rows, dtype=np.int64)),
        schema.COL_LAYER_ORDER: pa.array(np.zeros(rows, dtype=np.int64)),
    }
    huge = tmp_path / "huge.parquet"
    pq.write_table(pa.table({**columns, NC1: pa.nulls(rows, pa.float64())}), huge)
    assert huge.stat().st_size < 100_000
    monkeypatch.setattr(pq, "read_table", lambda *args, **kwargs: pytest.fail("rows were read"))
    result = invoke("plot", huge, "--out", tmp_path / "out")
    assert_user_error(result, f"'{huge}' declares {rows} rows, more than the {ROWS_MAX} read here", "DuckDB")
    assert not (tmp_path / "out").exists()
