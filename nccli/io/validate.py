"""What a feature file must hold (``docs/feature-file.md``), checked without reading a single feature.

:func:`validate` checks the required paths, dtypes, shapes and attributes, the
label range, the classifier, and where every dataset's bytes come from
(:mod:`nccli.io.sources`: no external links or storage, no unwritten chunks,
virtual datasets whose sources exist); it raises :class:`FeatureFileError`
naming the file, the path inside it and the problem. The file is untrusted:
each attribute must have the type the format gives it, and every size a header
declares (attributes, the classifier, a row) is checked before anything of
that size is allocated.
"""

import os
import resource
from dataclasses import dataclass

import h5py
import numpy as np

from nccli import schema
from nccli.errors import FeatureFileError, UsageError
from nccli.globs import names_matching
from nccli.io.attributes import (
    READ_ERRORS,
    bool_attribute,
    int_attribute,
    names_attribute,
    read_attribute,
    shown,
    text_attribute,
)
from nccli.io.options import describe_differences, options_of
from nccli.io.sources import check_storage, follow
from nccli.types import Classifier

LABEL_BLOCK_ROWS = 2**20
MAX_WIDTH = 2**24  # features per row: one float64 row is then at most 128 MiB
MAX_CLASSIFIER_BYTES = 4 * 2**30  # /classifier/weight as float64, and at most the memory budget


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
        """Layers a name or glob selects (:func:`nccli.globs.names_matching`), in forward order; each pattern
        must select one."""
        if not patterns:
            return self.layers
        names = [layer.name for layer in self.layers]
        chosen = set()
        for pattern in patterns:
            matches = names_matching(pattern, names)
            if not matches:
                raise UsageError(
                    f"--layers '{pattern}' matches no layer in '{self.path}'; layers are: {', '.join(names)}"
                )
            chosen.update(matches)
        return tuple(layer for layer in self.layers if layer.name in chosen)


INT64_MAX = int(np.iinfo(np.int64).max)


# What makes a torchrun shard part of its index's extraction: the same model, weights, data and label space.
SHARD_IDENTITY = (
    schema.ATTR_MODEL,
    schema.ATTR_WEIGHTS,
    schema.ATTR_CHECKPOINT,
    schema.ATTR_CHECKPOINT_SHA256,
    schema.ATTR_DATASET,
    schema.ATTR_TRANSFORM,
    schema.ATTR_EPOCH,
    schema.ATTR_SPLIT,
    schema.ATTR_NUM_CLASSES,
    schema.ATTR_INIT_SEED,
)


def _check_shards(handle: h5py.File, file: str) -> None:
    """Every shard of a torchrun index is of the index's extraction: its identity attributes and its extract
    options (its own rows aside) are the index's. A shard replaced by one of another run (another checkpoint,
    other data) would otherwise be analysed as part of this file."""
    names = [str(name) for name in np.atleast_1d(read_attribute(file, handle, schema.ATTR_SHARDS, ""))]
    wanted = {name: _plain(handle.attrs.get(name)) for name in SHARD_IDENTITY}
    options = options_of(handle) or {}
    for name in names:
        path = os.path.join(os.path.dirname(file), name)
        try:
            with h5py.File(path, "r") as shard:
                found = {key: _plain(shard.attrs.get(key)) for key in SHARD_IDENTITY}
                shard_options = {k: v for k, v in (options_of(shard) or {}).items() if k != schema.EXTRACT_OPTION_SHARD}
        except OSError as error:
            raise FeatureFileError(file, "", f"cannot open its shard '{name}': {shown(error)}") from None
        differ = [key for key in SHARD_IDENTITY if found[key] != wanted[key]]
        if differ:
            key = differ[0]
            raise FeatureFileError(
                file,
                "",
                f"shard '{name}' is not of this extraction: its {key} is {found[key]!r}, the index's "
                f"{wanted[key]!r}; extract the shards again, or analyze the shard alone",
            )
        if options and shard_options != options:
            raise FeatureFileError(
                file,
                "",
                f"shard '{name}' was written with other options ({describe_differences(options, shard_options)})",
            )


def _plain(value):
    """An attribute as a comparable Python value (numpy scalars and bytes decoded)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value.item() if isinstance(value, np.generic) else value


def label_range_problem(low: int, high: int, num_classes: int) -> str | None:
    """What is wrong with labels spanning [low, high] that must lie in [0, num_classes), else None: the one
    wording for files, arrays (:mod:`nccli.io.checks`) and batches. Labels and ``num_classes`` are stored as
    int64: a larger one (an unsigned label ≥ 2⁶³) would wrap to a negative id."""
    if high > INT64_MAX or num_classes > INT64_MAX:
        big = high if high > INT64_MAX else num_classes
        return f"{'label' if big == high else 'num_classes'} {big} does not fit int64 (class ids count from 0)"
    if low >= 0 and high < num_classes:
        return None
    bad = low if low < 0 else high
    return f"label {bad} outside [0, {num_classes}) (num_classes = {num_classes})"


def nonfinite_problem(row: int) -> str:
    """The one wording of a non-finite feature row, for files and arrays."""
    return f"non-finite feature value (NaN or Inf) in row {row}"


def memory_budget() -> int:
    """Bytes a hostile header may make nccli allocate at most: half the physical memory, or half the
    address-space limit (``ulimit -v``) when that is lower."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    return min(physical, physical if limit == resource.RLIM_INFINITY else limit) // 2


def _node(handle: h5py.File, file: str, path: str):
    node = follow(handle, file, path)
    if node is not None and not isinstance(node, (h5py.Dataset, h5py.Group)):
        raise FeatureFileError(file, path, f"expected a dataset or group, found {type(node).__name__}")
    return node


def _dataset(handle: h5py.File, file: str, path: str) -> h5py.Dataset:
    """The dataset at ``path``, reached inside the file, with its bytes where they should be."""
    node = _node(handle, file, path)
    if node is None:
        raise FeatureFileError(file, path, "required dataset is missing")
    if not isinstance(node, h5py.Dataset):
        raise FeatureFileError(file, path, "expected a dataset, found a group")
    if node.shape is None:
        raise FeatureFileError(file, path, "is an empty (null) dataset")
    check_storage(node, file, path)
    return node


def validate(handle: h5py.File, file: str, scan_labels: bool = True) -> tuple[FeatureFileInfo, Classifier | None]:
    """Check ``handle`` against the format; the file's description and classifier. ``scan_labels=False`` skips
    reading the labels (their range is then not checked, and the class count not inferred from them)."""
    fmt = text_attribute(file, handle, schema.ATTR_FORMAT, "")
    if fmt != schema.FORMAT_NAME:
        found = "it is missing" if fmt is None else f"found {shown(fmt)}"
        raise FeatureFileError(
            file,
            "",
            f"root attribute '{schema.ATTR_FORMAT}' must be '{schema.FORMAT_NAME}' ({found}); not an nccli feature "
            "file",
        )
    version = int_attribute(file, handle, schema.ATTR_FORMAT_VERSION, "")
    if version != schema.FORMAT_VERSION:
        raise FeatureFileError(
            file, "", f"unsupported '{schema.ATTR_FORMAT_VERSION}' {version} (this nccli reads {schema.FORMAT_VERSION})"
        )
    if bool_attribute(file, handle, schema.ATTR_COMPLETE, "") is False:
        finish = (  # a converted file is made again; an extraction continues where it stopped
            "run `nccli convert` again"
            if schema.ATTR_SOURCES in handle.attrs
            else "finish it with `nccli extract --resume`"
        )
        raise FeatureFileError(
            file, "", f"attribute 'complete' is False: the file is still being written or was interrupted ({finish})"
        )

    labels = _dataset(handle, file, schema.LABELS)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise FeatureFileError(
            file,
            schema.LABELS,
            f"labels must be a 1-D integer dataset, found shape {labels.shape} dtype {labels.dtype}",
        )
    n = labels.shape[0]
    if n == 0:
        raise FeatureFileError(file, schema.LABELS, "the file holds no samples (N = 0)")
    layers = _validate_layers(handle, file, n)
    low, high = _label_range(labels, file) if scan_labels else (0, 0)
    classifier, classifier_layer = _validate_classifier(handle, file, layers)
    declared = int_attribute(file, handle, schema.ATTR_NUM_CLASSES, "")
    num_classes = declared if declared is not None else max(high + 1, 0 if classifier is None else len(classifier.bias))
    if num_classes < 1:
        raise FeatureFileError(file, "", f"attribute '{schema.ATTR_NUM_CLASSES}' must be ≥ 1, found {num_classes}")
    problem = label_range_problem(low, high, num_classes)
    if problem is not None:
        raise FeatureFileError(file, schema.LABELS, problem)
    if classifier is not None and len(classifier.bias) != num_classes:
        raise FeatureFileError(
            file, schema.CLASSIFIER_WEIGHT, f"has {len(classifier.bias)} rows but num_classes is {num_classes}"
        )
    class_names = names_attribute(file, handle, schema.ATTR_CLASS_NAMES, "")
    if class_names is not None and len(class_names) != num_classes:
        raise FeatureFileError(
            file, "", f"attribute '{schema.ATTR_CLASS_NAMES}' has {len(class_names)} names for {num_classes} classes"
        )
    provenance = {
        name: str(read_attribute(file, handle, name, "")) for name in schema.PROVENANCE_ATTRS if name in handle.attrs
    }
    if schema.ATTR_SHARDS in handle.attrs:
        _check_shards(handle, file)
    info = FeatureFileInfo(
        path=file,
        n_samples=n,
        num_classes=num_classes,
        split=str(read_attribute(file, handle, schema.ATTR_SPLIT, "", schema.DEFAULT_SPLIT)),
        epoch=int_attribute(file, handle, schema.ATTR_EPOCH, ""),
        model=provenance.get(schema.ATTR_MODEL),
        class_names=class_names,
        layers=layers,
        classifier_layer=classifier_layer,
        provenance=provenance,
    )
    return info, classifier


def _validate_layers(handle: h5py.File, file: str, n: int) -> tuple[LayerInfo, ...]:
    group = _node(handle, file, schema.LAYERS)
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
        if data.shape[1] > MAX_WIDTH:
            raise FeatureFileError(file, path, f"has width d = {data.shape[1]}, above nccli's limit of {MAX_WIDTH}")
        order = int_attribute(file, data, schema.ATTR_ORDER, path)
        if order is None:
            raise FeatureFileError(file, path, f"required attribute '{schema.ATTR_ORDER}' is missing")
        layers.append(LayerInfo(name, order, int(data.shape[1]), data.chunks[0] if data.chunks else None))
    return tuple(sorted(layers, key=lambda layer: (layer.order, layer.name)))


def _label_range(labels: h5py.Dataset, file: str) -> tuple[int, int]:
    low, high = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    for start in range(0, labels.shape[0], LABEL_BLOCK_ROWS):
        try:
            block = labels[start : start + LABEL_BLOCK_ROWS]
        except READ_ERRORS as error:
            stop = min(start + LABEL_BLOCK_ROWS, labels.shape[0]) - 1
            raise FeatureFileError(
                file, schema.LABELS, f"cannot read rows {start}–{stop} (truncated or corrupt file?): {shown(error)}"
            ) from None
        low, high = min(low, int(block.min())), max(high, int(block.max()))
    return low, high


def _validate_classifier(
    handle: h5py.File, file: str, layers: tuple[LayerInfo, ...]
) -> tuple[Classifier | None, str | None]:
    group = _node(handle, file, schema.CLASSIFIER)
    if group is None or _node(handle, file, schema.CLASSIFIER_WEIGHT) is None:
        return None, None
    weight = _dataset(handle, file, schema.CLASSIFIER_WEIGHT)
    if weight.ndim != 2 or weight.dtype.kind != "f":
        raise FeatureFileError(
            file,
            schema.CLASSIFIER_WEIGHT,
            f"must be a 2-D float dataset, found shape {weight.shape} dtype {weight.dtype}",
        )
    layer_name = text_attribute(file, group, schema.ATTR_CLASSIFIER_LAYER, schema.CLASSIFIER)
    names = [layer.name for layer in layers]
    if layer_name is None:
        raise FeatureFileError(
            file, schema.CLASSIFIER, f"attribute '{schema.ATTR_CLASSIFIER_LAYER}' (the layer W consumes) is missing"
        )
    if layer_name not in names:
        raise FeatureFileError(
            file,
            schema.CLASSIFIER,
            f"attribute '{schema.ATTR_CLASSIFIER_LAYER}' names '{layer_name}', which is not under "
            f"/{schema.LAYERS}; layers are: {', '.join(names)}",
        )
    dim = next(layer.dim for layer in layers if layer.name == layer_name)
    if weight.shape[1] != dim:
        raise FeatureFileError(
            file, schema.CLASSIFIER_WEIGHT, f"has width {weight.shape[1]} but layer '{layer_name}' has width {dim}"
        )
    most = min(MAX_CLASSIFIER_BYTES, memory_budget()) // (8 * dim)
    if not 1 <= weight.shape[0] <= most:
        raise FeatureFileError(
            file, schema.CLASSIFIER_WEIGHT, f"has {weight.shape[0]} rows; expected 1 to {most} (one per class)"
        )
    weight_values = np.asarray(weight[()], dtype=np.float64)
    bias_values = np.zeros(weight.shape[0])
    if _node(handle, file, schema.CLASSIFIER_BIAS) is not None:
        bias = _dataset(handle, file, schema.CLASSIFIER_BIAS)
        if bias.shape != (weight.shape[0],) or bias.dtype.kind != "f":
            raise FeatureFileError(
                file,
                schema.CLASSIFIER_BIAS,
                f"must be float of shape ({weight.shape[0]},), found shape {bias.shape} dtype {bias.dtype}",
            )
        bias_values = np.asarray(bias[()], dtype=np.float64)
    for path, values in ((schema.CLASSIFIER_WEIGHT, weight_values), (schema.CLASSIFIER_BIAS, bias_values)):
        if not np.isfinite(values).all():
            raise FeatureFileError(file, path, "non-finite value (NaN or Inf)")
    return Classifier(weight_values, bias_values), layer_name
