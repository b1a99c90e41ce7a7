"""Writing a feature file (``feature-file.md``) so that no finished row is ever lost.

Rows go to ``FILE.partial`` with ``complete = False``. Every
:data:`FLUSH_SECONDS` (and on close) the file is flushed and only then
``rows_written`` raised and flushed, so it never claims rows that are not on
disk; a hard kill loses at most the last few seconds of rows, Ctrl-C none.
Flushing per batch instead would rewrite (and recompress) every partly filled
chunk each time, several times the cost of writing the rows; likewise rows are
gathered into writes of about :data:`WRITE_BYTES`, one per dataset, since each
h5py write has a fixed cost. :meth:`FeatureWriter.finish` sets ``complete = True`` and
renames the partial file onto ``FILE`` in one step. Every row dataset is
created at its full size with explicit chunks of about :data:`CHUNK_BYTES`
(whole rows, full width), so a resumed file has the same layout and contents
as one written in a single run.
"""

import contextlib
import json
import os
import time
from dataclasses import dataclass, field

import h5py
import numpy as np

from nccli import schema
from nccli.errors import OutputError, UsageError

CHUNK_BYTES = 2**20
CHUNK_CACHE_BYTES = 4 * CHUNK_BYTES  # per dataset: a partly filled chunk stays in memory until flushed
CHUNK_CACHE_SLOTS = 1009
FLUSH_SECONDS = 2.0
WRITE_BYTES = 4 * 2**20
PARTIAL_SUFFIX = ".partial"
GZIP_LEVEL = 4
MAX_SHOWN_VALUE = 40


@dataclass(frozen=True)
class RowDataset:
    """A dataset with one row per sample: 1-D when ``width`` is None, else (N, width)."""

    path: str
    width: int | None
    dtype: str
    attrs: dict = field(default_factory=dict)


def partial_path(path: str) -> str:
    return path + PARTIAL_SUFFIX


def chunk_rows(width: int, itemsize: int, rows: int) -> int:
    """Rows per chunk: about CHUNK_BYTES of whole rows, at least 1 and at most ``rows``."""
    return max(1, min(rows, CHUNK_BYTES // (width * itemsize)))


def _open(path: str, mode: str) -> h5py.File:
    return h5py.File(path, mode, rdcc_nbytes=CHUNK_CACHE_BYTES, rdcc_nslots=CHUNK_CACHE_SLOTS)


def stored_options(path: str) -> dict | None:
    """The extract options a feature file was written with, or None if it has none (or is unreadable)."""
    try:
        with h5py.File(path, "r") as handle:
            value = handle.attrs.get(schema.ATTR_EXTRACT_OPTIONS)
    except OSError:
        return None
    return None if value is None else json.loads(value)


def describe_differences(stored: dict, wanted: dict) -> str:
    """``key: old → new`` for each option that differs (long values by name only)."""
    parts = []
    for key in sorted(set(stored) | set(wanted)):
        old, new = stored.get(key), wanted.get(key)
        if old != new:
            shown = f"{old} → {new}"
            parts.append(f"{key}: {shown}" if len(shown) <= 2 * MAX_SHOWN_VALUE else key)
    return "; ".join(parts)


class FeatureWriter:
    """An open ``FILE.partial``; write rows in order, then :meth:`finish` or :meth:`close`."""

    def __init__(self, handle: h5py.File, path: str, rows: int):
        self._handle, self.path, self.rows = handle, path, rows
        self.rows_written = int(handle.attrs[schema.ATTR_ROWS_WRITTEN])
        self._rows_given = self.rows_written
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_bytes = 0
        self._datasets: dict[str, h5py.Dataset] = {}
        self._flushed_at = time.monotonic()

    @classmethod
    def create(
        cls,
        path: str,
        rows: int,
        datasets: list[RowDataset],
        attrs: dict,
        options: dict,
        compression: str = "none",
        fixed: dict[str, np.ndarray] | None = None,
        group_attrs: dict[str, dict] | None = None,
    ) -> "FeatureWriter":
        """A new ``path.partial`` (replacing any old one) with every dataset at full size."""
        partial = partial_path(path)
        try:
            handle = _open(partial, "w")
        except OSError as error:
            raise OutputError(f"cannot write '{partial}': {error}") from None
        try:
            for name, value in {**attrs, schema.ATTR_COMPLETE: False, schema.ATTR_ROWS_WRITTEN: 0}.items():
                handle.attrs[name] = value
            handle.attrs[schema.ATTR_EXTRACT_OPTIONS] = json.dumps(options, sort_keys=True)
            filters = {} if compression == "none" else {"compression": compression, "shuffle": True}
            if compression == "gzip":
                filters["compression_opts"] = GZIP_LEVEL
            for spec in datasets:
                shape = (rows,) if spec.width is None else (rows, spec.width)
                dtype = np.dtype(spec.dtype)
                chunks = (chunk_rows(spec.width or 1, dtype.itemsize, rows), *shape[1:])
                dataset = handle.create_dataset(spec.path, shape=shape, dtype=dtype, chunks=chunks, **filters)
                for name, value in spec.attrs.items():
                    dataset.attrs[name] = value
            for dataset_path, values in (fixed or {}).items():
                handle.create_dataset(dataset_path, data=values)
            for group, values in (group_attrs or {}).items():
                for name, value in values.items():
                    handle[group].attrs[name] = value
            handle.flush()
        except OSError as error:
            handle.close()
            raise OutputError(f"cannot write '{partial}': {error}") from None
        return cls(handle, path, rows)

    @classmethod
    def resume(cls, path: str, options: dict) -> "FeatureWriter":
        """Reopen ``path.partial`` if it was started with the same ``options``; refuse clearly if not."""
        partial = partial_path(path)
        try:
            handle = _open(partial, "r+")
        except OSError as error:
            raise OutputError(
                f"cannot resume '{partial}' (unreadable: {error}); pass --overwrite to start over"
            ) from None
        stored = handle.attrs.get(schema.ATTR_EXTRACT_OPTIONS)
        stored = None if stored is None else json.loads(stored)
        if stored != options:
            handle.close()
            found = "it has no record of its options" if stored is None else describe_differences(stored, options)
            raise UsageError(
                f"cannot resume '{partial}': it was started with other options ({found}); rerun with the "
                "original options, or pass --overwrite to start over"
            )
        return cls(handle, path, handle[schema.LABELS].shape[0])

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Take rows ``start …`` of each dataset; they reach the file within WRITE_BYTES or FLUSH_SECONDS."""
        if start != self._rows_given:
            raise ValueError(f"rows must be written in order: expected row {self._rows_given}, got {start}")
        self._pending.append(arrays)
        self._pending_bytes += sum(values.nbytes for values in arrays.values())
        self._rows_given += len(next(iter(arrays.values())))
        if self._pending_bytes >= WRITE_BYTES:
            self._write_pending()
        if time.monotonic() - self._flushed_at >= FLUSH_SECONDS:
            self.flush()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        start, stop = self.rows_written, self._rows_given
        try:
            for path in self._pending[0]:
                dataset = self._datasets.get(path) or self._datasets.setdefault(path, self._handle[path])
                values = np.concatenate([arrays[path] for arrays in self._pending])
                dataset[start:stop] = values.astype(dataset.dtype, copy=False)
        except OSError as error:
            raise OutputError(f"writing '{partial_path(self.path)}' failed: {error}") from None
        self._pending, self._pending_bytes, self.rows_written = [], 0, stop

    def flush(self) -> None:
        """Put every row taken so far on disk, then record them in ``rows_written`` (on disk too)."""
        self._write_pending()
        try:
            self._handle.flush()
            self._handle.attrs[schema.ATTR_ROWS_WRITTEN] = self.rows_written
            self._handle.flush()
        except OSError as error:
            raise OutputError(f"writing '{partial_path(self.path)}' failed: {error}") from None
        self._flushed_at = time.monotonic()

    def finish(self) -> None:
        """Mark the file complete and rename it onto its final name (replacing an old file there)."""
        self._write_pending()
        if self.rows_written != self.rows:
            raise ValueError(f"finish() after {self.rows_written} of {self.rows} rows")
        try:
            self._handle.attrs[schema.ATTR_ROWS_WRITTEN] = self.rows_written
            self._handle.attrs[schema.ATTR_COMPLETE] = True
            self._handle.close()
            os.replace(partial_path(self.path), self.path)
        except OSError as error:
            raise OutputError(f"cannot finish '{self.path}': {error}") from None

    def close(self) -> None:
        """Flush, close and keep the partial file, resumable from ``rows_written``."""
        if self._handle.id.valid:
            try:
                self.flush()
            finally:
                self._handle.close()

    def discard(self) -> None:
        """Close and delete the partial file (when it holds no rows worth resuming)."""
        if self._handle.id.valid:
            self._handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial_path(self.path))
