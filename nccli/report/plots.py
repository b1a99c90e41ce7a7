"""Figures from a report: neural-collapse metrics over epochs and through depth.

From the summary table that ``nccli analyze`` writes (``report.md``):

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

Metrics drawn together share a panel (:data:`SHARED_PANELS`): the errors;
each NC2 quantity of the class means with the classifier rows'; the
cross-entropy and its excess. Every panel is 4.0 × 3.4 inches at 100 dpi, at
most 4 to a row, plus 0.4 inches for the title: the default figure over
epochs has 9 panels (1600 × 1060 pixels), the one through depth 7
(1600 × 720).

matplotlib (the ``plot`` extra) is imported by this module only, and only
through the Agg canvas: no pyplot, no change to a caller's backend.
"""

import math
import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nccli.errors import DegenerateMetricWarning, OutputError, UsageError
from nccli.schema import (
    COL_EPOCH,
    COL_FILE,
    COL_LAYER,
    COL_LAYER_ORDER,
    COL_MODEL,
    COL_SPLIT,
    DEFAULT_SPLIT,
    METRIC_BY_NAME,
    METRIC_COLUMNS,
    LOSS_METRICS,
    NC1_METRICS,
    NC2_METRICS,
    NC3_METRICS,
    NCC_METRICS,
    W_METRICS,
)

FORMATS = ("png", "svg", "pdf")
KINDS = ("all", "epochs", "depth")
DPI = 100
PANEL_INCHES = (4.0, 3.4)
TITLE_INCHES = 0.4
MAX_COLUMNS = 4
LABEL_PIXELS = 22  # horizontal room one rotated 7-point tick label needs
EPOCHS_FILE = "nc_over_epochs"
DEPTH_FILE = "nc_depth"

_TR_SW, _TR_SB, _NC1, _NC1_TILDE, _CDNV, _NC1_DIST_RATIO = NC1_METRICS
_EQUINORM, _EQUIANGULAR, _MAXANGLE, _NC2_ETF, _NC2_TIRER, _GNC2_DIST_VAR, _GNC2_LOG_VAR = NC2_METRICS
_W_EQUINORM, _W_EQUIANGULAR, _W_MAXANGLE = W_METRICS
_NC3_DUALITY, _NC3_ETF, _NC3_TIRER, _NC3_UNIFORM_DUALITY = NC3_METRICS
_NCC_ACC, _CLF_ACC, _NC4, _MARGIN_MIN, _MARGIN_MEAN = NCC_METRICS
_MARGIN_NORMALIZED, _NORM_BALANCE, _CE_LOSS, _CE_EXCESS = LOSS_METRICS
ACCURACY_METRICS = (_CLF_ACC, _NCC_ACC)
EPOCH_METRICS = (
    _NC1, _EQUINORM, _W_EQUINORM, _EQUIANGULAR, _W_EQUIANGULAR, _MAXANGLE, _W_MAXANGLE, _NC3_DUALITY, _NC4,
    _CLF_ACC, _NCC_ACC, _MARGIN_NORMALIZED, _CE_LOSS, _CE_EXCESS,
)
DEPTH_METRICS = (_NC1, _NC1_TILDE, _CDNV, _EQUINORM, _EQUIANGULAR, _MAXANGLE, _NCC_ACC)


@dataclass(frozen=True)
class _Shared:
    """Metrics drawn in one panel: its title and y label, and each metric's name in the legend."""

    metrics: tuple[str, ...]
    title: str
    ylabel: str
    names: tuple[str, ...]
    error: bool = False


SHARED_PANELS = (
    _Shared(ACCURACY_METRICS, "Errors: classifier and NCC", "error = 1 − accuracy", ("classifier", "NCC"), error=True),
    _Shared((_EQUINORM, _W_EQUINORM), "NC2: equinorm, means and classifier",
            r"std / mean of $\Vert\mu_c - \mu_G\Vert$, $\Vert w_c\Vert$", ("class means", "classifier rows")),
    _Shared((_EQUIANGULAR, _W_EQUIANGULAR), "NC2: equiangularity, means and classifier",
            r"std of the cosines", ("class means", "classifier rows")),
    _Shared((_MAXANGLE, _W_MAXANGLE), "NC2: angles vs the ETF, means and classifier",
            r"mean of $|\cos + 1/(K-1)|$", ("class means", "classifier rows")),
    _Shared((_CE_LOSS, _CE_EXCESS), "Cross-entropy and its excess", "nats",
            ("CE of Wh + b", "excess over the optimum")),
)
_LEGEND_NAMES = {metric: name for shared in SHARED_PANELS for metric, name in zip(shared.metrics, shared.names)}



@dataclass(frozen=True)
class _Panel:
    metrics: tuple[str, ...]
    title: str
    ylabel: str
    error: bool = False


def _panels(metrics: tuple[str, ...]) -> list[_Panel]:
    """One panel per metric, in order; the metrics of a :data:`SHARED_PANELS` entry share one panel, placed
    where the first of them is asked (the errors last), under its own title when only one of them is asked."""
    panels, placed, errors = [], set(), []
    for metric in metrics:
        if metric in placed:
            continue
        shared = next((s for s in SHARED_PANELS if metric in s.metrics), None)
        members = tuple(m for m in shared.metrics if m in metrics) if shared else (metric,)
        placed.update(members)
        if len(members) == 1:
            column = METRIC_BY_NAME[metric]
            panel = _Panel(members, column.title, column.ylabel, error=metric in ACCURACY_METRICS)
        else:
            panel = _Panel(members, shared.title, shared.ylabel, shared.error)
        (errors if panel.error else panels).append(panel)
    return panels + errors


def figure_pixels(n_panels: int) -> tuple[int, int]:
    """Width and height in pixels of a figure with ``n_panels`` panels."""
    columns = min(MAX_COLUMNS, n_panels)
    rows = math.ceil(n_panels / columns)
    return round(columns * PANEL_INCHES[0] * DPI), round((rows * PANEL_INCHES[1] + TITLE_INCHES) * DPI)


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
    rows = _read_report(report_path)
    has_epochs = any(row[COL_EPOCH] is not None for row in rows)
    figures = []
    if kind == "epochs" or (kind == "all" and has_epochs):
        figures += _epoch_figures(rows, report_path, metrics or EPOCH_METRICS, layer)
    elif kind == "all":
        warnings.warn(f"'{report_path}' has no epochs; drawing the depthwise figures only", DegenerateMetricWarning)
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


def _read_report(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise UsageError(f"report '{path}' not found; give the Parquet file written by `nccli analyze --out`")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"'{path}' is not a readable Parquet file ({reason})") from None
    keys = (COL_FILE, COL_SPLIT, COL_EPOCH, COL_LAYER, COL_LAYER_ORDER)
    missing = [c for c in keys if c not in table.column_names]
    if missing or not any(c in table.column_names for c in METRIC_COLUMNS):
        lacks = f"column(s) {', '.join(repr(c) for c in missing)}" if missing else "every metric column"
        raise UsageError(f"'{path}' is not an nccli report: it lacks {lacks}; plot the report of `nccli analyze`")
    if table.num_rows == 0:
        raise UsageError(f"report '{path}' has no rows; nothing to plot")
    wanted = [c for c in (*keys, COL_MODEL, *METRIC_COLUMNS) if c in table.column_names]
    rows = table.select(wanted).to_pylist()
    for row in rows:
        row.setdefault(COL_MODEL, None)
    return rows


def _is_null(value) -> bool:
    """Reports write undefined metrics as null or as NaN (``metrics.md``); both mean missing."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _values(rows: list[dict], metric: str, error: bool = False) -> np.ndarray:
    values = np.array([np.nan if _is_null(row.get(metric)) else row[metric] for row in rows], dtype=np.float64)
    return 1.0 - values if error else values


def _live_panels(panels: list[_Panel], rows: list[dict], where: str, report: Path) -> list[_Panel]:
    """Drop metrics that are null on every row (saying so), and panels left empty."""
    live = []
    for panel in panels:
        kept = tuple(m for m in panel.metrics if np.isfinite(_values(rows, m)).any())
        for metric in panel.metrics:
            if metric not in kept:
                warnings.warn(f"metric '{metric}' is null on every row {where} of '{report}'; not plotted",
                              DegenerateMetricWarning)
        if len(kept) == 1 and len(panel.metrics) > 1:  # a shared panel left with one metric: its own title
            live.append(_Panel(kept, METRIC_BY_NAME[kept[0]].title, METRIC_BY_NAME[kept[0]].ylabel, panel.error))
        elif kept:
            live.append(_Panel(kept, panel.title, panel.ylabel, panel.error))
    return live


def _epoch_figures(rows, report: Path, metrics, layer: str | None) -> list[tuple[str, object]]:
    if layer is not None:
        chosen = [row for row in rows if row[COL_LAYER] == layer]
        if not chosen:
            names = ", ".join(dict.fromkeys(row[COL_LAYER] for row in rows))
            raise UsageError(f"layer '{layer}' not found in '{report}'; layers are: {names}")
        where = f"of layer '{layer}'"
    else:
        chosen = _classifier_input_rows(rows, report)
        where = f"of the classifier input ({', '.join(repr(n) for n in dict.fromkeys(r[COL_LAYER] for r in chosen))})"
    timed = [row for row in chosen if row[COL_EPOCH] is not None]
    if not timed:
        raise UsageError(f"'{report}' has no epoch on the rows {where} (column '{COL_EPOCH}' is null), so nothing "
                         "can be plotted over epochs; extract each checkpoint with its epoch, or plot --kind depth")
    if len(timed) < len(chosen):
        warnings.warn(f"{len(chosen) - len(timed)} row(s) {where} have no epoch and are left out of the "
                      "over-epochs figure", DegenerateMetricWarning)
    lines = defaultdict(dict)  # (model, split) -> epoch -> row
    for row in timed:
        line = lines[(row[COL_MODEL], row[COL_SPLIT])]
        if row[COL_EPOCH] in line:
            files = f"'{line[row[COL_EPOCH]][COL_FILE]}', '{row[COL_FILE]}'"
            raise UsageError(f"'{report}' has two rows for split '{row[COL_SPLIT]}', epoch {row[COL_EPOCH]} {where} "
                             f"(files {files}); plot one run per report")
        line[row[COL_EPOCH]] = row
    panels = _live_panels(_panels(tuple(metrics)), timed, where, report)
    if not panels:
        return []
    several_models = len({model for model, _ in lines}) > 1
    keys = sorted(lines, key=lambda key: (str(key[0]), key[1] != DEFAULT_SPLIT, str(key[1])))
    epochs = sorted({row[COL_EPOCH] for row in timed})
    onset = _zero_error_epoch(rows) if not several_models else None
    figure, axes, _ = _figure(len(panels), f"Neural collapse over training, {where.removeprefix('of ')} — {report.name}")
    for index, (ax, panel) in enumerate(zip(axes, panels)):
        plotted = []
        for color, key in enumerate(keys):
            line_rows = [lines[key][epoch] for epoch in sorted(lines[key])]
            label = f"{key[0]} · {key[1]}" if several_models else str(key[1])
            for style, metric in enumerate(panel.metrics):
                y = _values(line_rows, metric, panel.error)
                name = f"{label} {_LEGEND_NAMES[metric]}" if len(panel.metrics) > 1 else label
                ax.plot(sorted(lines[key]), y, color=f"C{color}", marker="os^"[style % 3],
                        linestyle=("-", "--")[style % 2], markersize=4, linewidth=1.4, label=name)
                plotted.append(y)
        if onset is not None:
            ax.axvline(onset, color="0.5", linestyle=":", linewidth=1, label="zero train error")
        _style_panel(ax, panel, np.concatenate(plotted))
        _epoch_axis(ax, epochs)
        if index == 0 or len(panel.metrics) > 1:
            ax.legend(fontsize=7)
    return [(EPOCHS_FILE, figure)]


def _classifier_input_rows(rows: list[dict], report: Path) -> list[dict]:
    """Each file's rows where the classifier was evaluated, else its deepest layer."""
    by_file = defaultdict(list)
    for row in rows:
        by_file[row[COL_FILE]].append(row)
    chosen, fallback = [], []
    for file, file_rows in by_file.items():
        classifier = [row for row in file_rows if not _is_null(row.get(_CLF_ACC))]
        if not classifier:
            fallback.append(file)
            classifier = [max(file_rows, key=lambda row: row[COL_LAYER_ORDER])]
        chosen += classifier
    if fallback:
        warnings.warn(f"{len(fallback)} file(s) in '{report}' have no classifier rows ('{_CLF_ACC}' is null); "
                      "following their deepest layer over epochs instead", DegenerateMetricWarning)
    return chosen


def _zero_error_epoch(rows: list[dict]) -> int | None:
    """The first epoch whose training classifier accuracy is 1: the start of the terminal phase."""
    perfect = [row[COL_EPOCH] for row in rows if row[COL_SPLIT] == DEFAULT_SPLIT and row[COL_EPOCH] is not None
               and row.get(_CLF_ACC) == 1.0]
    return min(perfect) if perfect else None


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
        panels = _live_panels(_panels(tuple(metrics)), split_rows, f"of split '{split}'", report)
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
                    y = _values(file_rows, metric, panel.error)
                    color = colormap(norm(epoch)) if epoch is not None else (f"C{number % 10}" if not epochs else "0.5")
                    label = (f"{Path(file).name}" if epoch is None else None) if style == 0 else None
                    ax.plot(x, y, color=color, marker="os^"[style % 3], linestyle=("-", "--")[style % 2],
                            markersize=3.5, linewidth=1.3, label=label)
                    plotted.append(y)
            _style_panel(ax, panel, np.concatenate(plotted))
            _layer_axis(ax, [" / ".join(names) for names in layers.values()])
            if len(panel.metrics) > 1:
                for style, metric in enumerate(panel.metrics):
                    ax.plot([], [], color="0.3", marker="os^"[style % 3], linestyle=("-", "--")[style % 2],
                            label=_LEGEND_NAMES[metric])
            if ax.get_legend_handles_labels()[0] and (len(panel.metrics) > 1 or ax is axes[0]):
                ax.legend(fontsize=7)
        if epochs:
            # In the empty grid slot when there is one, else beside the panels.
            where = {"cax": spare[0].inset_axes((0.1, 0.1, 0.07, 0.8))} if spare else {"ax": axes, "shrink": 0.9}
            bar = figure.colorbar(cm.ScalarMappable(norm=norm, cmap=colormap), **where,
                                  ticks=epochs if len(epochs) <= 12 else None)
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


def _style_panel(ax, panel: _Panel, values: np.ndarray) -> None:
    """Title, y label and a y scale that suits the values: log, symlog (exact zeros) or linear (negatives)."""
    ax.set_title(panel.title, fontsize=9)
    ylabel = panel.ylabel
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0:
        ax.set_yscale("log")
        ylabel += " (log)"
    elif finite.size and finite.min() == 0 and finite.max() > 0:
        threshold = 10.0 ** math.floor(math.log10(finite[finite > 0].min()))
        ax.set_yscale("symlog", linthresh=threshold)
        ax.set_ylim(bottom=0)
        ylabel += f" (log; linear below {threshold:g})"
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="major", alpha=0.3)


def _epoch_axis(ax, epochs: list[int]) -> None:
    from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator, ScalarFormatter

    if epochs[0] >= 0 and epochs[-1] >= 20 and epochs[-1] >= 20 * max(epochs[0], 1):
        if epochs[0] > 0:
            ax.set_xscale("log")
        else:
            ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("epoch (log scale)", fontsize=8)
        if len(epochs) <= 10:
            ax.xaxis.set_major_locator(FixedLocator(epochs))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _layer_axis(ax, names: list[str]) -> None:
    """Layer names on the ticks, rotated, shortened, and thinned out so that they never overlap."""
    step = max(1, math.ceil(len(names) / (PANEL_INCHES[0] * DPI / LABEL_PIXELS)))
    shown = range(0, len(names), step)
    ax.set_xticks(list(shown))
    ax.set_xticklabels([_short(names[i]) for i in shown], rotation=45, ha="right", rotation_mode="anchor",
                       fontsize=7)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_xlabel("layer (forward order)" + (f", one in {step} named" if step > 1 else ""), fontsize=8)


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else f"{name[: limit // 2 - 1]}…{name[-(limit // 2):]}"


def _save(figure, path: Path, fmt: str) -> Path:
    """Write to a hidden temporary name in the same directory, then rename over ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            figure.savefig(handle, format=fmt, dpi=DPI)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(f"cannot write the figure '{path}': {error.strerror or error}") from None
    return path
