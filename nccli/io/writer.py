"""Writing a feature file (``docs/feature-file.md``) so that no finished row is ever lost, even to SIGKILL.

Rows go to ``FILE.partial`` with ``complete = False``. Every
:data:`FLUSH_SECONDS` (and on close) the file is flushed and only then
``rows_written`` raised and flushed, so it never claims rows that are not on
disk; a hard kill loses at most the last few seconds of rows, Ctrl-C none.
Flushing per batch instead would rewrite every partly filled chunk each time;
likewise rows are gathered into writes of about :data:`WRITE_BYTES`, one per
dataset, since each h5py write has a fixed cost.

Crash consistency. HDF5 updates its own structures (chunk index, free space,
end of file) in place and in no guaranteed order, so a process killed inside
a flush can leave a file that no longer opens, or whose chunk index points at
space since reused by another chunk (measured: compressed partial files
killed mid-flush became unreadable; ``tests/benchmarks/RELIABILITY.md``).
Hence the partial file is laid out so that, once created, writing rows never
changes HDF5 metadata: every row dataset is uncompressed with all its chunks
allocated at creation (``H5D_ALLOC_TIME_EARLY``; the file is sparse until
written), rows land in place, and the only metadata a flush changes is the
root object header block holding ``rows_written`` (one write of a few hundred
bytes within a page, rewritten in place with ``attrs.modify``: assigning an
attribute would delete and recreate it, moving header messages around). The file
itself is built as ``FILE.partial.new`` and renamed once whole, so a kill
while creating it leaves nothing half-made. When compression was asked for,
:meth:`FeatureWriter.finish` writes the compressed file from the complete
partial one (same chunks; :mod:`nccli.io.final_copy`), so a resumed file and a single run's are laid out
alike; then, as for uncompressed files, ``FILE`` appears in one rename. The
same rewrite leaves out rows the caller drops (samples ``--skip-unreadable``
left out, which hold placeholder rows in the partial file so that positions
stay aligned for ``--resume``).

A full disk (or any failed write) stops the file where it failed: HDF5
writes through a :class:`~nccli.io.guarded.GuardedFile`, which raises the
first failure (an :class:`OutputError` naming the OS's reason and the rows
kept) and drops every later write, so the partial file stays as of its last
flush and resumes once space is back (``tests/test_reliability_writer.py``).

Every row dataset has explicit chunks of about :data:`CHUNK_BYTES` (whole
rows, full width). One writer per file: an :class:`~nccli.io.lock.OutputLock`
on ``FILE`` is held from create or resume to finish, close or discard.
"""

import contextlib
import os
import time
from dataclasses import dataclass, field

import h5py
import numpy as np

from nccli import schema
from nccli.errors import OutputError, UsageError
from nccli.io.final_copy import write_final
from nccli.io.guarded import GuardedHdf5, failure_of, words
from nccli.io.lock import LOCK_SUFFIX, OutputLock
from nccli.io.options import describe_differences, options_of, store_options, stored_options
from nccli.io.publish import sync

CHUNK_BYTES = 2**20
CHUNK_CACHE_BYTES = 4 * CHUNK_BYTES  # per dataset: a partly filled chunk stays in memory until flushed
CHUNK_CACHE_SLOTS = 1009
FLUSH_SECONDS = 2.0
WRITE_BYTES = 4 * 2**20
PARTIAL_SUFFIX = ".partial"
BUILDING_SUFFIX = ".new"  # FILE.partial.new: a file being created or compressed, renamed when whole


@dataclass(frozen=True)
class RowDataset:
    """A dataset with one row per sample: 1-D when ``width`` is None, else (N, width)."""

    path: str
    width: int | None
    dtype: str
    attrs: dict = field(default_factory=dict)


# HDF5 1.8's object headers keep large attributes (dense storage): class_names of a 50 000-token vocabulary
# would overflow the earliest format's 64 KiB header message. Any HDF5 since 1.8 (2008) reads the file.
CREATED_FORMAT = ("v108", "latest")


def partial_path(path: str) -> str:
    return path + PARTIAL_SUFFIX


def already_complete(path: str, wanted: dict, resume: bool) -> bool:
    """Whether ``--resume`` (``resume``) skips ``path``: a finished file written with the options ``wanted``;
    one written with others is refused."""
    if not (resume and not os.path.exists(partial_path(path)) and os.path.exists(path)):
        return False
    if stored_options(path) != wanted:
        raise UsageError(f"'{path}' exists and was written with other options; pass --overwrite to replace it")
    return True


def chunk_rows(width: int, itemsize: int, rows: int) -> int:
    """Rows per chunk: about CHUNK_BYTES of whole rows, at least 1 and at most ``rows``."""
    return max(1, min(rows, CHUNK_BYTES // (width * itemsize)))


def _open(path: str, mode: str, **options) -> GuardedHdf5:
    return GuardedHdf5(path, mode, rdcc_nbytes=CHUNK_CACHE_BYTES, rdcc_nslots=CHUNK_CACHE_SLOTS, **options)


def _create(path: str) -> GuardedHdf5:
    """A new HDF5 file at nccli's own temporary name ``path``: what a killed run left there (or a link planted
    there) is removed, not followed, and the file is created exclusively (O_EXCL: never through a link)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return _open(path, "x", libver=CREATED_FORMAT)


def _preallocated() -> h5py.h5p.PropDCID:
    """Dataset creation properties: every chunk allocated when the dataset is made, never filled."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def check_output_name(path: str) -> None:
    """Refuse an output named like nccli's own working files (``FILE.partial``, ``FILE.partial.new``,
    ``FILE.lock``): writing it would replace, or be replaced by, another run's work."""
    for suffix in (PARTIAL_SUFFIX, PARTIAL_SUFFIX + BUILDING_SUFFIX, LOCK_SUFFIX):
        if os.fspath(path).endswith(suffix):
            raise UsageError(f"'{path}': names ending in '{suffix}' are nccli's working files; choose another name")


def check_not_being_written(path: str) -> None:
    """Refuse at once, naming it, if another process is writing ``path`` (its partial file is not interrupted)."""
    OutputLock(path).acquire().release()


class FeatureWriter:
    """An open ``FILE.partial``; write rows in order, then :meth:`finish` or :meth:`close`."""

    def __init__(self, file: GuardedHdf5, path: str, rows: int, lock: OutputLock):
        self._file, self._handle, self.path, self.rows, self._lock = (file, file.handle, path, rows, lock)
        self.rows_written = int(self._handle.attrs[schema.ATTR_ROWS_WRITTEN])
        self._rows_on_disk = self._rows_given = self.rows_written
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
        building = partial + BUILDING_SUFFIX
        lock, made = OutputLock(path).acquire(), None
        try:
            made = _create(building)
            with made as handle:
                # complete and rows_written first: they sit in the root header's first block, so raising
                # rows_written rewrites a few hundred bytes in place
                for name, value in {schema.ATTR_COMPLETE: False, schema.ATTR_ROWS_WRITTEN: 0, **attrs}.items():
                    handle.attrs[name] = value
                store_options(handle, options)
                if compression != "none":
                    handle.attrs[schema.ATTR_PENDING_COMPRESSION] = compression
                for spec in datasets:
                    shape = (rows,) if spec.width is None else (rows, spec.width)
                    dtype = np.dtype(spec.dtype)
                    chunks = (chunk_rows(spec.width or 1, dtype.itemsize, rows), *shape[1:])
                    dataset = handle.create_dataset(
                        spec.path, shape=shape, dtype=dtype, chunks=chunks, dcpl=_preallocated()
                    )
                    for name, value in spec.attrs.items():
                        dataset.attrs[name] = value
                for dataset_path, values in (fixed or {}).items():
                    handle.create_dataset(dataset_path, data=values)
                for group, values in (group_attrs or {}).items():
                    for name, value in values.items():
                        handle[group].attrs[name] = value
            if made.failure is not None:
                raise made.failure
            os.replace(building, partial)
            file = _open(partial, "r+")
        except (OSError, RuntimeError) as error:
            lock.release()
            failure = failure_of(error, made)
            if failure is None:
                raise
            with contextlib.suppress(OSError):
                os.remove(building)
            raise OutputError(f"cannot write '{partial}': {words(failure)}") from None
        except BaseException:
            lock.release()
            raise
        return cls(file, path, rows, lock)

    @classmethod
    def resume(cls, path: str, options: dict) -> "FeatureWriter":
        """Reopen ``path.partial`` if it was started with the same ``options``; refuse clearly if not."""
        partial = partial_path(path)
        lock = OutputLock(path).acquire()
        try:
            file = _open(partial, "r+")
        except OSError as error:
            lock.release()
            raise OutputError(
                f"cannot resume '{partial}' (unreadable: {words(error)}); pass --overwrite to start over"
            ) from None
        stored = options_of(file.handle)
        if stored != options:
            file.close()
            lock.release()
            found = "it has no record of its options" if stored is None else describe_differences(stored, options)
            raise UsageError(
                f"cannot resume '{partial}': it was started with other options ({found}); rerun with the "
                "original options, or pass --overwrite to start over"
            )
        return cls(file, path, file.handle[schema.LABELS].shape[0], lock)

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

    @contextlib.contextmanager
    def _writing(self):
        """Turn a failed write (also one HDF5 swallowed) into an OutputError; once failed, always failed."""
        try:
            if self._file.failure is not None:
                raise self._file.failure
            yield
            if self._file.failure is not None:
                raise self._file.failure
        except (OSError, RuntimeError) as error:
            failure = failure_of(error, self._file)
            if failure is None:
                raise
            raise OutputError(
                f"writing '{partial_path(self.path)}' failed: {words(failure)}; its first {self._rows_on_disk} rows "
                "are kept: free space or fix the cause, then rerun with --resume"
            ) from None

    def _write_pending(self) -> None:
        if not self._pending:
            return
        start, stop = self.rows_written, self._rows_given
        with self._writing():
            for path in self._pending[0]:
                dataset = self._datasets.get(path) or self._datasets.setdefault(path, self._handle[path])
                values = np.concatenate([arrays[path] for arrays in self._pending])
                dataset[start:stop] = values.astype(dataset.dtype, copy=False)
        self._pending, self._pending_bytes, self.rows_written = [], 0, stop

    def flush(self) -> None:
        """Put every row taken so far on disk, then record them in ``rows_written`` (on disk too)."""
        self._write_pending()
        with self._writing():
            self._handle.flush()
            self._handle.attrs.modify(schema.ATTR_ROWS_WRITTEN, self.rows_written)
            self._handle.flush()
        self._rows_on_disk, self._flushed_at = self.rows_written, time.monotonic()

    def written(self, path: str) -> np.ndarray:
        """The rows written so far of the 1-D dataset ``path``."""
        self._write_pending()
        with self._writing():
            return self._handle[path][: self.rows_written]

    def dataset(self, path: str) -> h5py.Dataset:
        """The dataset ``path`` of the partial file, every row taken so far written to it: to read rows back."""
        self._write_pending()
        return self._handle[path]

    def finish(
        self, keep: np.ndarray | None = None, extra: dict[str, np.ndarray] | None = None, attrs: dict | None = None
    ) -> None:
        """Mark the file complete and put it at its final name (replacing an old file there) in one rename.

        ``keep`` (a mask over the rows) leaves rows out of the final file and ``extra`` adds datasets to it; the
        file is then written anew from the partial one, as for compression. ``attrs`` sets root attributes of the
        final file: give each a placeholder of the same type when creating the file, so that setting it rewrites
        it in place (as ``rows_written``) instead of changing the partial file's layout.
        """
        partial, building = (partial_path(self.path), partial_path(self.path) + BUILDING_SUFFIX)
        compressed = None
        try:
            self.flush()
            if self.rows_written != self.rows:
                raise ValueError(f"finish() after {self.rows_written} of {self.rows} rows")
            compression = self._handle.attrs.get(schema.ATTR_PENDING_COMPRESSION)
            if compression is None and keep is None and not extra:
                for name, value in (attrs or {}).items():
                    self._handle.attrs.modify(name, value)
                self._handle.attrs.modify(schema.ATTR_COMPLETE, True)
                self._file.close()
            else:
                compressed = _create(building)
                with compressed as target:
                    write_final(self._handle, target, compression, self.rows_written, keep)
                    for path, values in (extra or {}).items():
                        target.create_dataset(path, data=values)
                    for name, value in (attrs or {}).items():
                        target.attrs[name] = value
                self._file.close()  # before the checks: closing may still write (to a file about to go)
            for file in (self._file, compressed):
                if file is not None and file.failure is not None:
                    raise file.failure
            finished = partial if compressed is None else building
            sync(finished)  # on disk before the name says it is complete (nccli.io.publish)
            os.replace(finished, self.path)
            sync(os.path.dirname(self.path) or ".")
            if compressed is not None:
                os.remove(partial)
        except (OSError, RuntimeError) as error:
            failure = failure_of(error, self._file, compressed)
            if failure is None:
                raise
            with contextlib.suppress(OSError):
                os.remove(building)
            raise OutputError(
                f"cannot finish '{self.path}': {words(failure)}; '{partial}' keeps its rows: free space or fix "
                "the cause, then rerun with --resume"
            ) from None
        finally:
            self._file.close()
            self._lock.release()

    def close(self) -> None:
        """Flush, close and keep the partial file, resumable from ``rows_written``."""
        try:
            if not self._file.closed and self._file.failure is None:
                self.flush()
        finally:
            self._file.close()
            self._lock.release()
            self.rows_written = self._rows_on_disk

    def discard(self) -> None:
        """Close and delete the partial file (when it holds no rows worth resuming)."""
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial_path(self.path))
        self._lock.release()
