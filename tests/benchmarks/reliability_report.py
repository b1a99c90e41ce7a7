"""SIGKILL ``nccli analyze`` while it writes its report: ``--out`` holds the earlier report or the whole new one.

Run from the repository root (a script, not a pytest test; ``tests/test_reliability_report.py`` runs a
few kill points)::

    python tests/benchmarks/reliability_report.py              # 30 kill points
    python tests/benchmarks/reliability_report.py --kills 100

``nccli analyze FILE --out report.parquet --classes classes.parquet --pairs pairs.parquet`` runs again and
again over an earlier report, through a bootstrap that reports when each table starts and ends being
written (``pyarrow.parquet.write_table``) and when the tables are renamed into place. Each run is
killed with SIGKILL at one point: a random time in the run, or a random 0–2 ms after a table starts
being written (0–0.2 ms after the renames start). After each kill, every output must be byte for byte
either the earlier file or the new one an uninterrupted run writes (a kill between the three renames
leaves some old and some new: counted, not a failure; each file is whole), and a following run must
succeed (no stale lock) and leave no temporary file behind.
"""

import argparse
import hashlib
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

OUTPUTS = ("report.parquet", "classes.parquet", "pairs.parquet")
KINDS = ("time", "write", "rename")

BOOTSTRAP = """
import os, sys
import pyarrow.parquet as pq
from nccli.report import parquet

fd = int(os.environ["NCCLI_KILL_FD"])
def mark(text):
    os.write(fd, (text + "\\n").encode())

real_write, real_replace = pq.write_table, os.replace
def write_table(*args, **kwargs):
    mark("write")
    real_write(*args, **kwargs)
    mark("written")
def replace(source, target, *args, **kwargs):
    mark("rename")
    real_replace(source, target, *args, **kwargs)
pq.write_table, parquet.os.replace = write_table, replace
parquet.pq.write_table = write_table

from nccli.cli import app
app(sys.argv[1:], prog_name="nccli")
"""


def make_feature_file(path: Path, n: int = 3000, k: int = 40, seed: int = 0) -> Path:
    """Enough classes that the per-pair table takes a while to write."""
    from h5files import write_feature_file

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    features = rng.normal(size=(n, 24)) + labels[:, None] * 0.1
    return write_feature_file(path, labels, {"a": features, "b": np.tanh(features)}, num_classes=k)


def analyze_args(feature_file: Path, folder: Path) -> list[str]:
    out, classes, pairs = (folder / name for name in OUTPUTS)
    return [
        "analyze",
        str(feature_file),
        "--out",
        str(out),
        "--classes",
        str(classes),
        "--pairs",
        str(pairs),
        "--device",
        "cpu",
    ]


def run_analyze(args: list[str], kill=None) -> tuple[int, str, list[str]]:
    """Run the bootstrapped CLI; ``kill(event)`` → seconds to wait before SIGKILL, or None."""
    read, write = os.pipe()
    env = dict(os.environ, NCCLI_KILL_FD=str(write), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-c", BOOTSTRAP, *args],
        pass_fds=(write,),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(write)
    events, buffer, killed = [], b"", False
    deadline = None if kill is None or kill("start") is None else started + kill("start")
    while True:
        timeout = 60.0 if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([read], [], [], timeout)
        if not ready:
            if deadline is None:
                process.kill()
                raise RuntimeError(f"analyze hung: {events[-3:]}")
            process.send_signal(signal.SIGKILL)
            killed, deadline = True, None
            continue
        data = os.read(read, 4096)
        if not data:
            break
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            events.append(line.decode())
            wait = None if kill is None or killed else kill(events[-1])
            if wait is not None:
                end = time.perf_counter() + wait
                while time.perf_counter() < end:
                    pass
                process.send_signal(signal.SIGKILL)
                killed = True
    os.close(read)
    stderr = process.stderr.read().decode()
    process.wait()
    return process.returncode, stderr, events


def digests(folder: Path) -> dict[str, str | None]:
    return {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest() if (folder / name).exists() else None
        for name in OUTPUTS
    }


def kill_point(kind: str, rng: random.Random, run_seconds: float):
    """A kill(event) callback for ``kind``: at a random time, or just after a table write or the renames start."""
    if kind == "time":
        delay = rng.uniform(0.0, run_seconds)
        return lambda event: delay if event == "start" else None
    skip = rng.randrange(len(OUTPUTS)) if kind == "write" else 0
    seen = {"count": 0}

    def kill(event: str):
        if event != kind:
            return None
        seen["count"] += 1
        return rng.uniform(0.0, 0.002 if kind == "write" else 0.0002) if seen["count"] > skip else None

    return kill


def kill_runs(directory: Path, kills: int, seed: int = 0, log=print) -> dict:
    """The earlier report, the new one, then ``kills`` killed runs over the earlier one; the tally."""
    rng = random.Random(seed)
    old_file, new_file = (
        make_feature_file(directory / "old.h5", seed=1),
        make_feature_file(directory / "new.h5", seed=2),
    )
    expected, work = {}, directory / "work"
    for name, feature_file, folder in (("old", old_file, directory / "old"), ("new", new_file, work)):
        folder.mkdir()
        started = time.monotonic()
        code, stderr, _ = run_analyze(analyze_args(feature_file, folder))  # the report names its paths: same ones
        if code != 0:
            raise RuntimeError(stderr)
        expected[name] = digests(folder)
        run_seconds = time.monotonic() - started
    tally = {"kills": 0, "killed while writing": 0, "old": 0, "new": 0, "mixed": 0, "failures": []}
    for index in range(kills):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(directory / "old", work)
        kind = KINDS[index % len(KINDS)]
        code, stderr, events = run_analyze(analyze_args(new_file, work), kill_point(kind, rng, run_seconds))
        found = digests(work)
        states = {name: next((s for s in ("old", "new") if found[name] == expected[s][name]), None) for name in OUTPUTS}
        if code == -signal.SIGKILL:
            tally["kills"] += 1
            writing = any(event in ("write", "rename") for event in events) and events[-1] != "written"
            tally["killed while writing"] += writing
        elif code != 0:
            tally["failures"].append(f"{kind}: exit {code}: {stderr[-300:]}")
        damaged = [name for name, state in states.items() if state is None]
        if damaged:
            tally["failures"].append(f"{kind} kill after {events[-3:]}: {damaged} neither the earlier nor the new file")
        elif len(set(states.values())) > 1:
            tally["mixed"] += 1  # killed between the renames: each file whole, some old, some new
        else:
            tally[states[OUTPUTS[0]]] += 1
        code, stderr, _ = run_analyze(analyze_args(new_file, work))  # the lock is free, leftovers cleared
        leftovers = sorted(path.name for path in work.iterdir() if path.name not in OUTPUTS)
        if code != 0 or digests(work) != expected["new"] or leftovers:
            tally["failures"].append(f"the run after a {kind} kill: exit {code}, left {leftovers}: {stderr[-300:]}")
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as directory:
        tally = kill_runs(Path(directory), options.kills, options.seed)
    print(
        f"analyze killed {tally['kills']} times ({tally['killed while writing']} while writing or renaming the "
        f"report): earlier report intact {tally['old']}, new report whole {tally['new']}, killed between the "
        f"renames of --out, --classes, --pairs (each file whole) {tally['mixed']}, truncated or damaged files "
        f"{len(tally['failures'])}; {time.monotonic() - started:.0f} s"
    )
    for failure in tally["failures"]:
        print(f"FAILURE: {failure}")
    sys.exit(1 if tally["failures"] else 0)


if __name__ == "__main__":
    main()
