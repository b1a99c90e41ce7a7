"""Disk full while extracting: one clean line, exit code 2, and the partial file resumable once space is back.

Run from the repository root (a script, not a pytest test; ``tests/test_reliability_writer.py`` runs it
with ``--quick``)::

    python tests/benchmarks/reliability_diskfull.py

Three ways to fill the disk, each followed by the same check: the error is one ``OutputError`` line
(exit code 2 through the CLI), the process exits normally (HDF5 cannot close a file it failed to write,
and h5py then crashed at exit before nccli wrote through :class:`nccli.io.guarded.GuardedFile`), and once
the fault is gone ``--resume`` (or a fresh start, when no row was kept) finishes a file whose datasets
equal an uninterrupted run's.

1. *Every write*: the writer's file object fails its k-th write with ENOSPC, for every k from the first
   write of the partial file to the last one of the finished file, uncompressed and gzip (the
   compressed file is written at the end), in a small file flushed after every batch.
2. *A real full disk*: ``nccli extract`` of the bundled digits into a tmpfs of half the file's size,
   mounted in a user namespace (``unshare --user --map-root-user --mount``; reported as skipped where the
   system does not allow it); then the tmpfs is grown and the same command runs with ``--resume``.
3. *A file-size limit*: ``RLIMIT_FSIZE`` below the partial file's size (``ulimit -f``; SIGXFSZ ignored,
   so writes fail with EFBIG), then the limit is lifted.
"""

import argparse
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from reliability_kill import extract_args

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))


# --------------------------------------------------------------------------- 1. every write point


def _rows(start: int, stop: int) -> dict:
    from nccli import schema

    rows = np.arange(start, stop)
    return {schema.LABELS: rows, schema.layer_path("a"): np.repeat(rows[:, None], 8, axis=1).astype(np.float32)}


def _write_file(path: str, rows: int, compression: str, first: int = 0, options: dict | None = None) -> None:
    from nccli import schema
    from nccli.io.writer import FeatureWriter, RowDataset

    if first == 0:
        datasets = [
            RowDataset(schema.LABELS, None, "int64"),
            RowDataset(schema.layer_path("a"), 8, "float32", {schema.ATTR_ORDER: 0}),
        ]
        attrs = {schema.ATTR_FORMAT: schema.FORMAT_NAME, schema.ATTR_FORMAT_VERSION: schema.FORMAT_VERSION}
        writer = FeatureWriter.create(path, rows, datasets, attrs, options or {}, compression)
    else:
        writer = FeatureWriter.resume(path, options or {})
    try:
        for start in range(writer.rows_written, rows, 10):
            writer.write(start, _rows(start, min(start + 10, rows)))
    except BaseException:
        writer.close()
        if writer.rows_written == 0:
            writer.discard()
        raise
    writer.finish()


def every_write(compression: str, rows: int = 60, log=print) -> dict:
    """Fail the k-th write for every k; each time: a clean OutputError, then a resume gives the right file."""
    import h5py

    from nccli import schema
    from nccli.errors import OutputError
    from nccli.io import guarded, writer

    writer.FLUSH_SECONDS, writer.CHUNK_BYTES = (0.0, 256)  # a flush per batch, many chunks
    real_write = guarded.GuardedFile.write
    counter = {"writes": 0, "fail_at": 0}

    def failing_write(self, data):
        if self.failure is None:
            counter["writes"] += 1
            if counter["writes"] == counter["fail_at"]:
                self.failure = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                raise self.failure
        return real_write(self, data)

    guarded.GuardedFile.write = failing_write
    with tempfile.TemporaryDirectory() as directory:
        _write_file(os.path.join(directory, "count.h5"), rows, compression)
        total = counter["writes"]
        outcome = {"compression": compression, "write points": total, "clean": 0, "failures": []}
        for fail_at in range(1, total + 1):
            path = os.path.join(directory, f"k{fail_at}.h5")
            counter.update(writes=0, fail_at=fail_at)
            try:
                _write_file(path, rows, compression)
                problem = "no error at all"
            except OutputError as error:
                problem = None if "No space left on device" in str(error) and "\n" not in str(error) else str(error)
            counter["fail_at"] = 0
            if problem is None:
                _write_file(path, rows, compression, first=1 if os.path.exists(path + ".partial") else 0)
                with h5py.File(path, "r") as handle:
                    expected = _rows(0, rows)
                    if not all(np.array_equal(handle[name][()], values) for name, values in expected.items()):
                        problem = "rows differ after resuming"
                    elif bool(handle.attrs[schema.ATTR_COMPLETE]) is not True:
                        problem = "not complete"
            if problem is None:
                outcome["clean"] += 1
            else:
                outcome["failures"].append(f"write {fail_at}: {problem}")
                log(f"FAILURE ({compression}) write {fail_at}: {problem}")
    guarded.GuardedFile.write = real_write
    return outcome


# --------------------------------------------------------------------------- 2. and 3. the command line


def extract_command(out: Path, limit: int, *options: str) -> list[str]:
    return [*extract_args(out, limit=limit, batch_size=8), *options]


def _cli(args: list[str]) -> tuple[int, list[str]]:
    from typer.testing import CliRunner

    from nccli.cli import app

    result = CliRunner().invoke(app, args)
    return result.exit_code, result.stderr.strip().splitlines()


def _same(path: Path, reference: Path) -> bool:
    from extract_helpers import read_datasets

    left, right = read_datasets(path), read_datasets(reference)
    return left.keys() == right.keys() and all(np.array_equal(left[name], right[name]) for name in left)


def fill_and_resume(out: Path, reference: Path, limit: int, fill, free) -> dict:
    """Extract with ``fill()`` in force, then ``free()`` and --resume; the facts for the report."""
    fill()
    code, lines = _cli(extract_command(out, limit))
    kept = _rows_kept(out)
    free()
    resumed, resumed_lines = _cli(extract_command(out, limit, "--resume"))
    return {
        "exit code": code,
        "message": lines[-1] if lines else "",
        "one line": len(lines) == 1 and lines[0].startswith("error: "),
        "rows kept": kept,
        "resume exit code": resumed,
        "resume message": " ".join(resumed_lines)[-300:],
        "identical": resumed == 0 and _same(out, reference),
    }


def _rows_kept(out: Path) -> int | None:
    import h5py

    from nccli import schema

    partial = Path(str(out) + ".partial")
    if not partial.exists():
        return None
    with h5py.File(partial, "r") as handle:
        return int(handle.attrs[schema.ATTR_ROWS_WRITTEN])


def command_line_cases(directory: Path, limit: int, tmpfs: str | None) -> dict:
    """RLIMIT_FSIZE here; a small tmpfs when ``tmpfs`` (a mount point in this user namespace) is given."""
    from nccli.io import writer

    writer.FLUSH_SECONDS, writer.CHUNK_BYTES = 0.0, 4096
    reference = directory / "reference.h5"
    code, lines = _cli(extract_command(reference, limit))
    assert code == 0, lines
    size = reference.stat().st_size
    results = {"file bytes": size}
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    results["RLIMIT_FSIZE"] = fill_and_resume(
        directory / "limited.h5", reference, limit,
        lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, hard)),
        lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard)),
    )  # fmt: skip
    if tmpfs is not None:
        page = 4096
        results["tmpfs"] = fill_and_resume(
            Path(tmpfs) / "full.h5", reference, limit,
            lambda: subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size // 2 // page * page}", "tmpfs", tmpfs], check=True
            ),
            lambda: subprocess.run(["mount", "-o", "remount,size=64m", tmpfs], check=True),
        )  # fmt: skip
    return results


def in_namespace(limit: int) -> dict | str:
    """Run the command-line cases in a user and mount namespace, where a tmpfs can be mounted; or why not."""
    if shutil.which("unshare") is None:
        return "skipped: no unshare command"
    with tempfile.TemporaryDirectory() as directory:
        command = [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            sys.executable,
            __file__,
            "--inside",
            directory,
            "--limit",
            str(limit),
        ]
        try:
            result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            return "FAILED: no answer within 600 s"
        if result.returncode != 0 and "Operation not permitted" in result.stderr and "unshare" in result.stderr:
            return "skipped: user namespaces are not allowed here"
        if result.returncode != 0:
            return f"FAILED: exit {result.returncode}: {result.stderr[-800:]}"
        return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller files (for the test suite)")
    parser.add_argument("--limit", type=int, default=600, help="rows of the digits to extract")
    parser.add_argument("--inside", help=argparse.SUPPRESS)  # in the namespace: the mount point's parent
    options = parser.parse_args()
    if options.inside:
        mount_point = Path(options.inside) / "tmpfs"
        mount_point.mkdir()
        print(json.dumps(command_line_cases(Path(options.inside), options.limit, str(mount_point))))
        return
    started = time.monotonic()
    report = {
        "every write": [every_write(compression, rows=30 if options.quick else 60) for compression in ("none", "gzip")]
    }
    report["command line"] = in_namespace(options.limit)
    if isinstance(report["command line"], str) and report["command line"].startswith("skipped"):
        with tempfile.TemporaryDirectory() as directory:
            report["command line"] = {
                "namespace": report["command line"],
                **command_line_cases(Path(directory), options.limit, None),
            }
    report["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))
    failed = any(case["failures"] for case in report["every write"]) or not isinstance(report["command line"], dict)
    for name in ("RLIMIT_FSIZE", "tmpfs"):
        case = report["command line"].get(name) if isinstance(report["command line"], dict) else None
        if case is not None:
            failed |= not (case["exit code"] == 2 and case["one line"] and case["identical"])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
