"""Benchmark of `nccli analyze`: wall time and peak RSS of whole processes, side by side in one run.

Synthetic float32 feature files (chunks of about 1 MiB):
  * N=50 000, d=512, K=100, one layer and four layers: `nccli analyze` beside
    (a) one plain h5py read of the same features and (b) a vectorised
    in-memory numpy implementation of the same metrics (inmemory_numpy.py);
  * N=500 000 vs N=50 000 (one layer): peak RSS must not grow with N;
  * one layer of d=60 000 (K=10, N=2 000): exact nc1 in < 2 GB, checked
    against an independent closed form (K × K Gram pseudo-inverse);
  * start-up: `nccli --help`, and whether analyze imported torch.

Targets: analyze no slower than (b) with a fraction of its memory;
RSS(500k) ≤ 1.2 × RSS(50k); d=60 000 in < 2 GB. Run from the repository root:

    python tests/benchmarks/bench_analyze.py [--workdir DIR] [--keep]
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
NCCLI = [PYTHON, "-m", "nccli"]


def make_file(path: Path, n: int, d: int, k: int, layers: int = 1, seed: int = 0) -> Path:
    """Class centres + unit noise, float32, chunks of ~1 MiB (rows × full width), with a classifier."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    centres = [rng.normal(size=(k, d)).astype(np.float32) * 2 for _ in range(layers)]
    chunk_rows = max(1, 2**20 // (4 * d))
    with h5py.File(path, "w") as handle:
        handle.attrs["nccli_format"] = "nccli.features"
        handle.attrs["format_version"] = 1
        handle.attrs["num_classes"] = k
        handle.create_dataset("labels", data=labels)
        for index in range(layers):
            data = handle.create_dataset(f"layers/layer{index}", shape=(n, d), dtype=np.float32, chunks=(chunk_rows, d))
            data.attrs["order"] = index
            for start in range(0, n, 50_000):
                stop = min(start + 50_000, n)
                noise = rng.standard_normal((stop - start, d), dtype=np.float32)
                data[start:stop] = centres[index][labels[start:stop]] + noise
        handle.create_dataset("classifier/weight", data=centres[-1])
        handle.create_dataset("classifier/bias", data=np.zeros(k, np.float32))
        handle["classifier"].attrs["layer"] = f"layer{layers - 1}"
    return path


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith(field)), 0)
    except OSError:
        return 0


def _descendants(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            direct = [int(child) for child in children.read().split()]
    except OSError:
        return []
    return direct + [grandchild for child in direct for grandchild in _descendants(child)]


def measure(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one whole process and its workers.

    Peak RSS is the larger of the process's own VmHWM and the most its process
    tree held at once (VmRSS summed over descendants, sampled every 5 ms).
    ru_maxrss would include this large parent's pages, which Linux counts at
    fork/exec.
    """
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while True:
        tree = sum(_status_kib(child, "VmRSS:") for child in _descendants(process.pid))
        peak = max(peak, _status_kib(process.pid, "VmHWM:"), _status_kib(process.pid, "VmRSS:") + tree)
        reaped, status = os.waitpid(process.pid, os.WNOHANG)  # /proc/PID stays until it is reaped
        if reaped:
            process.returncode = os.waitstatus_to_exitcode(status)
            break
        time.sleep(0.005)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{process.stderr.read().decode()}")
    return wall, peak / 1024


def best_of(command: list[str], repeats: int) -> tuple[float, float]:
    runs = [measure(command) for _ in range(repeats)]
    return min(r[0] for r in runs), max(r[1] for r in runs)


def analyze(path: Path, out: Path) -> list[str]:
    return [*NCCLI, "analyze", str(path), "--out", str(out), "--device", "cpu"]


def plain_read(path: Path) -> list[str]:
    code = "import h5py,sys; f=h5py.File(sys.argv[1]); [f['layers'][n][()] for n in f['layers']]"
    return [PYTHON, "-c", code, str(path)]


def inmemory(path: Path) -> list[str]:
    return [PYTHON, str(HERE / "inmemory_numpy.py"), str(path)]


def row(name: str, wall: float, rss: float, base: tuple[float, float] | None = None, base_name: str = "analyze") -> str:
    ratios = f"  ({wall / base[0]:.2f}× time, {rss / base[1]:.2f}× RSS of {base_name})" if base else ""
    return f"  {name:<34} {wall:7.2f} s {rss:8.0f} MiB{ratios}"


def exact_nc1_check(path: Path, out: Path) -> float:
    """Relative gap between analyze's nc1 and the closed form (K/N)‖(MMᵀ)⁺ M Rᵀ‖²_F / K."""
    import pyarrow.parquet as pq

    with h5py.File(path, "r") as handle:
        labels = handle["labels"][()]
        features = handle["layers/layer0"][()].astype(np.float64)
    k = labels.max() + 1
    means = np.array([features[labels == c].mean(axis=0) for c in range(k)])
    centred = means - means.mean(axis=0)
    residuals = features - means[labels]
    projected = np.linalg.pinv(centred @ centred.T, hermitian=True) @ (centred @ residuals.T)
    reference = (k / len(labels)) * float(np.sum(projected**2)) / k
    reported = pq.read_table(out).to_pylist()[0]["nc1"]
    return abs(reported - reference) / reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, default=None, help="Where the synthetic files go (default: a temp dir)."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the synthetic files.")
    parser.add_argument("--repeats", type=int, default=2, help="Runs per measurement (best wall time).")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="nccli-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out = work / "report.parquet"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}")

    print("building synthetic files ...", flush=True)
    one = make_file(work / "n50k_d512_k100.h5", 50_000, 512, 100)
    four = make_file(work / "n50k_d512_k100_4layers.h5", 50_000, 512, 100, layers=4)
    big = make_file(work / "n500k_d512_k100.h5", 500_000, 512, 100)
    wide = make_file(work / "n2k_d60000_k10.h5", 2_000, 60_000, 10)

    for label, path in (("N=50 000, d=512, K=100, 1 layer", one), ("N=50 000, d=512, K=100, 4 layers", four)):
        print(f"\n{label}:")
        measure(plain_read(path))  # warm the page cache for everyone
        ours = best_of(analyze(path, out), args.repeats)
        print(row("nccli analyze", *ours))
        print(row("(a) plain h5py read", *best_of(plain_read(path), args.repeats), ours))
        print(row("(b) in-memory numpy", *best_of(inmemory(path), args.repeats), ours))

    print("\nscaling in N (1 layer, d=512, K=100):")
    small_rss = best_of(analyze(one, out), 1)[1]
    measure(plain_read(big))
    big_wall, big_rss = best_of(analyze(big, out), 1)
    print(
        f"  N=50 000: {small_rss:.0f} MiB   N=500 000: {big_rss:.0f} MiB ({big_wall:.1f} s)   ratio "
        f"{big_rss / small_rss:.2f} (target ≤ 1.2)"
    )

    print("\nd=60 000, K=10, N=2 000 (Σ_W alone would be 28.8 GB in float64):")
    wide_wall, wide_rss = best_of(analyze(wide, out), 1)
    gap = exact_nc1_check(wide, out)
    print(
        f"  nccli analyze {wide_wall:.1f} s, {wide_rss:.0f} MiB (target < 2048), nc1 relative gap to closed form "
        f"{gap:.1e}"
    )

    print("\nstart-up:")
    help_wall = min(measure([*NCCLI, "--help"])[0] for _ in range(3))
    probe = "import runpy,sys; sys.argv=['nccli','analyze',sys.argv[1],'--out',sys.argv[2],'--device','auto']\n"
    probe += (
        "try: runpy.run_module('nccli', run_name='__main__')\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    )
    imported = subprocess.run([PYTHON, "-c", probe, str(one), str(out)], capture_output=True, text=True).stdout.strip()
    print(f"  nccli --help: {help_wall:.2f} s; analyze --device auto imported torch: {imported.splitlines()[-1]}")

    if not args.keep and args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
