"""``RowSource``: what analyze's passes read, whatever holds the rows.

Three things implement it: the feature file (:class:`nccli.io.reader.FeatureFile`; a torchrun shard
index is one too, its rows read through the shards), and batches in memory
(:class:`nccli.analyze.memory.BatchRows`, ``measure_collapse`` and ``nccli measure``, where each
torchrun rank's batches are its own part of the rows). The passes
(:mod:`nccli.analyze.passes`) and the torchrun collectives see only this.
"""

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from nccli.io.validate import FeatureFileInfo, LayerInfo
from nccli.types import Classifier


class RowSource(Protocol):
    """Rows of every layer with their labels, in blocks; what describes them (``info``) and the classifier."""

    info: FeatureFileInfo
    classifier: Classifier | None
    rank_local: bool  # under torchrun: the source holds this rank's rows only (read whole), not every rank's

    def block_rows(self, layers: tuple[LayerInfo, ...], requested: int | None = None) -> int:
        """Rows per block for ``layers`` (``requested``, else the source's own choice)."""
        ...

    def blocks(
        self, layers: tuple[LayerInfo, ...], block_rows: int, first: int = 0, end: int | None = None
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """``(labels, {layer: rows})`` for rows [first, end), checked as analyze checks a file."""
        ...

    def part_offsets(self) -> np.ndarray | None:
        """Row offsets of the source's own parts (a torchrun index's shards: S + 1 offsets), or None."""
        ...
