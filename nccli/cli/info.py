"""`nccli info`: what feature files hold (:func:`nccli.io.info.describe`), as a table or JSON."""

import enum
from typing import Annotated

import typer

from nccli.cli.common import note_left_out, table_console, user_errors


class InfoFormat(enum.StrEnum):
    """Output formats of ``nccli info``."""

    TABLE = "table"
    JSON = "json"


def info(
    files: Annotated[
        list[str],
        typer.Argument(
            help="Feature files (HDF5) to describe, or quoted globs of them ('test/*.h5'), each expanded in natural "
            "order (epoch_2 before epoch_10).",
            show_default=False,
        ),
    ],
    fmt: Annotated[
        InfoFormat,
        typer.Option("--format", "-f", help="table for people; json (a list, one record per file) for scripts."),
    ] = InfoFormat.TABLE,
) -> None:
    """Show what feature files hold: samples, classes, split, epoch, model, provenance and every layer.

    Per layer its name, forward order, width, stored dtype, pooling and per-sample shape; and whether
    the file has the classifier and the logits. Files are validated as `nccli analyze` validates them.
    """
    with user_errors():
        import json

        from nccli.errors import printable
        from nccli.globs import expand_globs
        from nccli.io.info import as_records, describe

        descriptions = [describe(path) for path in expand_globs(files)]
        if fmt is InfoFormat.JSON:
            typer.echo(json.dumps(as_records(descriptions), indent=1, ensure_ascii=False))
            return
        from nccli.report.formats import describe_rich

        console = table_console()
        for description in descriptions:
            grid, layers, left_out = describe_rich(description, console.width)
            console.print(printable(description.path), style="bold", markup=False, highlight=False)
            console.print(grid, layers)
            note_left_out(left_out, console.width, "see every column with --format json")
