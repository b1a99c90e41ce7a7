"""Report tables as text for pipes (csv, tsv, json, markdown), a workbook, or a rich table for people.

Tables for people never break a number across lines (:func:`fit_table`); ``nccli info``'s description
of a feature file is drawn with the same rules (:func:`describe_rich`).

Machine formats keep every column and full float precision (``repr``);
nulls are empty cells in csv/tsv/markdown and ``null`` in json.
"""

from __future__ import annotations

import csv
import io
import json
import math
from enum import StrEnum
from typing import TYPE_CHECKING

from nccli import schema
from nccli.errors import UsageError, printable

if TYPE_CHECKING:  # pyarrow loads only when a report is read, so `nccli --help` stays instant
    import pyarrow as pa

    from nccli.io.info import FileDescription


class ReportFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    TSV = "tsv"
    JSON = "json"
    MARKDOWN = "markdown"
    XLSX = "xlsx"


# What a person sees first: the columns that answer "how collapsed is each layer?".
COMPACT_COLUMNS = (
    schema.COL_FILE,
    schema.COL_SPLIT,
    schema.COL_EPOCH,
    schema.COL_LAYER,
    schema.COL_N_CLASSES,
    *schema.COMPACT_METRICS,
)


def select_columns(table: pa.Table, columns: tuple[str, ...] | None) -> pa.Table:
    """Keep ``columns`` (in that order); unknown names are an error that lists the available ones."""
    if not columns:
        return table
    unknown = [column for column in columns if column not in table.column_names]
    if unknown:
        raise UsageError(f"unknown column '{unknown[0]}'; columns are: {', '.join(table.column_names)}")
    return table.select(list(columns))


def compact(table: pa.Table) -> pa.Table:
    """The summary's key columns for people; other tables unchanged."""
    if not set(COMPACT_COLUMNS) <= set(table.column_names):
        return table
    keep = [column for column in COMPACT_COLUMNS if table.column(column).null_count < table.num_rows]
    return table.select(keep)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _human(value) -> str:
    """A cell for people: 4 significant digits, – for null, names with their control characters escaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return printable(str(value))


def to_delimited(table: pa.Table, delimiter: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow(_cell(value) for value in row.values())
    return buffer.getvalue()


def to_json(table: pa.Table) -> str:
    return json.dumps(table.to_pylist(), ensure_ascii=False, indent=1) + "\n"


def to_markdown(table: pa.Table) -> str:
    """A Markdown table, read by people: names with their control characters escaped, as on the terminal (csv
    and tsv keep the values as they are)."""
    lines = ["| " + " | ".join(map(printable, table.column_names)) + " |", "|" + " --- |" * table.num_columns]
    for row in table.to_pylist():
        lines.append("| " + " | ".join(printable(_cell(value)).replace("|", "\\|") for value in row.values()) + " |")
    return "\n".join(lines) + "\n"


def to_rich(table: pa.Table, title: str | None = None, width: int | None = None):
    """A rich Table for a terminal (4 significant digits) that fits ``width`` characters; see :func:`fit_table`.

    Returns the table and the names of the columns left out to make it fit.
    """
    import pyarrow as pa

    numeric = [pa.types.is_floating(field.type) or pa.types.is_integer(field.type) for field in table.schema]
    rows = [[_human(value) for value in row.values()] for row in table.to_pylist()]
    return fit_table(table.column_names, numeric, rows, title, width)


TABLE_EDGE = 1  # the left border
COLUMN_EDGE = 3  # a column's padding on both sides and its right border
TEXT_MIN_WIDTH = 12  # text (file names, layers) may fold down to this; numbers never fold


def fit_table(
    columns: list[str], numeric: list[bool], rows: list[list[str]], title: str | None = None, width: int | None = None
):
    """A rich Table of ``rows`` (cells as text) in which no number is ever broken across lines.

    Number columns are exactly as wide as their widest cell; headers break at underscores instead; text
    columns may fold. Where that is wider than ``width`` (None: no limit), columns are left out from the
    right, never the first. Returns ``(table, left_out_column_names)``.
    """
    from rich.table import Table

    needs = [
        _column_width(name, [row[i] for row in rows], number) for i, (name, number) in enumerate(zip(columns, numeric))
    ]
    keep = len(columns)
    while keep > 1 and width is not None and _table_width(needs[:keep]) > width:
        keep -= 1
    rich_table = Table(title=title, header_style="bold")
    for name, number, need in zip(columns[:keep], numeric, needs):
        header = _broken_header(name, need) if number else name
        if number:
            rich_table.add_column(header, justify="right", no_wrap=True, min_width=need)
        else:
            rich_table.add_column(header, justify="left", overflow="fold", min_width=need)
    for row in rows:
        rich_table.add_row(*row[:keep])
    return rich_table, list(columns[keep:])


def _column_width(name: str, cells: list[str], number: bool) -> int:
    widest = max((len(cell) for cell in cells), default=1)
    if not number:
        return min(max(widest, len(name)), TEXT_MIN_WIDTH)
    return max(widest, max(len(part) for part in _header_parts(name)))


def _table_width(needs: list[int]) -> int:
    return TABLE_EDGE + sum(need + COLUMN_EDGE for need in needs)


def _header_parts(name: str) -> list[str]:
    """``nc4_ncc_mismatch`` → ``['nc4_', 'ncc_', 'mismatch']``: where a header may break."""
    parts = name.split("_")
    return [part + "_" for part in parts[:-1]] + [parts[-1]]


def _broken_header(name: str, width: int) -> str:
    """The header in lines of at most ``width`` characters, broken after underscores."""
    lines = [""]
    for part in _header_parts(name):
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


INFO_LAYER_COLUMNS = ("layer", "order", "width", "dtype", "pooling", "sample shape")


def describe_rich(description: FileDescription, width: int | None = None):
    """A feature file's description (:func:`nccli.io.info.describe`) for a terminal: a grid of its attributes
    and a table of its layers that fits ``width``. Returns ``(grid, layers_table, left_out_columns)``."""
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    present = description.classes_present
    facts = {
        "samples": str(description.n_samples),
        "classes": f"{description.num_classes} ({present} present)",
        "split": description.split,
        "epoch": _human(description.epoch),
        "model": _human(description.model),
        "classifier": "none" if description.classifier_layer is None else f"on layer '{description.classifier_layer}'",
        "logits": "yes" if description.logits else "no",
    }
    facts.update((name, value) for name, value in description.provenance.items() if name not in facts)
    for name, value in facts.items():
        grid.add_row(printable(name), printable(str(value)))
    rows = [
        [
            printable(layer.name),
            str(layer.order),
            str(layer.width),
            printable(layer.dtype),
            _human(layer.pooling),
            "×".join(map(str, layer.sample_shape)) if layer.sample_shape else "–",
        ]
        for layer in description.layers
    ]
    numeric = [False, True, True, False, False, False]
    layers, left_out = fit_table(list(INFO_LAYER_COLUMNS), numeric, rows, width=width)
    return grid, layers, left_out


def write_xlsx(table: pa.Table, path: str) -> None:
    """One worksheet; needs the optional ``openpyxl`` (``pip install 'nccli[xlsx]'``)."""
    try:
        from openpyxl import Workbook
    except ImportError:
        raise UsageError("--format xlsx needs openpyxl: pip install 'nccli[xlsx]'") from None
    from nccli.io.publish import publish
    from nccli.report.parquet import check_writable

    target = check_writable(path, "--output")
    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "report"
    sheet.append(table.column_names)
    for row in table.to_pylist():
        sheet.append(list(row.values()))
    with publish(target) as temporary:
        workbook.save(temporary)


def render(table: pa.Table, fmt: ReportFormat) -> str:
    """csv, tsv, json or markdown text."""
    if fmt is ReportFormat.CSV:
        return to_delimited(table, ",")
    if fmt is ReportFormat.TSV:
        return to_delimited(table, "\t")
    if fmt is ReportFormat.JSON:
        return to_json(table)
    if fmt is ReportFormat.MARKDOWN:
        return to_markdown(table)
    raise ValueError(f"render() does not produce {fmt}")
