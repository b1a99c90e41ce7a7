"""The ``nccli`` command line: a thin typer layer over the library, one module per command.

Each command parses its options, builds a frozen config, calls one library
function and prints the outcome (:mod:`nccli.cli.common` holds the error
boundary they share). Heavy imports (torch, h5py, pyarrow) happen inside the
commands so that ``nccli --help`` is instant.
"""

from typing import Annotated

import typer

from nccli import __version__
from nccli.allocator import keep_freed_memory
from nccli.cli import analyze, convert, demo, extract, info, layers, measure, models, plot, report
from nccli.cli.common import OneLineUsageErrors

app = typer.Typer(
    name="nccli",
    help="Measure neural collapse in deep classifiers: `extract` per-layer features "
    "to HDF5, `analyze` them into a Parquet report, `report` it as a table.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineUsageErrors,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"nccli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Measure neural collapse in deep classifiers."""


app.command("extract")(extract.extract)
app.command("layers")(layers.layers_command)
app.command("models")(models.models)
app.command("analyze")(analyze.analyze)
app.command("measure")(measure.measure)
app.command("convert", help=convert.HELP)(convert.convert)
app.command("report")(report.report)
app.command("plot")(plot.plot)
app.command("demo")(demo.demo)
app.command("info")(info.info)


def main() -> None:
    """Console-script entry point."""
    keep_freed_memory()
    app()
