"""SIGKILL ``nccli extract`` at many points of one run, ``--resume`` each time, and compare with an uninterrupted run.

Run from the repository root (a script, not a pytest test; ``tests/test_reliability_kill.py`` runs a few
kill points of it)::

    python tests/benchmarks/reliability_kill.py                       # 24 kill points, no compression
    python tests/benchmarks/reliability_kill.py --kills 30 --compression gzip --seed 3

One extraction of the bundled digits (1347 rows, batch 1, every default layer plus logits) is started
with ``--resume`` again and again; each start is killed with SIGKILL at its next kill point until the
points are used up, then one last ``--resume`` runs to the end. Its datasets must equal, bit for bit and
with the same dtypes, chunks and filters, those of an uninterrupted run.

The child is ``nccli extract`` itself (the real command line, in a process of its own, forked from a
server that imported torch and nccli once, so that a start costs milliseconds), with its write points
made observable (one message per event on a pipe: the partial file's creation, each batch handed to
the writer, each HDF5 flush, the final rename) and, to put many flushes and chunks into a short run, the
writer's ``FLUSH_SECONDS`` and ``CHUNK_BYTES`` lowered (the reference run uses the same values, so the
layouts match). Kill points cycle through four kinds, each after a random number of batches:

* ``batch``: right after a batch reached the writer (plus a random 0–2 ms), anywhere in compute or writing;
* ``flush``: at the start of an HDF5 flush (plus a random 0–300 µs), so inside ``H5Fflush``;
* ``time``: a random 0–1 s after the child started: loading the model, reopening the partial file, rows;
* ``create``, the first point: while the partial file is created; ``finish``, the last: while it is
  marked complete and renamed.

A kill counts as *inside a flush* when the flush it followed had not reported its end.
"""

import argparse
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers the test suite uses too
from extract_helpers import differences  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data"
KINDS = ("batch", "flush", "time", "flush")  # between the first (create) and the last (finish) point
CHILD_TIMEOUT = 120.0

PRELOAD = ["torch", "torchvision", "nccli.cli", "nccli.extract.runner", "reliability_kill"]
_context = None


def install_marks(mark) -> None:
    """Report the writer's events through ``mark(text)``: creating, each batch, each HDF5 flush, finishing."""
    import h5py

    from nccli.io import writer

    def around(owner, name, before, after):
        real = getattr(owner, name)

        def wrapped(*args, **kwargs):
            mark(before)
            result = real(*args, **kwargs)
            mark(after)
            return result

        setattr(owner, name, wrapped)

    around(h5py.File, "flush", "flush", "flushed")
    around(writer.FeatureWriter, "finish", "finish", "finished")
    real_create, real_write = (writer.FeatureWriter.create.__func__, writer.FeatureWriter.write)

    def create(cls, *args, **kwargs):
        mark("create")
        result = real_create(cls, *args, **kwargs)
        mark("created")
        return result

    def write(self, start, arrays):
        real_write(self, start, arrays)
        mark(f"batch {start + len(next(iter(arrays.values())))}")

    writer.FeatureWriter.create = classmethod(create)
    writer.FeatureWriter.write = write


def child_main(args: list[str], settings, events, stderr_path: str) -> None:
    """In the child: stderr to a file, the writer's settings, the marks, then the real command line."""
    import torch

    from nccli.cli import app
    from nccli.io import writer

    os.dup2(os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    torch.set_num_threads(1)
    writer.FLUSH_SECONDS, writer.CHUNK_BYTES = (settings.flush_seconds, settings.chunk_bytes)
    install_marks(lambda text: events.send_bytes(text.encode()))
    code = 1
    try:
        app(args, prog_name="nccli")
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    finally:
        sys.stderr.flush()
        os._exit(code)


def forkserver():
    """Children forked from a server that has imported torch and nccli once (and computed nothing, so no
    thread pool is forked): a start takes milliseconds, not the seconds of importing torch."""
    global _context
    if _context is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # so the server can import this module
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def extract_args(out: Path, compression: str = "none", limit: int | None = None, batch_size: int = 1) -> list[str]:
    """The extract command of these benchmarks: the demo's model, checkpoint and normalisation on the digits."""
    model = [str(SAMPLE / "checkpoints" / "epoch_010.pt"), "--arch", f"{SAMPLE / 'digits_mlp.py'}:digits_mlp"]
    data = [str(SAMPLE / "digits_train.npz"), "--mean", "0.3053", "--std", "0.3758"]
    run = ["--batch-size", str(batch_size), "--workers", "0", "--device", "cpu", "--compression", compression]
    return ["extract", *model[:1], *data[:1], *model[1:], *data[1:], *run, "--out", str(out)] + (
        ["--limit", str(limit)] if limit else []
    )


@dataclass
class Child:
    """One ``nccli extract`` run: its exit code, stderr, the events it reported and how it ended."""

    returncode: int
    stderr: str
    events: list[str]
    killed: bool
    in_flush: bool = False
    at_row: int = 0


@dataclass
class Settings:
    flush_seconds: float = 0.02
    chunk_bytes: int = 4096
    compression: str = "none"
    limit: int | None = None


def run_child(args: list[str], settings: Settings, kill=None) -> Child:
    """Run ``nccli ARGS`` in a child; ``kill(event, started)`` → seconds to wait before SIGKILL, or None."""
    context = forkserver()
    receive, send = context.Pipe(duplex=False)
    with tempfile.NamedTemporaryFile(prefix="nccli-kill-", suffix=".stderr", delete=False) as stderr_file:
        stderr_path = stderr_file.name
    started = time.monotonic()
    process = context.Process(target=child_main, args=(args, settings, send, stderr_path))
    process.start()
    send.close()
    events, killed, deadline = [], False, None
    wall_clock = kill("start", started) if kill else None
    if wall_clock is not None:
        deadline = started + wall_clock
    while True:
        timeout = CHILD_TIMEOUT if deadline is None else max(0.0, deadline - time.monotonic())
        if not receive.poll(timeout):
            if deadline is not None and not killed:
                os.kill(process.pid, signal.SIGKILL)
                killed, deadline = True, None
                continue
            process.kill()
            raise RuntimeError(f"child hung: {events[-3:]}")
        try:
            events.append(receive.recv_bytes().decode())
        except EOFError:
            break
        if kill is not None and not killed:
            wait = kill(events[-1], started)
            if wait is not None:
                busy_wait(wait)
                os.kill(process.pid, signal.SIGKILL)
                killed = True
    receive.close()
    process.join()
    with open(stderr_path) as stream:
        stderr = stream.read()
    os.remove(stderr_path)
    child = Child(process.exitcode, stderr, events, killed and process.exitcode == -signal.SIGKILL)
    flushes = [event for event in events if event in ("flush", "flushed")]
    child.in_flush = child.killed and bool(flushes) and flushes[-1] == "flush"
    rows = [int(event.split()[1]) for event in events if event.startswith("batch")]
    child.at_row = rows[-1] if rows else 0
    return child


def busy_wait(seconds: float) -> None:
    """Sleep with sub-millisecond precision (time.sleep overshoots by ~0.1 ms or more)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@dataclass
class KillPoint:
    kind: str
    row: int  # kill at or after this absolute row (batch, flush); seconds × 1000 for time
    rng: random.Random = field(repr=False, default_factory=random.Random)

    def trigger(self, first_row: int):
        """A kill(event, started) callback for run_child."""

        def kill(event: str, started: float):
            if self.kind == "time":
                return self.row / 1000 if event == "start" else None
            if event in ("create", "finish") and self.kind == event:
                return self.rng.uniform(0, 0.003)
            if event.startswith("batch ") and int(event.split()[1]) >= self.row:
                if self.kind == "batch":
                    return self.rng.uniform(0, 0.002)
                self.armed = True
            if event == "flush" and self.kind == "flush" and getattr(self, "armed", False):
                return self.rng.uniform(0, 0.0003)
            return None

        return kill


def plan_kills(count: int, rows: int, rng: random.Random) -> list[KillPoint]:
    """``count`` kill points spread over the run: rows drawn uniformly, kinds cycling through KINDS."""
    kinds = [KINDS[i % len(KINDS)] for i in range(count)]
    if count >= 3:
        kinds[0], kinds[-1] = "create", "finish"
    marks = sorted(rng.sample(range(1, rows), count))
    points = []
    for kind, row in zip(kinds, marks):
        if kind == "time":
            row = int(1000 * rng.uniform(0.0, 1.0))  # start-up (model, probe, partial file) or early rows
        points.append(KillPoint(kind, row, random.Random(rng.random())))
    return points


@dataclass
class Outcome:
    kills: int = 0
    in_flush: int = 0
    kinds: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    starts: int = 0
    seconds: float = 0.0
    identical: bool = False


def kill_and_resume(
    directory: Path, points: list[KillPoint], settings: Settings, log=print, reference: Path | None = None
) -> Outcome:
    """Run the reference (unless given), then the killed-and-resumed extraction; compare them."""
    started = time.monotonic()
    out = directory / "killed.h5"
    if reference is None:
        reference = directory / "reference.h5"
        whole = run_child(extract_args(reference, settings.compression, settings.limit), settings)
        if whole.returncode != 0:
            raise RuntimeError(f"the uninterrupted run failed: {whole.stderr}")
    outcome = Outcome()
    args = extract_args(out, settings.compression, settings.limit) + ["--resume"]
    after = None  # the kill point the next start resumes from
    for point in points:
        child = run_child(args, settings, point.trigger(0))
        outcome.starts += 1
        if child.returncode not in (0, -signal.SIGKILL):
            outcome.failures.append(f"resume after {after}: exit {child.returncode}: {last_line(child.stderr)}")
            log(f"  FAILED to resume: {last_line(child.stderr)}")
            _discard(out)  # what a user would do (--overwrite), so the later points are still measured
            continue
        if not child.killed:
            log(f"  ran to the end before its {point.kind} kill point ({point.row}); events: {child.events[-3:]}")
            break
        outcome.kills += 1
        outcome.in_flush += child.in_flush
        outcome.kinds[point.kind] = outcome.kinds.get(point.kind, 0) + 1
        after = f"{point.kind} kill at row {child.at_row}{' inside a flush' if child.in_flush else ''}"
        log(f"  {after}")
    final = run_child(args, settings)
    outcome.starts += 1
    if final.returncode != 0:
        outcome.failures.append(f"final resume after {after}: exit {final.returncode}: {last_line(final.stderr)}")
    elif not out.exists():
        outcome.failures.append("final --resume: no output file")
    else:
        diff = differences(out, reference)
        outcome.identical = not diff
        if diff:
            outcome.failures.append(f"datasets differ from the uninterrupted run: {diff}")
    outcome.seconds = time.monotonic() - started
    return outcome


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][-400:] if lines else ""


def _discard(out: Path) -> None:
    for path in out.parent.glob(out.name + ".*"):
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=24, help="kill points in the run (≥ 20 for the issue)")
    parser.add_argument("--compression", default="none", choices=("none", "gzip", "lzf"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flush-seconds", type=float, default=0.02)
    parser.add_argument("--chunk-bytes", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1, help="independent runs (new seeds)")
    options = parser.parse_args()
    settings = Settings(options.flush_seconds, options.chunk_bytes, options.compression)
    rows = int(np.load(SAMPLE / "digits_train.npz")["y"].shape[0])
    totals = Outcome()
    runs_ok = 0
    for repeat in range(options.repeats):
        rng = random.Random(options.seed + repeat)
        points = plan_kills(options.kills, rows, rng)
        with tempfile.TemporaryDirectory() as directory:
            print(f"run {repeat + 1}: {len(points)} kill points, compression {options.compression}")
            outcome = kill_and_resume(Path(directory), points, settings)
        runs_ok += outcome.identical and not outcome.failures
        totals.kills += outcome.kills
        totals.in_flush += outcome.in_flush
        totals.starts += outcome.starts
        totals.seconds += outcome.seconds
        totals.failures += outcome.failures
        for kind, n in outcome.kinds.items():
            totals.kinds[kind] = totals.kinds.get(kind, 0) + n
        verdict = "identical" if outcome.identical else "DIFFERENT"
        if outcome.failures:
            verdict += f" at the end, after {len(outcome.failures)} failed resume(s) started over"
        print(f"  → {verdict}; {outcome.seconds:.0f} s")
    print(
        f"kill points survived: {totals.kills - len(totals.failures)} of {totals.kills} "
        f"({totals.in_flush} inside an HDF5 flush; by kind: {totals.kinds}); "
        f"starts: {totals.starts}; runs where every resume worked and the file is identical: {runs_ok} of "
        f"{options.repeats}; "
        f"{totals.seconds:.0f} s"
    )
    for failure in totals.failures:
        print(f"FAILURE: {failure}")
    sys.exit(1 if totals.failures or runs_ok < options.repeats else 0)


if __name__ == "__main__":
    main()
