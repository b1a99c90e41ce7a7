"""The inference loop's machinery: device and precision, the DataLoader, device→host copies, the writer thread.

On CUDA: autocast (``bf16``/``fp16``), channels_last for convnets, pinned
host memory and non-blocking copies both ways, so the GPU never waits for the
disk. A background thread writes finished batches through a bounded queue
while the next ones compute, after checking their rows: a NaN or Inf, which
analyze would refuse, stops the run before it is written (on the host, in the
writer thread, so the device never waits for the check).
"""

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nccli import devices, schema
from nccli.errors import ModelError, NcCliError
from nccli.extract.capture import FeatureCapture
from nccli.extract.config import Precision
from nccli.extract.datasets import already_batched
from nccli.io.checks import first_nonfinite_row

QUEUE_DEPTH = 4  # batches waiting for the writer; bounds host memory
PREFETCH_BATCHES = 4  # per DataLoader worker
AUTOCAST_DTYPES = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


def resolve_device(spec: str) -> torch.device:
    """The torch device of ``--device`` (:func:`nccli.devices.resolve_device`)."""
    return torch.device(devices.resolve_device(spec))


def place_model(model: nn.Module, device: torch.device) -> tuple[nn.Module, bool]:
    """Move the model; on CUDA convnets use channels_last. Returns the model and whether inputs should too."""
    channels_last = device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


def autocast(device: torch.device, precision: Precision):
    """Autocast to ``bf16``/``fp16`` (CPU autocast too, where torch supports it); nothing for ``fp32``."""
    if precision == Precision.FP32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def make_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=already_batched,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
    )


def batches(loader: DataLoader) -> Iterator:
    """The loader's batches; an nccli error raised in a worker comes back as its own one-line message."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except NcCliError as error:
            lines = str(error).strip().splitlines()
            if len(lines) == 1:
                raise
            raise type(error)(lines[-1].split(": ", 1)[-1]) from None
        yield batch


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    return images.to(device, non_blocking=True, memory_format=memory_format)


def run_batch(
    capture: FeatureCapture, images: torch.Tensor, device: torch.device, precision: Precision, channels_last: bool
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One forward pass: the pooled rows of every planned layer and the model's output."""
    with autocast(device, precision):
        return capture.run(to_device(images, device, channels_last))


def to_host(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.cuda.Event | None]:
    """Start copying to pinned host memory without waiting; the event tells when the copies are done."""
    if all(tensor.device.type == "cpu" for tensor in tensors.values()):
        return tensors, None
    host = {
        name: torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True).copy_(tensor, non_blocking=True)
        for name, tensor in tensors.items()
    }
    device = next(tensor.device for tensor in tensors.values() if tensor.device.type == "cuda")
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))  # the stream the copies were queued on, also for cuda:1
    return host, event


class BackgroundWriter:
    """Run ``write(item)`` on a thread, fed through a bounded queue; its first error is raised to the caller."""

    def __init__(self, write: Callable, depth: int = QUEUE_DEPTH):
        self._write, self._queue, self._error = write, queue.Queue(maxsize=depth), None
        self._thread = threading.Thread(target=self._work, name="nccli-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(item)
                except BaseException as error:  # handed to the main thread, which raises it
                    self._error = error

    def put(self, item) -> None:
        self._raise_error()
        self._queue.put(item)

    def close(self) -> None:
        """Write everything queued, stop the thread, and raise its error if it had one."""
        self._queue.put(None)
        self._thread.join()
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error


def logits_rows(output: torch.Tensor | None, batch: int, classes: int) -> torch.Tensor:
    """The model's output as /logits rows: one row of ``classes`` values per image, as in the probe."""
    if output is None or tuple(output.shape) != (batch, classes):
        found = "no tensor" if output is None else f"shape {list(output.shape)}"
        raise ModelError(
            f"the model gave {found} for a batch of {batch} images, not [{batch}, {classes}] as in the probe batch "
            "(a forward pass that depends on the data?)"
        )
    return output.float()


def with_placeholders(arrays: dict, kept: torch.Tensor, widths: dict[str, int], device) -> dict:
    """Each row dataset's rows at their batch positions, zeros where a sample was left out."""
    kept = kept.to(device)
    full = {}
    for path, width in widths.items():
        rows = torch.zeros((len(kept), width), dtype=torch.float32, device=device)
        if path in arrays:
            rows[kept] = arrays[path]
        full[path] = rows
    return full


def check_finite(arrays: dict[str, np.ndarray], precision: Precision, storage: str) -> None:
    """Refuse a batch with a NaN or Inf feature or logit as stored (float16 overflows above 65504), before it is
    written: analyze refuses such files."""
    for path, values in arrays.items():
        if values.dtype.kind != "f":
            continue
        with np.errstate(over="ignore"):  # an overflow becomes Inf, reported below
            stored = values.astype(storage, copy=False)
        row = first_nonfinite_row(stored)
        if row is None:
            continue
        what = "the model's output" if path == schema.LOGITS else f"layer '{path.removeprefix(schema.LAYERS + '/')}'"
        if np.isfinite(values[row]).all():
            cause = f"a value exceeds {np.finfo(storage).max:g}, the largest {storage}: use --dtype float32"
        elif precision == Precision.FP16:
            cause = "fp16 autocast overflows above 65504: try --precision bf16 or fp32"
        else:
            cause = "check the model and its input"
        raise ModelError(
            f"{what} is not finite (NaN or Inf) for {_sample(arrays[schema.SAMPLE_INDEX][row])} as stored, and "
            f"analyze refuses non-finite features; {cause}"
        )


def _sample(index: np.ndarray) -> str:
    """An image's dataset index, or a token row's (window start, position)."""
    if np.ndim(index) == 0:
        return f"sample {int(index)}"
    start, position = (int(value) for value in index)
    return f"the token at position {position} of the window starting at token {start}"
