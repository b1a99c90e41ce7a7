"""The torch backend: float64 tensors on a CUDA device (also on the CPU, which the tests use), whole
blocks at a time. torch is imported only when one is made."""

import contextlib

import numpy as np

from nccli.metrics.numpy_backend import Groups


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
