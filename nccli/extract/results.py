"""What `extract_features` returns per feature file, and the partial file a run resumes or keeps when it stops."""

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from nccli.errors import DataError, ModelError
from nccli.extract.fingerprint import refuse_other_network
from nccli.io.options import stored_options
from nccli.io.writer import FeatureWriter, partial_path


@dataclass(frozen=True)
class ExtractResult:
    """One feature file: where, how many rows, which layers; ``skipped`` if it was already complete.

    ``logits_accuracy``: the top-1 accuracy of the stored logits over the file's rows, as recorded in it (None
    without logits, for a skipped file, and on the ranks other than 0 under torchrun).
    """

    path: str
    rows: int
    layers: tuple[str, ...]
    epoch: int | None = None
    seconds: float = 0.0
    skipped: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    logits_accuracy: float | None = None


class ExtractionInterrupted(KeyboardInterrupt):
    """Ctrl-C during extraction: the rows computed so far are kept in a resumable partial file."""

    def __init__(self, partial: str, rows: int, total: int):
        self.partial, self.rows, self.total = partial, rows, total
        super().__init__(
            f"kept {rows} of {total} rows in '{partial}'; rerun the same command with --resume to continue"
        )


def resumed_or_created(path: str, options: dict, resume: bool, create: Callable[[], FeatureWriter]) -> FeatureWriter:
    """The writer of ``path``: its partial file reopened under ``--resume`` (refused if written by another
    network or with other options), else ``create()``."""
    partial = partial_path(path)
    if resume and os.path.exists(partial):
        refuse_other_network(partial, stored_options(partial), options)
        return FeatureWriter.resume(path, options)
    return create()


@contextlib.contextmanager
def rows_kept_on_failure(writer: FeatureWriter) -> Iterator[None]:
    """On any failure inside, close ``writer``: with no row written, discard its partial file; else keep the
    rows for ``--resume``, saying so (Ctrl-C as :class:`ExtractionInterrupted`, an error of the user's data or
    model with what is kept)."""
    try:
        yield
    except BaseException as error:
        writer.close()
        if writer.rows_written == 0:
            writer.discard()  # nothing to keep, and nothing for the next run to trip over
            raise
        partial = partial_path(writer.path)
        if isinstance(error, KeyboardInterrupt):
            raise ExtractionInterrupted(partial, writer.rows_written, writer.rows) from None
        if isinstance(error, (DataError, ModelError)):  # the user's data or model: say what is kept
            kept = f"'{partial}' keeps the first {writer.rows_written} of {writer.rows} rows: rerun with --resume"
            raise type(error)(f"{error}; {kept} once it is fixed") from None
        raise
