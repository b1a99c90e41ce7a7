"""Array backends for the per-block kernels: numpy on the CPU, torch on CUDA.

The accumulators are written once against the few primitives below (plus
operators and indexing, which numpy and torch share). All state is float64.
On the CPU analyze never imports torch: ``auto`` only looks for torch when an
NVIDIA driver is present.
"""

from pathlib import Path

import numpy as np

from nccli.errors import UsageError


class NumpyBackend:
    """float64 numpy on the host."""

    name = "cpu"

    def features(self, block: np.ndarray):
        return np.asarray(block, dtype=np.float64)

    def labels(self, block: np.ndarray):
        return np.asarray(block, dtype=np.int64)

    def constant(self, array: np.ndarray):
        return np.array(array, dtype=np.float64)

    def zeros(self, *shape: int):
        return np.zeros(shape, dtype=np.float64)

    def arange(self, n: int):
        return np.arange(n)

    def bincount(self, labels, length: int, weights=None):
        return np.bincount(labels, weights=weights, minlength=length).astype(np.float64)

    def grouped(self, rows, labels):
        """Rows and labels sorted by label, so that segment sums need no gather."""
        order = np.argsort(labels, kind="stable")
        return rows[order], labels[order]

    def segment_sum(self, rows, labels, length: int):
        """Row sums per label: (length, d), one BLAS product per run of equal labels (O(B·d), no one-hot).

        np.add.reduceat along rows is ~15× slower than these vector–matrix products.
        """
        out = np.zeros((length, rows.shape[1]), dtype=np.float64)
        if len(labels) == 0:
            return out
        if (np.diff(labels) < 0).any():
            rows, labels = self.grouped(rows, labels)
        starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
        ends = np.r_[starts[1:], len(labels)]
        ones = np.ones(len(labels))
        for start, end in zip(starts, ends):
            out[labels[start]] = ones[start:end] @ rows[start:end]
        return out

    def rowdot(self, a, b):
        return np.einsum("ij,ij->i", a, b)

    def sqrt(self, a):
        return np.sqrt(a)

    def exp(self, a):
        return np.exp(a)

    def log1p(self, a):
        return np.log1p(a)

    def where(self, condition, a, b):
        return np.where(condition, a, b)

    def full(self, n: int, value: float):
        return np.full(n, value)

    def at_least_one(self, a):
        return np.maximum(a, 1.0)

    def argmin(self, a):
        return np.argmin(a, axis=1)

    def argmax(self, a):
        return np.argmax(a, axis=1)

    def row_max(self, a):
        return np.max(a, axis=1)

    def all_finite(self, a) -> bool:
        return bool(np.isfinite(a).all())

    def first_nonfinite_row(self, a) -> int:
        return int(np.flatnonzero(~np.isfinite(a).all(axis=1))[0])

    def host(self, a) -> np.ndarray:
        return np.asarray(a)

    def scalar(self, a) -> float:
        return float(a)


class TorchBackend:
    """float64 torch on a CUDA device (also runs on the CPU, which the tests use)."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = str(self.device)

    def features(self, block: np.ndarray):
        # Move the stored width (often float32) and widen on the device: half the transfer.
        return self.torch.from_numpy(np.ascontiguousarray(block)).to(self.device).double()

    def labels(self, block: np.ndarray):
        return self.torch.from_numpy(np.asarray(block, dtype=np.int64)).to(self.device)

    def constant(self, array: np.ndarray):
        return self.torch.as_tensor(np.asarray(array, dtype=np.float64), device=self.device)

    def zeros(self, *shape: int):
        return self.torch.zeros(shape, dtype=self.torch.float64, device=self.device)

    def arange(self, n: int):
        return self.torch.arange(n, device=self.device)

    def bincount(self, labels, length: int, weights=None):
        return self.torch.bincount(labels, weights=weights, minlength=length).double()

    def grouped(self, rows, labels):
        return rows, labels  # index_add_ needs no order

    def segment_sum(self, rows, labels, length: int):
        return self.zeros(length, rows.shape[1]).index_add_(0, labels, rows)

    def rowdot(self, a, b):
        return (a * b).sum(dim=1)

    def sqrt(self, a):
        return self.torch.sqrt(a)

    def exp(self, a):
        return self.torch.exp(a)

    def log1p(self, a):
        return self.torch.log1p(a)

    def where(self, condition, a, b):
        return self.torch.where(condition, a, b)

    def full(self, n: int, value: float):
        return self.torch.full((n,), value, dtype=self.torch.float64, device=self.device)

    def at_least_one(self, a):
        return self.torch.clamp(a, min=1.0)

    def argmin(self, a):
        return self.torch.argmin(a, dim=1)

    def argmax(self, a):
        return self.torch.argmax(a, dim=1)

    def row_max(self, a):
        return self.torch.max(a, dim=1).values

    def all_finite(self, a) -> bool:
        return bool(self.torch.isfinite(a).all())

    def first_nonfinite_row(self, a) -> int:
        return int(self.torch.nonzero(~self.torch.isfinite(a).all(dim=1))[0, 0])

    def host(self, a) -> np.ndarray:
        return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)

    def scalar(self, a) -> float:
        return float(a)


Backend = NumpyBackend | TorchBackend


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
