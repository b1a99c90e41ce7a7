"""Batches in memory, read the way analyze reads a feature file.

:class:`BatchRows` is a :class:`~nccli.io.rows.RowSource`, as the feature
file is (``info``, ``classifier``, ``block_rows``, ``blocks``,
``part_offsets``), over a re-iterable of ``(features, labels)``
batches instead of HDF5 datasets, so that ``measure_collapse`` runs the very
code ``analyze`` runs. The batches set the blocks. Each batch is checked as
analyze checks a file (:mod:`nccli.io.checks`) as it arrives.

Two passes need the same rows twice: a one-shot iterator is refused up
front, the second pass must give as many rows of each class as the first,
checked here, and the same rows, checked on pass 2's state
(:meth:`nccli.analyze.passes.Scanner.decisions`); their order may differ (the metrics
do not depend on it). The first batch is read once, to learn the layers and
their widths, and then used as the start of the first pass, so the batches
are iterated exactly twice.

CUDA tensors stay on their device when the backend is torch on that device;
for the numpy backend every block comes to the host.
"""

import itertools
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from nccli import schema
from nccli.devices import resolve_device
from nccli.errors import DataError, UsageError
from nccli.io import checks
from nccli.io.validate import FeatureFileInfo, LayerInfo
from nccli.metrics.backend import NumpyBackend, TorchBackend, select_backend

SOURCE_NAME = "(batches)"  # the report's `file` for rows that came from memory
DEFAULT_LAYER = "(features)"  # one array, not a dict: bracketed like SOURCE_NAME, no extracted layer is so named


class TensorBackend(TorchBackend):
    """The torch backend taking blocks that are tensors already (on any device) as well as numpy arrays."""

    def features(self, block):
        if isinstance(block, self.torch.Tensor):
            return block.detach().to(self.device, self.torch.float64)
        return super().features(block)

    def labels(self, block):
        if isinstance(block, self.torch.Tensor):
            return block.detach().to(self.device, self.torch.int64)
        return super().labels(block)


def _is_tensor(value) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _as_array(value):
    """Tensors as they are (on their device); anything else as a numpy array."""
    return value if _is_tensor(value) else np.asarray(value)


def _dtype(value) -> np.dtype:
    """The numpy dtype of an array or tensor's values as analyze would read them (bfloat16 → float32)."""
    if _is_tensor(value):
        import torch

        return (
            np.dtype(np.float32) if value.dtype == torch.bfloat16 else torch.empty(0, dtype=value.dtype).numpy().dtype
        )
    return value.dtype


def _to_host(value) -> np.ndarray:
    if _is_tensor(value):
        import torch

        value = value.detach()
        return (value.float() if value.dtype == torch.bfloat16 else value).cpu().numpy()
    return np.asarray(value)


def _iterations(batches):
    """A zero-argument function returning a new iterator over ``batches`` each time; one-shot iterators refused."""
    if callable(batches) and not hasattr(batches, "__iter__"):
        return batches
    if not hasattr(batches, "__iter__"):
        raise UsageError(
            "batches must be re-iterable (a list, a DataLoader) or a function returning an iterator; "
            f"got {type(batches).__name__}"
        )
    if iter(batches) is batches:
        raise UsageError(
            f"batches is a one-shot iterator ({type(batches).__name__}) but measuring collapse reads the data twice: "
            "pass a list, a DataLoader, or a function that returns a new iterator (e.g. lambda: my_batches())"
        )
    return lambda: iter(batches)


def pick_backend(device: str, first_layer):
    """``auto`` or ``cuda``: torch on the device of CUDA tensors (no copy between devices); otherwise as analyze
    picks, the torch backend taking tensors as they are."""
    if device in ("auto", "cuda") and _is_tensor(first_layer) and first_layer.device.type == "cuda":
        return TensorBackend(str(first_layer.device))
    resolve_device(device, option="device=")  # refused as the Python caller spells it
    xp = select_backend(device)
    return xp if isinstance(xp, NumpyBackend) else TensorBackend(xp.name)


class BatchRows:
    """Re-iterable batches of ``(features, labels)``: a :class:`~nccli.io.rows.RowSource`."""

    rank_local = True  # under torchrun (``nccli measure``), each rank's batches are its own part of the rows

    def __init__(
        self,
        batches,
        num_classes: int,
        device: str,
        classifier=None,
        classifier_layer: str | None = None,
        described: dict | None = None,
    ):
        """``described``: what a file's info would say of these rows (``split``, ``epoch``, ``model``,
        ``class_names``, ``provenance``, and ``path``, the report's ``file``), where the caller knows it."""
        self._iterations = _iterations(batches)
        self.num_classes = num_classes
        iterator = iter(self._iterations())
        first = next(iterator, None)
        if first is None:
            raise DataError("batches gave no batch")
        features, _ = self._split(first, 0)
        if not features:
            raise DataError("batch 0: the features dict holds no layer")
        self._first_pass: Iterator | None = itertools.chain([first], iterator)
        widths = {}
        for name, value in features.items():
            checks.check_layer_name(name, f"batch 0: layer '{name}'")
            shape = tuple(value.shape)
            checks.check_features(shape, _dtype(value), shape[0] if shape else 0, "batch 0", f"batch 0: layer '{name}'")
            widths[name] = shape[1]
        self.xp = pick_backend(device, next(iter(features.values())))
        self.classifier, layer = self._classifier(classifier, classifier_layer, widths)
        layers = tuple(LayerInfo(name, order, width, None) for order, (name, width) in enumerate(widths.items()))
        self._info = FeatureFileInfo(
            path=SOURCE_NAME,
            n_samples=0,
            num_classes=num_classes,
            split=schema.DEFAULT_SPLIT,
            epoch=None,
            model=None,
            class_names=None,
            layers=layers,
            classifier_layer=layer,
            provenance={},
        )
        self._info = replace(self._info, **(described or {}))
        self._passes: list[np.ndarray] = []  # rows of each class, per pass

    @property
    def info(self) -> FeatureFileInfo:
        """As a file's, with N the rows of the first pass (0 before it)."""
        return replace(self._info, n_samples=int(self._passes[0].sum()) if self._passes else 0)

    def _classifier(self, classifier, given: str | None, widths: dict[str, int]):
        if classifier is None:
            if given is not None:
                raise UsageError("classifier_layer needs classifier=(W, b)")
            return None, None
        if not isinstance(classifier, (tuple, list)) or len(classifier) != 2:
            raise UsageError(
                "classifier must be a pair (W, b): W of shape (num_classes, d), b of shape (num_classes,) or None"
            )
        weight, bias = (None if value is None else _to_host(value) for value in classifier)
        checked = checks.classifier(weight, bias, self.num_classes, "classifier")
        return checked, checks.classifier_layer(widths, weight.shape[1], given, "classifier_layer=")

    def block_rows(self, layers: tuple[LayerInfo, ...], requested: int | None = None) -> int:
        """1, a placeholder: the caller's batches are the blocks, whatever their size."""
        return 1

    def part_offsets(self) -> None:
        """None: the batches are one part, read whole by one process."""
        return None

    def blocks(self, layers: tuple[LayerInfo, ...], block_rows: int, first: int = 0, end: int | None = None):
        """Yield ``(labels, {layer: rows})`` per batch, checked; all rows of one pass (no row ranges)."""
        if first != 0:
            raise ValueError("batches are read whole; row ranges (torchrun ranks) do not apply")
        iterator, self._first_pass = (self._first_pass or iter(self._iterations())), None
        counts, row = np.zeros(self.num_classes, dtype=np.int64), 0
        names = [layer.name for layer in self._info.layers]
        for index, batch in enumerate(iterator):
            features, labels = self._split(batch, index)
            labels = self._check_labels(labels, index)
            if set(features) != set(names):
                raise DataError(
                    f"batch {index}: layers {', '.join(map(str, features))} differ from the first batch's "
                    f"({', '.join(names)})"
                )
            rows = {
                layer.name: self._check_layer(features[layer.name], layer, len(labels), index, row) for layer in layers
            }
            counts += np.bincount(_to_host(labels), minlength=self.num_classes) if len(labels) else 0
            row += len(labels)
            if len(labels):
                yield labels, rows
        self._end_pass(counts)

    def _split(self, batch, index: int) -> tuple[dict, object]:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise DataError(f"batch {index}: expected a pair (features, labels), found {type(batch).__name__}")
        features, labels = batch
        if not isinstance(features, dict):
            features = {DEFAULT_LAYER: features}
        return {name: _as_array(value) for name, value in features.items()}, _as_array(labels)

    def _on_backend(self, value):
        """What the backend takes: numpy on the host, or the tensor itself for torch (moved there once)."""
        return _to_host(value) if isinstance(self.xp, NumpyBackend) or not _is_tensor(value) else value

    def _check_labels(self, labels, index: int):
        where = f"batch {index}: labels"
        if len(labels.shape) != 1 or _dtype(labels).kind not in "iu":
            checks.check_labels(tuple(labels.shape), _dtype(labels), where)
        if len(labels):
            error = checks.label_range_error(int(labels.min()), int(labels.max()), self.num_classes, where)
            if error is not None:
                raise error
        return self._on_backend(labels)

    def _check_layer(self, value, layer: LayerInfo, n: int, index: int, row: int):
        where = f"batch {index}: layer '{layer.name}'"
        shape = tuple(value.shape)
        checks.check_features(shape, _dtype(value), n, f"batch {index}", where)
        if shape[1] != layer.dim:
            raise DataError(f"{where}: has width {shape[1]} but the first batch's has {layer.dim}")
        value = self._on_backend(value)
        xp = self.xp if _is_tensor(value) else NumpyBackend()
        if not xp.all_finite(value):
            raise checks.nonfinite_error(row + xp.first_nonfinite_row(value), where)
        return value

    def _end_pass(self, counts: np.ndarray) -> None:
        """The first pass's class counts; a later pass must match them (same data, any order)."""
        if not self._passes and counts.sum() == 0:
            raise DataError("batches gave no rows")
        self._passes.append(counts)
        if len(self._passes) > 1 and not np.array_equal(counts, self._passes[0]):
            raise DataError(
                f"the batches gave other rows on a second pass ({int(counts.sum())} rows, first pass "
                f"{int(self._passes[0].sum())}, or other counts per class); measuring collapse reads them twice: "
                "iterate the same data each time (no random sampling, no drop_last with shuffling)"
            )
