"""Top-1 accuracy of a feature file's stored logits, read back in row blocks of bounded size.

A row counts as correct when the argmax over all its logit columns is its label, ties going to the lowest
class id (numpy's argmax takes the first maximum). ``nccli extract`` counts the rows it stored, not the
model's outputs in memory, so a resumed file, a compressed one and float16 logits report what the file
holds; it records the accuracy as the root attribute :data:`~nccli.schema.ATTR_LOGITS_ACCURACY`. An index
over shards (:mod:`nccli.io.shards`) gets the accuracy over all rows, from each shard's count.
"""

import os

import h5py
import numpy as np

from nccli import schema

BLOCK_BYTES = 16 * 2**20


def top1_counts(logits: h5py.Dataset, labels: h5py.Dataset, keep: np.ndarray | None = None) -> tuple[int, int]:
    """``(correct, rows)`` over the rows ``keep`` marks (all when None), about BLOCK_BYTES of logits at a time."""
    total, width = logits.shape[0], int(np.prod(logits.shape[1:]))
    block = max(1, BLOCK_BYTES // max(1, logits.dtype.itemsize * width))
    chunk = logits.chunks[0] if logits.chunks else 1
    block = max(chunk, block - block % chunk)  # whole chunks: each is read once
    correct = rows = 0
    for start in range(0, total, block):
        scores, truth = logits[start : start + block], labels[start : start + block]
        if keep is not None:
            scores, truth = scores[keep[start : start + block]], truth[keep[start : start + block]]
        correct += int(np.count_nonzero(np.argmax(scores, axis=1) == truth))
        rows += len(truth)
    return correct, rows


def stored_counts(handle: h5py.File) -> tuple[int, int] | None:
    """``(correct, rows)`` of a complete feature file: from its recorded accuracy when it has one, else counted
    from its logits; None for a file without logits."""
    if schema.LOGITS not in handle:
        return None
    rows = handle[schema.LABELS].shape[0]
    recorded = handle.attrs.get(schema.ATTR_LOGITS_ACCURACY)
    if recorded is not None and np.isfinite(recorded):
        return round(float(recorded) * rows), rows  # exact: the float is correct / rows, rounded once
    return top1_counts(handle[schema.LOGITS], handle[schema.LABELS])


def recorded_accuracy(path: str | os.PathLike) -> float | None:
    """The accuracy recorded in the feature file ``path``; None when it has none (no logits)."""
    with h5py.File(path, "r") as handle:
        value = handle.attrs.get(schema.ATTR_LOGITS_ACCURACY)
    return None if value is None else float(value)
