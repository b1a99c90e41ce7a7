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

Under torchrun, rank 0 publishes (renames) the reports only after the last
merge, once they are complete on disk and every rank has reached the job's
last agreement (:meth:`~nccli.analyze.collectives.Group.agree_to_publish`):
a rank that fails or dies before that leaves no report. Once published, the
reports stand: if a rank stops or fails afterwards (torchrun then exits
non-zero), rank 0 warns and returns as usual (the command exits 0 and prints
the report's path).
"""

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from nccli import distributed, schema
from nccli.analyze.analysis import AnalysisResult, AnalyzeConfig, analyze_features
from nccli.analyze.collectives import job
from nccli.analyze.references import reference_paths
from nccli.errors import DegenerateMetricWarning, NcCliError, UsageError, warn_caller
from nccli.io.publish import Staged, cannot_write
from nccli.report.parquet import check_writable, report_metadata, reserve_outputs, to_table
from nccli.report.tables import PairSink, class_columns, pair_columns

if TYPE_CHECKING:
    from nccli.analyze.model_runs import MeasureConfig

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
    that would be too large. On rank 0 (or in one process) it returns if and only if the reports are
    published; an interrupt or a failed rank after that only warns.
    """
    inputs = (*config.files, *([config.ood] if config.ood else []))

    def compute(group, sink: PairSink | None) -> AnalysisResult:
        return analyze_features(config, sink, group)

    return _publish(config.device, compute, _Reports(out, classes, pairs, command, inputs, config.means_from))


@dataclass(frozen=True)
class _Reports:
    """The report files of a run, the command recorded in them, and the inputs (with ``means_from``'s
    references) they must not overwrite."""

    out: PathLike
    classes: PathLike | None
    pairs: PathLike | None
    command: str
    inputs: tuple[PathLike, ...]
    means_from: str | None


def _publish(device: str, compute: Callable, reports: _Reports) -> AnalysisResult:
    """``compute(group, pairs)`` in the torchrun job this process is in (``group`` None in one process), its
    reports written and published by rank 0 (:func:`_write`); the other ranks compute and agree."""
    run = _Run()
    with _sigterm_ignored_once_settled(run):
        try:
            with job(device) as group:
                if group is not None and not group.main:  # the other ranks of a torchrun job compute; rank 0 writes
                    run.result = compute(group, _nowhere if reports.pairs is not None else None)
                    group.agree_to_publish()
                    run.agreed = True
                else:
                    _write(partial(compute, group), reports, group, run)
        except (KeyboardInterrupt, NcCliError, RuntimeError):  # RuntimeError: torch.distributed losing a rank
            if not run.settled:
                raise
            run.broken = True
            if run.staged is not None:  # rank 0, or one process: the other ranks' outcome is rank 0's to say
                warn_caller(DegenerateMetricWarning(_AFTER_PUBLISHING[distributed.launch_from_env() is not None]))
    return run.result


_AFTER_PUBLISHING = {  # the warning of a job that broke after publishing, under torchrun or not
    True: "a rank stopped or failed after the reports were published (torchrun exits non-zero); they are complete",
    False: "interrupted after the reports were published; they are complete",
}


@dataclass
class _Run:
    """How far :func:`write_analysis` got: its result; whether the outcome is settled (rank 0, or one process:
    the reports renamed into place; the other ranks: past the job's last agreement); whether the job broke
    after that."""

    result: AnalysisResult | None = None
    staged: Staged | None = None
    agreed: bool = False
    broken: bool = False

    @property
    def settled(self) -> bool:
        return self.agreed or (self.staged is not None and self.staged.committed)


@contextlib.contextmanager
def _sigterm_ignored_once_settled(run: _Run) -> Iterator[None]:
    """Under torchrun, a rank whose outcome is settled ignores SIGTERM, which torchrun sends every rank once one
    has died: it ends by itself (rank 0 with its reports and exit status 0). The previous handler is back on
    leaving, unless the job broke: then SIGTERM stays ignored (SIG_IGN, which outlives the interpreter's own
    handlers at exit) while the rank ends."""
    if distributed.launch_from_env() is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(number, frame):
        if not run.settled:  # what the previous handler does
            signal.signal(number, previous)
            signal.raise_signal(number)

    signal.signal(signal.SIGTERM, on_sigterm)  # the job's session swaps in its own meanwhile, then restores this
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN if run.broken else previous)


def _nowhere(batch: pa.RecordBatch) -> None:
    """The pair sink of the ranks that do not write (they never summarize, so it is never called)."""


def write_measurement(
    config: "MeasureConfig",
    out: PathLike,
    classes: PathLike | None = None,
    pairs: PathLike | None = None,
    command: str = "nccli measure",
) -> AnalysisResult:
    """``nccli measure``: MODEL over DATA (:func:`~nccli.analyze.model_runs.measure_model`) into the report at
    ``out`` (and ``classes``, ``pairs``) with the guarantees of :func:`write_analysis`, under torchrun too (each rank
    runs the model over its part of DATA)."""
    from nccli.analyze.model_runs import measure_model  # imports torch: analyze of files on the CPU does not

    inputs = (*config.source.models, config.source.data)

    def compute(group, sink: PairSink | None) -> AnalysisResult:
        return measure_model(config, sink, group)

    return _publish(config.source.device, compute, _Reports(out, classes, pairs, command, inputs, config.means_from))


def _write(compute: Callable[[PairSink | None], AnalysisResult], reports: _Reports, group, run: _Run) -> None:
    """Check the outputs against each other and the inputs (and ``means_from``'s references), ``compute`` the
    result with the per-pair rows streamed to their file, write the tables, and publish them together."""
    classes, pairs = reports.classes, reports.pairs
    requested = {"--out": reports.out, "--classes": classes, "--pairs": pairs}
    targets = {option: check_writable(path, option) for option, path in requested.items() if path is not None}
    references = reference_paths(reports.means_from)[0] if reports.means_from else []
    check_apart(targets, [*reports.inputs, *references])
    with reserve_outputs(targets.values()), Staged(targets.values()) as staged:
        stream = _ParquetStream(staged.path(targets["--pairs"])) if pairs is not None else None
        run.result = result = compute(stream.write if stream is not None else None)
        metadata = report_metadata(result, reports.command)
        _write_table(staged, targets["--out"], to_table(result.summary, schema.SUMMARY_COLUMNS, metadata))
        if classes is not None:
            tables = result.classes or [to_table([], class_columns(False), {})]
            _write_table(staged, targets["--classes"], pa.concat_tables(tables).replace_schema_metadata(metadata))
        if stream is not None:
            stream.close(metadata)
        staged.flush()
        if group is not None:
            group.agree_to_publish()
        run.staged = staged
        staged.commit()


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
