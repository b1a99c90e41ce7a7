"""Writing analyze's report files: one library call with every guarantee of the command line.

:func:`write_analysis` checks the output paths before any work (writable;
distinct from each other and from every input, compared as resolved paths and,
where the file exists, by device and inode, so symbolic and hard links count),
holds their locks (:func:`~nccli.report.parquet.reserve_outputs`), runs the
analysis with the per-pair table streamed into its temporary file (Parquet row
groups, tile by tile), and renames the outputs into place only when all are
complete: each is written to a temporary file beside its target, flushed to
disk, renamed, and the folder flushed, so a failed or killed run leaves an
earlier report untouched and a report is never seen half-written. Report files
get the permissions of any new file under the user's umask.
"""

import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nccli import schema
from nccli.analyze.analysis import AnalysisResult, AnalyzeConfig, analysis_job, analyze_features
from nccli.analyze.references import reference_paths
from nccli.errors import UsageError
from nccli.io.publish import Staged, cannot_write
from nccli.report.parquet import (
    check_writable,
    class_columns,
    pair_columns,
    report_metadata,
    reserve_outputs,
    to_table,
)

PathLike = str | os.PathLike


def write_analysis(
    config: AnalyzeConfig,
    out: PathLike,
    classes: PathLike | None = None,
    pairs: PathLike | None = None,
    command: str = "nccli analyze",
) -> AnalysisResult:
    """Analyze ``config.files`` and write the summary to ``out``, the per-class table to ``classes``
    and the per-pair table (streamed; ``config.pairs_top`` keeps the top pairs) to ``pairs``.

    ``command`` is recorded in the reports' metadata. Under torchrun every rank calls it; rank 0 writes
    (and returns the result), the others compute their rows (and return an empty result). Raises
    :class:`~nccli.errors.NcCliError` before reading a row for outputs that
    cannot be written, overlap each other or an input, or a per-pair table
    that would be too large.
    """
    with analysis_job(config) as group:
        if group is not None and not group.main:  # the other ranks of a torchrun job compute; rank 0 writes
            return analyze_features(config, _nowhere if pairs is not None else None, group)
        return _write(config, out, classes, pairs, command, group)


def _nowhere(batch: pa.RecordBatch) -> None:
    """The pair sink of the ranks that do not write (they never summarize, so it is never called)."""


def _write(
    config: AnalyzeConfig, out: PathLike, classes: PathLike | None, pairs: PathLike | None, command: str, group
) -> AnalysisResult:
    requested = {"--out": out, "--classes": classes, "--pairs": pairs}
    targets = {option: check_writable(path, option) for option, path in requested.items() if path is not None}
    references = reference_paths(config.means_from)[0] if config.means_from else []
    check_apart(targets, [*config.files, *references, *([config.ood] if config.ood else [])])
    with reserve_outputs(targets.values()), Staged(targets.values()) as staged:
        stream = _ParquetStream(staged.path(targets["--pairs"])) if pairs is not None else None
        result = analyze_features(config, stream.write if stream is not None else None, group)
        metadata = report_metadata(result, command)
        _write_table(staged, targets["--out"], to_table(result.summary, schema.SUMMARY_COLUMNS, metadata))
        if classes is not None:
            tables = result.classes or [to_table([], class_columns(False), {})]
            _write_table(staged, targets["--classes"], pa.concat_tables(tables).replace_schema_metadata(metadata))
        if stream is not None:
            stream.close(metadata)
        staged.commit()
    return result


def write_report(result: AnalysisResult, out: PathLike, command: str) -> None:
    """The summary table of ``result`` at ``out``, atomically."""
    target = check_writable(out, "--out")
    with reserve_outputs([target]), Staged([target]) as staged:
        _write_table(staged, target, to_table(result.summary, schema.SUMMARY_COLUMNS, report_metadata(result, command)))
        staged.commit()


def check_apart(outputs: dict[str, Path], inputs: Iterable[PathLike]) -> None:
    """Refuse outputs that name the same file as one another or as an input (``option → path``)."""
    options = list(outputs.items())
    for index, (option, path) in enumerate(options):
        for other, other_path in options[:index]:
            if _same_file(path, Path(other_path)):
                raise UsageError(f"{other} and {option} both name '{path}'; give each table its own file")
        for source in inputs:
            if _same_file(path, Path(source)):
                raise UsageError(
                    f"{option} '{path}' is the input file '{source}': writing the report would replace it; choose "
                    "another file"
                )


def _same_file(a: Path, b: Path) -> bool:
    """The same resolved path, or (where both exist) the same device and inode."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _write_table(staged: Staged, target: Path, table: pa.Table) -> None:
    try:
        pq.write_table(table, staged.path(target))
    except OSError as error:
        raise cannot_write(error, target) from None


class _ParquetStream:
    """The per-pair table written as it is computed: each record batch becomes row groups of ``path``."""

    def __init__(self, path: Path):
        self.path = path
        self.writer: pq.ParquetWriter | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            if self.writer is None:
                # no stored Arrow schema, so that the metadata added at close is what readers see
                self.writer = pq.ParquetWriter(self.path, batch.schema.remove_metadata(), store_schema=False)
            self.writer.write_batch(batch)
        except OSError as error:
            raise cannot_write(error, self.path) from None

    def close(self, metadata: dict[str, str]) -> None:
        """Add the report's metadata (known only at the end) to the footer and close."""
        try:
            if self.writer is None:  # no layer sent a batch: an empty table, still a valid file
                pq.write_table(to_table([], pair_columns(False), metadata), self.path)
                return
            self.writer.add_key_value_metadata(metadata)
            self.writer.close()
        except OSError as error:
            raise cannot_write(error, self.path) from None
