"""Report tables as text for pipes (csv, tsv, json, markdown), a workbook, or a rich table for people.

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
from nccli.errors import UsageError

if TYPE_CHECKING:  # pyarrow loads only when a report is read, so `nccli --help` stays instant
    import pyarrow as pa


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
    "nc1",
    "cdnv",
    "nc2_etf",
    "nc3_duality",
    "ncc_accuracy",
    "clf_accuracy",
    "nc4_ncc_mismatch",
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
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


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
    lines = ["| " + " | ".join(table.column_names) + " |", "|" + " --- |" * table.num_columns]
    for row in table.to_pylist():
        lines.append("| " + " | ".join(_cell(value).replace("|", "\\|") for value in row.values()) + " |")
    return "\n".join(lines) + "\n"


def to_rich(table: pa.Table, title: str | None = None):
    """A rich Table for a terminal (4 significant digits)."""
    import pyarrow as pa
    from rich.table import Table

    rich_table = Table(title=title, header_style="bold")
    for column in table.column_names:
        numeric = pa.types.is_floating(table.schema.field(column).type) or pa.types.is_integer(table.schema.field(column).type)
        rich_table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for row in table.to_pylist():
        rich_table.add_row(*(_human(value) for value in row.values()))
    return rich_table


def write_xlsx(table: pa.Table, path: str) -> None:
    """One worksheet; needs the optional ``openpyxl`` (``pip install 'nccli[xlsx]'``)."""
    try:
        from openpyxl import Workbook
    except ImportError:
        raise UsageError("--format xlsx needs openpyxl: pip install 'nccli[xlsx]'") from None
    from nccli.report.parquet import check_writable

    target = check_writable(path, "--output")
    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "report"
    sheet.append(table.column_names)
    for row in table.to_pylist():
        sheet.append(list(row.values()))
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        workbook.save(temporary)
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)


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
