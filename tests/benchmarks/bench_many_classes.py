"""Benchmark of `nccli analyze` at many classes: wall time and peak RSS of whole processes.

Synthetic float32 files with a classifier (class centres × 2 + unit noise,
labels balanced so that every class is present, W = the centres, b = 0), made
by this script:

  * K-scaling at N = 100 000, d = 256, K = 100, 1 000, 10 000, 100 000
    (one row per class at K = 100 000): `nccli analyze` beside the public
    library rhubarbwu/neural-collapse run as a whole process on the same
    arrays (reference_neural_collapse.py), with the values whose definitions
    match (nc1, nc1_tilde, cdnv, equinorm with its ddof = 1, NCC/classifier
    agreement). The library needs K × K float32 grids (40 GB at K = 100 000):
    it runs up to ``--reference-max-k``;
  * no regression at K = 100: N = 50 000, d = 512, beside the library;
  * K = 100 000, d = 512, N = 200 000: nccli alone.

Targets: at K = 10 000, ≤ 0.1× the library's wall time and ≤ 0.5×
its peak RSS; at K = 100, ≤ 0.3× its wall time; K = 100 000, d = 512,
N = 200 000 in < 10 min under 6 GB on 2 cores.

``--passes-only`` times nccli's two passes (pass 1, Σ_B spectrum, geometry,
pass 2) without the summaries, through the library API. The library is
found through ``--reference-python`` (or $NCCLI_BENCH_REFERENCE_PYTHON): an
interpreter that imports neural_collapse, torch and h5py; without one its
columns are skipped. Run from the repository root:

    python tests/benchmarks/bench_many_classes.py --reference-python /tmp/nclib-venv/bin/python \\
        [--workdir DIR] [--keep] [--cases scaling,k100,big]
"""

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
from bench_analyze import best_of

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
SCALING_KS = (100, 1_000, 10_000, 100_000)
K100_REPEATS = 3  # seconds-long runs: the best of a few, for both, so that a stray load does not decide the ratio


def make_file(path: Path, n: int, d: int, k: int, seed: int = 0) -> Path:
    """One layer 'feat' (the classifier's input), float32, chunks of ~1 MiB, every class present."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % k)
    centres = rng.standard_normal((k, d), dtype=np.float32) * 2
    chunk_rows = min(n, max(1, 2**20 // (4 * d)))
    with h5py.File(path, "w") as handle:
        handle.attrs["nccli_format"] = "nccli.features"
        handle.attrs["format_version"] = 1
        handle.attrs["num_classes"] = k
        handle.create_dataset("labels", data=labels)
        data = handle.create_dataset("layers/feat", shape=(n, d), dtype=np.float32, chunks=(chunk_rows, d))
        data.attrs["order"] = 0
        for start in range(0, n, 50_000):
            stop = min(start + 50_000, n)
            data[start:stop] = centres[labels[start:stop]] + rng.standard_normal((stop - start, d), dtype=np.float32)
        handle.create_dataset("classifier/weight", data=centres)
        handle.create_dataset("classifier/bias", data=np.zeros(k, np.float32))
        handle["classifier"].attrs["layer"] = "feat"
    return path


def passes_only(path: str) -> None:
    """Child process: nccli's two passes over every layer, no summaries."""
    from nccli.analyze.passes import Scanner
    from nccli.io.reader import open_feature_file
    from nccli.metrics import formulas
    from nccli.metrics.backend import NumpyBackend
    from nccli.metrics.geometry import build_geometry

    xp = NumpyBackend()
    with open_feature_file(path) as feature_file:
        layers = feature_file.info.layers
        scanner = Scanner(xp, None, lambda n: None)
        moments = scanner.moments(feature_file, layers)
        geometries = {}
        for layer in layers:
            means = moments[layer.name].class_means()
            spectrum = formulas.between_class_spectrum(means.centred)
            classifier = feature_file.classifier if layer.name == feature_file.info.classifier_layer else None
            geometries[layer.name] = build_geometry(xp, moments[layer.name], spectrum, means, classifier)
        scanner.decisions(feature_file, layers, geometries)


def nccli_command(path: Path, out: Path, passes: bool) -> list[str]:
    if passes:
        code = (
            f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_many_classes; "
            "bench_many_classes.passes_only(sys.argv[1])"
        )
        return [PYTHON, "-c", code, str(path)]
    return [PYTHON, "-m", "nccli", "analyze", str(path), "--out", str(out), "--device", "cpu"]


def reference_values(python: str, path: Path, work: Path, repeats: int = 1) -> tuple[float, float, dict]:
    """(wall, peak RSS MiB, values) of the library as a whole process (the best wall of ``repeats`` runs)."""
    values = work / "reference_values.json"
    wall, rss = best_of([python, str(HERE / "reference_neural_collapse.py"), str(path), str(values)], repeats)
    return wall, rss, json.loads(values.read_text())


def nccli_values(out: Path) -> dict:
    import pyarrow.parquet as pq

    return pq.read_table(out).to_pylist()[0]


def compare(ours: dict, theirs: dict) -> str:
    """Relative gaps where the definitions match (their equinorm: ddof = 1; their agreement = 1 − mismatch)."""
    k = ours["n_classes"]
    pairs = {
        "nc1": (ours["nc1"], theirs["nc1"]),
        "nc1_tilde": (ours["nc1_tilde"], theirs["nc1_tilde"]),
        "cdnv": (ours["cdnv"], theirs["cdnv"]),
        "equinorm": (ours["nc2_equinorm"] * math.sqrt(k / (k - 1)), theirs["nc2_equinorm_ddof1"]),
        "agreement": (1.0 - ours["nc4_ncc_mismatch"], theirs["clf_ncc_agreement"]),
    }
    return ", ".join(f"{name} {abs(a - b) / abs(b):.1e}" for name, (a, b) in pairs.items())


def reference_python(argument: str | None) -> str | None:
    python = argument or os.environ.get("NCCLI_BENCH_REFERENCE_PYTHON")
    if not python:
        print("reference library: skipped (give --reference-python or $NCCLI_BENCH_REFERENCE_PYTHON)")
        return None
    probe = subprocess.run([python, "-c", "import neural_collapse, torch, h5py"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"reference library: skipped ({python} cannot import neural_collapse, torch and h5py)")
        return None
    return python


def side_by_side(
    label: str, path: Path, out: Path, python: str | None, passes: bool, run_reference: bool, repeats: int = 1
) -> None:
    """One line: nccli and (if run) the library, each the best wall time of ``repeats`` whole processes."""
    ours_wall, ours_rss = best_of(nccli_command(path, out, passes), repeats)
    line = f"  {label:<28} nccli {ours_wall:8.1f} s {ours_rss:7.0f} MiB"
    if python is not None and run_reference:
        wall, rss, values = reference_values(python, path, out.parent, repeats)
        line += (
            f" | library {wall:8.1f} s {rss:7.0f} MiB | ratio {ours_wall / wall:.3f}× time, {ours_rss / rss:.3f}× RSS"
        )
        if not passes:
            line += f"\n  {'':<28} relative gaps: {compare(nccli_values(out), values)}"
    elif python is not None:
        line += " | library not run (its K × K float32 grids)"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, default=None, help="Where the synthetic files go (default: a temp dir)."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the synthetic files.")
    parser.add_argument(
        "--reference-python", default=None, help="An interpreter that imports neural_collapse (the library)."
    )
    parser.add_argument("--reference-max-k", type=int, default=10_000, help="Largest K to run the library at.")
    parser.add_argument("--cases", default="scaling,k100,big", help="Comma-separated: scaling, k100, big.")
    parser.add_argument(
        "--scaling-ks", default=",".join(map(str, SCALING_KS)), help="The K values of the scaling table."
    )
    parser.add_argument("--passes-only", action="store_true", help="Time nccli's two passes without the summaries.")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="nccli-many-"))
    work.mkdir(parents=True, exist_ok=True)
    out = work / "report.parquet"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, Python {platform.python_version()}")
    python = reference_python(args.reference_python)
    cases = args.cases.split(",")
    what = "two passes only" if args.passes_only else "nccli analyze (every summary metric)"

    if "scaling" in cases:
        print(f"\nK-scaling, N = 100 000, d = 256, float32, classifier ({what}):")
        for k in map(int, args.scaling_ks.split(",")):
            path = make_file(work / f"n100k_d256_k{k}.h5", 100_000, 256, k)
            side_by_side(f"K = {k}", path, out, python, args.passes_only, k <= args.reference_max_k)
    if "k100" in cases:
        print(f"\nno regression at K = 100, N = 50 000, d = 512 ({what}; best of {K100_REPEATS} runs each):")
        path = make_file(work / "n50k_d512_k100.h5", 50_000, 512, 100)
        side_by_side("K = 100", path, out, python, args.passes_only, True, K100_REPEATS)
    if "big" in cases:
        print(f"\nK = 100 000, d = 512, N = 200 000 ({what}; target < 600 s, < 6144 MiB):")
        path = make_file(work / "n200k_d512_k100000.h5", 200_000, 512, 100_000)
        side_by_side("K = 100 000", path, out, python, args.passes_only, False)

    if not args.keep and args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
