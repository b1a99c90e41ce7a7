"""What `extract_features` returns per feature file, and the interruption that keeps a partial file."""

from dataclasses import dataclass, field


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
