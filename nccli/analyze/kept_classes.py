"""``--top-classes`` and ``--min-count``: the classes of a file that analyze keeps, and its rows of only those.

A language model has K = 50 257 next-token classes, most of them rare; the literature analyses the most
frequent ones, or those with at least M rows. The kept set is decided per file from pass 1's class counts
(:func:`kept_classes`), once even when the file's layers take several pairs of passes. The rows of the other
classes are then left out of everything, as if the file held only the kept classes' rows: pass 1's states
lose those classes (:meth:`KeptClasses.restrict`), pass 2 reads only kept rows (:class:`KeptRows`), and a
``--means-from`` reference keeps only their means. The classifier still decides over all its outputs
(``docs/metrics.md``).
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from nccli.analyze.config import AnalyzeConfig
from nccli.errors import UsageError
from nccli.io.rows import RowSource
from nccli.io.validate import LayerInfo
from nccli.metrics.accumulators import ClassMoments
from nccli.metrics.backend import backend_of
from nccli.types import ClassMeans


def kept_classes(config: AnalyzeConfig, count: np.ndarray, path: str) -> "KeptClasses":
    """The present classes among the ``config.top_classes`` with the most rows (ties: the lower class id) that
    have at least ``config.min_count`` rows; ``count`` (C,): each class's rows in file ``path``."""
    kept = count >= (config.min_count or 1)
    if config.top_classes is not None:
        ranked = np.argsort(-count, kind="stable")  # stable: the lower id first among equal counts
        top = np.zeros(len(count), dtype=bool)
        top[ranked[: config.top_classes]] = True
        kept &= top
    if not kept.any():
        raise UsageError(
            f"--min-count {config.min_count} keeps no class of '{path}': its largest class has "
            f"{int(count.max())} rows; lower --min-count"
        )
    return KeptClasses(kept)


def describe(config: AnalyzeConfig) -> str | None:
    """The rule, as the report's ``conventions`` record it (None: every class)."""
    if not config.keeps_some_classes:
        return None
    which = "the classes" if config.top_classes is None else f"the {config.top_classes} most frequent classes"
    least = "" if config.min_count is None else f" with at least {config.min_count} rows"
    ties = "" if config.top_classes is None else "; ties to the lower class id"
    return f"{which}{least} of each file (rows of the others left out{ties})"


@dataclass(frozen=True)
class KeptClasses:
    """The classes of one file that analyze keeps: ``mask`` (C,) bool. Plain data, so that rank 0 can decide
    it and share it with every rank of a torchrun job."""

    mask: np.ndarray

    def restrict(self, moments: dict[str, ClassMoments]) -> None:
        """Pass 1's host states over the kept classes only, in place, one layer at a time (the memory of one
        more layer's state, not of every layer's)."""
        for name, state in moments.items():
            moments[name] = state.restricted(self.mask)

    def means(self, means: ClassMeans, path: str) -> ClassMeans:
        """A reference's class means of the kept classes of file ``path`` only: the NCC rule picks among them
        (refused when the reference has none of them)."""
        at = self.mask[means.ids]
        if not at.any():
            raise UsageError(
                f"the --means-from reference has no rows of the {np.count_nonzero(self.mask)} classes kept in "
                f"'{path}', so the nearest-class-centre rule has no mean to pick; keep other classes or pass "
                "another reference"
            )
        return ClassMeans(means.ids[at], means.means[at])

    def rows(self, source: RowSource, advance: Callable[[int], None]) -> "KeptRows":
        """``source`` with only the kept classes' rows (``advance``: the progress, told of the rows left out)."""
        return KeptRows(source, self.mask, advance)


class KeptRows:
    """A :class:`~nccli.io.rows.RowSource` whose blocks hold only the rows of the classes ``mask`` keeps;
    everything else (``info``, ``classifier``, ``block_rows``, ``part_offsets``, ...) is ``source``'s, so
    torchrun ranks still cut the source's own rows among them."""

    def __init__(self, source: RowSource, mask: np.ndarray, advance: Callable[[int], None]):
        self._source, self._mask, self._advance = source, mask, advance

    def __getattr__(self, name: str):
        return getattr(self._source, name)

    def blocks(
        self, layers: tuple[LayerInfo, ...], block_rows: int, first: int = 0, end: int | None = None
    ) -> Iterator[tuple]:
        """The source's blocks of rows [first, end), each with its kept rows only (a block with none left out)."""
        for labels, rows in self._source.blocks(layers, block_rows, first, end):
            at = np.flatnonzero(self._mask[backend_of(labels).host(labels)])
            if len(at) == len(labels):
                yield labels, rows
                continue
            self._advance(len(labels) - len(at))
            if len(at):
                yield _taken(labels, at), {name: _taken(block, at) for name, block in rows.items()}


def _taken(array, at: np.ndarray):
    """Rows ``at`` of a numpy array or a tensor (indexed on its own device)."""
    return array[at] if isinstance(array, np.ndarray) else array[backend_of(array).labels(at)]
