"""The final feature file written anew from a complete partial one (``nccli.io.writer``).

Used when compression was asked for (the partial file is always uncompressed,
so that writing rows never changes HDF5 metadata) or when rows are left out
(``--skip-unreadable``) or datasets added: row datasets keep their chunks,
are copied in bands of whole chunks of about :data:`BAND_BYTES`, and every
attribute keeps its stored type.
"""

import h5py
import numpy as np

from nccli import schema

BAND_BYTES = 4 * 2**20
GZIP_LEVEL = 4


def write_final(source: h5py.File, target: h5py.File, compression, rows: int, keep: np.ndarray | None) -> None:
    """Copy the complete partial ``source`` into the new file ``target``: row datasets compressed with
    ``compression`` (the partial file's pending-compression attribute: None, or a filter name as str or
    bytes), chunks kept, only the rows ``keep`` marks (all when None)."""
    filters = _filters("none" if compression is None else _text(compression))
    kept = rows if keep is None else int(keep.sum())
    first = {schema.ATTR_COMPLETE: True, schema.ATTR_ROWS_WRITTEN: kept}
    _copy_attrs(source, target, first=first, skip=(schema.ATTR_PENDING_COMPRESSION,))

    def copy(name: str, node) -> None:
        if isinstance(node, h5py.Group):
            _copy_attrs(node, target.require_group(name))
        elif node.chunks is None:  # the writer makes only row datasets chunked
            source.copy(node, target, name=name)
        else:
            shape, chunks = (kept, *node.shape[1:]), (min(node.chunks[0], kept), *node.chunks[1:])
            copied = target.create_dataset(name, shape=shape, dtype=node.dtype, chunks=chunks, **filters)
            _copy_attrs(node, copied)
            band = max(1, BAND_BYTES // max(1, node.dtype.itemsize * int(np.prod(node.shape[1:]))))
            band = max(node.chunks[0], band - band % node.chunks[0])
            end = 0
            for start in range(0, node.shape[0], band):
                block = node[start : start + band]
                if keep is not None:
                    block = block[keep[start : start + band]]
                if len(block):
                    copied[end : end + len(block)] = block
                    end += len(block)
            copied.flush()  # a failed write here raises; in the dataset's close it would wedge HDF5

    source.visititems(copy)


def _filters(compression: str) -> dict:
    if compression == "none":
        return {}
    filters = {"compression": compression, "shuffle": True}
    if compression == "gzip":
        filters["compression_opts"] = GZIP_LEVEL
    return filters


def _copy_attrs(source, target, first: dict | None = None, skip: tuple[str, ...] = ()) -> None:
    """Every attribute with its stored type, ``first`` (overriding) before the rest, minus ``skip``."""
    for name, value in (first or {}).items():
        target.attrs[name] = value
    for name in source.attrs:
        if name in skip or name in (first or {}):
            continue
        stored = source.attrs.get_id(name)
        target.attrs.create(name, source.attrs[name], shape=stored.shape, dtype=stored.dtype)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
