"""A sharded feature file: one shard per torchrun rank under ``FILE.shards/``, and the index ``FILE.h5``.

Each rank writes ``FILE.shards/rank-RRRRR-of-WWWWW.h5``, a complete feature file
(``docs/feature-file.md``) of its contiguous part of the rows. Once every shard is
complete, rank 0 writes ``FILE.h5``: an HDF5 virtual dataset (VDS) file whose
row datasets (``/labels``, ``/sample_index``, ``/logits``, ``/layers/<name>``)
map the shards' rows end to end, with the root, layer and ``/classifier``
contents of shard 0, ``complete = True``, ``rows_written = N``, the top-1
accuracy of the logits over all N rows (:mod:`nccli.io.accuracy`), and the
attributes :data:`~nccli.schema.ATTR_SHARDS` (the shard files) and
:data:`~nccli.schema.ATTR_SHARD_OFFSETS` (their first rows). Any HDF5 reader
opens it as one file.

The shard names stored in the index are relative: HDF5 looks for a relative
VDS source in the folder of the file holding the VDS before the current
directory (checked in ``tests/test_distributed.py``), so the index and its
``.shards`` folder can be moved together. (The environment variable
``HDF5_VDS_PREFIX`` overrides that search.) A missing shard would read as the
fill value, so the fill values are ones readers refuse: label -1, NaN features.
"""

import contextlib
import os
import re
import time

import h5py
import numpy as np

from nccli import schema
from nccli.errors import FeatureFileError, OutputError, UsageError
from nccli.io.accuracy import stored_counts
from nccli.io.options import describe_differences, options_of, store_options
from nccli.io.publish import publish
from nccli.io.writer import PARTIAL_SUFFIX

SHARD_VISIBLE_SECONDS = 60.0  # how long to wait for another node's shard to appear on a shared filesystem
SHARD_POLL_SECONDS = 0.5
ROW_DATASETS = (schema.LABELS, schema.SAMPLE_INDEX, schema.LOGITS)  # and every /layers/<name>


def shards_folder(target: str) -> str:
    """``FILE.h5`` → ``FILE.shards``."""
    return os.path.splitext(target)[0] + schema.SHARDS_FOLDER_SUFFIX


def shard_name(target: str, rank: int, ranks: int) -> str:
    """The shard of ``rank`` relative to the index's folder: ``FILE.shards/rank-00001-of-00004.h5``."""
    return os.path.join(os.path.basename(shards_folder(target)), schema.SHARD_FILE_NAME.format(rank=rank, ranks=ranks))


def shard_path(target: str, rank: int, ranks: int) -> str:
    return os.path.join(os.path.dirname(target), shard_name(target, rank, ranks))


def shard_bounds(rows: int, ranks: int) -> np.ndarray:
    """First row of each rank's contiguous part, then ``rows``: parts differ by at most one row."""
    return np.array([rank * rows // ranks for rank in range(ranks + 1)], dtype=np.int64)


def rank_part(count: int, rank: int, ranks: int, unit: str) -> slice:
    """Rank ``rank``'s contiguous part of ``count`` items (:func:`shard_bounds`), refusing fewer items than ranks
    (``unit`` names them: samples, token windows)."""
    if count < ranks:
        raise UsageError(
            f"{count} {unit} for {ranks} processes: every process needs at least one; start fewer processes"
        )
    bounds = shard_bounds(count, ranks)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


def existing_shards(target: str) -> dict[int, list[str]]:
    """Shard files (complete or ``.partial``) in ``FILE.shards``, by the rank count of the run that wrote them."""
    folder = shards_folder(target)
    found: dict[int, list[str]] = {}
    if not os.path.isdir(folder):
        return found
    pattern = re.compile(schema.SHARD_FILE_PATTERN + f"(?:{re.escape(PARTIAL_SUFFIX)})?")
    for name in sorted(os.listdir(folder)):
        match = pattern.fullmatch(name)
        if match:
            found.setdefault(int(match.group(2)), []).append(os.path.join(folder, name))
    return found


def check_existing(target: str, ranks: int, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, shards the user did not say to continue or replace, and shards of another rank
    count (``ranks`` is 1 outside torchrun): their rows are split differently, so they cannot be resumed."""
    partial = target + PARTIAL_SUFFIX
    if ranks > 1 and resume and os.path.exists(partial) and not os.path.exists(target):
        raise UsageError(
            f"'{partial}' was started by a single process; resume it without torchrun, or pass --overwrite to "
            f"start over with {ranks} processes"
        )
    found = existing_shards(target)
    if not found or overwrite or (resume and os.path.exists(target)):
        return  # nothing there, replaced, or --resume skips or refuses the complete file by its options
    folder = shards_folder(target)
    if not resume:
        raise OutputError(
            f"'{folder}' holds the shards of an earlier extraction; pass --resume to continue it or --overwrite "
            "to start over"
        )
    others = sorted(count for count in found if count != ranks)
    if others:
        running = f"this run has {ranks}" if ranks > 1 else "this run is a single process (not under torchrun)"
        raise UsageError(
            f"'{folder}' holds the shards of a {others[0]}-process extraction but {running}; --resume needs the "
            f"same number of processes ({others[0]} = nodes × processes per node), as the rows are split by it; "
            "or pass --overwrite to start over"
        )


def remove_stale(target: str) -> None:
    """For ``--overwrite``: delete the shards of ``target`` (and the index itself, which would point at them)."""
    try:
        for paths in existing_shards(target).values():
            for path in paths:
                os.remove(path)
        if is_index(target):
            os.remove(target)
        with contextlib.suppress(OSError):
            os.rmdir(shards_folder(target))  # only if empty: anything else there is the user's
    except OSError as error:
        raise OutputError(f"cannot remove the old shards of '{target}': {error}") from None


def is_index(path: str) -> bool:
    """Whether ``path`` is an index over shards (a feature file with :data:`~nccli.schema.ATTR_SHARDS`)."""
    try:
        with h5py.File(path, "r") as handle:
            return schema.ATTR_SHARDS in handle.attrs
    except OSError:
        return False


def write_index(target: str, ranks: int, options: dict) -> None:
    """Write ``target`` over the complete shards of a ``ranks``-process run, atomically (:mod:`nccli.io.publish`).

    Every shard must be complete and written with ``options`` (its own part aside); rows follow rank order.
    """
    names = [shard_name(target, rank, ranks) for rank in range(ranks)]
    folder = os.path.dirname(target)
    handles = []
    try:
        for name in names:
            handles.append(_open_shard(os.path.join(folder, name), options))
        rows = [handle[schema.LABELS].shape[0] for handle in handles]
        offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        row_paths = _row_datasets(handles[0])
        for handle, name in zip(handles[1:], names[1:]):
            _check_same_layout(handles[0], handle, row_paths, os.path.join(folder, name))
        with publish(target) as temporary, h5py.File(temporary, "w") as index:
            _write_index(index, handles, names, offsets, row_paths, options)
    finally:
        for handle in handles:
            handle.close()


def _open_shard(path: str, options: dict) -> h5py.File:
    """A complete shard written with ``options``; waits a little for one another node just renamed."""
    deadline = time.monotonic() + SHARD_VISIBLE_SECONDS
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(SHARD_POLL_SECONDS)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise FeatureFileError(
            path, "", f"cannot open the shard (on a filesystem every node shares?): {error}"
        ) from None
    stored = options_of(handle) or {}
    stored.pop(schema.EXTRACT_OPTION_SHARD, None)
    problem = None
    if not handle.attrs.get(schema.ATTR_COMPLETE, False):
        problem = "the shard is not complete"
    elif stored != options:
        problem = f"the shard was written with other options ({describe_differences(stored, options)})"
    if problem:
        handle.close()
        raise FeatureFileError(path, "", problem)
    return handle


def _row_datasets(handle: h5py.File) -> list[str]:
    paths = [path for path in ROW_DATASETS if path in handle]
    return paths + [schema.layer_path(name) for name in handle[schema.LAYERS]]


def _check_same_layout(first: h5py.File, other: h5py.File, row_paths: list[str], path: str) -> None:
    if sorted(_row_datasets(other)) != sorted(row_paths):
        raise FeatureFileError(path, "", "the shard holds other datasets than shard 0")
    for name in row_paths:
        if (other[name].dtype, other[name].shape[1:]) != (first[name].dtype, first[name].shape[1:]):
            raise FeatureFileError(path, name, "dtype or width differs from shard 0")


def _write_index(
    index: h5py.File,
    handles: list[h5py.File],
    names: list[str],
    offsets: np.ndarray,
    row_paths: list[str],
    options: dict,
) -> None:
    first = handles[0]
    for name, value in first.attrs.items():
        index.attrs[name] = value
    index.attrs[schema.ATTR_COMPLETE] = True
    index.attrs[schema.ATTR_ROWS_WRITTEN] = int(offsets[-1])
    store_options(index, options)
    index.attrs[schema.ATTR_SHARDS] = np.array(names, dtype=object)
    index.attrs[schema.ATTR_SHARD_OFFSETS] = offsets
    if schema.LOGITS in first:  # the accuracy over all rows, not shard 0's: from every shard's count
        counts = [stored_counts(handle) for handle in handles]
        index.attrs[schema.ATTR_LOGITS_ACCURACY] = sum(correct for correct, _ in counts) / int(offsets[-1])
    for path in row_paths:
        source = first[path]
        tail = source.shape[1:]
        layout = h5py.VirtualLayout(shape=(int(offsets[-1]), *tail), dtype=source.dtype)
        for name, start, stop in zip(names, offsets[:-1], offsets[1:]):
            layout[start:stop] = h5py.VirtualSource(name, path, shape=(int(stop - start), *tail))
        fill = np.nan if source.dtype.kind == "f" else -1  # what a missing shard reads as: refused by readers
        dataset = index.create_virtual_dataset(path, layout, fillvalue=fill)
        for name, value in source.attrs.items():
            dataset.attrs[name] = value

    def copy_rest(path: str, node) -> None:
        if isinstance(node, h5py.Dataset) and path not in row_paths and path != schema.SKIPPED_INDEX:
            copied = index.create_dataset(path, data=node[()])
            copied.attrs.update(node.attrs)
        elif isinstance(node, h5py.Group):
            index.require_group(path).attrs.update(node.attrs)

    first.visititems(copy_rest)
    skipped = [handle[schema.SKIPPED_INDEX][()] for handle in handles if schema.SKIPPED_INDEX in handle]
    if skipped:  # every shard's, not shard 0's alone
        index.create_dataset(schema.SKIPPED_INDEX, data=np.concatenate(skipped))
