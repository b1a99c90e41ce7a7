"""Replay the hostile inputs of issue 25 ("Hostile inputs, round two"): each is computed exactly or refused cleanly,
and nothing the user owns is destroyed.

Run from the repository root (a script, not a pytest test; ``tests/test_reliability_hostile.py`` runs a
subset)::

    python tests/benchmarks/reliability_hostile.py                  # every case
    python tests/benchmarks/reliability_hostile.py --cases epoch-1e29 ood-is-out

Each case rebuilds one finding's minimal reproduction in a scratch folder of its own and runs it through the
real command line (``python -m nccli ...`` in a subprocess) or the Python API (``python -c ...`` in a
subprocess), each under an address-space limit, then checks the property the issue demands:

* a *refusal* is exit code 2 with exactly one stderr line starting ``error:``, no traceback, and no output
  or working file left behind;
* *nothing destroyed*: every other file of the scratch folder (inputs, planted victims, unrelated
  ``.notes.draft.tmp``) holds the same bytes after the run as before;
* a result computed *exactly* is correct (``ncc_accuracy`` 1.0 for well-separated classes at 1e19 in
  float32), or the input is refused in one line;
* *no control character* reaches the terminal raw: ESC, BEL and bidirectional overrides in names are
  printed escaped on stdout and stderr;
* *bounded*: a small Parquet declaring 2 000 000 rows is refused in under 30 s.

A table (case, finding, expected, held, seconds) and the totals are printed; the exit code is the number of
cases that did not hold. The torchrun cases that need several processes (ranks seeing different files, a
rank killed after the merge) are not replayed here: see ``tests/test_distributed_analyze.py``.
"""

import argparse
import io
import json
import os
import re
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from cli_helpers import snapshot  # noqa: E402 (tests/ is put on sys.path first)
from h5files import good_file, write_feature_file  # noqa: E402

ADDRESS_SPACE = 4 * 2**30  # bytes of virtual memory a child may map (torch alone maps about 2 GiB)
SECONDS = 120.0  # per command; the bounded cases check their own, tighter limit
BOUNDED_SECONDS = 30.0
N, K = 40, 4
# C0 controls but newline and tab, DEL, C1 controls, bidirectional overrides and isolates
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
HOSTILE = "fc\x1b[2J\x1b]52;c;aGk=\x07"  # clears the screen, then writes the clipboard


class NotHeld(Exception):
    """The property a case checks did not hold; the message says how."""


def check(condition, reason: str) -> None:
    if not condition:
        raise NotHeld(reason)


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _run(argv: list[str], folder: Path, seconds: float) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        COLUMNS="120",
    )
    started = time.monotonic()
    try:
        result = subprocess.run(
            argv, cwd=folder, env=env, capture_output=True, timeout=seconds, preexec_fn=_limits, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise NotHeld(f"did not finish in {seconds:.0f} s") from error
    result.seconds = time.monotonic() - started
    result.stdout, result.stderr = (
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )
    return result


def nccli(folder: Path, *args, seconds: float = SECONDS) -> subprocess.CompletedProcess:
    """``python -m nccli ARGS`` in ``folder``; raw control characters in its output do not hold."""
    result = _run([sys.executable, "-m", "nccli", *(str(arg) for arg in args)], folder, seconds)
    raw = RAW_CONTROL.search(result.stdout + result.stderr)
    check(raw is None, f"a raw control character {raw.group()!r} reached the terminal" if raw else "")
    return result


def python(folder: Path, code: str) -> dict:
    """Run ``code`` in a child; it calls ``done(**outcome)``; an NcCliError becomes {'error': message}."""
    wrapped = (
        "import json, sys\n"
        "from nccli.errors import NcCliError\n"
        "def done(**outcome):\n"
        "    print(json.dumps(outcome))\n"
        "try:\n" + "".join(f"    {line}\n" for line in code.strip().splitlines()) + "except NcCliError as error:\n"
        "    done(error=str(error), kind=type(error).__name__)\n"
    )
    result = _run([sys.executable, "-c", wrapped], folder, SECONDS)
    check(result.returncode == 0 and result.stdout.strip(), f"exit {result.returncode}: {_tail(result.stderr)}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _tail(text: str) -> str:
    lines = text.strip().splitlines()
    return (lines[-1] if lines else "(nothing)")[:200]


def refused(result, *fragments: str) -> str:
    """Exit 2, one stderr line starting ``error:`` naming ``fragments``, no traceback; the line."""
    output = result.stdout + result.stderr
    check("Traceback" not in output, f"a traceback: {_tail(result.stderr)}")
    check(result.returncode == 2, f"exit {result.returncode}, not 2: {_tail(result.stderr)}")
    lines = result.stderr.strip().splitlines()
    check(len(lines) == 1, f"{len(lines)} lines on stderr, not 1: {lines[:2]}")
    check(lines[0].startswith("error:"), f"stderr does not start with 'error:': {lines[0][:120]}")
    for fragment in fragments:
        check(fragment in lines[0], f"{fragment!r} not in {lines[0][:200]!r}")
    return lines[0]


def accepted(result) -> None:
    check(result.returncode == 0, f"exit {result.returncode}: {_tail(result.stderr)}")
    check("Traceback" not in result.stdout + result.stderr, "a traceback")


def kept(folder: Path, before: dict[str, bytes], new: tuple[str, ...] = ()) -> None:
    """Every file of ``before`` has its bytes; only ``new`` names were added."""
    after = snapshot(folder)
    changed = sorted(name for name in before if after.get(name) != before[name])
    check(not changed, f"changed or removed: {changed}")
    added = sorted(set(after) - set(before) - set(new))
    check(not added, f"left behind: {added}")


def one_line_api_error(outcome: dict, *fragments: str) -> None:
    check("error" in outcome, f"no NcCliError: {outcome}")
    check("\n" not in outcome["error"], f"a message of several lines: {outcome['error'][:200]!r}")
    for fragment in fragments:
        check(fragment in outcome["error"], f"{fragment!r} not in {outcome['error'][:200]!r}")


def report_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# --------------------------------------------------------------------------- inputs


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """What a user saves to convert: labels, features, a classifier."""
    rng = np.random.default_rng(seed)
    labels = np.arange(N) % K
    return {
        "labels": labels,
        "features": (rng.normal(size=(N, 6)) + 3 * labels[:, None]).astype(np.float32),
        "W": rng.normal(size=(K, 6)),
        "b": rng.normal(size=K),
    }


def save_npz(folder: Path, name: str = "run.npz", **changes) -> Path:
    np.savez(folder / name, **{**arrays(), **changes})
    return folder / name


def npy_bytes(header: str, payload: bytes = bytes(80)) -> bytes:
    """A .npy file with this header dictionary, whatever it says (version 1.0, padded to 64 bytes)."""
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


def separated(folder: Path, scale: float, dtype, dim: int) -> Path:
    """Three classes far apart at ``scale``: every NCC decision is obvious."""
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    features = rng.normal(size=(3, dim))[labels] * scale + rng.normal(size=(60, dim)) * scale / 100
    return write_feature_file(folder / "big.h5", labels, {"x": features.astype(dtype)})


def save_pt(folder: Path, make: str) -> Path:
    """A .pt whose features tensor is ``make`` (python source over ``x``), the rest dense."""
    code = f"""
import torch
x = torch.randn({N}, 6)
data = {{"labels": torch.arange({N}) % {K}, "features": {make}}}
torch.save(data, "run.pt")
done()
"""
    python(folder, code)
    return folder / "run.pt"


def analyzed_report(folder: Path, **kwargs) -> Path:
    """A report of a good file, written by analyze itself."""
    path = good_file(folder / "a.h5", **kwargs)
    accepted(nccli(folder, "analyze", path, "--out", folder / "r.parquet"))
    return folder / "r.parquet"


def with_column(report: Path, target: Path, column: str, make) -> Path:
    """``report`` rewritten to ``target`` with ``column`` replaced by ``make(values)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(report)
    index = table.schema.get_field_index(column)
    table = table.set_column(index, column, pa.array(make(table.column(column).to_pylist())))
    pq.write_table(table, target)
    return target


def declaring_rows(folder: Path, rows: int = 2_000_000) -> Path:
    """A small Parquet report declaring ``rows`` rows (dictionary-encoded keys, null metrics)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nccli import schema
    from nccli.report.plotted_rows import KEYS

    same = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)), pa.array(["x"]))
    integers = (schema.COL_EPOCH, schema.COL_LAYER_ORDER)
    columns = {column: same for column in KEYS if column not in integers}
    columns |= {column: pa.array(np.ones(rows, dtype=np.int64)) for column in integers}
    nc1 = schema.METRIC_BY_NAME["nc1"].name
    path = folder / "huge.parquet"
    pq.write_table(pa.table({**columns, nc1: pa.nulls(rows, pa.float64())}), path)
    check(path.stat().st_size < 200_000, f"the hostile file is {path.stat().st_size} bytes, not small")
    return path


# --------------------------------------------------------------------------- the cases


def index_with_foreign_shard(folder: Path) -> None:
    from nccli.io import shards

    index = folder / "features.h5"
    rng = np.random.default_rng(0)
    labels, features = np.arange(40) % 4, rng.normal(size=(40, 5))
    identity = {"model": "resnet18", "checkpoint_sha256": "aa" * 32, "epoch": 3}
    for rank in range(2):
        shard = Path(shards.shard_path(str(index), rank, 2))
        shard.parent.mkdir(exist_ok=True)
        rows = slice(20 * rank, 20 * rank + 20)
        sha = "bb" * 32 if rank == 1 else "aa" * 32  # rank 1's shard: another checkpoint's
        write_feature_file(
            shard,
            labels[rows],
            {"fc_in": features[rows]},
            extra_root_attrs={**identity, "checkpoint_sha256": sha},
            complete=True,
        )
    shards.write_index(str(index), 2, {})
    before = snapshot(folder)
    refused(nccli(folder, "analyze", index, "--out", "r.parquet"), "is not of this extraction", "checkpoint_sha256")
    kept(folder, before)


def means_from_other_order(folder: Path) -> None:
    names = ["cat", "dog", "eel", "fox"]
    train = good_file(folder / "train.h5", class_names=names)
    test = good_file(folder / "test.h5", seed=3, split="test", class_names=[names[1], names[0], *names[2:]])
    before = snapshot(folder)
    result = nccli(folder, "analyze", test, "--means-from", train, "--out", "r.parquet")
    if result.returncode == 0:  # mapped by name: then it must say so, and be right
        check("class" in result.stderr, "classes mapped by name without saying so")
        return
    refused(result, "names differ")
    kept(folder, before)


def exact_or_refused(folder: Path, scale: float, dtype, dim: int) -> None:
    path = separated(folder, scale, dtype, dim)
    result = nccli(folder, "analyze", path, "--out", "r.parquet")
    if result.returncode == 2:
        refused(result, "too large")
        check(not (folder / "r.parquet").exists(), "a report was written")
        return
    accepted(result)
    check("coincide" not in result.stderr, f"a false warning: {_tail(result.stderr)}")
    row = report_rows(folder / "r.parquet")[0]
    check(row["ncc_accuracy"] == 1.0, f"ncc_accuracy {row['ncc_accuracy']}, not 1.0")
    check(np.isfinite(row["tr_sw"]), f"tr_sw {row['tr_sw']}")


def convert_refused(folder: Path, source: Path, *args, fragments=()) -> None:
    """convert SOURCE ARGS --out k.h5 is refused in one line, and nothing is written or changed."""
    before = snapshot(folder)
    refused(nccli(folder, "convert", source, *args, "--out", folder / "k.h5"), *fragments)
    kept(folder, before)


def uint64_labels(value: int):
    def case(folder: Path) -> None:
        labels = np.where(np.arange(N) == 7, value, np.arange(N) % K).astype(np.uint64)
        convert_refused(folder, save_npz(folder, labels=labels), fragments=(f"label {value}", "int64"))

    return case


def short_storage_record(folder: Path) -> None:
    """The features' storage record cut to 12 of its bytes, as tests/test_convert_pt_records.py cuts it."""
    python(
        folder,
        """
import pathlib
from test_convert_pt_records import damaged, tensors, truncate
damaged(pathlib.Path("."), tensors(), truncate)
done()
""",
    )
    convert_refused(folder, folder / "run.pt", fragments=("key 'features'", "holds 12 bytes", "needs 480"))


def ood_is_out(folder: Path) -> None:
    path, ood = good_file(folder / "a.h5"), good_file(folder / "ood.h5", seed=3)
    before = snapshot(folder)
    refused(nccli(folder, "analyze", path, "--ood", ood, "--out", ood), "ood.h5")
    kept(folder, before)


def convert_through_symlink(folder: Path) -> None:
    source = save_npz(folder)
    (folder / "link.npz").symlink_to(source)
    (folder / "again").symlink_to(folder)
    before = snapshot(folder)
    for src, out in (
        (folder / "link.npz", source),
        (source, folder / "link.npz"),
        (source, folder / "again" / "run.npz"),
    ):
        refused(nccli(folder, "convert", src, "--out", out, "--overwrite"), "is also a SOURCE")
    kept(folder, before)


def planted_lock(folder: Path) -> None:
    path, victim = good_file(folder / "a.h5"), folder / "victim.txt"
    victim.write_text("precious")
    (folder / "r.parquet.lock").symlink_to(victim)
    before = snapshot(folder)
    refused(nccli(folder, "analyze", path, "--out", "r.parquet"), "lock file")
    kept(folder, before)


def planted_partial(folder: Path) -> None:
    source, victim = save_npz(folder), folder / "victim.txt"
    victim.write_text("precious")
    (folder / "k.h5.partial.new").symlink_to(victim)
    before = snapshot(folder)
    del before["k.h5.partial.new"]  # the planted link (read through: the victim's bytes) may be removed
    result = nccli(folder, "convert", source, "--out", "k.h5")
    if result.returncode == 2:
        refused(result)
        kept(folder, before, new=("k.h5.partial.new",))
        return
    accepted(result)
    kept(folder, before, new=("k.h5", "k.h5.partial.new"))
    import h5py

    check(h5py.is_hdf5(folder / "k.h5"), "k.h5 is not an HDF5 file")


def classes_is_lock(folder: Path) -> None:
    path = good_file(folder / "a.h5")
    before = snapshot(folder)
    refused(nccli(folder, "analyze", path, "--out", "r.parquet", "--classes", "r.parquet.lock"), "--classes")
    kept(folder, before)


def out_star(folder: Path) -> None:
    path = good_file(folder / "a.h5")
    for name, text in ((".notes.draft.tmp", "notes"), (".r.parquet.backup.tmp", "backup"), ("r.parquet", "mine")):
        (folder / name).write_text(text)
    before = snapshot(folder)
    result = nccli(folder, "analyze", path, "--out", "*")
    if result.returncode == 2:
        refused(result)
        kept(folder, before)
    else:
        accepted(result)
        kept(folder, before, new=("*",))


def second_convert_on_partial(folder: Path) -> None:
    source = save_npz(folder)
    for name in ("k.h5.partial", "k.h5.partial.new", "k.h5.lock"):
        convert_refused_at(folder, source, name)


def convert_refused_at(folder: Path, source: Path, out: str) -> None:
    before = snapshot(folder)
    refused(nccli(folder, "convert", source, "--out", out, "--overwrite"), "working files")
    kept(folder, before)


def bounded(command: str):
    def case(folder: Path) -> None:
        huge = declaring_rows(folder)
        before = snapshot(folder)
        extra = ("--out", folder / "figures") if command == "plot" else ()
        result = nccli(folder, command, huge, *extra, seconds=BOUNDED_SECONDS)
        check(result.seconds < BOUNDED_SECONDS, f"{result.seconds:.1f} s")
        if command == "report" and result.returncode == 0:  # a bounded page of the rows, saying so
            check("of 2000000 rows" in result.stderr, f"no note of the rows left out: {_tail(result.stderr)}")
            return
        refused(result, "2000000 rows")
        kept(folder, before)

    return case


def huge_classifier(folder: Path) -> None:
    """A small .npz whose W member declares 400 million rows (16 GB of float64)."""
    with zipfile.ZipFile(folder / "run.npz", "w") as archive:
        for key, value in arrays().items():
            buffer = io.BytesIO()
            np.save(buffer, value)
            data = buffer.getvalue()
            if key == "W":
                data = npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (400000000, 6), }")
            archive.writestr(f"{key}.npy", data)
    convert_refused(folder, folder / "run.npz", fragments=("classifier weight",))


def measure_many_classes(folder: Path) -> None:
    outcome = python(
        folder,
        """
import torch
from nccli import measure_collapse
batches = [(torch.ones(4, 512), torch.tensor([0, 1, 0, 1]))]
measure_collapse(batches, num_classes=10**8, device="cpu")
done(result="measured")
""",
    )
    one_line_api_error(outcome, "num_classes = 100000000")


def measure_layer_key(folder: Path) -> None:
    outcome = python(
        folder,
        """
import torch
from nccli import measure_collapse
measure_collapse([({1: torch.ones(4, 3)}, torch.tensor([0, 1, 0, 1]))], num_classes=2)
done(result="measured")
""",
    )
    one_line_api_error(outcome, "layer name must be a string")


def npy_negative_dimensions(folder: Path) -> None:
    (folder / "features.npy").write_bytes(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 6), }"))
    np.save(folder / "labels.npy", np.arange(N) % K)
    convert_refused(folder, folder / "features.npy", folder / "labels.npy", fragments=("features.npy",))


def epoch_too_big(folder: Path) -> None:
    convert_refused(folder, save_npz(folder), "--epoch", str(10**29), fragments=(f"--epoch {10**29}", "int64"))


def epoch_not_an_integer(folder: Path) -> None:
    """``1e29`` is no integer: the option parser (click) refuses it, in its usage box of several lines."""
    source = save_npz(folder)
    before = snapshot(folder)
    result = nccli(folder, "convert", source, "--epoch", "1e29", "--out", "k.h5")
    check("Traceback" not in result.stdout + result.stderr, f"a traceback: {_tail(result.stderr)}")
    check(result.returncode == 2, f"exit {result.returncode}, not 2")
    check("Invalid value for '--epoch'" in result.stderr, f"--epoch not named: {_tail(result.stderr)}")
    kept(folder, before)


def pt_tensor(make: str, fragment: str):
    def case(folder: Path) -> None:
        convert_refused(folder, save_pt(folder, make), "--features", "features", fragments=("key 'features'", fragment))

    return case


def weight_decay(value: str):
    def case(folder: Path) -> None:
        path = good_file(folder / "a.h5")
        before = snapshot(folder)
        refused(
            nccli(folder, "analyze", path, "--out", "r.parquet", "--mse", "--weight-decay", value), "--weight-decay"
        )
        kept(folder, before)

    return case


def plot_string_column(column: str):
    def case(folder: Path) -> None:
        report = analyzed_report(folder, epoch=3)
        bad = with_column(report, folder / "bad.parquet", column, lambda values: [str(v) for v in values])
        before = snapshot(folder)
        refused(nccli(folder, "plot", bad, "--out", folder / "figures"), column)
        kept(folder, before)

    return case


def escapes_info(folder: Path) -> None:
    labels = np.arange(12) % 3
    path = write_feature_file(
        folder / "f.h5",
        labels,
        {HOSTILE: np.random.default_rng(0).normal(size=(12, 4))},
        class_names=["a\x1b[1Ab", "c", "d"],
        extra_root_attrs={"split": "test\x1b[1A", "model": "m\u202eodel"},
    )
    result = nccli(folder, "info", path)  # raw control characters are checked in every run
    accepted(result)
    check("fc\\x1b[2J" in result.stdout, "the layer name is not shown escaped")


def escapes_error(folder: Path) -> None:
    labels = np.arange(12) % 3
    path = write_feature_file(folder / "f.h5", labels, {HOSTILE: np.random.default_rng(0).normal(size=(12, 4))})
    before = snapshot(folder)
    refused(nccli(folder, "analyze", path, "--layers", "nope", "--out", "r.parquet"), "fc\\x1b[2J")
    kept(folder, before)


def escapes_report(folder: Path) -> None:
    labels = np.arange(24) % 3
    rng = np.random.default_rng(0)
    path = write_feature_file(
        folder / "f.h5",
        labels,
        {HOSTILE: rng.normal(size=(24, 4)) + labels[:, None]},
        class_names=["a\x1b[1Ab", "c\x1b]52;c;aGk=\x07", "d"],
        extra_root_attrs={"model": "m\x1b[2J"},
    )
    accepted(nccli(folder, "analyze", path, "--out", "r.parquet", "--classes", "c.parquet"))
    for table in ("r.parquet", "c.parquet"):
        for form in ("table", "json"):  # csv, tsv and markdown carry the values verbatim, for pipes
            accepted(nccli(folder, "report", table, "--format", form))


def pickle_reason(folder: Path) -> None:
    marker = folder / "payload-ran"
    code = f"""
import torch
class Payload:
    def __reduce__(self):
        return (open, ({str(marker)!r}, "w"))
torch.save({{"features": torch.zeros({N}, 2), "labels": torch.arange({N}) % {K}, "extra": Payload()}}, "evil.pt")
done()
"""
    python(folder, code)
    before = snapshot(folder)
    line = refused(nccli(folder, "convert", "evil.pt", "--out", "k.h5"), "evil.pt", "never unpickles")
    check("('')" not in line, f"an empty reason: {line}")
    check(not marker.exists(), "the pickle ran")
    kept(folder, before)


def empty_maps(folder: Path) -> None:
    source = save_npz(folder, features=np.zeros((N, 5, 0, 0), dtype=np.float32))
    before = snapshot(folder)
    line = refused(nccli(folder, "convert", source, "--out", "k.h5"), "no values per sample")
    check("non-finite" not in line, f"called non-finite: {line}")
    kept(folder, before)


def convert_partial_message(folder: Path) -> None:
    import h5py

    accepted(nccli(folder, "convert", save_npz(folder), "--out", "k.h5"))
    with h5py.File(folder / "k.h5", "r+") as handle:  # as a conversion killed before it finished leaves it
        handle.attrs["complete"] = False
    before = snapshot(folder)
    line = refused(nccli(folder, "analyze", "k.h5", "--out", "r.parquet"), "nccli convert")
    check("extract --resume" not in line, f"told to resume with extract: {line}")
    kept(folder, before)


def duplicate_columns(command: str):
    def case(folder: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(analyzed_report(folder))
        names = table.column_names
        duplicated = pa.Table.from_arrays([*table.columns, table.column(0)], names=[*names, names[0]])
        pq.write_table(duplicated, folder / "dup.parquet")
        before = snapshot(folder)
        extra = ("--out", folder / "figures") if command == "plot" else ()
        refused(nccli(folder, command, "dup.parquet", *extra), "dup.parquet")
        kept(folder, before)

    return case


def nonfinite_logits(folder: Path) -> None:
    logits = np.where(np.arange(N)[:, None] == 33, np.nan, np.ones((N, K)))
    convert_refused(folder, save_npz(folder, logits=logits), "--logits", "logits", fragments=("row 33",))


@dataclass(frozen=True)
class Case:
    name: str
    finding: str
    expected: str
    run: Callable[[Path], None]


CASES = [
    Case("index-foreign-shard", "torchrun index shard of another extraction", "refused", index_with_foreign_shard),
    Case("means-from-order", "--means-from class names in another order", "refused", means_from_other_order),
    Case(
        "float32-1e19",
        "float32 features near 1e19",
        "exact or refused",
        lambda f: exact_or_refused(f, 1e19, np.float32, 64),
    ),
    Case(
        "float64-1e155",
        "float64 features near 1e155",
        "exact or refused",
        lambda f: exact_or_refused(f, 1e155, np.float64, 4),
    ),
    Case("uint64-2^63", "convert uint64 labels >= 2^63", "refused, nothing written", uint64_labels(2**63)),
    Case("uint64-2^64-1", "uint64 2^64-1 labels", "refused, nothing written", uint64_labels(2**64 - 1)),
    Case("pt-short-record", ".pt storage record shorter than its tensor", "refused", short_storage_record),
    Case("ood-is-out", "analyze --ood X --out X", "refused, X kept", ood_is_out),
    Case(
        "convert-symlink-out",
        "convert output reached through a symlink",
        "refused, source kept",
        convert_through_symlink,
    ),
    Case("planted-lock", "r.parquet.lock -> victim", "refused, victim kept", planted_lock),
    Case("planted-partial", "k.h5.partial.new -> victim", "victim kept", planted_partial),
    Case("classes-is-lock", "--classes r.parquet.lock", "refused", classes_is_lock),
    Case("out-star", "--out '*' cleanup as a glob", "unrelated files kept", out_star),
    Case("out-working-name", "convert --out k.h5.partial --overwrite", "refused", second_convert_on_partial),
    Case("report-2M-rows", "Parquet declaring 2 000 000 rows: report", "bounded < 30 s", bounded("report")),
    Case("plot-2M-rows", "Parquet declaring 2 000 000 rows: plot", "refused < 30 s", bounded("plot")),
    Case("npz-huge-W", "convert reads W whole", "refused", huge_classifier),
    Case("measure-1e8-classes", "measure_collapse num_classes=10**8", "one-line error", measure_many_classes),
    Case("npy-negative-dims", "negative dimensions in an .npy header", "refused", npy_negative_dimensions),
    Case("epoch-10^29", "convert --epoch 10**29", "refused, no .partial.new", epoch_too_big),
    Case("epoch-1e29", "convert --epoch 1e29", "parser's usage error, nothing written", epoch_not_an_integer),
    Case("pt-sparse", "sparse tensor in a .pt", "refused", pt_tensor("x.to_sparse()", "sparse tensor")),
    Case(
        "pt-nested",
        "nested tensor in a .pt",
        "refused",
        pt_tensor("torch.nested.nested_tensor([x[:2], x[:3]])", "nested"),
    ),
    Case("pt-meta", "meta tensor in a .pt", "refused", pt_tensor("torch.empty(x.shape, device='meta')", "meta tensor")),
    Case(
        "pt-quantized",
        "quantized tensor in a .pt",
        "refused",
        pt_tensor("torch.quantize_per_tensor(x, 0.1, 0, torch.qint8)", "quantized"),
    ),
    Case("weight-decay-nan", "--weight-decay nan", "refused", weight_decay("nan")),
    Case("weight-decay-inf", "--weight-decay inf", "refused", weight_decay("inf")),
    Case("plot-string-nc1", "plot of a report whose nc1 is a string", "refused", plot_string_column("nc1")),
    Case("plot-string-epoch", "plot of a report whose epoch is a string", "refused", plot_string_column("epoch")),
    Case("measure-int-layer", "non-string layer key in measure_collapse", "one-line error", measure_layer_key),
    Case("escapes-info", "terminal escapes in names: info", "escaped", escapes_info),
    Case("escapes-error", "terminal escapes in names: error line", "escaped", escapes_error),
    Case("escapes-report", "terminal escapes in names: analyze, report", "escaped", escapes_report),
    Case("pickle-reason", "pickles refused with an empty reason", "refused with a reason", pickle_reason),
    Case("empty-maps", "(N, C, 0, 0) maps called non-finite", "refused, right reason", empty_maps),
    Case(
        "convert-partial-hint",
        "convert partial told to use extract --resume",
        "refused, convert hint",
        convert_partial_message,
    ),
    Case(
        "duplicate-columns-report",
        "duplicate Parquet columns: report",
        "refused in one line",
        duplicate_columns("report"),
    ),
    Case("duplicate-columns-plot", "duplicate Parquet columns: plot", "refused in one line", duplicate_columns("plot")),
    Case("convert-nan-logits", "convert accepts NaN logits", "refused", nonfinite_logits),
]


def run(cases: list[Case], directory: Path, log=print) -> list[dict]:
    """Each case in a scratch folder of its own; a row per case: name, finding, expected, held, seconds, why."""
    rows = []
    for case in cases:
        folder = directory / case.name
        folder.mkdir()
        started = time.monotonic()
        try:
            case.run(folder)
            held, why = True, ""
        except NotHeld as error:
            held, why = False, str(error)
        except Exception as error:  # the case's own inputs failed to build: counted, with its cause
            held, why = False, f"{type(error).__name__}: {error}"
        row = {"case": case.name, "finding": case.finding, "expected": case.expected, "held": held}
        rows.append({**row, "seconds": time.monotonic() - started, "why": why})
        log(f"{case.name}: {'held' if held else 'NOT HELD: ' + why} ({rows[-1]['seconds']:.1f} s)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", help="names of the cases to run (default: all)")
    options = parser.parse_args()
    chosen = [case for case in CASES if not options.cases or case.name in options.cases]
    unknown = set(options.cases or ()) - {case.name for case in CASES}
    if unknown:
        parser.error(f"unknown cases: {sorted(unknown)}; cases are: {[case.name for case in CASES]}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as directory:
        rows = run(chosen, Path(directory), log=lambda line: print(line, file=sys.stderr))
    print("| case | finding | expected | held | seconds |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        held = "yes" if row["held"] else "**no**"
        print(f"| {row['case']} | {row['finding']} | {row['expected']} | {held} | {row['seconds']:.1f} |")
    failed = [row for row in rows if not row["held"]]
    print(f"\n{len(rows)} cases tried, {len(rows) - len(failed)} held; {time.monotonic() - started:.0f} s")
    for row in failed:
        print(f"NOT HELD: {row['case']}: {row['why']}")
    sys.exit(len(failed))


if __name__ == "__main__":
    main()
