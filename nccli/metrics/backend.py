"""Array backends for the per-block kernels: numpy on the CPU (:mod:`nccli.metrics.numpy_backend`),
torch on CUDA (:mod:`nccli.metrics.torch_backend`), and which one an array or a ``--device`` asks for.

All state is float64. On the CPU analyze never imports torch: ``auto`` only looks for torch when an
NVIDIA driver is present.
"""

import functools

import numpy as np

from nccli.devices import resolve_device
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


def select_backend(device: str) -> "Backend":
    """``--device`` (:mod:`nccli.devices`) → numpy on the CPU, torch on CUDA."""
    resolved = resolve_device(device)
    return NumpyBackend() if resolved == "cpu" else TorchBackend(resolved)
