"""``analyze`` under torchrun: which rows each rank reads, and how states and geometries move between ranks.

``torchrun --nproc-per-node G [--nnodes M ...] -m nccli analyze FILE... --out r.parquet`` needs no flag:
each rank joins the job (:func:`nccli.distributed.session`: gloo on the CPU, NCCL with rank r on
``cuda:LOCAL_RANK``) and runs analyze's own passes (:class:`nccli.analyze.passes.Scanner`) over its part of each
file's rows (:func:`rank_rows`):

- a torchrun shard index (``extract`` under torchrun; :mod:`nccli.io.shards`) of S shards read by W
  ranks, S a multiple of W: rank r reads shards [r·S/W, (r+1)·S/W), the rows rank r wrote when
  ``extract`` ran with the same layout (one shard file per rank, often still in its node's cache);
- any other file: W consecutive ranges cut at multiples of the block size (the last ranks may get none
  when the file has fewer blocks than ranks).

**Merging.** Every state merges with its own ``merge`` (count-weighted means for pass 1, sums and minima
for pass 2): the one code path that a single process uses over its blocks, so torchrun adds no second
implementation of any statistic, and a field added to a state moves and merges with no change here (the
fields travel generically, as arrays). Ranks merge in a binomial tree, in rank order: at step s = 1, 2,
4, … rank r with r mod 2s = s sends its states to rank r − s, which merges them after its own. Every
rank's rows enter exactly once, in a fixed order (the same rounding every run); rank 0 ends with the
merged states after ⌈log₂ W⌉ steps, and no rank ever holds more than its own states, one received layer
state and their merge: O(K·d) per layer, not O(W·K·d) as gathering every rank's states would be. (An
all-reduce of sums would be a second formula for the same statistics, rounding differently from
one process.)

**Geometry.** Pass 2 needs the same fixed quantities on every rank: rank 0 builds them from the merged
states, once, and broadcasts them byte for byte, so every rank decides with bit-identical centres
(recomputing them elsewhere could round differently on another CPU or GPU). Only rank 0 then summarizes
and writes the reports; the other ranks compute and wait at the job's last agreement
(:meth:`Group.agree_to_publish`), which rank 0 joins once its reports are complete on disk: it renames them
into place only when every rank has got there.

Every collective follows an agreement through the store (:meth:`nccli.distributed.Session.gather`): a
rank that failed (a NaN in its rows, say) is noticed there by all, so no rank waits in a collective for
one that will never come, and no report is written from part of the rows.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator

import numpy as np

from nccli import distributed
from nccli.analyze.plan import row_ranges
from nccli.errors import DistributedError, UsageError
from nccli.io.rows import RowSource
from nccli.io.validate import FeatureFileInfo
from nccli.metrics.backend import select_backend

ADVICE = "no report was written; fix this and rerun the command"


def rank_rows(n_samples: int, block_rows: int, ranks: int, shard_offsets=None) -> list[tuple[int, int]]:
    """Rows [start, stop) of each rank: whole shards of an index when they divide among the ranks,
    else consecutive block-aligned ranges (empty for ranks past the last block)."""
    if shard_offsets is not None and (len(shard_offsets) - 1) % ranks == 0:
        cuts = [int(offset) for offset in shard_offsets[:: (len(shard_offsets) - 1) // ranks]]
        return list(zip(cuts, cuts[1:]))
    parts = row_ranges(n_samples, block_rows, ranks)
    return parts + [(n_samples, n_samples)] * (ranks - len(parts))


@contextlib.contextmanager
def job(device: str) -> Iterator["Group | None"]:
    """Join the torchrun job this process is in, if any (else yield None), computing on ``device``
    (``auto``/``cuda``: this rank's GPU). Failures end as one line from rank 0 (:mod:`nccli.distributed`)."""
    launch = distributed.launch_from_env()
    if launch is None:
        yield None
        return
    spec = distributed.rank_device(device, launch.local_rank)
    try:
        select_backend(spec)  # before joining: a missing GPU is the same error on every rank, said once
    except UsageError as error:
        raise DistributedError(str(error), echo=launch.rank == 0) from None
    with distributed.session(spec, "analyze", ADVICE) as current:
        yield Group(current)


class Group:
    """This rank's share of the analysis: its rows, and the moves of states and geometries between ranks."""

    def __init__(self, session: distributed.Session):
        import torch
        import torch.distributed as dist

        self.torch, self.dist = torch, dist
        self.session = session
        self.rank, self.world = session.rank, session.world
        self.main = self.rank == 0
        self.device = session.device
        self.wire = torch.device(session.device if dist.get_backend() == "nccl" else "cpu")  # where collectives run

    def agree(self) -> None:
        """Wait until every rank is here; stop if one has failed (before a collective, and once everything
        is validated: before any rank reads a row)."""
        self.session.gather()

    def agree_to_publish(self) -> None:
        """The job's last agreement, after the last merge: rank 0 publishes the reports only once every rank
        is here (none has failed or died)."""
        self.session.gather()

    def agree_on_inputs(self, infos: list[FeatureFileInfo]) -> None:
        """:meth:`agree`, and every rank sees the same files under the same paths (size, rows, layers,
        classes and provenance): on a filesystem that is not really shared, ranks would otherwise merge rows
        of different files into one report."""
        self.agree_on(
            [info.path for info in infos],
            [_identity(info) for info in infos],
            "the feature files must be on a filesystem every rank shares",
        )

    def agree_on(self, names: list[str], identities: list[str], advice: str) -> None:
        """:meth:`agree`, and every rank has the same ``identities`` (short digests) of the inputs ``names``;
        ``advice`` says what must hold when one differs."""
        for rank, theirs in enumerate(self.session.gather(json.dumps(identities))):
            for name, own, other in zip(names, identities, json.loads(theirs)):
                if own != other:
                    raise DistributedError(
                        f"rank {rank} sees another input than rank {self.rank} at '{name}' ({other} against "
                        f"{own}): {advice}; {ADVICE}",
                        echo=self.main,
                    )

    def rows(self, source: RowSource, block_rows: int) -> tuple[int, int]:
        """This rank's rows [start, stop) of ``source`` (:func:`rank_rows`): all of them where each rank's
        source holds only its own rows (``rank_local``: ``nccli measure``'s model runs)."""
        if source.rank_local:
            return 0, source.info.n_samples
        return rank_rows(source.info.n_samples, block_rows, self.world, source.part_offsets())[self.rank]

    def reduce(self, states: dict) -> dict | None:
        """Every rank's ``{layer: state}`` merged in rank order (binomial tree): the merged states on rank 0,
        None on the others."""
        self.agree()
        step = 1
        while step < self.world:
            if self.rank % (2 * step) == step:
                for state in states.values():
                    for array in _arrays(state):
                        if array.nbytes:  # the receiver knows the shapes: an empty array needs no message
                            self.dist.send(self._on_wire(array), self.rank - step)
                return None
            if self.rank + step < self.world:
                for name, state in states.items():
                    received = [self._receive(array, self.rank + step) for array in _arrays(state)]
                    states[name] = state.merge(_rebuilt(state, received))
            step *= 2
        return states

    def share(self, build: Callable[[], dict]):
        """``build()`` run on rank 0 (``{name: dataclass of arrays and values}``), and the same bytes on every rank."""
        value = build() if self.main else None
        self.agree()
        header = [_describe(value) if self.main else None]
        self.dist.broadcast_object_list(header, src=0, device=self.wire)
        shared = {}
        for name, (kind, fields) in header[0].items():
            parts = {}
            for field, (how, *detail) in fields.items():
                if how == "value":
                    parts[field] = detail[0]
                elif how == "same":
                    parts[field] = parts[detail[0]]
                else:
                    parts[field] = self._broadcast(getattr(value[name], field) if self.main else None, how, *detail)
            shared[name] = kind(**parts)
        return shared

    def _on_wire(self, array):
        """The bytes of a numpy array or tensor, as a flat uint8 tensor on the collectives' device."""
        if isinstance(array, np.ndarray):
            array = self.torch.from_numpy(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        else:
            array = array.contiguous().reshape(-1).view(self.torch.uint8)
        return array.to(self.wire)

    def _receive(self, like: np.ndarray, source: int) -> np.ndarray:
        """An array shaped like ``like`` from rank ``source``, on the host."""
        if not like.nbytes:
            return like.copy()
        buffer = self.torch.empty(like.nbytes, dtype=self.torch.uint8, device=self.wire)
        self.dist.recv(buffer, source)
        return buffer.cpu().numpy().view(like.dtype).reshape(like.shape)

    def _broadcast(self, array, how: str, dtype, shape):
        """One array from rank 0: numpy on the host, or a tensor on this rank's device."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * (np.dtype(dtype).itemsize if how == "numpy" else dtype.itemsize)
        buffer = (
            self._on_wire(array) if self.main else self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.wire)
        )
        if nbytes:
            self.dist.broadcast(buffer, src=0)
        if how == "numpy":
            return array if self.main else buffer.cpu().numpy().view(dtype).reshape(shape)
        return array if self.main else buffer.view(dtype).reshape(shape).to(self.device)


def _arrays(state) -> list[np.ndarray]:
    """A host state's fields as arrays (numbers as 0-d float64 arrays; None left out), in field order."""
    values = (getattr(state, field.name) for field in dataclasses.fields(state))
    return [
        np.asarray(value, dtype=np.float64) if isinstance(value, (int, float)) else value
        for value in values
        if value is not None
    ]


def _rebuilt(template, arrays: list[np.ndarray]):
    """A state like ``template`` with the field values ``arrays`` (as :func:`_arrays` gives them)."""
    values, parts = iter(arrays), {}
    for field in dataclasses.fields(template):
        mine = getattr(template, field.name)
        if mine is not None:
            value = next(values)
            parts[field.name] = type(mine)(value) if isinstance(mine, (int, float)) else value
    return dataclasses.replace(template, **parts)


def _describe(value: dict) -> dict:
    """How to rebuild ``value`` (``{name: dataclass}``) elsewhere: per field its dtype and shape, the field
    it is the same array as, or the value itself."""
    described = {}
    for name, item in value.items():
        fields, seen = {}, {}
        for field in dataclasses.fields(item):
            part = getattr(item, field.name)
            if id(part) in seen:
                fields[field.name] = ("same", seen[id(part)])
            elif isinstance(part, np.ndarray):
                fields[field.name] = ("numpy", part.dtype.str, part.shape)
            elif hasattr(part, "dtype") and hasattr(part, "device"):  # a tensor
                fields[field.name] = ("torch", part.dtype, tuple(part.shape))
            else:
                fields[field.name] = ("value", part)
            if hasattr(part, "dtype"):
                seen[id(part)] = field.name
        described[name] = (type(item), fields)
    return described


def _identity(info: FeatureFileInfo) -> str:
    """A short digest of what makes a feature file this file: its size, rows, classes, layers and provenance."""
    return digest(
        os.path.getsize(info.path),
        info.n_samples,
        info.num_classes,
        info.split,
        info.epoch,
        [(layer.name, layer.dim) for layer in info.layers],
        sorted(info.provenance.items()),
    )


def digest(*described) -> str:
    """A short digest of ``described`` (numbers, strings, lists of them)."""
    return hashlib.sha256(repr(described).encode()).hexdigest()[:16]
