"""``nccli extract`` under torchrun: one process per GPU, each extracting its own contiguous part of the samples.

torchrun (``torch.distributed.run``) starts the processes and tells each its
place through ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. Where those say more than one process, :func:`session` joins
the job: ``--device auto`` (or ``cuda``) becomes ``cuda:LOCAL_RANK`` when CUDA
is available, and the process group is initialised (NCCL on CUDA, gloo on
CPU). Each rank takes rows ``[r·N/W, (r+1)·N/W)`` of the selected samples, so
every sample is extracted exactly once (no padding, unlike
``DistributedSampler``), and writes them to its own shard; rank 0 then writes
the index over the shards (:mod:`nccli.io.shards`).

The ranks agree through the rendezvous store torchrun already runs, not
through collectives: a rank that fails early has to wait for the others to
finish their shards, which may take hours, and a collective that waits past
the process-group timeout fails (NCCL's watchdog aborts the process). Each
agreement is a :meth:`Session.gather`: every rank posts a value and polls
until all ranks have posted, or stops as soon as one has failed.

When a rank fails:

- **an error** (bad input, an unwritable shard, a bug): it posts the failure and
  waits; the others finish their shards (complete, kept), notice it at the
  next agreement and stop. No index is written. Rank 0 prints one line naming
  the failed ranks and every rank exits non-zero (a bug also prints its
  traceback on its own rank). ``--resume`` then redoes only what is missing.
- **a hard death** (killed, out of memory, a lost node): torchrun notices and
  stops the others with SIGTERM, which nccli turns into an interrupt, as for
  Ctrl-C: each rank flushes its partial shard, resumable with ``--resume``.
"""

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from nccli import schema
from nccli.errors import DistributedError, NcCliError, UsageError
from nccli.extract.messages import first_line
from nccli.io import shards
from nccli.io.writer import partial_path

INIT_TIMEOUT = timedelta(minutes=10)  # joining the job, and the process group's own collectives
POLL_SECONDS = 0.2  # how often a waiting rank asks the store whether the others are done
STORE_PREFIX = "nccli/extract"
FAILURES = "failures"
END_OK, END_FAILED, END_STOPPED, END_INTERRUPTED = "ok", "failed:", "stopped", "interrupted"
SKIP, WRITTEN = "skip", "written"


@dataclass(frozen=True)
class Launch:
    """This process's place in the job, from torchrun's environment variables."""

    rank: int
    world: int
    local_rank: int


def launch_from_env(environ=os.environ) -> Launch | None:
    """The job this process belongs to, or None outside torchrun (or in a job of one process)."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    try:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        local_rank = int(environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise DistributedError(
            f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, found {environ.get('RANK')!r}, "
            f"{environ.get('WORLD_SIZE')!r}, {environ.get('LOCAL_RANK')!r}; launch with torchrun"
        ) from None
    return Launch(rank, world, local_rank) if world > 1 else None


def main_process() -> bool:
    """Whether this process prints results: always outside torchrun, rank 0 within."""
    launch = launch_from_env()
    return launch is None or launch.rank == 0


def rank_device(spec: str, local_rank: int) -> str:
    """``auto`` and ``cuda`` mean this rank's GPU, ``cuda:LOCAL_RANK`` (``auto`` without CUDA: ``cpu``)."""
    if spec not in ("auto", "cuda") or not torch.cuda.is_available():
        return "cpu" if spec == "auto" else spec
    if local_rank >= torch.cuda.device_count():
        raise UsageError(
            f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} CUDA device(s); start at most "
            "that many processes per node (torchrun --nproc-per-node)"
        )
    return f"cuda:{local_rank}"


class _PeerFailed(Exception):
    """Another rank failed: this one stops at the agreement point."""


class Session:
    """This rank in a running job: its device and the store the ranks agree through."""

    def __init__(self, launch: Launch, device: str, store: dist.Store):
        self.rank, self.world, self.local_rank = launch.rank, launch.world, launch.local_rank
        self.device = device
        self._store = store
        self._steps = 0

    def gather(self, value: str = "") -> list[str]:
        """Post ``value`` and wait for every rank's: the values by rank. Every rank must call it in the same
        order; raises (to stop this rank) as soon as another rank has failed."""
        self._steps += 1
        keys = [f"{self._steps}/{rank}" for rank in range(self.world)]
        self._store.set(keys[self.rank], value)
        while not self._store.check(keys):
            if int(self._store.add(FAILURES, 0)):
                raise _PeerFailed
            time.sleep(POLL_SECONDS)
        return [self._store.get(key).decode() for key in keys]

    @contextlib.contextmanager
    def rank0_first(self) -> Iterator[None]:
        """Run the block on rank 0, then on the others (downloads into a shared folder)."""
        if self.rank:
            self.gather()
        yield
        if not self.rank:
            self.gather()

    def _end(self, status: str, wait: bool) -> list[str]:
        """Post how this rank ended and, if ``wait``, wait for every rank's ending: the endings by rank."""
        keys = [f"end/{rank}" for rank in range(self.world)]
        self._store.set(keys[self.rank], status)
        if status != END_OK:
            self._store.add(FAILURES, 1)
        if not wait:
            return []
        while not self._store.check(keys):
            time.sleep(POLL_SECONDS)
        return [self._store.get(key).decode() for key in keys]

    def fail(self, error: BaseException) -> BaseException:
        """Report this rank's failure, wait for the others to end, and return what this rank raises."""
        if isinstance(error, KeyboardInterrupt):
            with contextlib.suppress(Exception):  # the store may already be gone with the job
                self._end(END_INTERRUPTED, wait=False)
            return error
        mine = not isinstance(error, _PeerFailed)
        message = str(error) if isinstance(error, NcCliError) else f"{type(error).__name__}: {first_line(error)}"
        try:
            endings = self._end(END_FAILED + message if mine else END_STOPPED, wait=True)
        except (RuntimeError, OSError) as lost:  # the store is gone with the job: say what this rank knows
            endings = [END_FAILED + message if rank == self.rank else END_STOPPED for rank in range(self.world)]
            message = f"{message} (and lost contact with the other ranks: {first_line(lost)})"
        if mine and not isinstance(error, NcCliError):
            return error  # a bug keeps its traceback, on its own rank
        return DistributedError(summary(endings, self.world), echo=self.rank == 0)


def summary(endings: list[str], world: int) -> str:
    """One line for the whole job: the failed ranks and their messages (one message if all ranks agree)."""
    failed: dict[str, list[int]] = {}
    for rank, ending in enumerate(endings):
        if ending.startswith(END_FAILED):
            failed.setdefault(ending[len(END_FAILED) :], []).append(rank)
    if len(failed) == 1 and len(next(iter(failed.values()))) == world:
        return next(iter(failed))  # the same error on every rank: the user's input, said once
    parts = [
        f"{'rank' if len(ranks) == 1 else 'ranks'} {', '.join(map(str, ranks))} of {world}: {message}"
        for message, ranks in failed.items()
    ] or [f"a rank of {world} was interrupted"]
    return "; ".join(parts) + (
        "; the index is written only when every shard is complete: fix this and rerun the same command with "
        "--resume (complete shards are kept)"
    )


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def session(device: str) -> Iterator[Session | None]:
    """Join the torchrun job, if this process is in one (else yield None): process group, device, store.

    On leaving, every rank has ended the same way: all succeeded, or :class:`DistributedError` (printed by
    rank 0 only) after every rank has stopped.
    """
    launch = launch_from_env()
    if launch is None:
        yield None
        return
    if not dist.is_available():
        raise DistributedError(
            f"torchrun started {launch.world} processes but this PyTorch build has no torch.distributed; "
            "install a build with it or run one process"
        )
    spec = rank_device(device, launch.local_rank)
    backend = "nccl" if spec.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(spec))
    try:
        store = next(dist.rendezvous("env://", launch.rank, launch.world, timeout=INIT_TIMEOUT))[0]
        dist.init_process_group(
            backend,
            store=dist.PrefixStore("default_pg", store),
            rank=launch.rank,
            world_size=launch.world,
            timeout=INIT_TIMEOUT,
            device_id=torch.device(spec) if backend == "nccl" else None,
        )
    except (RuntimeError, ValueError) as error:  # torch.distributed's errors derive from RuntimeError
        raise DistributedError(
            f"rank {launch.rank} of {launch.world} cannot join the job (MASTER_ADDR "
            f"{os.environ.get('MASTER_ADDR')!r}, MASTER_PORT {os.environ.get('MASTER_PORT')!r}): {first_line(error)}"
        ) from None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # the agent's store outlives a restart
    current = Session(launch, spec, dist.PrefixStore(f"{STORE_PREFIX}/{attempt}", store))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None  # how torchrun stops ranks
    try:
        try:
            yield current
            endings = current._end(END_OK, wait=True)
        except BaseException as error:
            outcome = current.fail(error)
            if outcome is error:
                raise
            raise outcome from None
        if any(ending != END_OK for ending in endings):  # a rank failed after the last agreement
            raise DistributedError(summary(endings, current.world), echo=current.rank == 0)
        dist.barrier()  # every rank has ended well: returns at once
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def extract_shards(
    current: Session,
    target: str,
    indices: np.ndarray,
    options: dict,
    overwrite: bool,
    complete: Callable[[str, dict], bool],
    write: Callable[[str, np.ndarray, dict], None],
) -> bool:
    """This rank's shard of ``target``, then rank 0 writes the index; False when ``target`` was already complete.

    ``complete(path, options)`` says whether ``--resume`` skips a finished file (and refuses one written with
    other options); ``write(path, rows, options)`` extracts ``rows`` into ``path``.
    """
    ranks = current.world
    if len(indices) < ranks:
        raise UsageError(
            f"{len(indices)} samples for {ranks} processes: every process needs at least one; start fewer processes"
        )
    plan = ""
    if current.rank == 0:  # one decision for all: the ranks must not take different paths through the gathers
        plan = SKIP if complete(target, options) else ""
        if overwrite and not plan:
            shards.remove_stale(target)
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial_path(target))  # a single-process run's, now replaced
    if current.gather(plan)[0] == SKIP:
        return False
    bounds = shards.shard_bounds(len(indices), ranks)
    first, end = int(bounds[current.rank]), int(bounds[current.rank + 1])
    mine = {**options, schema.EXTRACT_OPTION_SHARD: [current.rank, ranks, first, end]}
    path = shards.shard_path(target, current.rank, ranks)
    if not complete(path, mine):
        write(path, indices[first:end], mine)
    current.gather(WRITTEN)
    if current.rank == 0:
        shards.write_index(target, ranks, options)
    current.gather(WRITTEN)
    return True
