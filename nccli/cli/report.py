"""`nccli report`: a report table for people (rich) or pipes (csv, tsv, json, markdown) or a workbook."""

import sys
from typing import Annotated

import typer

from nccli.cli.common import print_table, split_list, user_errors
from nccli.errors import UsageError
from nccli.report.formats import ReportFormat


def report(
    path: Annotated[
        str,
        typer.Argument(
            help="A Parquet table written by `nccli analyze` (--out, --classes or --pairs).", show_default=False
        ),
    ],
    fmt: Annotated[
        ReportFormat,
        typer.Option(
            "--format", "-f", help="table for people; csv, tsv, json or markdown to stdout for pipes; xlsx to --output."
        ),
    ] = ReportFormat.TABLE,
    output: Annotated[str | None, typer.Option("--output", help="The workbook to write with --format xlsx.")] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated columns to show, or 'all'. Default: all, except --format table, which shows the key "
            "columns of a summary report.",
        ),
    ] = None,
) -> None:
    """Print a report for people or pipes: `nccli report r.parquet --format csv > r.csv`."""
    with user_errors():
        from nccli.report.formats import compact, render, select_columns, write_xlsx
        from nccli.report.parquet import read_report

        table = read_report(path)
        if columns and columns != "all":
            table = select_columns(table, split_list(columns))
        elif columns is None and fmt is ReportFormat.TABLE:
            table = compact(table)
        if fmt is ReportFormat.XLSX:
            if output is None:
                raise UsageError("--format xlsx writes a workbook: give it a path with --output r.xlsx")
            write_xlsx(table, output)
            typer.echo(output)
        elif output is not None:
            raise UsageError("--output is only for --format xlsx; other formats go to stdout")
        elif fmt is ReportFormat.TABLE:
            print_table(table, title=path, advice="choose columns with --columns")
        else:
            sys.stdout.write(render(table, fmt))
