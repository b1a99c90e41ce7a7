"""Reading feature files (``docs/feature-file.md``): validation up front, then row blocks.

:func:`open_feature_file` checks everything that can be checked without
reading features (:func:`nccli.io.validate.validate`) and raises
:class:`FeatureFileError` naming the file, the path inside it and the problem.
:meth:`FeatureFile.blocks` then yields chunk-aligned row blocks of all
selected layers together, so one pass over the file serves every layer, and
refuses a block holding NaN or Inf.

A damaged header can make the HDF5 library itself loop forever or crash (a
byte-level fuzzer found such files; ``tests/benchmarks/RELIABILITY.md``), and
a call into C cannot be interrupted. So on Linux the file is first opened and
validated in a forked child process (:func:`probe`): when that child does not
finish within :data:`PROBE_SECONDS` or dies of a signal, the file is refused
before the process itself touches it. The probe walks every chunk index it
will later read through, so the reads that follow do not meet a structure
the probe has not.
"""

import contextlib
import os
import select
import signal
import sys
from collections.abc import Iterator

import h5py
import numpy as np
from h5py._objects import phil

from nccli import schema
from nccli.errors import FeatureFileError
from nccli.io.arrays import conversion_hint
from nccli.io.attributes import READ_ERRORS, read_attribute, shown
from nccli.io.checks import first_nonfinite_row
from nccli.io.validate import (
    LABEL_BLOCK_ROWS,
    FeatureFileInfo,
    LayerInfo,
    memory_budget,
    nonfinite_problem,
    validate,
)
from nccli.types import Classifier

BLOCK_BYTES = 16 * 2**20  # float64 bytes of one layer's block
CHUNK_CACHE_BYTES_MAX = 256 * 2**20
PROBE_SECONDS = 60.0

__all__ = ["FeatureFile", "FeatureFileInfo", "LayerInfo", "memory_budget", "open_feature_file", "probe", "read_info"]


class FeatureFile:
    """An open, validated feature file (a :class:`~nccli.io.rows.RowSource`). Use :func:`open_feature_file`."""

    rank_local = False  # every rank opens the whole file and reads its part of the rows

    def __init__(self, handle: h5py.File, info: FeatureFileInfo, classifier: Classifier | None):
        self._handle = handle
        self._datasets: dict[str, h5py.Dataset] = {}
        self.info = info
        self.classifier = classifier

    def _fail(self, path: str, problem: str) -> FeatureFileError:
        return FeatureFileError(self.info.path, path, problem)

    def block_rows(self, layers: tuple[LayerInfo, ...], requested: int | None = None) -> int:
        """Rows per block: about BLOCK_BYTES of float64 for the widest layer, a multiple of its chunk rows."""
        widest = max(layers, key=lambda layer: layer.dim)
        rows = requested or max(1, BLOCK_BYTES // (8 * max(widest.dim, 1)))
        chunk = widest.chunk_rows
        if requested is None and chunk and rows > chunk:
            rows -= rows % chunk
        return max(1, min(rows, max(self.info.n_samples, 1)))

    def blocks(
        self, layers: tuple[LayerInfo, ...], block_rows: int, first: int = 0, end: int | None = None
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Yield ``(labels, {layer: rows})`` blocks of rows [first, end) in stored dtype, checked for finite values."""
        end = self.info.n_samples if end is None else end
        for start in range(first, end, block_rows):
            stop = min(start + block_rows, end)
            labels = self._read(schema.LABELS, start, stop)
            rows = {}
            for layer in layers:
                path = schema.layer_path(layer.name)
                block = self._read(path, start, stop)
                bad = first_nonfinite_row(block)
                if bad is not None:
                    raise self._fail(path, nonfinite_problem(start + bad))
                rows[layer.name] = block
            yield labels, rows

    def _dataset(self, path: str) -> h5py.Dataset:
        """The dataset with a chunk cache of two row-bands of chunks, so no chunk is decompressed twice."""
        if path not in self._datasets:
            stored = self._handle[path]
            access = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
            if stored.chunks:
                band = stored.chunks[0] * int(np.prod(stored.shape[1:], dtype=np.int64)) * stored.dtype.itemsize
                chunks_per_band = int(np.prod([-(-s // c) for s, c in zip(stored.shape[1:], stored.chunks[1:])]))
                access.set_chunk_cache(
                    max(101, 20 * chunks_per_band + 1), int(min(2 * band + 2**20, CHUNK_CACHE_BYTES_MAX)), 1.0
                )
            self._datasets[path] = h5py.Dataset(h5py.h5d.open(self._handle.id, path.encode(), access))
        return self._datasets[path]

    def _read(self, path: str, start: int, stop: int) -> np.ndarray:
        try:
            return self._dataset(path)[start:stop]
        except READ_ERRORS as error:
            raise self._fail(
                path, f"cannot read rows {start}–{stop - 1} (truncated or corrupt file?): {shown(error)}"
            ) from None

    def part_offsets(self) -> np.ndarray | None:
        """The shards' row offsets of a torchrun index (its ``shard_offsets``), None for any other file."""
        return self.attribute("", schema.ATTR_SHARD_OFFSETS)

    def attribute(self, path: str, name: str):
        """Optional attribute ``name`` of the object at ``path`` ('' = the root) as stored; None when absent."""
        try:
            node = self._handle[path] if path else self._handle
        except READ_ERRORS as error:
            raise self._fail(path, f"cannot read (truncated or corrupt file?): {shown(error)}") from None
        return read_attribute(self.info.path, node, name, path)

    def stored(self, path: str) -> tuple[tuple[int, ...], str] | None:
        """Shape and dtype of the dataset at ``path``; None when the file has none there."""
        try:
            node = self._handle.get(path)
            return (tuple(node.shape), str(node.dtype)) if isinstance(node, h5py.Dataset) else None
        except READ_ERRORS as error:
            raise self._fail(path, f"cannot read (truncated or corrupt file?): {shown(error)}") from None

    def present_classes(self) -> np.ndarray:
        """The class ids that have at least one sample, read in blocks of labels."""
        present = np.zeros(0, dtype=np.int64)
        for start in range(0, self.info.n_samples, LABEL_BLOCK_ROWS):
            stop = min(start + LABEL_BLOCK_ROWS, self.info.n_samples)
            present = np.union1d(present, np.unique(self._read(schema.LABELS, start, stop)))
        return present

    def close(self) -> None:
        self._handle.close()


@contextlib.contextmanager
def open_feature_file(
    path: str | os.PathLike, probed: bool = False, expected: FeatureFileInfo | None = None
) -> Iterator[FeatureFile]:
    """Open and validate a feature file; the handle closes on exit. ``probed``: this process has just run
    :func:`probe` on it (or its parent has, for analyze's workers), so it is not forked over again.
    ``expected``: what an earlier validation found; a file that changed since is refused.

    HDF5 errors are translated where the file is opened and validated here, and where rows are read
    (:meth:`FeatureFile.blocks`); an error raised by the caller's own code inside the ``with`` block is
    not about the file and passes through unchanged.
    """
    name = str(path)
    handle, info, classifier = _open_validated(name, probed)
    try:
        if expected is not None and info != expected:
            raise FeatureFileError(name, "", "changed since it was validated at the start of this run")
        yield FeatureFile(handle, info, classifier)
    finally:
        handle.close()


def read_info(path: str | os.PathLike) -> FeatureFileInfo:
    """Probe, open, validate and close a feature file: its description, without holding it open."""
    with open_feature_file(path) as feature_file:
        return feature_file.info


def _open_validated(name: str, probed: bool) -> tuple[h5py.File, FeatureFileInfo, Classifier | None]:
    if not os.path.exists(name):
        raise FeatureFileError(name, "", "no such file")
    if os.path.isdir(name):
        raise FeatureFileError(name, "", "is a directory, not a feature file")
    hint = None if _is_hdf5(name) else conversion_hint(name)
    if hint is not None:
        raise FeatureFileError(name, "", hint)
    if not probed:
        probe(name)
    try:
        handle = h5py.File(name, "r")
    except READ_ERRORS as error:
        problem = "not an HDF5 file" if not _is_hdf5(name) else f"cannot open (truncated or corrupt?): {shown(error)}"
        raise FeatureFileError(name, "", problem) from None
    try:
        info, classifier = validate(handle, name)
    except READ_ERRORS as error:  # h5py's own errors on damaged metadata; ours are FeatureFileErrors
        handle.close()
        raise FeatureFileError(name, "", f"cannot read (truncated or corrupt file?): {shown(error)}") from None
    except BaseException:
        handle.close()
        raise
    return handle, info, classifier


def probe(path: str, seconds: float = PROBE_SECONDS) -> None:
    """Open and validate ``path`` in a forked child first; refuse the file if HDF5 hangs or crashes on it.

    The child's own verdict is not used: when it exits, the caller validates again and reports what it finds.
    Only on Linux (elsewhere forking a process that loaded system frameworks is not safe).
    """
    if not sys.platform.startswith("linux"):
        return
    read, write = os.pipe()
    with phil:  # no other thread is inside HDF5 while forking (the child could not take this lock otherwise)
        pid = os.fork()
    if pid == 0:
        os.close(read)
        _probe_child(path)
    os.close(write)
    try:
        finished, _, _ = select.select([read], [], [], seconds)  # the pipe closes when the child ends
    finally:
        os.close(read)
    if not finished:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if not finished:
        raise FeatureFileError(
            path,
            "",
            f"the HDF5 library did not finish reading the file's structure within {seconds:.0f} s "
            "(a damaged file that makes it loop)",
        )
    if os.WIFSIGNALED(status):
        raise FeatureFileError(
            path,
            "",
            f"reading the file's structure crashes the HDF5 library ({signal.Signals(os.WTERMSIG(status)).name}): "
            "a damaged file",
        )


def _probe_child(path: str) -> None:
    """In the forked child: validate, then exit at once, whatever happens (never back into the caller's code)."""
    code = 0
    try:
        with h5py.File(path, "r") as handle:
            validate(handle, path, scan_labels=False)
    except BaseException:  # noqa: BLE001 - the parent validates again and reports the error itself
        code = 1
    os._exit(code)


def _is_hdf5(path) -> bool:
    try:
        return h5py.is_hdf5(path)
    except OSError:
        return False
