"""The per-class and per-pair tables (``docs/report.md``) as Arrow columns, never as one Python object per row.

Each row starts with the summary's keys of its file and layer (``file``, ``split``, ``epoch``, ``layer``),
so the tables join the summary on ``split, epoch, layer`` as well as on ``file, layer``.

The per-pair table has K(K−1)/2 rows per layer, so it is produced as Arrow
record batches, one per tile of :mod:`nccli.metrics.pairs`, and handed to a
sink (the Parquet writer of :mod:`nccli.analyze.outputs` writes each as row
groups) as soon as it is computed; with ``--pairs-top N`` only the N most
confusable pairs of each layer are kept (:class:`~nccli.metrics.pairs.TopPairs`).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from nccli import schema
from nccli.errors import UsageError
from nccli.io.validate import FeatureFileInfo
from nccli.metrics.pairs import PairTile, Tile, TopPairs
from nccli.report.parquet import arrow_type

# The full per-pair table of one run is refused above this many rows (about
# 1.75 GB of Parquet; one K = 10 000 layer holds 50 million pairs): beyond it, the
# table is unusable in a dataframe and --pairs-top N says what a person wants.
PAIRS_ROWS_MAX = 50_000_000
# Parquet bytes per pair row without class names (measured: 1.66 GB for 48 million rows), for the estimate.
PAIR_ROW_BYTES = 35

PairSink = Callable[[pa.RecordBatch], None]
# The keys of a (file, layer) in both tables: the summary's, in its order.
_KEYS = (schema.COL_FILE, schema.COL_SPLIT, schema.COL_EPOCH, schema.COL_LAYER)


def class_columns(named: bool) -> tuple[str, ...]:
    """The per-class table's columns, in order; ``named``: with ``class_name``."""
    names = (schema.COL_CLASS_NAME,) if named else ()
    return (*_KEYS, schema.COL_CLASS, *names, *schema.CLASS_METRICS)


def pair_columns(named: bool) -> tuple[str, ...]:
    """The per-pair table's columns, in order; ``named``: with ``class_name`` and ``class_name_b``."""
    names = (schema.COL_CLASS_NAME, schema.COL_CLASS_NAME_B) if named else ()
    return (*_KEYS, schema.COL_CLASS, schema.COL_CLASS_B, *names, *schema.PAIR_METRICS)


def _keys(info: FeatureFileInfo, layer: str) -> dict:
    return {
        schema.COL_FILE: info.path,
        schema.COL_SPLIT: info.split,
        schema.COL_EPOCH: info.epoch,
        schema.COL_LAYER: layer,
    }


def check_pairs_size(class_counts: Sequence[int]) -> None:
    """Refuse, before any row is read, a full per-pair table above ``PAIRS_ROWS_MAX`` (50 million) rows.

    ``class_counts``: the declared number of classes of every (file, layer)
    analysed; the estimate K(K−1)/2 per layer is an upper bound (absent classes
    have no pairs).
    """
    rows = sum(k * (k - 1) // 2 for k in class_counts)
    if rows > PAIRS_ROWS_MAX:
        raise UsageError(
            f"--pairs would write up to {rows:,} rows, about {rows * PAIR_ROW_BYTES / 1e9:,.1f} GB "
            f"(K(K−1)/2 per layer over {len(class_counts)} layer{'s' if len(class_counts) > 1 else ''}, K up to "
            f"{max(class_counts):,}), "
            f"above the limit of {PAIRS_ROWS_MAX:,} rows; "
            "add --pairs-top N to keep the N pairs with the largest cdnv per layer"
        )


def _column(name: str, values, length: int) -> pa.Array:
    kind = arrow_type(name)
    if isinstance(values, (str, int)) or values is None:  # one value for every row
        return pa.nulls(length, kind) if values is None else pa.repeat(pa.scalar(values, kind), length)
    if isinstance(values, pa.Array):
        return values
    values = np.asarray(values)
    mask = np.isnan(values) if values.dtype.kind == "f" else None  # undefined → null, as in the summary
    return pa.array(values, type=kind, mask=mask)


def _names(class_names: tuple[str, ...] | None, ids: np.ndarray):
    return None if class_names is None else pa.array(class_names, pa.string()).take(pa.array(ids))


def _batch(columns: tuple[str, ...], values: dict, length: int, metadata=None) -> pa.RecordBatch:
    arrays = [_column(name, values.get(name), length) for name in columns]
    fields = [pa.field(name, array.type) for name, array in zip(columns, arrays)]
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))


def class_table(info: FeatureFileInfo, layer: str, columns: dict[str, np.ndarray], named: bool) -> pa.Table:
    """One layer's per-class rows; ``named``: the run has class names (null where this file has none)."""
    ids = columns[schema.COL_CLASS]
    values = {**_keys(info, layer), schema.COL_CLASS_NAME: _names(info.class_names, ids), **columns}
    return pa.Table.from_batches([_batch(class_columns(named), values, len(ids))])


def pair_batch(info: FeatureFileInfo, layer: str, tile: PairTile, named: bool) -> pa.RecordBatch:
    """One tile's per-pair rows as an Arrow record batch."""
    values = {
        **_keys(info, layer),
        schema.COL_CLASS: tile.class_a,
        schema.COL_CLASS_B: tile.class_b,
        schema.COL_CLASS_NAME: _names(info.class_names, tile.class_a),
        schema.COL_CLASS_NAME_B: _names(info.class_names, tile.class_b),
        "cdnv": tile.cdnv,
        "mean_cos": tile.mean_cos,
        "inter_cos": tile.inter_cos,
        "mean_dist": tile.mean_dist,
        "w_cos": tile.w_cos,
    }
    return _batch(pair_columns(named), values, len(tile))


class LayerPairs:
    """One layer's per-pair rows on their way to ``sink``: every tile as it comes, or with ``top`` the
    ``top`` pairs with the largest cdnv once the layer is done (:meth:`close`)."""

    def __init__(self, sink: PairSink, info: FeatureFileInfo, layer: str, named: bool, top: int | None):
        self.sink, self.info, self.layer, self.named = sink, info, layer, named
        self.top = TopPairs(top) if top is not None else None
        self.sent = False

    def add(self, tile: Tile) -> None:
        if self.top is not None:
            self.top.add(tile)
        else:
            self._send(tile.pairs())

    def close(self) -> None:
        """Send the kept top pairs; a layer with no pair still sends an empty batch (the table's schema)."""
        kept = self.top.result() if self.top is not None else None
        if kept is not None or not self.sent:
            self._send(kept if kept is not None else _no_pairs())

    def _send(self, tile: PairTile) -> None:
        self.sink(pair_batch(self.info, self.layer, tile, self.named))
        self.sent = True


def _no_pairs() -> PairTile:
    ints, floats = np.zeros(0, dtype=np.int64), np.zeros(0)
    return PairTile(ints, ints, floats, floats, floats, floats, floats)


@dataclass(frozen=True)
class PairOutput:
    """Where per-pair rows go: ``sink`` (None = nowhere), with class-name columns if any file has names."""

    sink: PairSink | None
    named: bool
    top: int | None

    def layer(self, info: FeatureFileInfo, layer: str) -> LayerPairs | None:
        return None if self.sink is None else LayerPairs(self.sink, info, layer, self.named, self.top)
