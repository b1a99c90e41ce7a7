"""Figures from a report: neural-collapse metrics over epochs and through depth.

From the summary table that ``nccli analyze`` writes (``docs/report.md``):

``nc_over_epochs.<fmt>``
    One panel per metric, x = epoch, one line per split (per model and split
    when the report holds several models), at one layer: by default each
    file's classifier-input layer (its rows where ``clf_accuracy`` is set),
    else the layer given. With the default metrics this is the panel of
    Papyan, Han & Donoho (2020), Figs. 2–7: NC1, equinorm, equiangularity,
    max-angle (each with the classifier rows beside the class means, dashed,
    as Papyan et al. draw them), self-duality, NCC mismatch and the errors;
    then the normalised bias-free margin (seed ``002_*``) and the
    cross-entropy with its excess over the optimum for the same norms (seed
    ``003_*``). The first epoch with zero training error (the start of the
    terminal phase) is marked.
``nc_depth_<split>.<fmt>``
    One figure per split; one panel per metric, x = the layers in forward
    order (``layer_order``) named on the ticks, one line per feature file
    coloured by its epoch.

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
    epoch_axis,
    figure_pixels,
    layer_axis,
    live_panels,
    metric_values,
    panels_for,
    style_panel,
)
from nccli.report.plotted_rows import classifier_input_rows, read_report, zero_error_epoch
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


def plot_report(
    report_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    metrics: list[str] | tuple[str, ...] | None = None,
    fmt: str = "png",
    layer: str | None = None,
    kind: str = "all",
) -> list[Path]:
    """Draw the figures of ``kind`` (``all``, ``epochs`` or ``depth``) for a report into ``out_dir``.

    ``metrics`` are report columns (default: :data:`EPOCH_METRICS` over epochs,
    :data:`DEPTH_METRICS` through depth); ``layer`` is the layer followed over
    epochs (default: the classifier's input). Each file is written to a
    temporary name and renamed, so it appears whole. Returns the paths written.
    """
    report_path, out_dir = Path(report_path), Path(out_dir)
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
    rows = read_report(report_path)
    has_epochs = any(row[COL_EPOCH] is not None for row in rows)
    figures = []
    if kind == "epochs" or (kind == "all" and has_epochs):
        figures += _epoch_figures(rows, report_path, metrics or EPOCH_METRICS, layer)
    elif kind == "all":
        warn_caller(DegenerateMetricWarning(f"'{report_path}' has no epochs; drawing the depthwise figures only"))
    if kind in ("all", "depth"):
        figures += _depth_figures(rows, report_path, metrics or DEPTH_METRICS)
    if not figures:
        raise UsageError(f"nothing to plot: every requested metric is null in '{report_path}'")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the output directory '{out_dir}': {error.strerror}") from None
    return [_save(figure, out_dir / f"{stem}.{fmt}", fmt) for stem, figure in figures]


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        raise UsageError("plotting needs matplotlib; install it with: pip install 'nccli[plot]'") from None


def _epoch_figures(rows, report: Path, metrics, layer: str | None) -> list[tuple[str, object]]:
    if layer is not None:
        chosen = [row for row in rows if row[COL_LAYER] == layer]
        if not chosen:
            names = ", ".join(dict.fromkeys(row[COL_LAYER] for row in rows))
            raise UsageError(f"layer '{layer}' not found in '{report}'; layers are: {names}")
        where = f"of layer '{layer}'"
    else:
        chosen = classifier_input_rows(rows, report)
        where = f"of the classifier input ({', '.join(repr(n) for n in dict.fromkeys(r[COL_LAYER] for r in chosen))})"
    timed = [row for row in chosen if row[COL_EPOCH] is not None]
    if not timed:
        raise UsageError(
            f"'{report}' has no epoch on the rows {where} (column '{COL_EPOCH}' is null), so nothing "
            "can be plotted over epochs; extract each checkpoint with its epoch, or plot --kind depth"
        )
    if len(timed) < len(chosen):
        warn_caller(
            DegenerateMetricWarning(
                f"{len(chosen) - len(timed)} row(s) {where} have no epoch and are left out of the over-epochs figure"
            )
        )
    lines = defaultdict(dict)  # (model, split) -> epoch -> row
    for row in timed:
        line = lines[(row[COL_MODEL], row[COL_SPLIT])]
        if row[COL_EPOCH] in line:
            files = f"'{line[row[COL_EPOCH]][COL_FILE]}', '{row[COL_FILE]}'"
            raise UsageError(
                f"'{report}' has two rows for split '{row[COL_SPLIT]}', epoch {row[COL_EPOCH]} {where} "
                f"(files {files}); plot one run per report"
            )
        line[row[COL_EPOCH]] = row
    panels = live_panels(panels_for(tuple(metrics)), timed, where, report)
    if not panels:
        return []
    several_models = len({model for model, _ in lines}) > 1
    keys = sorted(lines, key=lambda key: (str(key[0]), key[1] != DEFAULT_SPLIT, str(key[1])))
    epochs = sorted({row[COL_EPOCH] for row in timed})
    onset = zero_error_epoch(rows) if not several_models else None
    figure, axes, _ = _figure(
        len(panels), f"Neural collapse over training, {where.removeprefix('of ')} — {report.name}"
    )
    for index, (ax, panel) in enumerate(zip(axes, panels)):
        plotted = []
        for color, key in enumerate(keys):
            line_rows = [lines[key][epoch] for epoch in sorted(lines[key])]
            label = f"{key[0]} · {key[1]}" if several_models else str(key[1])
            for style, metric in enumerate(panel.metrics):
                y = metric_values(line_rows, metric, panel.error)
                name = f"{label} {LEGEND_NAMES[metric]}" if len(panel.metrics) > 1 else label
                ax.plot(
                    sorted(lines[key]),
                    y,
                    color=f"C{color}",
                    marker="os^"[style % 3],
                    linestyle=("-", "--")[style % 2],
                    markersize=4,
                    linewidth=1.4,
                    label=name,
                )
                plotted.append(y)
        if onset is not None:
            ax.axvline(onset, color="0.5", linestyle=":", linewidth=1, label="zero train error")
        style_panel(ax, panel, np.concatenate(plotted))
        epoch_axis(ax, epochs)
        if index == 0 or len(panel.metrics) > 1:
            ax.legend(fontsize=7)
    return [(EPOCHS_FILE, figure)]


def _depth_figures(rows, report: Path, metrics) -> list[tuple[str, object]]:
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
        panels = live_panels(panels_for(tuple(metrics)), split_rows, f"of split '{split}'", report)
        if not panels:
            continue
        layers = {}  # order -> names
        for row in sorted(split_rows, key=lambda row: row[COL_LAYER_ORDER]):
            layers.setdefault(row[COL_LAYER_ORDER], {})[row[COL_LAYER]] = None
        position = {order: index for index, order in enumerate(layers)}
        files = defaultdict(list)
        for row in split_rows:
            files[row[COL_FILE]].append(row)
        ordered = sorted(files, key=lambda f: (files[f][0][COL_EPOCH] is None, files[f][0][COL_EPOCH] or 0, f))
        figure, axes, spare = _figure(len(panels), f"Neural collapse through depth, split '{split}' — {report.name}")
        for ax, panel in zip(axes, panels):
            plotted = []
            for number, file in enumerate(ordered):
                file_rows = sorted(files[file], key=lambda row: row[COL_LAYER_ORDER])
                epoch = file_rows[0][COL_EPOCH]
                x = [position[row[COL_LAYER_ORDER]] for row in file_rows]
                for style, metric in enumerate(panel.metrics):
                    y = metric_values(file_rows, metric, panel.error)
                    color = colormap(norm(epoch)) if epoch is not None else (f"C{number % 10}" if not epochs else "0.5")
                    label = (f"{Path(file).name}" if epoch is None else None) if style == 0 else None
                    ax.plot(
                        x,
                        y,
                        color=color,
                        marker="os^"[style % 3],
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
                        marker="os^"[style % 3],
                        linestyle=("-", "--")[style % 2],
                        label=LEGEND_NAMES[metric],
                    )
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
