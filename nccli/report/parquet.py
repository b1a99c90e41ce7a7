"""Writing and reading the Parquet report tables (``report.md``), atomically.

Undefined metrics are written as Parquet nulls (pandas shows NaN, DuckDB
NULL). Every output is first written to a temporary file beside its target,
flushed to disk, and renamed only when all of them are complete, so a failed
or killed run leaves an earlier report untouched, and a report is never seen
half-written. :func:`reserve_outputs` holds the outputs' locks
(:mod:`nccli.io.lock`) while a command runs, so a second writer of the same
report is refused instead of racing the first; holding them, it also removes
the temporary files a killed writer left behind.
"""

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nccli import __version__, schema
from nccli.errors import OutputError, UsageError
from nccli.io.lock import locked

TEMPORARY_SUFFIX = ".tmp"

_INT_COLUMNS = {schema.COL_EPOCH, schema.COL_LAYER_ORDER, schema.COL_N_SAMPLES, schema.COL_N_CLASSES, schema.COL_DIM}
_INT_COLUMNS |= {schema.COL_EFFECTIVE_DEPTH, schema.COL_CLASS, schema.COL_CLASS_B, "n"}
_STRING_COLUMNS = {schema.COL_FILE, schema.COL_SPLIT, schema.COL_MODEL, schema.COL_LAYER}
_STRING_COLUMNS |= {schema.COL_CLASS_NAME, schema.COL_CLASS_NAME_B}


def class_columns(named: bool) -> tuple[str, ...]:
    names = (schema.COL_CLASS_NAME,) if named else ()
    return (schema.COL_FILE, schema.COL_LAYER, schema.COL_CLASS, *names, *schema.CLASS_METRICS)


def pair_columns(named: bool) -> tuple[str, ...]:
    names = (schema.COL_CLASS_NAME, schema.COL_CLASS_NAME_B) if named else ()
    return (schema.COL_FILE, schema.COL_LAYER, schema.COL_CLASS, schema.COL_CLASS_B, *names, *schema.PAIR_METRICS)


def _arrow_type(column: str) -> pa.DataType:
    if column in _INT_COLUMNS:
        return pa.int64()
    if column in _STRING_COLUMNS:
        return pa.string()
    return pa.float64()


def _null_if_nan(value):
    return None if isinstance(value, float) and np.isnan(value) else value


def to_table(rows: list[dict], columns: tuple[str, ...], metadata: dict[str, str]) -> pa.Table:
    """Rows → an Arrow table with the given column order, explicit types, and NaN as null."""
    fields = [pa.field(column, _arrow_type(column)) for column in columns]
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
            for stale in Path(path).parent.glob(_temporary_prefix(Path(path)) + "*" + TEMPORARY_SUFFIX):
                with contextlib.suppress(OSError):
                    stale.unlink()
        yield


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}."


def write_tables(outputs: dict[Path, pa.Table]) -> None:
    """Write every table to a temporary file and flush it to disk, then rename them all into place."""
    staged: list[tuple[str, Path]] = []
    try:
        for target, table in outputs.items():
            folder = target.parent or Path(".")
            handle, temporary = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=TEMPORARY_SUFFIX, dir=folder)
            os.close(handle)
            staged.append((temporary, target))
            pq.write_table(table, temporary)
            _sync(temporary)
        for temporary, target in staged:
            os.replace(temporary, target)
        for folder in {target.parent or Path(".") for target in outputs}:
            _sync(folder)
    except OSError as error:
        raise OutputError(f"cannot write '{error.filename or target}': {error.strerror or error}") from None
    finally:
        for temporary, _ in staged:
            if os.path.exists(temporary):
                os.remove(temporary)


def _sync(path: str | Path) -> None:
    """Flush a file's (or a folder's renames') data to disk, so a rename never exposes an unwritten file."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def report_metadata(result, command: str) -> dict[str, str]:
    """Parquet key-value metadata: version, command line, provenance, conventions, warnings."""
    return {
        schema.META_VERSION: __version__,
        schema.META_COMMAND: command,
        schema.META_PROVENANCE: json.dumps(result.provenance, ensure_ascii=False),
        schema.META_CONVENTIONS: json.dumps(result.conventions, ensure_ascii=False),
        schema.META_WARNINGS: json.dumps(result.warnings, ensure_ascii=False),
    }


def write_report(
    result, out: Path, command: str, classes_out: Path | None = None, pairs_out: Path | None = None
) -> None:
    """The summary table at ``out`` and, if asked, the per-class and per-pair tables."""
    metadata = report_metadata(result, command)
    named = any(schema.COL_CLASS_NAME in row for row in result.classes)
    outputs = {out: to_table(result.summary, schema.SUMMARY_COLUMNS, metadata)}
    if classes_out is not None:
        outputs[classes_out] = to_table(result.classes, class_columns(named), metadata)
    if pairs_out is not None:
        outputs[pairs_out] = to_table(result.pairs, pair_columns(named), metadata)
    if len({path.resolve() for path in outputs}) < len(outputs):
        raise UsageError("--out, --classes and --pairs must be different files")
    write_tables(outputs)


def read_report(path: str | os.PathLike) -> pa.Table:
    """Any report table (summary, per-class, per-pair) as written by ``analyze``."""
    if not os.path.isfile(path):
        raise UsageError(f"'{path}': no such report file")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise UsageError(f"'{path}': not a Parquet file ({error})") from None
