"""Array backends for the per-block kernels: numpy on the CPU (:mod:`nccli.metrics.numpy_backend`),
torch on CUDA (:mod:`nccli.metrics.torch_backend`), and which one an array or a ``--device`` asks for.

All state is float64. On the CPU analyze never imports torch: ``auto`` only looks for torch when an
NVIDIA driver is present.
"""

import functools
from pathlib import Path

import numpy as np

from nccli.errors import UsageError
from nccli.metrics.numpy_backend import NumpyBackend
from nccli.metrics.torch_backend import TorchBackend

__all__ = ["Backend", "NumpyBackend", "TorchBackend", "backend_of", "select_backend"]


Backend = NumpyBackend | TorchBackend
_NUMPY = NumpyBackend()


@functools.cache
def _torch_backend(device: str) -> TorchBackend:
    return TorchBackend(device)


def backend_of(array) -> "Backend":
    """The backend whose kernels apply to ``array``: numpy for a numpy array, torch on the tensor's device.

    Accumulator states hold arrays only (:mod:`nccli.metrics.accumulators`); they take their backend from
    their arrays, so a state keeps working wherever it moves (to the host, another process, another rank).
    """
    return _NUMPY if isinstance(array, np.ndarray) else _torch_backend(str(array.device))


def _nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def select_backend(device: str) -> "Backend":
    """``cpu`` → numpy; ``cuda``/``cuda:i`` → torch (error if unavailable); ``auto`` → CUDA if present."""
    if device == "cpu":
        return NumpyBackend()
    if device == "auto":
        if not _nvidia_driver_present():
            return NumpyBackend()
        try:
            import torch
        except ImportError:
            return NumpyBackend()
        return TorchBackend("cuda") if torch.cuda.is_available() else NumpyBackend()
    if device == "cuda" or device.startswith("cuda:"):
        try:
            import torch
        except ImportError:
            raise UsageError(f"--device {device} needs torch, which is not installed; use --device cpu") from None
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA device is visible to torch; use --device cpu or auto")
        return TorchBackend(device)
    raise UsageError(f"unknown --device '{device}'; expected auto, cpu, cuda or cuda:N")
