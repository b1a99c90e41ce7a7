"""``nccli extract`` under torchrun: one process per GPU, each extracting its own contiguous part of the samples.

The job itself (environment, process group, agreement through the store, one
failure line) is :mod:`nccli.distributed`. Each rank takes rows
``[r·N/W, (r+1)·N/W)`` of the selected samples, so every sample is extracted
exactly once (no padding, unlike ``DistributedSampler``), and writes them to
its own shard; rank 0 then writes the index over the shards
(:mod:`nccli.io.shards`).

When a rank fails with an error, the others finish their shards (complete,
kept) and stop at the next agreement; no index is written, and ``--resume``
then redoes only what is missing. A rank killed hard makes torchrun stop the
others with SIGTERM: each rank flushes its partial shard, resumable with
``--resume``.
"""

import contextlib
import os
from collections.abc import Callable

import numpy as np

from nccli import distributed, schema
from nccli.distributed import Session
from nccli.io import shards
from nccli.io.writer import partial_path

SKIP, WRITTEN = "skip", "written"
ADVICE = (
    "the index is written only when every shard is complete: fix this and rerun the same command with "
    "--resume (complete shards are kept)"
)


def session(device: str):
    """:func:`nccli.distributed.session` for ``extract``: its failures end with the advice to ``--resume``."""
    return distributed.session(device, "extract", ADVICE)


def extract_file(
    current: Session | None,
    target: str,
    indices: np.ndarray,
    options: dict,
    overwrite: bool,
    complete: Callable[[str, dict], bool],
    write: Callable[[str, np.ndarray, dict], None],
    unit: str = "samples",
) -> bool:
    """``target`` of ``indices``; False when it was already complete. In one process (``current`` None),
    ``write`` it unless ``complete``; under torchrun, this rank's shard, then rank 0 writes the index.

    ``complete(path, options)`` says whether ``--resume`` skips a finished file (and refuses one written with
    other options); ``write(path, rows, options)`` extracts ``rows`` into ``path``; ``unit`` names what ``indices``
    number (samples, token windows).
    """
    if current is None:
        if complete(target, options):
            return False
        if overwrite:
            shards.remove_stale(target)  # shards of an earlier torchrun run would outlive the file they made
        write(target, indices, options)
        return True
    ranks = current.world
    mine = shards.rank_part(len(indices), current.rank, ranks, unit)
    plan = ""
    if current.rank == 0:  # one decision for all: the ranks must not take different paths through the gathers
        plan = SKIP if complete(target, options) else ""
        if overwrite and not plan:
            shards.remove_stale(target)
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial_path(target))  # a single-process run's, now replaced
    if current.gather(plan)[0] == SKIP:
        return False
    shard_options = {**options, schema.EXTRACT_OPTION_SHARD: [current.rank, ranks, mine.start, mine.stop]}
    path = shards.shard_path(target, current.rank, ranks)
    if not complete(path, shard_options):
        write(path, indices[mine], shard_options)
    current.gather(WRITTEN)
    if current.rank == 0:
        shards.write_index(target, ranks, options)
    current.gather(WRITTEN)
    return True
