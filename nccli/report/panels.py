"""The panels of ``nccli plot``: which metrics share a panel, their titles, scales and axes, their lines' labels
and styles.

A panel is 4.0 × 3.4 inches at 100 dpi, at most 4 to a row, plus 0.4 inches
for the figure's title (:func:`figure_pixels`). Metrics drawn together share a
panel (:data:`SHARED_PANELS`): the errors; each NC2 quantity of the class
means with the classifier rows' (Papyan, Han & Donoho 2020, Figs. 2–4); the
cross-entropy and its excess over the optimum (seed ``003_*``). A line that
would hide one drawn before it (:func:`coincide`) is drawn open and gapped
(:func:`line_style`).
"""

import math
from dataclasses import dataclass

import numpy as np

from nccli.errors import DegenerateMetricWarning, warn_caller
from nccli.schema import METRIC_BY_NAME

DPI = 100
PANEL_INCHES = (4.0, 3.4)
TITLE_INCHES = 0.4
MAX_COLUMNS = 4
LABEL_PIXELS = 22  # horizontal room one rotated 7-point tick label needs


def _columns(*names: str) -> tuple[str, ...]:
    """Report columns looked up by name in the registry: a column that is renamed or removed fails here, at
    import, and a new one changes nothing (panels never depend on a family's order or size)."""
    return tuple(METRIC_BY_NAME[name].name for name in names)


CLF_ACC, _NCC_ACC = _columns("clf_accuracy", "ncc_accuracy")
ACCURACY_METRICS = (CLF_ACC, _NCC_ACC)
EPOCH_METRICS = _columns(
    "nc1",
    "nc2_equinorm",
    "w_equinorm",
    "nc2_equiangular",
    "w_equiangular",
    "nc2_maxangle",
    "w_maxangle",
    "nc3_duality",
    "nc4_ncc_mismatch",
    "clf_accuracy",
    "ncc_accuracy",
    "margin_normalized",
    "ce_loss",
    "ce_excess",
)
DEPTH_METRICS = _columns("nc1", "nc1_tilde", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "ncc_accuracy")


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
    _Shared(
        _columns("nc2_equinorm", "w_equinorm"),
        "NC2: equinorm, means and classifier",
        r"std / mean of $\Vert\mu_c - \mu_G\Vert$, $\Vert w_c\Vert$",
        ("class means", "classifier rows"),
    ),
    _Shared(
        _columns("nc2_equiangular", "w_equiangular"),
        "NC2: equiangularity, means and classifier",
        r"std of the cosines",
        ("class means", "classifier rows"),
    ),
    _Shared(
        _columns("nc2_maxangle", "w_maxangle"),
        "NC2: angles vs the ETF, means and classifier",
        r"mean of $|\cos + 1/(K-1)|$",
        ("class means", "classifier rows"),
    ),
    _Shared(
        _columns("ce_loss", "ce_excess"),
        "Cross-entropy and its excess",
        "nats",
        ("CE of Wh + b", "excess over the optimum"),
    ),
)
LEGEND_NAMES = {metric: name for shared in SHARED_PANELS for metric, name in zip(shared.metrics, shared.names)}


@dataclass(frozen=True)
class Panel:
    metrics: tuple[str, ...]
    title: str
    ylabel: str
    error: bool = False


def panels_for(metrics: tuple[str, ...]) -> list[Panel]:
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
            panel = Panel(members, column.title, column.ylabel, error=metric in ACCURACY_METRICS)
        else:
            panel = Panel(members, shared.title, shared.ylabel, shared.error)
        (errors if panel.error else panels).append(panel)
    return panels + errors


def figure_pixels(n_panels: int) -> tuple[int, int]:
    """Width and height in pixels of a figure with ``n_panels`` panels."""
    columns = min(MAX_COLUMNS, n_panels)
    rows = math.ceil(n_panels / columns)
    return round(columns * PANEL_INCHES[0] * DPI), round((rows * PANEL_INCHES[1] + TITLE_INCHES) * DPI)


def is_null(value) -> bool:
    """Reports write undefined metrics as null or as NaN (``docs/metrics.md``); both mean missing."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def metric_values(rows: list[dict], metric: str, error: bool = False) -> np.ndarray:
    values = np.array([np.nan if is_null(row.get(metric)) else row[metric] for row in rows], dtype=np.float64)
    return 1.0 - values if error else values


def live_panels(panels: list[Panel], rows: list[dict], where: str, reports: str) -> list[Panel]:
    """Drop metrics that are null on every row (saying so, naming ``reports``), and panels left empty."""
    live = []
    for panel in panels:
        kept = tuple(m for m in panel.metrics if np.isfinite(metric_values(rows, m)).any())
        for metric in panel.metrics:
            if metric not in kept:
                warn_caller(
                    DegenerateMetricWarning(f"metric '{metric}' is null on every row {where} of {reports}; not plotted")
                )
        if len(kept) == 1 and len(panel.metrics) > 1:  # a shared panel left with one metric: its own title
            live.append(Panel(kept, METRIC_BY_NAME[kept[0]].title, METRIC_BY_NAME[kept[0]].ylabel, panel.error))
        elif kept:
            live.append(Panel(kept, panel.title, panel.ylabel, panel.error))
    return live


def line_labels(keys: list[tuple], names: list[str]) -> dict[tuple, str]:
    """A line's legend: its split, after its model when there are several, after its report when two reports
    hold the same split."""
    several_models = len({model for _, model, _ in keys}) > 1
    same_split = len({(model, split) for _, model, split in keys}) < len(keys)
    return {
        key: " · ".join(
            [*([names[key[0]]] if same_split else []), *([str(key[1])] if several_models else []), str(key[2])]
        )
        for key in keys
    }


def coincide(x: list, y: np.ndarray, other_x: list, other_y: np.ndarray) -> bool:
    """Whether two lines of a panel fall on each other: the same epochs, values within 0.1 %."""
    return x == other_x and bool(np.allclose(y, other_y, rtol=1e-3, atol=0, equal_nan=True))


def line_style(style: int, under: int) -> dict:
    """Marker and line of a panel's ``style``-th metric; a line drawn over ``under`` lines that it would hide gets
    larger open markers and gaps, on top, so that the lines under it show."""
    line = {"marker": "os^"[style % 3], "linestyle": ("-", "--")[style % 2], "markersize": 4, "linewidth": 1.4}
    if under:
        line |= {
            "linestyle": (0, (2, 2 + 2 * under)),
            "markersize": 4 + 3 * under,
            "markerfacecolor": "none",
            "zorder": 2 + under,
        }
    return line


def style_panel(ax, panel: Panel, values: np.ndarray) -> None:
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


def epoch_axis(ax, epochs: list[int]) -> None:
    from matplotlib.ticker import (
        FixedLocator,
        MaxNLocator,
        NullLocator,
        ScalarFormatter,
    )

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


def layer_axis(ax, names: list[str]) -> None:
    """Layer names on the ticks, rotated, shortened, and thinned out so that they never overlap."""
    step = max(1, math.ceil(len(names) / (PANEL_INCHES[0] * DPI / LABEL_PIXELS)))
    shown = range(0, len(names), step)
    ax.set_xticks(list(shown))
    ax.set_xticklabels([_short(names[i]) for i in shown], rotation=45, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_xlabel("layer (forward order)" + (f", one in {step} named" if step > 1 else ""), fontsize=8)


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else f"{name[: limit // 2 - 1]}…{name[-(limit // 2) :]}"
