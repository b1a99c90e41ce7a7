"""Array backends for the per-block kernels: numpy on the CPU, torch on CUDA.

The accumulators are written once against the few primitives below (plus
operators and indexing, which numpy and torch share). All state is float64.
On the CPU analyze never imports torch: ``auto`` only looks for torch when an
NVIDIA driver is present.
"""

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nccli.errors import UsageError
from nccli.metrics.threads import pool_size, thread_pool

# Label runs at least this long are summed by one BLAS product each; shorter ones in batches (segment_sum).
LONG_RUN = 32
# The numpy backend works through a block in pieces of about this many float64 bytes (at least
# MIN_PIECE_ROWS rows), one task of a thread pool each: the elementwise work between BLAS calls runs
# on every core, and a piece's temporaries stay in the CPU's caches.
PIECE_BYTES = 4 * 2**20
MIN_PIECE_ROWS = 64


@dataclass(frozen=True)
class Groups:
    """The classes present in one block: ``ids`` ascending, ``count`` (float64) rows of each, ``index``
    the group of each row; on numpy (rows sorted by label) also each run's ``starts`` and ``lengths``."""

    ids: object
    count: object
    index: object
    starts: np.ndarray | None = None
    lengths: np.ndarray | None = None


class NumpyBackend:
    """float64 numpy on the host."""

    name = "cpu"
    tile_bytes = 32 * 2**20  # pass 2's block × class-tile products (metrics/geometry.py)
    single_unit = 2.0**-24  # unit roundoff of its float32 products

    def pieces(self, rows: int, dim: int) -> list[slice]:
        """Consecutive row ranges of a block of ``rows`` × ``dim``, each about PIECE_BYTES of float64."""
        step = max(MIN_PIECE_ROWS, PIECE_BYTES // (8 * max(dim, 1)))
        return [slice(start, start + step) for start in range(0, rows, step)]

    def piece_pool(self):
        """A context giving the thread pool that works on the pieces (:mod:`nccli.metrics.threads`)."""
        return thread_pool()

    def pieces_at_once(self) -> int:
        """Pieces worked on at the same time: the pool's threads."""
        return pool_size()

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
        """Rows and labels sorted by label, so that each class's rows are one run (no gather per class)."""
        if len(labels) > 1 and (labels[1:] < labels[:-1]).any():
            order = np.argsort(labels, kind="stable")
            rows, labels = rows[order], labels[order]
        return rows, labels

    def groups(self, labels) -> Groups:
        """The runs of equal labels in ``labels`` sorted by :meth:`grouped`."""
        starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]]) if len(labels) else np.zeros(0, np.int64)
        lengths = np.diff(np.r_[starts, len(labels)])
        index = np.repeat(np.arange(len(starts)), lengths)
        return Groups(labels[starts], lengths.astype(np.float64), index, starts, lengths)

    def segment_sum(self, rows, groups: Groups):
        """Row sums per group: (groups, d) in a few vectorised calls per block, whatever the run lengths.

        Runs of at least LONG_RUN rows: one BLAS vector–matrix product each
        (at most B / LONG_RUN of them). Shorter runs: one gather-and-sum per
        distinct length (fewer than LONG_RUN calls), since thousands of tiny
        products cost more in call overhead than in arithmetic. Both are plain
        sums of the rows, no cumulative-sum differences that would lose
        precision. (np.add.reduceat measured 4–6× slower than either here.)
        """
        starts, lengths = groups.starts, groups.lengths
        out = np.empty((len(starts), rows.shape[1]), dtype=np.float64)
        long_runs = np.flatnonzero(lengths >= LONG_RUN)
        if len(long_runs):
            ones = np.ones(int(lengths[long_runs].max()))
            for run in long_runs:
                start, length = starts[run], lengths[run]
                out[run] = ones[:length] @ rows[start : start + length]
        short = lengths < LONG_RUN
        for length in np.flatnonzero(np.bincount(lengths[short])):  # the distinct lengths (np.unique imports numpy.ma: 60 ms)
            runs = np.flatnonzero(lengths == length)
            if length == 1:
                out[runs] = rows[starts[runs]]
            else:
                out[runs] = rows[starts[runs][:, None] + np.arange(length)].sum(axis=1)
        return out

    def group_sum(self, values, groups: Groups):
        """Sum of a per-row value per group: (groups,)."""
        return np.bincount(groups.index, weights=values, minlength=len(groups.ids))

    def where(self, condition, a, b):
        return np.where(condition, a, b)

    def flatnonzero(self, a):
        return np.flatnonzero(a)

    def rowdot(self, a, b):
        return np.einsum("ij,ij->i", a, b)

    def sqrt(self, a):
        return np.sqrt(a)

    def exp(self, a):
        return np.exp(a)

    def log1p(self, a):
        return np.log1p(a)

    def at_least_one(self, a):
        return np.maximum(a, 1.0)

    def argmin(self, a):
        return np.argmin(a, axis=1)

    def argmax(self, a):
        return np.argmax(a, axis=1)

    def row_min(self, a):
        return np.min(a, axis=1)

    def row_max(self, a):
        return np.max(a, axis=1)

    def single(self, a):
        return a.astype(np.float32)

    def single_with_ones(self, a):
        """(a, 1): float32 rows with one more column of ones (it multiplies offsets folded into a product)."""
        out = np.empty((a.shape[0], a.shape[1] + 1), dtype=np.float32)
        out[:, :-1], out[:, -1] = a, 1.0
        return out

    def wide(self, a):
        return a.astype(np.float64)

    def scratch(self, size: int):
        """A float32 buffer that a block's tile products are written into, one after another (no page
        faults of a fresh array per tile)."""
        return np.empty(size, dtype=np.float32)

    def product_into(self, a, b, buffer):
        """a @ bᵀ, written into the start of ``buffer``."""
        return np.matmul(a, b.T, out=buffer[: len(a) * len(b)].reshape(len(a), len(b)))

    def add_into(self, a, b, buffer):
        """a + b (broadcast to a's shape), written into the start of ``buffer`` (may be a's own)."""
        return np.add(a, b, out=buffer[: a.size].reshape(a.shape))

    def full(self, n: int, value: float):
        return np.full(n, value)

    def pairs(self, mask):
        """(rows, columns) of the True entries of a 2-D mask, row by row, columns ascending (from the
        flat positions: np.nonzero of a 2-D mask is ~10× slower)."""
        flat = np.flatnonzero(mask)
        return flat // mask.shape[1], flat % mask.shape[1]

    def concatenate(self, *arrays):
        return np.concatenate(arrays)

    def first_per_row(self, rows, keys, columns):
        """Position of the pair with the smallest key of each row present, the lowest column on ties."""
        order = np.lexsort((columns, keys, rows))
        grouped = rows[order]
        return order[np.r_[True, grouped[1:] != grouped[:-1]]] if len(order) else order

    def all_finite(self, a) -> bool:
        return bool(np.isfinite(a).all())

    def first_nonfinite_row(self, a) -> int:
        return int(np.flatnonzero(~np.isfinite(a).all(axis=1))[0])

    def host(self, a) -> np.ndarray:
        return np.asarray(a)

    def device_memory(self) -> int | None:
        """Free bytes on the device holding the state; None when that is the host."""
        return None

    def scalar(self, a) -> float:
        return float(a)


class TorchBackend:
    """float64 torch on a CUDA device (also runs on the CPU, which the tests use)."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = str(self.device)
        self.tile_bytes = 256 * 2**20  # larger products keep a GPU busy; device memory is larger than caches
        # float32 matmuls may run in TF32 or bfloat16 unless the precision is "highest"
        self.single_unit = 2.0**-24 if torch.get_float32_matmul_precision() == "highest" else 2.0**-8

    def pieces(self, rows: int, dim: int) -> list[slice]:
        """The whole block at once: a GPU wants large products, and its memory is not a cache."""
        return [slice(0, rows)]

    def piece_pool(self):
        """No pool: the device works on one block at a time."""
        return contextlib.nullcontext()

    def pieces_at_once(self) -> int:
        return 1

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

    def groups(self, labels) -> Groups:
        ids, index = self.torch.unique(labels, sorted=True, return_inverse=True)
        return Groups(ids, self.torch.bincount(index, minlength=len(ids)).double(), index)

    def segment_sum(self, rows, groups: Groups):
        return self.zeros(len(groups.ids), rows.shape[1]).index_add_(0, groups.index, rows)

    def group_sum(self, values, groups: Groups):
        return self.zeros(len(groups.ids)).index_add_(0, groups.index, values.double())

    def where(self, condition, a, b):
        return self.torch.where(condition, a, b)

    def flatnonzero(self, a):
        return self.torch.nonzero(a).flatten()

    def rowdot(self, a, b):
        return (a * b).sum(dim=1)

    def sqrt(self, a):
        return self.torch.sqrt(a)

    def exp(self, a):
        return self.torch.exp(a)

    def log1p(self, a):
        return self.torch.log1p(a)

    def at_least_one(self, a):
        return self.torch.clamp(a, min=1.0)

    def argmin(self, a):
        return self.torch.argmin(a, dim=1)

    def argmax(self, a):
        return self.torch.argmax(a, dim=1)

    def row_min(self, a):
        return self.torch.min(a, dim=1).values

    def row_max(self, a):
        return self.torch.max(a, dim=1).values

    def single(self, a):
        return a.float()

    def single_with_ones(self, a):
        out = self.torch.empty((a.shape[0], a.shape[1] + 1), dtype=self.torch.float32, device=self.device)
        out[:, :-1], out[:, -1] = a, 1.0
        return out

    def wide(self, a):
        return a.double()

    def scratch(self, size: int):
        return self.torch.empty(size, dtype=self.torch.float32, device=self.device)

    def product_into(self, a, b, buffer):
        return self.torch.matmul(a, b.T, out=buffer[: len(a) * len(b)].view(len(a), len(b)))

    def add_into(self, a, b, buffer):
        return self.torch.add(a, b, out=buffer[: a.numel()].view(a.shape))

    def full(self, n: int, value: float):
        return self.torch.full((n,), value, dtype=self.torch.float64, device=self.device)

    def pairs(self, mask):
        return self.torch.nonzero(mask, as_tuple=True)

    def concatenate(self, *arrays):
        return self.torch.cat(arrays)

    def first_per_row(self, rows, keys, columns):
        order = self.torch.sort(columns, stable=True).indices
        for key in (keys, rows):  # stable sorts, least significant key first, as np.lexsort
            order = order[self.torch.sort(key[order], stable=True).indices]
        grouped = rows[order]
        first = self.torch.ones(len(order), dtype=self.torch.bool, device=self.device)
        first[1:] = grouped[1:] != grouped[:-1]
        return order[first]

    def all_finite(self, a) -> bool:
        return bool(self.torch.isfinite(a).all())

    def first_nonfinite_row(self, a) -> int:
        return int(self.torch.nonzero(~self.torch.isfinite(a).all(dim=1))[0, 0])

    def host(self, a) -> np.ndarray:
        return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)

    def device_memory(self) -> int | None:
        return self.torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else None

    def scalar(self, a) -> float:
        return float(a)


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
