"""The rows of the reports that ``nccli plot`` draws: the summary tables read and checked, each row tagged with
its report, the rows followed over epochs (each file's classifier input), and the start of the terminal phase."""

import os
from collections import defaultdict
from pathlib import Path

from nccli.errors import DegenerateMetricWarning, UsageError, warn_caller
from nccli.report.panels import CLF_ACC, is_null
from nccli.schema import (
    COL_EPOCH,
    COL_FILE,
    COL_LAYER,
    COL_LAYER_ORDER,
    COL_MODEL,
    COL_SPLIT,
    DEFAULT_SPLIT,
)

SOURCE = "_report"  # the key of a row's report: its index among the reports given
ROWS_MAX = 100_000  # rows of one report a plot reads; a summary holds one per (file, layer)
KEYS = (COL_FILE, COL_SPLIT, COL_EPOCH, COL_LAYER, COL_LAYER_ORDER)


def read_reports(paths: list[Path], metrics: tuple[str, ...]) -> list[dict]:
    """The rows of every report, tagged with its index (:data:`SOURCE`); a report given twice is refused."""
    seen = {}
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            spelled = f" (first as '{seen[real]}')" if str(seen[real]) != str(path) else ""
            raise UsageError(f"report '{path}' is given twice{spelled}; give each report once")
        seen[real] = path
    rows = []
    for index, path in enumerate(paths):
        rows += [{**row, SOURCE: index} for row in read_report(path, metrics)]
    return rows


def read_report(path: Path, metrics: tuple[str, ...]) -> list[dict]:
    """The rows of a report with the columns the panels need (the key columns, the model, ``metrics`` and the
    classifier accuracy), read after the checks of its footer (:func:`nccli.report.parquet.read_report`)."""
    from nccli.report.parquet import read_report as read_table

    table = read_table(path, columns=(*KEYS, COL_MODEL, CLF_ACC, *metrics), rows_max=ROWS_MAX)
    missing = [c for c in KEYS if c not in table.column_names]
    if missing or not any(c in table.column_names for c in (CLF_ACC, *metrics)):
        lacks = f"column(s) {', '.join(map(repr, missing))}" if missing else "every metric column to plot"
        raise UsageError(f"'{path}' is not an nccli report: it lacks {lacks}; plot the report of `nccli analyze`")
    if table.num_rows == 0:
        raise UsageError(f"report '{path}' has no rows; nothing to plot")
    for field in table.schema:
        _check_type(path, field.name, field.type)
    rows = table.to_pylist()
    for row in rows:
        row.setdefault(COL_MODEL, None)
    return rows


def _check_type(path: Path, column: str, found) -> None:
    """A column of the registry's kind (numbers where numbers are drawn, strings for names; null when empty),
    or one line naming it: strings would be drawn as categories, without a word."""
    import pyarrow as pa

    from nccli.report.parquet import arrow_type

    expected = arrow_type(column)
    kinds = {
        "double": (pa.types.is_floating, pa.types.is_integer),
        "int64": (pa.types.is_integer,),
        "string": (pa.types.is_string, pa.types.is_large_string),
    }[str(expected)]
    if not (pa.types.is_null(found) or any(kind(found) for kind in kinds)):
        raise UsageError(
            f"report '{path}': column '{column}' holds {found}, not {expected}; plot the report of `nccli analyze`"
        )


def report_names(paths: list[Path]) -> list[str]:
    """The reports' names for titles and legends: file names, with as many parent folders as tell them apart."""

    def names(depth: int) -> list[str]:
        return ["/".join(path.parts[-depth:]) for path in paths]

    longest = max(len(path.parts) for path in paths)
    return names(next((depth for depth in range(1, longest) if len(set(names(depth))) == len(paths)), longest))


def classifier_input_rows(rows: list[dict], reports: str) -> list[dict]:
    """Each file's rows where the classifier was evaluated, else its deepest layer (a file of each report: two
    reports may name the same path, written by runs in other folders)."""
    by_file = defaultdict(list)
    for row in rows:
        by_file[(row[SOURCE], row[COL_FILE])].append(row)
    chosen, fallback = [], []
    for file, file_rows in by_file.items():
        classifier = [row for row in file_rows if not is_null(row.get(CLF_ACC))]
        if not classifier:
            fallback.append(file)
            classifier = [max(file_rows, key=lambda row: row[COL_LAYER_ORDER])]
        chosen += classifier
    if fallback:
        warn_caller(
            DegenerateMetricWarning(
                f"{len(fallback)} file(s) in {reports} have no classifier rows ('{CLF_ACC}' is null); "
                "following their deepest layer over epochs instead"
            )
        )
    return chosen


def zero_error_epoch(rows: list[dict]) -> int | None:
    """The first epoch whose training classifier accuracy is 1: the start of the terminal phase."""
    perfect = [
        row[COL_EPOCH]
        for row in rows
        if row[COL_SPLIT] == DEFAULT_SPLIT and row[COL_EPOCH] is not None and row.get(CLF_ACC) == 1.0
    ]
    return min(perfect) if perfect else None
