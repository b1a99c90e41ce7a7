"""The Parquet report tables (``docs/report.md``): their columns and Arrow types, reading, and output locks.

Undefined metrics are written as Parquet nulls (pandas shows NaN, DuckDB
NULL). Writing, atomically, is :mod:`nccli.analyze.outputs`'s job
(:mod:`nccli.io.publish`). :func:`reserve_outputs` holds the outputs' locks
(:mod:`nccli.io.lock`) while a command runs, so a second writer of the same
report is refused instead of racing the first; holding them, it also removes
the temporary files a killed writer left behind.
"""

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nccli import __version__, schema
from nccli.errors import OutputError, UsageError
from nccli.io.lock import LOCK_SUFFIX, locked
from nccli.io.publish import remove_stale
from nccli.io.validate import memory_budget


def arrow_type(column: str) -> pa.DataType:
    """The column's Arrow type, from the registry (``schema.arrow_type_name``)."""
    return pa.type_for_alias(schema.arrow_type_name(column))


def _null_if_nan(value):
    return None if isinstance(value, float) and np.isnan(value) else value


def to_table(rows: list[dict], columns: tuple[str, ...], metadata: dict[str, str]) -> pa.Table:
    """Rows → an Arrow table with the given column order, explicit types, and NaN as null."""
    fields = [pa.field(column, arrow_type(column)) for column in columns]
    arrays = [
        pa.array([_null_if_nan(row.get(column)) for row in rows], type=field.type)
        for column, field in zip(columns, fields)
    ]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))


def check_writable(path: str | os.PathLike, option: str) -> Path:
    """Fail before any work if ``path`` cannot be written."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise OutputError(f"{option} '{target}' is a directory; give a file name such as report.parquet")
    if target.name.endswith(LOCK_SUFFIX):
        raise OutputError(
            f"{option} '{target}': names ending in '{LOCK_SUFFIX}' are nccli's lock files; choose another"
        )
    if not folder.is_dir():
        raise OutputError(f"{option} '{target}': directory '{folder}' does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{option} '{target}': directory '{folder}' is not writable")
    return target


@contextlib.contextmanager
def reserve_outputs(paths: Iterable[Path]) -> Iterator[None]:
    """Be the only writer of ``paths`` for the block (another one is refused, named); clear a killed one's leftovers."""
    paths = list(paths)
    with locked(paths):
        for path in paths:
            remove_stale(Path(path))
        yield


def report_metadata(result, command: str) -> dict[str, str]:
    """Parquet key-value metadata: version, command line, provenance, conventions, warnings."""
    return {
        schema.META_VERSION: __version__,
        schema.META_COMMAND: command,
        schema.META_PROVENANCE: json.dumps(result.provenance, ensure_ascii=False),
        schema.META_CONVENTIONS: json.dumps(result.conventions, ensure_ascii=False),
        schema.META_WARNINGS: json.dumps(result.warnings, ensure_ascii=False),
    }


def read_report(path: str | os.PathLike, columns: Iterable[str] | None = None, rows_max: int | None = None) -> pa.Table:
    """Any report table (summary, per-class, per-pair) as written by ``analyze``, after its footer: a file
    whose columns are named twice, that declares more than ``rows_max`` rows, or whose rows would not fit in
    memory once read, is refused before any row is read (a small file may declare millions of rows).
    ``columns``: read only these, those of them that the file has."""
    if not os.path.isfile(path):
        raise UsageError(f"'{path}': no such report file")
    try:
        footer = pq.ParquetFile(path).metadata
        names = footer.schema.to_arrow_schema().names
        declared = sum(footer.row_group(index).total_byte_size for index in range(footer.num_row_groups))
    except (pa.ArrowException, OSError) as error:
        raise UsageError(f"'{path}': not a Parquet file ({error})") from None
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(f"'{path}' names column(s) {', '.join(map(repr, twice))} twice; not a report of nccli")
    if declared > memory_budget():
        raise UsageError(
            f"'{path}' declares {footer.num_rows} rows of {declared / 2**30:.1f} GiB, more than the memory budget "
            f"of {memory_budget() / 2**30:.1f} GiB; read it in parts (pyarrow, DuckDB)"
        )
    if rows_max is not None and footer.num_rows > rows_max:
        raise UsageError(
            f"'{path}' declares {footer.num_rows} rows, more than the {rows_max} read here; write the rows you need "
            "to a smaller file (pyarrow, DuckDB)"
        )
    wanted = None if columns is None else [name for name in dict.fromkeys(columns) if name in names]
    try:
        return pq.read_table(path, columns=wanted)
    except (pa.ArrowException, OSError) as error:
        raise UsageError(f"'{path}': not a Parquet file ({error})") from None
