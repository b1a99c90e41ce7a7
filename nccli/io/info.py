"""``nccli info``: what a feature file holds, without reading a feature.

:func:`describe` validates the file as ``analyze`` does (a bad file is a
:class:`~nccli.errors.FeatureFileError`), then reads what a person or script
wants to know first: N, the label space and the classes present (labels are
small), split, epoch, model and the other provenance attributes, and per layer
its name, order, width, stored dtype, pooling and per-sample shape, and whether
the file has the classifier and the logits (and their top-1 accuracy, when
``nccli extract`` recorded it).
"""

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from nccli import schema
from nccli.io.reader import FeatureFile, LayerInfo, open_feature_file


@dataclass(frozen=True)
class LayerDescription:
    name: str
    order: int
    width: int
    dtype: str
    pooling: str | None
    sample_shape: tuple[int, ...] | None


@dataclass(frozen=True)
class FileDescription:
    """One feature file; ``asdict`` of it is the ``--format json`` record."""

    path: str
    n_samples: int
    num_classes: int
    classes_present: int
    split: str
    epoch: int | None
    model: str | None
    provenance: dict[str, str]
    layers: tuple[LayerDescription, ...]  # in forward order
    classifier_layer: str | None  # the layer /classifier/weight consumes; None without a classifier
    logits: bool
    logits_accuracy: float | None = None  # top-1 accuracy of the logits, as `nccli extract` recorded it


def describe(path: str | os.PathLike) -> FileDescription:
    """Validate ``path`` and describe it."""
    with open_feature_file(path) as feature_file:
        info = feature_file.info
        logits = feature_file.stored(schema.LOGITS)
        return FileDescription(
            path=info.path,
            n_samples=info.n_samples,
            num_classes=info.num_classes,
            classes_present=len(feature_file.present_classes()),
            split=info.split,
            epoch=info.epoch,
            model=info.model,
            provenance=dict(info.provenance),
            layers=tuple(_layer(feature_file, layer) for layer in info.layers),
            classifier_layer=info.classifier_layer,
            logits=logits is not None and logits[0] == (info.n_samples, info.num_classes),
            logits_accuracy=_accuracy(feature_file.attribute("", schema.ATTR_LOGITS_ACCURACY)),
        )


def as_records(descriptions: list[FileDescription]) -> list[dict]:
    """The descriptions as plain JSON-ready dicts."""
    return [dataclasses.asdict(description) for description in descriptions]


def _accuracy(value) -> float | None:
    """A recorded accuracy in [0, 1]; None when absent or not one (another tool's odd value is not ours to show)."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return None


def _layer(feature_file: FeatureFile, layer: LayerInfo) -> LayerDescription:
    path = schema.layer_path(layer.name)
    pooling = feature_file.attribute(path, schema.ATTR_POOLING)
    shape = feature_file.attribute(path, schema.ATTR_SAMPLE_SHAPE)
    shape_values = np.atleast_1d(np.asarray(shape)) if shape is not None else None
    return LayerDescription(
        name=layer.name,
        order=layer.order,
        width=layer.dim,
        dtype=feature_file.stored(path)[1],
        pooling=pooling if isinstance(pooling, str) else None,  # another tool's odd value is not ours to show
        sample_shape=tuple(int(size) for size in shape_values)
        if shape_values is not None and shape_values.ndim == 1 and shape_values.dtype.kind in "iu"
        else None,
    )
