"""Write feature files with plain h5py, independently of nccli's own writer.

This is what a user who computed features elsewhere would do
(``docs/feature-file.md``, format version 1). It validates nothing:
tests use it to write bad files too (labels out of range, NaN features,
mismatched row counts, missing required paths via ``omit``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from nccli import schema

OMITTABLE = ("nccli_format", "format_version", "labels", "layers", "order")
"""Names ``omit`` accepts; also ``"order:<layer>"`` for one layer only."""


def write_feature_file(
    path,
    labels,
    layers: Mapping[str, np.ndarray],
    *,
    orders: Mapping[str, int] | Sequence[int] | None = None,
    weight=None,
    bias=None,
    classifier_layer: str | None = None,
    logits=None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    split: str | None = None,
    epoch: int | None = None,
    model: str | None = None,
    complete: bool | None = None,
    dtype=None,
    chunks: bool | int | None = None,
    compression: str | None = None,
    extra_root_attrs: Mapping[str, object] | None = None,
    omit: Sequence[str] = (),
    layer_attrs: Mapping[str, Mapping[str, object]] | None = None,
    sample_index=None,
) -> Path:
    """Write one feature file at ``path`` (overwritten) and return it as a Path.

    ``layers``: name → (N, d) array, insertion order = forward order (attr
    ``order`` = 0, 1, ...) unless ``orders`` gives the orders (a mapping by
    name or a sequence in ``layers`` order). ``dtype`` casts the layer
    features (np.float16/32/64); weight, bias and logits keep their own dtype.
    ``chunks``: None = contiguous (but h5py picks chunks itself when
    ``compression`` is set, compressed data being always chunked), True = h5py
    auto-chunking, an int r = chunks of shape (min(r, N), d).
    ``compression``: None, ``'gzip'`` or ``'lzf'``. Optional root attributes
    are written only when given; ``complete`` as a bool attribute.
    ``extra_root_attrs`` are written last (they may override anything, e.g.
    ``{'format_version': 2}`` or ``{'rows_written': 10}``). ``omit`` leaves out
    required things (see :data:`OMITTABLE`). ``layer_attrs``: name → extra
    per-layer attributes (``sample_shape``, ``pooling``, ...).
    """
    for item in omit:
        if item not in OMITTABLE and not item.startswith("order:"):
            raise ValueError(f"cannot omit {item!r}; choose from {OMITTABLE} or 'order:<layer>'")
    names = list(layers)
    if orders is None:
        order_of = {name: i for i, name in enumerate(names)}
    elif isinstance(orders, Mapping):
        order_of = dict(orders)
    else:
        order_of = dict(zip(names, orders, strict=True))

    path = Path(path)
    with h5py.File(path, "w") as f:
        if "nccli_format" not in omit:
            f.attrs[schema.ATTR_FORMAT] = schema.FORMAT_NAME
        if "format_version" not in omit:
            f.attrs[schema.ATTR_FORMAT_VERSION] = np.int64(schema.FORMAT_VERSION)
        if num_classes is not None:
            f.attrs[schema.ATTR_NUM_CLASSES] = np.int64(num_classes)
        if class_names is not None:
            f.attrs[schema.ATTR_CLASS_NAMES] = np.array(list(class_names), dtype=h5py.string_dtype("utf-8"))
        if split is not None:
            f.attrs[schema.ATTR_SPLIT] = str(split)
        if epoch is not None:
            f.attrs[schema.ATTR_EPOCH] = np.int64(epoch)
        if model is not None:
            f.attrs[schema.ATTR_MODEL] = str(model)
        if complete is not None:
            f.attrs[schema.ATTR_COMPLETE] = np.bool_(complete)

        if "labels" not in omit:
            f.create_dataset(schema.LABELS, data=np.asarray(labels))
        if "layers" not in omit:
            group = f.create_group(schema.LAYERS)
            for name in names:
                data = np.asarray(layers[name])
                if dtype is not None:
                    data = data.astype(dtype)
                ds = group.create_dataset(name, data=data, **_storage(data.shape, chunks, compression))
                if "order" not in omit and f"order:{name}" not in omit:
                    ds.attrs[schema.ATTR_ORDER] = np.int64(order_of[name])
                for key, value in (layer_attrs or {}).get(name, {}).items():
                    ds.attrs[key] = value

        if weight is not None:
            f.create_dataset(schema.CLASSIFIER_WEIGHT, data=np.asarray(weight))
        if bias is not None:
            f.create_dataset(schema.CLASSIFIER_BIAS, data=np.asarray(bias))
        if classifier_layer is not None:
            f.require_group(schema.CLASSIFIER).attrs[schema.ATTR_CLASSIFIER_LAYER] = str(classifier_layer)
        if logits is not None:
            f.create_dataset(schema.LOGITS, data=np.asarray(logits))
        if sample_index is not None:
            f.create_dataset(schema.SAMPLE_INDEX, data=np.asarray(sample_index))
        for key, value in (extra_root_attrs or {}).items():
            f.attrs[key] = value
    return path


def _storage(shape: tuple[int, ...], chunks, compression) -> dict:
    """h5py keyword arguments for the chunking and compression asked for."""
    kwargs: dict = {}
    if compression is not None:
        if compression not in ("gzip", "lzf"):
            raise ValueError(f"compression must be None, 'gzip' or 'lzf', got {compression!r}")
        kwargs["compression"] = compression
    if chunks is True:
        kwargs["chunks"] = True
    elif chunks is not None and chunks is not False:
        rows = max(1, min(int(chunks), shape[0]))
        kwargs["chunks"] = (rows, *(max(1, s) for s in shape[1:]))
    return kwargs


def good_file(path, n=40, k=4, d=5, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    features = rng.normal(size=(n, d)) + labels[:, None]
    kwargs.setdefault("weight", rng.normal(size=(k, d)))
    kwargs.setdefault("bias", rng.normal(size=k))
    kwargs.setdefault("classifier_layer", "fc_in")
    layers = kwargs.pop("layers", {"block": np.tanh(features @ rng.normal(size=(d, 7))), "fc_in": features})
    return write_feature_file(path, labels, layers, **kwargs)


def not_hdf5(path):
    path.write_bytes(b"this is not hdf5" * 100)
    return path
