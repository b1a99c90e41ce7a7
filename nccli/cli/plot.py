"""`nccli plot`: figures from a report, over epochs and through depth (matplotlib)."""

import enum
from typing import Annotated

import typer

from nccli.cli.common import user_errors


class PlotFormat(enum.StrEnum):
    """Image formats of ``nccli plot``."""

    PNG = "png"
    SVG = "svg"
    PDF = "pdf"


class PlotKind(enum.StrEnum):
    """Figure kinds of ``nccli plot``."""

    ALL = "all"
    EPOCHS = "epochs"
    DEPTH = "depth"


def plot(
    reports: Annotated[
        list[str],
        typer.Argument(
            help="The Parquet report(s) written by `nccli analyze --out`, or quoted globs of them ('runs/*/test.parquet'), "
            "drawn together: e.g. the train and test reports of a run (a line per split), or several runs (a line per "
            "report where two hold the same split).",
            show_default=False,
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Directory to write the figures into. It is created if missing; figures of the same name are replaced.",
            show_default=False,
        ),
    ],
    metrics: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated metric columns of the reports to draw, one panel each (accuracies are drawn as "
            "errors in one panel). By default the Papyan et al. panel over epochs and the variability and "
            "class-mean geometry metrics through depth.",
        ),
    ] = None,
    fmt: Annotated[PlotFormat, typer.Option("--format", "-f", help="Image format of the figures.")] = PlotFormat.PNG,
    layer: Annotated[
        str | None,
        typer.Option(
            help="Layer to follow over epochs. By default each file's classifier-input layer, the rows that have "
            "a classifier accuracy.",
        ),
    ] = None,
    kind: Annotated[
        PlotKind,
        typer.Option(
            help="Which figures to draw: metrics over epochs at one layer, depthwise profiles (one figure per "
            "split), or all of them.",
        ),
    ] = PlotKind.ALL,
) -> None:
    """Draw neural-collapse figures from reports: metrics over epochs and through depth (needs matplotlib)."""
    with user_errors():
        from nccli.globs import expand_globs
        from nccli.report.plots import plot_report

        chosen = None if metrics is None else metrics.split(",")
        paths = expand_globs(reports, "report pattern")
        for path in plot_report(paths, out, metrics=chosen, fmt=fmt.value, layer=layer, kind=kind.value):
            typer.echo(str(path))
