"""Extraction throughput beside a plain forward-only loop over the same batches and model.

Run from the repository root (a script, not a pytest test)::

    python tests/benchmarks/bench_extract.py                      # CPU: resnet18 at 32×32 and 224×224
    python tests/benchmarks/bench_extract.py --model resnet50 --sizes 224 --n 10240 \\
        --batch-size 256 --precision bf16 --device cuda              # the GPU figure of RESULTS.md

For each image size it writes random uint8 images to an .npz and a
random-weight checkpoint, then times

* forward-only: the model over the same batches, already preprocessed and in
  host memory (copied to the device each time), under ``inference_mode`` and
  the same autocast / channels_last as extract — the compute-bound ceiling;
* extract: ``nccli.extract_features`` end to end on the .npz — loading,
  probing, preprocessing, hooks and pooling, device→host copies and writing
  the HDF5 file;

and prints images/s and their ratio (target: extract ≥ 0.9 × forward-only).
Each is run once untimed first, so one-off start-up costs (library loading,
kernel selection) are not counted. Extract is reported twice: end to end,
which includes its fixed per-file setup (reading and hashing the checkpoint,
reading the .npz, building the model, the probe batch, creating and renaming
the file), and steady state, ``(N − B) / (t(N) − t(B))`` with ``t(B)`` a run
of one batch, which is what a real dataset (50 000+ images) sees once that
setup is amortised. The runs alternate ``--repeats`` times and the best of
each is compared (the least disturbed by other load on the machine), with
the median ratio beside it.
"""

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
import torchvision

from nccli.extract import ExtractConfig, ModelOptions, extract_features
from nccli.extract.config import DEFAULT_WORKERS, Precision
from nccli.extract.loop import autocast, place_model, resolve_device, to_device

DEFAULT_N = {32: 8192, 224: 256}
NUM_CLASSES = 10


def cpu_name() -> str:
    with open("/proc/cpuinfo") as info:
        return next(
            (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), platform.processor()
        )


def forward_only(model, batches, device, precision) -> float:
    """Images/s of the model alone over preprocessed host batches (after one untimed batch)."""
    model, channels_last = place_model(model, device)
    with torch.inference_mode(), autocast(device, precision):
        model(to_device(batches[0], device, channels_last))  # untimed warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for batch in batches:
            model(to_device(batch, device, channels_last))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return sum(len(batch) for batch in batches) / (time.perf_counter() - started)


def bench(args, size: int, n: int, directory: str) -> dict[str, list[float]]:
    """Seconds of each repeat: forward-only over N images, extract of N, extract of one batch."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, num_classes=NUM_CLASSES).eval()
    checkpoint = os.path.join(directory, f"{args.model}.pt")
    torch.save(model.state_dict(), checkpoint)
    images = np.random.default_rng(0).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    data = os.path.join(directory, f"images_{size}.npz")
    np.savez(data, x=images, y=np.arange(n) % NUM_CLASSES)

    device = resolve_device(args.device)
    precision = Precision(args.precision)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    inputs = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    batches = [inputs[start : start + args.batch_size].contiguous() for start in range(0, n, args.batch_size)]
    if device.type == "cuda":
        batches = [batch.pin_memory() for batch in batches]
    config = ExtractConfig(
        models=(checkpoint,),
        data=data,
        out=os.path.join(directory, f"features_{size}.h5"),
        model=ModelOptions(arch=args.model),
        normalize="imagenet",  # as the forward-only loop's inputs
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=precision,
        overwrite=True,
    )
    one_batch = ExtractConfig(**{**config.__dict__, "limit": args.batch_size})
    extract_features(one_batch)  # untimed warm-up
    times = {"forward": [], "extract": [], "one batch": []}
    for _ in range(args.repeats):
        times["forward"].append(n / forward_only(model, batches, device, precision))
        times["extract"].append(seconds(lambda: extract_features(config)))
        times["one batch"].append(seconds(lambda: extract_features(one_batch)))
    return times


def seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="torchvision model name (random weights)")
    parser.add_argument("--sizes", default="32,224", help="comma-separated image sizes")
    parser.add_argument("--n", type=int, help="images per size (default: 8192 at 32, 256 at 224)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=[p.value for p in Precision])
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs of each")
    args = parser.parse_args()
    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"# {where}; {os.cpu_count()} CPU cores; torch {torch.__version__}; torch threads {torch.get_num_threads()}")
    print(f"# {args.model}, batch {args.batch_size}, {args.precision}, workers {args.workers}, device {device}")
    print(f"# images/s; best of {args.repeats} alternating runs (ratio of medians in brackets)")
    print("size      N  forward-only  extract end-to-end  extract steady  ratio end-to-end  ratio steady")
    with tempfile.TemporaryDirectory() as directory:
        for size in (int(value) for value in args.sizes.split(",")):
            n = args.n or DEFAULT_N.get(size, 512)
            times = bench(args, size, n, directory)
            rest = n - min(n, args.batch_size)
            forward = [n / t for t in times["forward"]]
            whole = [n / t for t in times["extract"]]
            steady = (
                [rest / (t - b) for t, b in zip(times["extract"], times["one batch"], strict=True)] if rest else whole
            )
            best_steady = max(steady)  # each repeat's own pair of runs, taken back to back
            print(
                f"{size:4d} {n:6d}  {max(forward):12.1f}  {max(whole):18.1f}  {best_steady:14.1f}"
                f"  {max(whole) / max(forward):9.2f} [{statistics.median(whole) / statistics.median(forward):.2f}]"
                f"  {best_steady / max(forward):5.2f} [{statistics.median(steady) / statistics.median(forward):.2f}]"
            )


if __name__ == "__main__":
    main()
