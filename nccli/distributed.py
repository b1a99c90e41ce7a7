"""Running under torchrun, for every command that does: the job's environment, the process group, agreement, failures.

torchrun (``torch.distributed.run``) starts the processes and tells each its
place through ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. Where those say more than one process, :func:`session` joins
the job: ``--device auto`` (or ``cuda``) becomes ``cuda:LOCAL_RANK`` when CUDA
is available, and the process group is initialised (NCCL on CUDA, gloo on
CPU). ``extract`` (:mod:`nccli.extract.distributed`) and ``analyze``
(:mod:`nccli.analyze.collectives`) build on it.

The ranks agree through the rendezvous store torchrun already runs, not
through collectives: a rank that fails early may have to wait for the others
to finish hours of work, and a collective that waits past the process-group
timeout fails (NCCL's watchdog aborts the process). Each agreement is a
:meth:`Session.gather`: every rank posts a value and polls until all ranks
have posted, or stops as soon as one has failed. Collectives run only after an
agreement has shown every rank alive and ready for them.

When a rank fails:

- **an error** (bad input, an unwritable output, a bug): it posts the failure
  and waits; the others notice it at their next agreement and stop. Rank 0
  prints one line naming the failed ranks and every rank exits non-zero (a bug
  also prints its traceback on its own rank).
- **a hard death** (killed, out of memory, a lost node): torchrun notices and
  stops the others with SIGTERM, which nccli turns into an interrupt, as for
  Ctrl-C.

torch is imported only inside a job: outside one, ``analyze`` on the CPU never imports it.
"""

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from nccli.devices import resolve_device
from nccli.errors import DistributedError, NcCliError, UsageError, first_line

INIT_TIMEOUT = timedelta(minutes=10)  # joining the job, and the process group's own collectives
POLL_SECONDS = 0.2  # how often a waiting rank asks the store whether the others are done
REPORT_SECONDS = 5.0  # how long the other ranks of a failed job wait for rank 0 to report and exit
FAILURES = "failures"
END_OK, END_FAILED, END_STOPPED, END_INTERRUPTED = "ok", "failed:", "stopped", "interrupted"


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
    """``auto`` and ``cuda`` mean this rank's GPU, ``cuda:LOCAL_RANK`` (``auto`` without CUDA: ``cpu``); other
    devices as :func:`nccli.devices.resolve_device` says."""
    if spec not in ("auto", "cuda") or resolve_device(spec) == "cpu":
        return resolve_device(spec)
    import torch

    if local_rank >= torch.cuda.device_count():
        raise UsageError(
            f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} CUDA device(s); start at most "
            "that many processes per node (torchrun --nproc-per-node)"
        )
    return f"cuda:{local_rank}"


class _PeerFailed(Exception):
    """Another rank failed: this one stops at the agreement point."""


class Session:
    """This rank in a running job: its device and the store the ranks agree through. ``advice``
    ends the job's failure line (what to do next)."""

    def __init__(self, launch: Launch, device: str, store, advice: str = ""):
        self.rank, self.world, self.local_rank = launch.rank, launch.world, launch.local_rank
        self.device = device
        self.advice = advice
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
        return DistributedError(summary(endings, self.world, self.advice), echo=self.rank == 0)


def summary(endings: list[str], world: int, advice: str = "") -> str:
    """One line for the whole job: the failed ranks and their messages (one message if all ranks agree),
    then ``advice``."""
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
    return "; ".join(parts) + (f"; {advice}" if advice else "")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def session(device: str, command: str, advice: str = "") -> Iterator[Session | None]:
    """Join the torchrun job, if this process is in one (else yield None): process group, device, store.

    ``command`` names the agreements in the store; ``advice`` ends the failure line. On leaving, every
    rank has ended the same way: all succeeded, or :class:`DistributedError` (printed by rank 0 only)
    after every rank has stopped.
    """
    launch = launch_from_env()
    if launch is None:
        yield None
        return
    import torch
    import torch.distributed as dist

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
    current = Session(launch, spec, dist.PrefixStore(f"nccli/{command}/{attempt}", store), advice)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None  # how torchrun stops ranks
    reported = False  # a failure rank 0 reports for the job
    try:
        try:
            yield current
            endings = current._end(END_OK, wait=True)
        except BaseException as error:
            outcome = current.fail(error)
            if outcome is error:
                raise
            reported = True
            raise outcome from None
        if any(ending != END_OK for ending in endings):  # a rank failed after the last agreement
            reported = True
            raise DistributedError(summary(endings, current.world, advice), echo=current.rank == 0)
        dist.barrier()  # every rank has ended well: returns at once
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        if reported and current.rank:
            # torchrun stops every rank as soon as one exits: leave rank 0 the time to print the job's line
            # and exit first (this rank then ends by SIGTERM, quietly, or after the pause, non-zero either way)
            time.sleep(REPORT_SECONDS)
