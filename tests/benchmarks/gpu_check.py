"""Every CUDA path of nccli, once, on the GPU(s) of this machine: one line per check, PASS or FAIL and a figure.

Run from the repository root on a machine with a GPU (about 3 minutes on one)::

    python tests/benchmarks/gpu_check.py [--quick]

Checks, in order (a failing check does not stop the others; the exit code is the number of failures):

* ``extract-{fp32,bf16,fp16}``: a random-weight ResNet-18 checkpoint over ``fake:N`` on ``cuda`` with
  DataLoader workers and pinned memory, every stored row compared with a CPU fp32 run of the same
  checkpoint. Tolerance (relative Frobenius error per layer, :data:`TOLERANCE`): fp32 2e-3, because
  cuDNN convolutions run in TF32 by default; bf16 6e-2 and fp16 1e-2 (autocast keeps 8 and 11
  mantissa bits).
* ``analyze-cuda``: ``analyze --device cuda`` equals ``--device cpu`` to 1e-10 relative on every
  metric (both accumulate in float64).
* ``measure-cuda``: ``measure_collapse`` on CUDA tensors (the rows of the CPU extraction, in batches, with
  the classifier) equals ``analyze --device cpu`` of the file to 1e-10 relative.
* ``torchrun-extract``, ``torchrun-analyze``: one process per GPU with NCCL; the sharded index's rows
  equal the single-process GPU rows, and analyze under torchrun equals one process to 1e-10.
* ``bench-extract``: ResNet-50 224×224 bf16 images/s and the ratio to a forward-only loop
  (``bench_extract.py``; target ≥ 0.9).
* ``bench-analyze``: analyze on the GPU in rows/s beside a raw read of the same file (the disk bound).
* ``bench-measure-lm``: ``nccli measure`` on a 6-block GPT-2 of width 384 (K = 50 257) in tokens/s beside
  a plain transformers forward loop (``bench_measure_lm.py``; target ≥ 0.45).

Details of failures go to ``gpu_check.log`` in the working folder.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = {"fp32": 2e-3, "bf16": 6e-2, "fp16": 1e-2}
ANALYZE_RTOL = 1e-10
LOG = Path("gpu_check.log")


def nccli(*args: str, torchrun: int = 0, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m nccli ARGS`` (under torchrun with ``torchrun`` processes); raises with stderr on failure."""
    launcher = [sys.executable]
    if torchrun:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun)]
    command = [*launcher, "-m", "nccli", *map(str, args)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("=")]
        raise RuntimeError(f"nccli {args[0]} exited {done.returncode}: {said[-1] if said else 'no message'}")
    return done


def layers_of(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        return {name: handle["layers"][name][()].astype(np.float64) for name in handle["layers"]}


def worst_relative_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> tuple[float, str]:
    errors = {name: np.linalg.norm(got[name] - want[name]) / max(np.linalg.norm(want[name]), 1e-300) for name in want}
    name = max(errors, key=errors.get)
    return float(errors[name]), name


def metrics_of(report: Path) -> dict[str, dict]:
    return {row["layer"]: row for row in pq.read_table(report).to_pylist()}


def worst_metric_difference(got: dict[str, dict], want: dict[str, dict]) -> float:
    worst = 0.0
    for layer, row in want.items():
        for column, value in row.items():
            if isinstance(value, float) and not np.isnan(value):
                other = got[layer][column]
                worst = max(worst, abs(other - value) / max(abs(value), 1e-300))
    return worst


class Checks:
    def __init__(self):
        self.failures = 0

    def run(self, name: str, check) -> None:
        started = time.perf_counter()
        try:
            passed, figure = check()
        except Exception as error:  # noqa: BLE001 - a failed check is reported, the others still run
            passed, figure = False, f"{type(error).__name__}: {error}"
            with LOG.open("a") as log:
                log.write(f"--- {name}\n{traceback.format_exc()}\n")
        self.failures += not passed
        print(f"{'PASS' if passed else 'FAIL'} {name}: {figure} ({time.perf_counter() - started:.0f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    options = parser.parse_args()
    if not torch.cuda.is_available():
        print("FAIL cuda: torch sees no CUDA device")
        return 1
    gpus = torch.cuda.device_count()
    print(f"torch {torch.__version__}, {gpus} × {torch.cuda.get_device_name(0)}", flush=True)
    n = 1024 if options.quick else 4096
    checks = Checks()
    with tempfile.TemporaryDirectory(prefix="nccli-gpu-check-") as folder:
        work = Path(folder)
        checkpoint = work / "resnet18.pt"
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), checkpoint)
        model = ["--arch", "resnet18", "--num-classes", "10", "--normalize", "imagenet"]
        common = [checkpoint, f"fake:{n}", *model, "--batch-size", "256"]
        reference = work / "cpu.h5"
        nccli("extract", *common, "--device", "cpu", "--out", reference)
        want = layers_of(reference)

        def extract_check(precision: str):
            def check():
                out = work / f"cuda-{precision}.h5"
                started = time.perf_counter()
                nccli("extract", *common, "--device", "cuda", "--precision", precision, "--workers", "4", "--out", out)
                seconds = time.perf_counter() - started
                error, layer = worst_relative_error(layers_of(out), want)
                passed = error <= TOLERANCE[precision]
                return (
                    passed,
                    f"worst relative error {error:.2e} ('{layer}', tolerance {TOLERANCE[precision]:g}); "
                    f"{n / seconds:.0f} images/s end to end",
                )

            return check

        for precision in ("fp32", "bf16", "fp16"):
            checks.run(f"extract-{precision}", extract_check(precision))

        def analyze_check():
            on_cpu, on_cuda = work / "cpu.parquet", work / "cuda.parquet"
            nccli("analyze", reference, "--device", "cpu", "--out", on_cpu, "--mse")
            nccli("analyze", reference, "--device", "cuda", "--out", on_cuda, "--mse")
            difference = worst_metric_difference(metrics_of(on_cuda), metrics_of(on_cpu))
            return (
                difference <= ANALYZE_RTOL,
                f"worst relative difference {difference:.1e} (tolerance {ANALYZE_RTOL:g})",
            )

        checks.run("analyze-cuda", analyze_check)

        def measure_check():
            from nccli import measure_collapse

            with h5py.File(reference, "r") as handle:
                labels = torch.from_numpy(handle["labels"][()]).cuda()
                layers = {name: torch.from_numpy(handle["layers"][name][()]).cuda() for name in handle["layers"]}
                classifier = tuple(
                    torch.from_numpy(handle[path][()]).cuda() for path in ("classifier/weight", "classifier/bias")
                )
                classifier_layer = handle["classifier"].attrs["layer"]
            batches = [
                ({name: rows[i : i + 500] for name, rows in layers.items()}, labels[i : i + 500])
                for i in range(0, n, 500)
            ]
            rows = measure_collapse(batches, num_classes=10, classifier=classifier, classifier_layer=classifier_layer)
            on_cpu = work / "cpu-plain.parquet"
            nccli("analyze", reference, "--device", "cpu", "--out", on_cpu)
            difference = worst_metric_difference({row["layer"]: row for row in rows}, metrics_of(on_cpu))
            return (
                difference <= ANALYZE_RTOL,
                f"tensors on {labels.device}; worst relative difference {difference:.1e} (tolerance {ANALYZE_RTOL:g})",
            )

        checks.run("measure-cuda", measure_check)

        def torchrun_extract_check():
            index = work / "sharded" / "features.h5"
            nccli("extract", *common, "--device", "cuda", "--out", index, torchrun=gpus)
            single = work / "cuda-fp32.h5"
            error, layer = worst_relative_error(layers_of(index), layers_of(single))
            return error <= TOLERANCE[
                "fp32"
            ], f"{gpus} process(es), NCCL; worst relative error vs one process {error:.2e} ('{layer}')"

        checks.run("torchrun-extract", torchrun_extract_check)

        def torchrun_analyze_check():
            one, many = work / "one.parquet", work / "many.parquet"
            nccli("analyze", reference, "--device", "cuda", "--out", one)
            nccli("analyze", reference, "--out", many, torchrun=gpus)
            difference = worst_metric_difference(metrics_of(many), metrics_of(one))
            return difference <= ANALYZE_RTOL, f"{gpus} process(es); worst relative difference {difference:.1e}"

        checks.run("torchrun-analyze", torchrun_analyze_check)

        def bench_extract_check():
            images = 2048 if options.quick else 10240
            done = subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "tests/benchmarks/bench_extract.py"),
                    "--model",
                    "resnet50",
                    "--sizes",
                    "224",
                    "--n",
                    str(images),
                    "--batch-size",
                    "256",
                    "--precision",
                    "bf16",
                    "--device",
                    "cuda",
                    "--workers",
                    "8",
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
            header, row = [line for line in done.stdout.splitlines() if line.strip() and not line.startswith("#")][-2:]
            return True, f"{' '.join(header.split())} = {' '.join(row.split())}"

        checks.run("bench-extract", bench_extract_check)

        def bench_analyze_check():
            rows, dim, classes = (200_000, 512, 1000) if options.quick else (1_000_000, 512, 1000)
            path = work / "big.h5"
            generator = np.random.default_rng(0)
            with h5py.File(path, "w") as handle:
                handle.attrs["nccli_format"], handle.attrs["format_version"] = "nccli.features", 1
                handle["labels"] = generator.integers(0, classes, rows)
                layer = handle.create_dataset("layers/x", (rows, dim), dtype="f4", chunks=(4096, dim))
                for start in range(0, rows, 100_000):
                    layer[start : start + 100_000] = generator.standard_normal((min(100_000, rows - start), dim))
                layer.attrs["order"] = 0
            os.sync()
            started = time.perf_counter()
            with h5py.File(path, "r") as handle:
                for start in range(0, rows, 65536):
                    handle["layers/x"][start : start + 65536]
            read = time.perf_counter() - started
            started = time.perf_counter()
            nccli("analyze", path, "--device", "cuda", "--out", work / "big.parquet")
            analyzed = time.perf_counter() - started
            return (
                True,
                f"{rows / analyzed:,.0f} rows/s analyze (two passes) vs {rows / read:,.0f} rows/s raw read; ratio "
                f"{read * 2 / analyzed:.2f} of two reads",
            )

        checks.run("bench-analyze", bench_analyze_check)

        def bench_measure_lm_check():
            tokens = 100_000 if options.quick else 1_000_000
            done = subprocess.run(
                [
                    sys.executable, str(ROOT / "tests/benchmarks/bench_measure_lm.py"), "--device", "cuda",
                    "--tokens", str(tokens), "--layers", "6", "--width", "384", "--batch-size", "32",
                ],
                capture_output=True, text=True, timeout=600, check=True,
            )  # fmt: skip
            line = next(line for line in done.stdout.splitlines() if "ratio" in line)
            ratio = float(line.rsplit("ratio ", 1)[1].split()[0])
            return ratio >= 0.45, line

        checks.run("bench-measure-lm", bench_measure_lm_check)
    print(f"{checks.failures} failed")
    return checks.failures


if __name__ == "__main__":
    sys.exit(main())
