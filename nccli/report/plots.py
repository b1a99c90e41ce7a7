"""Figures from reports: neural-collapse metrics over epochs and through depth.

From the summary tables that ``nccli analyze`` writes (``docs/report.md``),
one report or several drawn together (the train and test reports of a run,
or several runs):

``nc_over_epochs.<fmt>``
    One panel per metric, x = epoch, one line per split (per model and split
    when the reports hold several models; per report, model and split when two
    reports hold the same split), at one layer: by default each
    file's classifier-input layer (its rows where ``clf_accuracy`` is set),
    else the layer given. With the default metrics this is the panel of
    Papyan, Han & Donoho (2020), Figs. 2–7: NC1, equinorm, equiangularity,
    max-angle (each with the classifier rows beside the class means, dashed,
    as Papyan et al. draw them), self-duality, NCC mismatch and the errors;
    then the normalised bias-free margin (seed ``002_*``) and the
    cross-entropy with its excess over the optimum for the same norms (seed
    ``003_*``). The first epoch with zero training error (the start of the
    terminal phase) is marked when one run holds the train split. A line that
    coincides with one drawn before it (the classifier rows of the train and
    test splits of a checkpoint: the same W) is drawn over it with open
    markers and gaps, so that both show. Drawn from two epochs on.
``nc_depth_<split>.<fmt>``
    One figure per split; one panel per metric, x = the layers in forward
    order (``layer_order``) named on the ticks, one line per feature file
    coloured by its epoch; a marker per report when the split comes from
    several.

Only the columns the panels need are read, after the footer's checks
(:func:`nccli.report.plotted_rows.read_report`).

Y axes are logarithmic where a panel's values are positive (collapse is a
decay over decades), symlog where it holds exact zeros (a zero error stays
visible), linear where a metric can be negative (cosines, margins).
Accuracies are drawn as errors, 1 − accuracy. Metrics that are null on every
row a figure uses are skipped with a :class:`DegenerateMetricWarning`.

Metrics drawn together share a panel (:data:`nccli.report.panels.SHARED_PANELS`): the errors;
each NC2 quantity of the class means with the classifier rows'; the
cross-entropy and its excess. Every panel is 4.0 × 3.4 inches at 100 dpi, at
most 4 to a row, plus 0.4 inches for the title: the default figure over
epochs has 9 panels (1600 × 1060 pixels), the one through depth 7
(1600 × 720).

matplotlib (the ``plot`` extra) is imported by this module and :mod:`nccli.report.panels` only, and only
through the Agg canvas: no pyplot, no change to a caller's backend.
"""

import math
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nccli.errors import DegenerateMetricWarning, OutputError, UsageError, warn_caller
from nccli.io.publish import publish
from nccli.report.panels import (
    DEPTH_METRICS,
    DPI,
    EPOCH_METRICS,
    LEGEND_NAMES,
    MAX_COLUMNS,
    coincide,
    epoch_axis,
    figure_pixels,
    layer_axis,
    line_labels,
    line_style,
    live_panels,
    metric_values,
    panels_for,
    style_panel,
)
from nccli.report.plotted_rows import SOURCE, classifier_input_rows, read_reports, report_names, zero_error_epoch
from nccli.schema import (
    COL_EPOCH,
    COL_FILE,
    COL_LAYER,
    COL_LAYER_ORDER,
    COL_MODEL,
    COL_SPLIT,
    DEFAULT_SPLIT,
    METRIC_COLUMNS,
)

FORMATS = ("png", "svg", "pdf")
KINDS = ("all", "epochs", "depth")
EPOCHS_FILE = "nc_over_epochs"
DEPTH_FILE = "nc_depth"
REPORT_MARKERS = "os^Dv<>"


def plot_report(
    reports: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    metrics: list[str] | tuple[str, ...] | None = None,
    fmt: str = "png",
    layer: str | None = None,
    kind: str = "all",
) -> list[Path]:
    """Draw the figures of ``kind`` (``all``, ``epochs`` or ``depth``) for one report or several, their rows
    together, into ``out_dir``.

    ``metrics`` are report columns (default: :data:`EPOCH_METRICS` over epochs,
    :data:`DEPTH_METRICS` through depth); ``layer`` is the layer followed over
    epochs (default: the classifier's input). Each file is written to a
    temporary name and renamed, so it appears whole. Returns the paths written.
    """
    paths = [Path(reports)] if isinstance(reports, (str, os.PathLike)) else [Path(path) for path in reports]
    out_dir = Path(out_dir)
    if not paths:
        raise UsageError("no report given; give the Parquet file(s) written by `nccli analyze --out`")
    if fmt not in FORMATS:
        raise UsageError(f"unknown figure format '{fmt}'; formats are: {', '.join(FORMATS)}")
    if kind not in KINDS:
        raise UsageError(f"unknown figure kind '{kind}'; kinds are: {', '.join(KINDS)}")
    if metrics is not None:
        metrics = tuple(dict.fromkeys(m.strip() for m in metrics if m.strip()))
        unknown = [m for m in metrics if m not in METRIC_COLUMNS]
        if unknown or not metrics:
            found = f"unknown metric '{unknown[0]}'" if unknown else "no metric given"
            raise UsageError(f"{found}; metrics are: {', '.join(METRIC_COLUMNS)}")
    _require_matplotlib()
    over_epochs, through_depth = metrics or EPOCH_METRICS, metrics or DEPTH_METRICS
    needed = (over_epochs if kind != "depth" else ()) + (through_depth if kind != "epochs" else ())
    rows = read_reports(paths, tuple(dict.fromkeys(needed)))
    reports = _Reports(paths, report_names(paths), ", ".join(f"'{path}'" for path in paths))
    epochs = sorted({row[COL_EPOCH] for row in rows if row[COL_EPOCH] is not None})
    figures = []
    if kind == "epochs" or (kind == "all" and len(epochs) > 1):
        figures += _epoch_figures(rows, reports, over_epochs, layer)
    elif kind == "all":
        found = f"one epoch ({epochs[0]})" if epochs else "no epochs"
        warn_caller(DegenerateMetricWarning(f"{found} in {reports.quoted}; drawing the depthwise figures only"))
    if kind in ("all", "depth"):
        figures += _depth_figures(rows, reports, through_depth)
    if not figures:
        raise UsageError(f"nothing to plot: every requested metric is null in {reports.quoted}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the output directory '{out_dir}': {error.strerror}") from None
    return [_save(figure, out_dir / f"{stem}.{fmt}", fmt) for stem, figure in figures]


@dataclass(frozen=True)
class _Reports:
    """The reports drawn: their paths, their names in titles and legends, and how messages quote them."""

    paths: list[Path]
    names: list[str]
    quoted: str


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        raise UsageError("plotting needs matplotlib; install it with: pip install 'nccli[plot]'") from None


def _epoch_figures(rows, reports: _Reports, metrics, layer: str | None) -> list[tuple[str, object]]:
    if layer is not None:
        chosen = [row for row in rows if row[COL_LAYER] == layer]
        for source, path in enumerate(reports.paths):
            if not any(row[SOURCE] == source for row in chosen):
                names = ", ".join(dict.fromkeys(row[COL_LAYER] for row in rows if row[SOURCE] == source))
                raise UsageError(f"layer '{layer}' not found in '{path}'; layers are: {names}")
        where = f"of layer '{layer}'"
    else:
        chosen = classifier_input_rows(rows, reports.quoted)
        where = f"of the classifier input ({', '.join(repr(n) for n in dict.fromkeys(r[COL_LAYER] for r in chosen))})"
    timed = [row for row in chosen if row[COL_EPOCH] is not None]
    epochs = sorted({row[COL_EPOCH] for row in timed})
    if len(epochs) < 2:
        found, fix = (
            (f"one epoch ({epochs[0]})", "plot the reports of several checkpoints")
            if epochs
            else (f"no epoch (column '{COL_EPOCH}' is null)", "extract each checkpoint with its epoch")
        )
        raise UsageError(
            f"the rows {where} in {reports.quoted} have {found}, so nothing can be plotted over epochs; {fix}, "
            "or plot --kind depth"
        )
    if len(timed) < len(chosen):
        warn_caller(
            DegenerateMetricWarning(
                f"{len(chosen) - len(timed)} row(s) {where} have no epoch and are left out of the over-epochs figure"
            )
        )
    lines = defaultdict(dict)  # (report, model, split) -> epoch -> row
    for row in timed:
        line = lines[(row[SOURCE], row[COL_MODEL], row[COL_SPLIT])]
        if row[COL_EPOCH] in line:
            files = f"'{line[row[COL_EPOCH]][COL_FILE]}', '{row[COL_FILE]}'"
            raise UsageError(
                f"'{reports.paths[row[SOURCE]]}' has two rows for split '{row[COL_SPLIT]}', epoch {row[COL_EPOCH]} "
                f"{where} (files {files}); plot one run per report"
            )
        line[row[COL_EPOCH]] = row
    panels = live_panels(panels_for(tuple(metrics)), timed, where, reports.quoted)
    if not panels:
        return []
    keys = sorted(lines, key=lambda key: (str(key[1]), key[0], key[2] != DEFAULT_SPLIT, str(key[2])))
    label = line_labels(keys, reports.names)
    trains = {(row[SOURCE], row[COL_MODEL]) for row in rows if row[COL_SPLIT] == DEFAULT_SPLIT}
    onset = zero_error_epoch(rows) if len(trains) == 1 else None  # the terminal phase of one run
    figure, axes, _ = _figure(
        len(panels), f"Neural collapse over training, {where.removeprefix('of ')} — {', '.join(reports.names)}"
    )
    for index, (ax, panel) in enumerate(zip(axes, panels)):
        plotted, drawn = [], []
        for color, key in enumerate(keys):
            x = sorted(lines[key])
            line_rows = [lines[key][epoch] for epoch in x]
            for style, metric in enumerate(panel.metrics):
                y = metric_values(line_rows, metric, panel.error)
                under = sum(coincide(x, y, *other) for other in drawn)
                name = f"{label[key]} {LEGEND_NAMES[metric]}" if len(panel.metrics) > 1 else label[key]
                ax.plot(x, y, color=f"C{color}", label=name, **line_style(style, under))
                plotted.append(y)
                drawn.append((x, y))
        if onset is not None:
            ax.axvline(onset, color="0.5", linestyle=":", linewidth=1, label="zero train error")
        style_panel(ax, panel, np.concatenate(plotted))
        epoch_axis(ax, epochs)
        if index == 0 or len(panel.metrics) > 1:
            ax.legend(fontsize=7)
    return [(EPOCHS_FILE, figure)]


def _depth_figures(rows, reports: _Reports, metrics) -> list[tuple[str, object]]:
    from matplotlib import cm, colors

    epochs = sorted({row[COL_EPOCH] for row in rows if row[COL_EPOCH] is not None})
    if epochs and epochs[0] > 0 and epochs[-1] >= 10 * epochs[0]:
        norm = colors.LogNorm(epochs[0], epochs[-1])  # checkpoints are usually spread geometrically
    elif epochs:
        norm = colors.Normalize(epochs[0] - 0.5, epochs[-1] + 0.5)
    colormap = cm.viridis
    figures = []
    splits = sorted({row[COL_SPLIT] for row in rows}, key=lambda split: (split != DEFAULT_SPLIT, str(split)))
    for split in splits:
        split_rows = [row for row in rows if row[COL_SPLIT] == split]
        panels = live_panels(panels_for(tuple(metrics)), split_rows, f"of split '{split}'", reports.quoted)
        if not panels:
            continue
        sources = sorted({row[SOURCE] for row in split_rows})
        # Several reports of one split: a marker per report (the colour is the epoch), a line style per metric.
        marks = {source: REPORT_MARKERS[n % len(REPORT_MARKERS)] for n, source in enumerate(sources)}
        several = len(sources) > 1
        layers = {}  # order -> names
        for row in sorted(split_rows, key=lambda row: row[COL_LAYER_ORDER]):
            layers.setdefault(row[COL_LAYER_ORDER], {})[row[COL_LAYER]] = None
        position = {order: index for index, order in enumerate(layers)}
        files = defaultdict(list)  # (report, file) -> rows
        for row in split_rows:
            files[(row[SOURCE], row[COL_FILE])].append(row)
        ordered = sorted(files, key=lambda f: (files[f][0][COL_EPOCH] is None, files[f][0][COL_EPOCH] or 0, f))
        shown = ", ".join(reports.names[source] for source in sources)
        figure, axes, spare = _figure(len(panels), f"Neural collapse through depth, split '{split}' — {shown}")
        for ax, panel in zip(axes, panels):
            plotted = []
            for number, (source, file) in enumerate(ordered):
                file_rows = sorted(files[(source, file)], key=lambda row: row[COL_LAYER_ORDER])
                epoch = file_rows[0][COL_EPOCH]
                x = [position[row[COL_LAYER_ORDER]] for row in file_rows]
                for style, metric in enumerate(panel.metrics):
                    y = metric_values(file_rows, metric, panel.error)
                    color = colormap(norm(epoch)) if epoch is not None else (f"C{number % 10}" if not epochs else "0.5")
                    name = f"{reports.names[source]}: {Path(file).name}" if several else Path(file).name
                    label = name if epoch is None and style == 0 else None
                    ax.plot(
                        x,
                        y,
                        color=color,
                        marker=marks[source] if several else "os^"[style % 3],
                        linestyle=("-", "--")[style % 2],
                        markersize=3.5,
                        linewidth=1.3,
                        label=label,
                    )
                    plotted.append(y)
            style_panel(ax, panel, np.concatenate(plotted))
            layer_axis(ax, [" / ".join(names) for names in layers.values()])
            if len(panel.metrics) > 1:
                for style, metric in enumerate(panel.metrics):
                    ax.plot(
                        [],
                        [],
                        color="0.3",
                        marker=None if several else "os^"[style % 3],
                        linestyle=("-", "--")[style % 2],
                        label=LEGEND_NAMES[metric],
                    )
            if several and ax is axes[0]:
                for source in sources:
                    ax.plot([], [], color="0.3", marker=marks[source], linestyle="none", label=reports.names[source])
            if ax.get_legend_handles_labels()[0] and (len(panel.metrics) > 1 or ax is axes[0]):
                ax.legend(fontsize=7)
        if epochs:
            # In the empty grid slot when there is one, else beside the panels.
            where = {"cax": spare[0].inset_axes((0.1, 0.1, 0.07, 0.8))} if spare else {"ax": axes, "shrink": 0.9}
            bar = figure.colorbar(
                cm.ScalarMappable(norm=norm, cmap=colormap), **where, ticks=epochs if len(epochs) <= 12 else None
            )
            bar.set_label("epoch of the checkpoint", fontsize=8)
            bar.ax.tick_params(labelsize=7)
            if len(epochs) <= 12:
                bar.ax.set_yticklabels([str(epoch) for epoch in epochs])
                bar.ax.minorticks_off()
        figures.append((f"{DEPTH_FILE}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(split))}", figure))
    return figures


def _figure(n_panels: int, title: str):
    from matplotlib.figure import Figure

    width, height = figure_pixels(n_panels)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    columns = min(MAX_COLUMNS, n_panels)
    grid = figure.subplots(math.ceil(n_panels / columns), columns, squeeze=False).ravel()
    for spare in grid[n_panels:]:
        spare.set_axis_off()  # kept as room for a colorbar
    figure.suptitle(title, fontsize=11)
    return figure, list(grid[:n_panels]), list(grid[n_panels:])


def _save(figure, path: Path, fmt: str) -> Path:
    """Write the figure to ``path`` atomically (:func:`nccli.io.publish.publish`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with publish(path) as temporary, open(temporary, "wb") as handle:
        figure.savefig(handle, format=fmt, dpi=DPI)
    return path
