"""The rows of a report that ``nccli plot`` draws: the summary table read and checked, the rows followed
over epochs (each file's classifier input), and the start of the terminal phase."""

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
    METRIC_COLUMNS,
)


def read_report(path: Path) -> list[dict]:
    """The summary rows of a report (the key columns, the model, every metric), or a one-line refusal."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise UsageError(f"report '{path}' not found; give the Parquet file written by `nccli analyze --out`")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"'{path}' is not a readable Parquet file ({reason})") from None
    keys = (COL_FILE, COL_SPLIT, COL_EPOCH, COL_LAYER, COL_LAYER_ORDER)
    missing = [c for c in keys if c not in table.column_names]
    if missing or not any(c in table.column_names for c in METRIC_COLUMNS):
        lacks = f"column(s) {', '.join(repr(c) for c in missing)}" if missing else "every metric column"
        raise UsageError(f"'{path}' is not an nccli report: it lacks {lacks}; plot the report of `nccli analyze`")
    if table.num_rows == 0:
        raise UsageError(f"report '{path}' has no rows; nothing to plot")
    wanted = [c for c in (*keys, COL_MODEL, *METRIC_COLUMNS) if c in table.column_names]
    rows = table.select(wanted).to_pylist()
    for row in rows:
        row.setdefault(COL_MODEL, None)
    return rows


def classifier_input_rows(rows: list[dict], report: Path) -> list[dict]:
    """Each file's rows where the classifier was evaluated, else its deepest layer."""
    by_file = defaultdict(list)
    for row in rows:
        by_file[row[COL_FILE]].append(row)
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
                f"{len(fallback)} file(s) in '{report}' have no classifier rows ('{CLF_ACC}' is null); "
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
