"""Reading feature files (``feature-file.md``): validation up front, then row blocks.

:func:`open_feature_file` checks everything that can be checked without
reading features (required paths, shapes, dtypes, attributes, label range)
and raises :class:`FeatureFileError` naming the file, the path inside it and
the problem. :meth:`FeatureFile.blocks` then yields chunk-aligned row blocks
of all selected layers together, so one pass over the file serves every layer.
"""

import contextlib
import fnmatch
import os
from dataclasses import dataclass
from typing import Iterator

import h5py
import numpy as np

from nccli import schema
from nccli.errors import FeatureFileError, UsageError
from nccli.metrics.layer import Classifier

BLOCK_BYTES = 16 * 2**20  # float64 bytes of one layer's block
LABEL_BLOCK_ROWS = 2**20
CHUNK_CACHE_BYTES_MAX = 256 * 2**20


@dataclass(frozen=True)
class LayerInfo:
    name: str
    order: int
    dim: int
    chunk_rows: int | None  # rows per chunk; None when stored contiguously


@dataclass(frozen=True)
class FeatureFileInfo:
    """Everything about a feature file except its rows."""

    path: str
    n_samples: int
    num_classes: int
    split: str
    epoch: int | None
    model: str | None
    class_names: tuple[str, ...] | None
    layers: tuple[LayerInfo, ...]  # in forward order
    classifier_layer: str | None
    provenance: dict[str, str]

    def layer(self, name: str) -> LayerInfo:
        return next(layer for layer in self.layers if layer.name == name)

    def select_layers(self, patterns: tuple[str, ...] | None) -> tuple[LayerInfo, ...]:
        """Layers matching any name or glob, in forward order; each pattern must match one."""
        if not patterns:
            return self.layers
        names = [layer.name for layer in self.layers]
        for pattern in patterns:
            if not fnmatch.filter(names, pattern):
                raise UsageError(
                    f"--layers '{pattern}' matches no layer in '{self.path}'; layers are: {', '.join(names)}"
                )
        return tuple(layer for layer in self.layers if any(fnmatch.fnmatchcase(layer.name, p) for p in patterns))


class FeatureFile:
    """An open, validated feature file. Use :func:`open_feature_file`."""

    def __init__(self, handle: h5py.File, info: FeatureFileInfo, classifier: Classifier | None):
        self._handle = handle
        self._datasets: dict[str, h5py.Dataset] = {}
        self.info = info
        self.classifier = classifier

    def _fail(self, path: str, problem: str) -> FeatureFileError:
        return FeatureFileError(self.info.path, path, problem)

    def block_rows(self, layers: tuple[LayerInfo, ...], requested: int | None = None) -> int:
        """Rows per block: about BLOCK_BYTES of float64 for the widest layer, a multiple of its chunk rows."""
        widest = max(layers, key=lambda layer: layer.dim)
        rows = requested or max(1, BLOCK_BYTES // (8 * max(widest.dim, 1)))
        chunk = widest.chunk_rows
        if requested is None and chunk and rows > chunk:
            rows -= rows % chunk
        return max(1, min(rows, max(self.info.n_samples, 1)))

    def blocks(
        self, layers: tuple[LayerInfo, ...], block_rows: int, first: int = 0, end: int | None = None
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Yield ``(labels, {layer: rows})`` blocks of rows [first, end) in stored dtype, checked for finite values."""
        end = self.info.n_samples if end is None else end
        for start in range(first, end, block_rows):
            stop = min(start + block_rows, end)
            labels = self._read(schema.LABELS, start, stop)
            rows = {}
            for layer in layers:
                path = schema.layer_path(layer.name)
                block = self._read(path, start, stop)
                if not np.isfinite(block).all():
                    bad = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                    raise self._fail(path, f"non-finite feature value (NaN or Inf) in row {bad}")
                rows[layer.name] = block
            yield labels, rows

    def _dataset(self, path: str) -> h5py.Dataset:
        """The dataset with a chunk cache of two row-bands of chunks, so no chunk is decompressed twice."""
        if path not in self._datasets:
            stored = self._handle[path]
            access = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
            if stored.chunks:
                band = stored.chunks[0] * int(np.prod(stored.shape[1:], dtype=np.int64)) * stored.dtype.itemsize
                chunks_per_band = int(np.prod([-(-s // c) for s, c in zip(stored.shape[1:], stored.chunks[1:])]))
                access.set_chunk_cache(
                    max(101, 20 * chunks_per_band + 1), int(min(2 * band + 2**20, CHUNK_CACHE_BYTES_MAX)), 1.0
                )
            self._datasets[path] = h5py.Dataset(h5py.h5d.open(self._handle.id, path.encode(), access))
        return self._datasets[path]

    def _read(self, path: str, start: int, stop: int) -> np.ndarray:
        try:
            return self._dataset(path)[start:stop]
        except (OSError, RuntimeError, KeyError, ValueError) as error:
            raise self._fail(path, f"cannot read rows {start}–{stop} (truncated or corrupt file?): {error}") from None

    def close(self) -> None:
        self._handle.close()


@contextlib.contextmanager
def open_feature_file(path: str | os.PathLike) -> Iterator[FeatureFile]:
    """Open and validate a feature file; the handle closes on exit."""
    shown = str(path)
    if not os.path.exists(path):
        raise FeatureFileError(shown, "", "no such file")
    if os.path.isdir(path):
        raise FeatureFileError(shown, "", "is a directory, not a feature file")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        problem = "not an HDF5 file" if not _is_hdf5(path) else f"cannot open (truncated or corrupt?): {error}"
        raise FeatureFileError(shown, "", problem) from None
    try:
        info, classifier = _validate(handle, shown)
        yield FeatureFile(handle, info, classifier)
    except (OSError, RuntimeError) as error:
        raise FeatureFileError(shown, "", f"cannot read (truncated or corrupt file?): {error}") from None
    finally:
        handle.close()


def _is_hdf5(path) -> bool:
    try:
        return h5py.is_hdf5(path)
    except OSError:
        return False


def _attr(obj, name: str, default=None):
    value = obj.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


def _int_attr(file: str, obj, name: str, path: str, default=None) -> int | None:
    value = _attr(obj, name, default)
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise FeatureFileError(file, path, f"attribute '{name}' must be an integer, found {value!r}")
    return int(value)


def _dataset(handle: h5py.File, file: str, path: str) -> h5py.Dataset:
    node = handle.get(path)
    if node is None:
        raise FeatureFileError(file, path, "required dataset is missing")
    if not isinstance(node, h5py.Dataset):
        raise FeatureFileError(file, path, "expected a dataset, found a group")
    return node


def _validate(handle: h5py.File, file: str) -> tuple[FeatureFileInfo, Classifier | None]:
    fmt = _attr(handle, schema.ATTR_FORMAT)
    if fmt != schema.FORMAT_NAME:
        found = "it is missing" if fmt is None else f"found {fmt!r}"
        raise FeatureFileError(
            file, "", f"root attribute '{schema.ATTR_FORMAT}' must be '{schema.FORMAT_NAME}' ({found}); not an nccli feature file"
        )
    version = _int_attr(file, handle, schema.ATTR_FORMAT_VERSION, "/")
    if version != schema.FORMAT_VERSION:
        raise FeatureFileError(
            file, "", f"unsupported '{schema.ATTR_FORMAT_VERSION}' {version} (this nccli reads {schema.FORMAT_VERSION})"
        )
    complete = _attr(handle, schema.ATTR_COMPLETE)
    if complete is not None and not bool(complete):
        raise FeatureFileError(
            file, "", "attribute 'complete' is False: the file is still being written or was interrupted "
            "(finish it with `nccli extract --resume`)"
        )

    labels = _dataset(handle, file, schema.LABELS)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise FeatureFileError(file, schema.LABELS, f"labels must be a 1-D integer dataset, found shape {labels.shape} dtype {labels.dtype}")
    n = labels.shape[0]
    if n == 0:
        raise FeatureFileError(file, schema.LABELS, "the file holds no samples (N = 0)")
    layers = _validate_layers(handle, file, n)
    low, high = _label_range(handle, file, n)
    classifier, classifier_layer = _validate_classifier(handle, file, layers)
    declared = _int_attr(file, handle, schema.ATTR_NUM_CLASSES, "/")
    num_classes = declared if declared is not None else max(high + 1, 0 if classifier is None else len(classifier.bias))
    if num_classes < 1:
        raise FeatureFileError(file, "", f"attribute '{schema.ATTR_NUM_CLASSES}' must be ≥ 1, found {num_classes}")
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise FeatureFileError(file, schema.LABELS, f"label {bad} outside [0, {num_classes}) (num_classes = {num_classes})")
    if classifier is not None and len(classifier.bias) != num_classes:
        raise FeatureFileError(
            file, schema.CLASSIFIER_WEIGHT, f"has {len(classifier.bias)} rows but num_classes is {num_classes}"
        )
    class_names = _attr(handle, schema.ATTR_CLASS_NAMES)
    if class_names is not None:
        class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(class_names))
        if len(class_names) != num_classes:
            raise FeatureFileError(
                file, "", f"attribute '{schema.ATTR_CLASS_NAMES}' has {len(class_names)} names for {num_classes} classes"
            )
    provenance = {name: str(_attr(handle, name)) for name in schema.PROVENANCE_ATTRS if name in handle.attrs}
    info = FeatureFileInfo(
        path=file,
        n_samples=n,
        num_classes=num_classes,
        split=str(_attr(handle, schema.ATTR_SPLIT, schema.DEFAULT_SPLIT)),
        epoch=_int_attr(file, handle, schema.ATTR_EPOCH, "/"),
        model=None if _attr(handle, schema.ATTR_MODEL) is None else str(_attr(handle, schema.ATTR_MODEL)),
        class_names=class_names,
        layers=layers,
        classifier_layer=classifier_layer,
        provenance=provenance,
    )
    return info, classifier


def _validate_layers(handle: h5py.File, file: str, n: int) -> tuple[LayerInfo, ...]:
    group = handle.get(schema.LAYERS)
    if not isinstance(group, h5py.Group) or len(group) == 0:
        raise FeatureFileError(file, schema.LAYERS, "required group is missing or holds no layers")
    layers = []
    for name in group:
        path = schema.layer_path(name)
        data = _dataset(handle, file, path)
        if data.dtype.kind != "f" or data.dtype.itemsize not in (2, 4, 8):
            raise FeatureFileError(file, path, f"features must be float16/32/64, found {data.dtype}")
        if data.ndim != 2:
            raise FeatureFileError(file, path, f"features must be 2-D (N, d), found shape {data.shape}")
        if data.shape[0] != n:
            raise FeatureFileError(file, path, f"has {data.shape[0]} rows but '/{schema.LABELS}' has {n}")
        if data.shape[1] == 0:
            raise FeatureFileError(file, path, "has width d = 0")
        order = _int_attr(file, data, schema.ATTR_ORDER, path)
        if order is None:
            raise FeatureFileError(file, path, f"required attribute '{schema.ATTR_ORDER}' is missing")
        layers.append(LayerInfo(name, order, int(data.shape[1]), data.chunks[0] if data.chunks else None))
    return tuple(sorted(layers, key=lambda layer: (layer.order, layer.name)))


def _label_range(handle: h5py.File, file: str, n: int) -> tuple[int, int]:
    low, high = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    labels = handle[schema.LABELS]
    for start in range(0, n, LABEL_BLOCK_ROWS):
        block = labels[start : start + LABEL_BLOCK_ROWS]
        low, high = min(low, int(block.min())), max(high, int(block.max()))
    return low, high


def _validate_classifier(
    handle: h5py.File, file: str, layers: tuple[LayerInfo, ...]
) -> tuple[Classifier | None, str | None]:
    if schema.CLASSIFIER_WEIGHT not in handle:
        return None, None
    weight = _dataset(handle, file, schema.CLASSIFIER_WEIGHT)
    if weight.ndim != 2 or weight.dtype.kind != "f":
        raise FeatureFileError(file, schema.CLASSIFIER_WEIGHT, f"must be a 2-D float dataset, found shape {weight.shape} dtype {weight.dtype}")
    layer_name = _attr(handle[schema.CLASSIFIER], schema.ATTR_CLASSIFIER_LAYER)
    names = [layer.name for layer in layers]
    if layer_name is None:
        raise FeatureFileError(file, schema.CLASSIFIER, f"attribute '{schema.ATTR_CLASSIFIER_LAYER}' (the layer W consumes) is missing")
    if layer_name not in names:
        raise FeatureFileError(
            file, schema.CLASSIFIER, f"attribute '{schema.ATTR_CLASSIFIER_LAYER}' names '{layer_name}', which is not under /{schema.LAYERS}; layers are: {', '.join(names)}"
        )
    dim = next(layer.dim for layer in layers if layer.name == layer_name)
    if weight.shape[1] != dim:
        raise FeatureFileError(
            file, schema.CLASSIFIER_WEIGHT, f"has width {weight.shape[1]} but layer '{layer_name}' has width {dim}"
        )
    weight_values = np.asarray(weight[()], dtype=np.float64)
    bias_values = np.zeros(weight.shape[0])
    if schema.CLASSIFIER_BIAS in handle:
        bias = _dataset(handle, file, schema.CLASSIFIER_BIAS)
        if bias.shape != (weight.shape[0],) or bias.dtype.kind != "f":
            raise FeatureFileError(
                file, schema.CLASSIFIER_BIAS, f"must be float of shape ({weight.shape[0]},), found shape {bias.shape} dtype {bias.dtype}"
            )
        bias_values = np.asarray(bias[()], dtype=np.float64)
    for path, values in ((schema.CLASSIFIER_WEIGHT, weight_values), (schema.CLASSIFIER_BIAS, bias_values)):
        if not np.isfinite(values).all():
            raise FeatureFileError(file, path, "non-finite value (NaN or Inf)")
    return Classifier(weight_values, bias_values), layer_name
