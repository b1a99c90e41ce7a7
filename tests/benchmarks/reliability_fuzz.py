"""Fuzz ``nccli analyze`` with broken and hostile feature files; every one must be accepted or refused cleanly.

Run from the repository root (a script, not a pytest test; ``tests/test_reliability_fuzz.py`` runs a
subset)::

    python tests/benchmarks/reliability_fuzz.py                          # 400 generated + 400 mutated files
    python tests/benchmarks/reliability_fuzz.py --generated 1000 --mutated 1000 --seed 3

Two corpora:

* *generated*: hypothesis draws a valid feature file (samples, classes, layers, float widths, chunking,
  compression) and up to two changes from :data:`CHANGES`, each either a defect the reader must refuse
  (wrong dtypes and ranks, NaN/Inf, labels out of range, missing or wrong-typed attributes, N = 0,
  d = 0, huge declared sizes, external links and external raw storage, soft-link cycles, unwritten
  chunks, virtual datasets with a missing or short source or a gap) or a harmless variation it must
  accept (soft links inside the file, virtual datasets whose sources all exist, odd dtypes and layouts);
* *mutated*: real files (written by nccli's own writer, uncompressed and gzip, by plain h5py, and a
  virtual-dataset index over shard files) truncated at random lengths, with random bytes flipped, or
  with blocks overwritten; these may be refused or, when the damage misses everything read, accepted.

Each file goes through the real command line (``nccli analyze FILE --out report.parquet`` through
typer's CliRunner) in a worker process with a per-file time limit and an address-space limit, so a
hang, a crash or a memory blow-up is caught and counted, not fatal. A file is handled cleanly when it
is *accepted* (exit 0, a report written) or *refused* (exit 2, one line on stderr naming the file, no
traceback, no report or temporary file left), and matches its expectation (a defect must be refused,
a harmless variation accepted). Everything else is a failure, printed with its reason and recipe.
"""

import argparse
import json
import os
import random
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from h5files import write_feature_file  # noqa: E402 (tests/ is put on sys.path first)

from nccli import schema  # noqa: E402

FILE_SECONDS = 120.0  # per file: a valid small file takes well under a second; a probe gives up after 60 s
ADDRESS_SPACE = 3 * 2**30  # bytes of virtual memory a worker may map


# --------------------------------------------------------------------------- the generated corpus

BASE_DTYPES = ("float32", "float64", "float16")
STORAGE = ("contiguous", "chunked", "gzip", "lzf")


def write_base(path: Path, recipe: dict) -> dict:
    """A valid feature file from the recipe's base; returns the arrays written (for the changes)."""
    rng = np.random.default_rng(recipe["seed"])
    n, k = recipe["n"], recipe["k"]
    labels = np.arange(n) % k
    layers = {f"layer{i}": rng.normal(size=(n, d)) for i, d in enumerate(recipe["dims"])}
    last = f"layer{len(recipe['dims']) - 1}"
    storage = recipe["storage"]
    write_feature_file(
        path,
        labels,
        layers,
        weight=rng.normal(size=(k, recipe["dims"][-1])) if recipe["classifier"] else None,
        bias=rng.normal(size=k) if recipe["classifier"] else None,
        classifier_layer=last if recipe["classifier"] else None,
        num_classes=k,
        class_names=[f"c{i}" for i in range(k)] if recipe["names"] else None,
        split="train",
        epoch=3,
        model="fuzz",
        complete=True,
        dtype=np.dtype(recipe["dtype"]),
        chunks=None if storage == "contiguous" else 3,
        compression=storage if storage in ("gzip", "lzf") else None,
    )
    return {"labels": labels, "layers": layers, "last": last}


def _replace(handle: h5py.File, path: str, **kwargs) -> h5py.Dataset:
    attrs = dict(handle[path].attrs) if path in handle else {}
    if path in handle:
        del handle[path]
    dataset = handle.create_dataset(path, **kwargs)
    for name, value in attrs.items():
        dataset.attrs[name] = value
    return dataset


def _companion(directory: Path, name: str, data: np.ndarray) -> Path:
    """Another HDF5 file in ``directory`` holding ``/data``."""
    other = directory / name
    with h5py.File(other, "w") as handle:
        handle["data"] = data
    return other


def _virtual(handle: h5py.File, path: str, data: np.ndarray, sources: list[tuple[str, int, int]], gap: int = 0) -> None:
    """Replace ``path`` by a virtual dataset over source files (name, first row, end row) holding its rows."""
    attrs = dict(handle[path].attrs)
    del handle[path]
    layout = h5py.VirtualLayout(shape=data.shape, dtype=data.dtype)
    for name, start, stop in sources:
        source = h5py.VirtualSource(name, "data", shape=(stop - start, *data.shape[1:]))
        stop = stop - gap if stop == data.shape[0] else stop  # the last source's last rows left unmapped
        if stop > start:
            layout[start:stop] = source[: stop - start]
    dataset = handle.create_virtual_dataset(path, layout, fillvalue=0)
    for name, value in attrs.items():
        dataset.attrs[name] = value


def _vds(handle: h5py.File, path: str, target: str, parts: int, gap: int = 0, then=None) -> None:
    """Make ``target`` a virtual dataset over ``parts`` shard files beside the file; then ``then(part)``, where
    ``part(i)`` is the i-th shard file's path (to damage it)."""
    data = handle[target][()]
    prefix = "labels" if target == schema.LABELS else "layer"
    _virtual(handle, target, data, _shards(Path(path), data, parts, prefix), gap)
    if then is not None:
        then(lambda index: Path(path).parent / f"{prefix}.shards" / f"part{index}.h5")


def _shards(path: Path, data: np.ndarray, parts: int, prefix: str) -> list[tuple[str, int, int]]:
    bounds = np.linspace(0, data.shape[0], parts + 1).astype(int)
    folder = path.parent / f"{prefix}.shards"
    folder.mkdir(exist_ok=True)
    sources = []
    for index in range(parts):
        start, stop = int(bounds[index]), int(bounds[index + 1])
        _companion(folder, f"part{index}.h5", data[start:stop])
        sources.append((f"{prefix}.shards/part{index}.h5", start, stop))
    return sources


def _layer(recipe: dict, written: dict, value: int) -> str:
    names = list(written["layers"])
    return schema.layer_path(names[value % len(names)])


def _empty_layer(storage):
    """A change that replaces one layer by a dataset of its shape, stored as ``storage(shape, path)`` says, that
    holds no written rows."""

    def change(h, p, r, w, v):
        shape = h[_layer(r, w, v)].shape
        _replace(h, _layer(r, w, v), shape=shape, **storage(shape, p))

    return change


def _labels_as(make):
    """A change that replaces the labels by ``make(labels)``."""
    return lambda h, p, r, w, v: _replace(h, schema.LABELS, data=make(w["labels"]))


def _layer_as(dtype):
    """A change that stores one layer with another dtype."""
    return lambda h, p, r, w, v: _replace(h, _layer(r, w, v), data=h[_layer(r, w, v)][()].astype(dtype))


def _order(handle: h5py.File, recipe: dict, written: dict, value: int, order) -> None:
    handle[_layer(recipe, written, value)].attrs[schema.ATTR_ORDER] = order


def _row(written: dict, value: int) -> int:
    return value % len(written["labels"])


# Each change: (expectation, apply(handle, path, recipe, written, value)). "refuse": a defect the reader must
# refuse; "accept": a variation it must accept. ``value`` is a random integer the change may use.
CHANGES = {
    # labels
    "labels-float": ("refuse", _labels_as(lambda labels: labels.astype(np.float32))),
    "labels-complex": ("refuse", _labels_as(lambda labels: labels.astype(np.complex64))),
    "labels-string": ("refuse", _labels_as(lambda labels: labels.astype("S3"))),
    "labels-bool": ("refuse", _labels_as(lambda labels: labels > 0)),
    "labels-2d": ("refuse", _labels_as(lambda labels: labels[:, None])),
    "labels-scalar": ("refuse", _labels_as(lambda labels: np.int64(0))),
    "labels-null": ("refuse", _labels_as(lambda labels: h5py.Empty("i8"))),
    "labels-negative": ("refuse", lambda h, p, r, w, v: h[schema.LABELS].__setitem__(_row(w, v), -1 - v % 3)),
    "labels-too-big": ("refuse", lambda h, p, r, w, v: h[schema.LABELS].__setitem__(_row(w, v), r["k"] + v % 5)),
    "labels-missing": ("refuse", lambda h, p, r, w, v: h.__delitem__(schema.LABELS)),
    "labels-uint8": ("accept", _labels_as(lambda labels: labels.astype(np.uint8))),
    "empty": (
        "refuse",
        lambda h, p, r, w, v: [
            _replace(h, name, shape=(0, *h[name].shape[1:]), dtype=h[name].dtype)
            for name in [schema.LABELS, *(schema.layer_path(x) for x in w["layers"])]
        ],
    ),
    # layers
    "layer-int": ("refuse", _layer_as(np.int32)),
    "layer-complex": ("refuse", _layer_as(np.complex64)),
    "layer-string": ("refuse", _layer_as("S8")),
    "layer-1d": ("refuse", lambda h, p, r, w, v: _replace(h, _layer(r, w, v), data=h[_layer(r, w, v)][:, 0])),
    "layer-3d": ("refuse", lambda h, p, r, w, v: _replace(h, _layer(r, w, v), data=h[_layer(r, w, v)][()][:, :, None])),
    "layer-rows": ("refuse", lambda h, p, r, w, v: _replace(h, _layer(r, w, v), data=h[_layer(r, w, v)][1:])),
    "layer-d0": ("refuse", lambda h, p, r, w, v: _replace(h, _layer(r, w, v), shape=(len(w["labels"]), 0), dtype="f4")),
    "layer-nan": ("refuse", lambda h, p, r, w, v: h[_layer(r, w, v)].__setitem__((_row(w, v), 0), np.nan)),
    "layer-inf": ("refuse", lambda h, p, r, w, v: h[_layer(r, w, v)].__setitem__((_row(w, v), -1), -np.inf)),
    "layer-group": ("refuse", lambda h, p, r, w, v: h.create_group(schema.layer_path("not_a_dataset"))),
    "layers-empty": (
        "refuse",
        lambda h, p, r, w, v: [
            h.__delitem__(schema.LAYERS),
            h.create_group(schema.LAYERS),
            h.pop(schema.CLASSIFIER, None),
        ],
    ),
    "layers-missing": ("refuse", lambda h, p, r, w, v: [h.__delitem__(schema.LAYERS), h.pop(schema.CLASSIFIER, None)]),
    "layer-huge-width": (
        "refuse",
        lambda h, p, r, w, v: _replace(
            h, _layer(r, w, v), shape=(len(w["labels"]), 2**25), dtype="f4", chunks=(1, 2**22), compression="gzip"
        ),
    ),
    "layer-unwritten": ("refuse", _empty_layer(lambda shape, path: {"dtype": "f4", "chunks": (1, shape[1])})),
    "layer-unallocated": ("refuse", _empty_layer(lambda shape, path: {"dtype": "f8"})),
    "layer-external-storage": (
        "refuse",
        _empty_layer(lambda shape, path: {"dtype": "f8", "external": [(os.path.abspath(path), 0, h5py.h5f.UNLIMITED)]}),
    ),
    "order-missing": ("refuse", lambda h, p, r, w, v: h[_layer(r, w, v)].attrs.__delitem__(schema.ATTR_ORDER)),
    "order-string": ("refuse", lambda h, p, r, w, v: _order(h, r, w, v, "first")),
    "order-float": ("refuse", lambda h, p, r, w, v: _order(h, r, w, v, 1.5)),
    "order-array": ("refuse", lambda h, p, r, w, v: _order(h, r, w, v, np.arange(2 + v % 40))),
    "layer-float16": ("accept", _layer_as(np.float16)),
    "layer-odd-chunks": (
        "accept",
        lambda h, p, r, w, v: _replace(
            h, _layer(r, w, v), data=h[_layer(r, w, v)][()], chunks=(1 + v % 7, 1), compression="gzip"
        ),
    ),
    # root attributes
    "format-missing": ("refuse", lambda h, p, r, w, v: h.attrs.__delitem__(schema.ATTR_FORMAT)),
    "format-int": ("refuse", lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_FORMAT, 7)),
    "format-array": (
        "refuse",
        lambda h, p, r, w, v: h.attrs.__setitem__(
            schema.ATTR_FORMAT, np.array([schema.FORMAT_NAME, "x"], dtype=h5py.string_dtype())
        ),
    ),
    "format-bad-utf8": (
        "refuse",
        lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_FORMAT, np.void(b"\xff\xfenccli")),
    ),
    "format-bytes": (
        "accept",
        lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_FORMAT, np.bytes_(schema.FORMAT_NAME)),
    ),
    "version-2": ("refuse", lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_FORMAT_VERSION, 2)),
    "version-string": ("refuse", lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_FORMAT_VERSION, "1")),
    "version-float": ("refuse", lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_FORMAT_VERSION, 1.0)),
    "version-bool": ("refuse", lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_FORMAT_VERSION, True)),
    "version-array": ("refuse", lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_FORMAT_VERSION, [1, 1])),
    "version-missing": ("refuse", lambda h, p, r, w, v: h.attrs.__delitem__(schema.ATTR_FORMAT_VERSION)),
    "version-empty": (
        "refuse",
        lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_FORMAT_VERSION, h5py.Empty("i8")),
    ),
    "complete-false": ("refuse", lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_COMPLETE, False)),
    "complete-string": ("refuse", lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_COMPLETE, "no")),
    "complete-array": ("refuse", lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_COMPLETE, [True, False])),
    "complete-int": ("accept", lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_COMPLETE, 1)),
    "num-classes-zero": ("refuse", lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_NUM_CLASSES, 0)),
    "num-classes-negative": ("refuse", lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_NUM_CLASSES, -5)),
    "num-classes-small": ("refuse", lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_NUM_CLASSES, r["k"] - 1)),
    "num-classes-string": ("refuse", lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_NUM_CLASSES, "ten")),
    "num-classes-huge": (
        "refuse",
        lambda h, p, r, w, v: [
            h.attrs.__setitem__(schema.ATTR_NUM_CLASSES, 10 ** (9 + v % 10)),
            h.attrs.pop(schema.ATTR_CLASS_NAMES, None),
            h.pop(schema.CLASSIFIER, None),
        ],
    ),
    "num-classes-larger": (
        "accept",
        lambda h, p, r, w, v: [
            h.attrs.__setitem__(schema.ATTR_NUM_CLASSES, r["k"] + 1 + v % 3),
            h.attrs.pop(schema.ATTR_CLASS_NAMES, None),
            h.pop(schema.CLASSIFIER, None),
        ],
    ),
    "class-names-length": (
        "refuse",
        lambda h, p, r, w, v: h.attrs.__setitem__(
            schema.ATTR_CLASS_NAMES, np.array(["a"] * (r["k"] + 1), dtype=h5py.string_dtype())
        ),
    ),
    "class-names-ints": (
        "refuse",
        lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_CLASS_NAMES, np.arange(r["k"])),
    ),
    "class-names-2d": (
        "refuse",
        lambda h, p, r, w, v: h.attrs.__setitem__(
            schema.ATTR_CLASS_NAMES, np.full((r["k"], 2), "a", dtype=h5py.string_dtype())
        ),
    ),
    "epoch-string": ("refuse", lambda h, p, r, w, v: h.attrs.__setitem__(schema.ATTR_EPOCH, "three")),
    "attribute-huge": (
        "refuse",
        lambda h, p, r, w, v: h.attrs.create(schema.ATTR_MODEL, np.zeros(17 * 2**20 // 8 + 1), dtype="f8"),
    ),
    "extra-objects": (
        "accept",
        lambda h, p, r, w, v: [h.create_dataset("extra/x", data=np.arange(3)), h.attrs.__setitem__("extra", "yes")],
    ),
    # the classifier
    "classifier-width": (
        "refuse",
        lambda h, p, r, w, v: _replace(
            h, schema.CLASSIFIER_WEIGHT, data=np.ones((r["k"], 1 + h[schema.CLASSIFIER_WEIGHT].shape[1]))
        ),
    ),
    "classifier-rows": (
        "refuse",
        lambda h, p, r, w, v: _replace(
            h, schema.CLASSIFIER_WEIGHT, data=np.ones((r["k"] + 1, h[schema.CLASSIFIER_WEIGHT].shape[1]))
        ),
    ),
    "classifier-nan": ("refuse", lambda h, p, r, w, v: h[schema.CLASSIFIER_WEIGHT].__setitem__((0, 0), np.nan)),
    "classifier-int": (
        "refuse",
        lambda h, p, r, w, v: _replace(
            h, schema.CLASSIFIER_WEIGHT, data=np.ones(h[schema.CLASSIFIER_WEIGHT].shape, dtype=int)
        ),
    ),
    "classifier-bias-shape": (
        "refuse",
        lambda h, p, r, w, v: _replace(h, schema.CLASSIFIER_BIAS, data=np.ones(r["k"] + 2)),
    ),
    "classifier-layer-missing": (
        "refuse",
        lambda h, p, r, w, v: h[schema.CLASSIFIER].attrs.__delitem__(schema.ATTR_CLASSIFIER_LAYER),
    ),
    "classifier-layer-wrong": (
        "refuse",
        lambda h, p, r, w, v: h[schema.CLASSIFIER].attrs.__setitem__(schema.ATTR_CLASSIFIER_LAYER, "nowhere"),
    ),
    "classifier-layer-int": (
        "refuse",
        lambda h, p, r, w, v: h[schema.CLASSIFIER].attrs.__setitem__(schema.ATTR_CLASSIFIER_LAYER, 3),
    ),
    "classifier-huge": (
        "refuse",
        lambda h, p, r, w, v: _replace(
            h,
            schema.CLASSIFIER_WEIGHT,
            shape=(2**40, h[schema.CLASSIFIER_WEIGHT].shape[1]),
            dtype="f8",
            chunks=(1024, h[schema.CLASSIFIER_WEIGHT].shape[1]),
        ),
    ),
    # links and where the bytes come from
    "labels-soft-link": (
        "accept",
        lambda h, p, r, w, v: [
            h.move(schema.LABELS, "stored/labels"),
            h.__setitem__(schema.LABELS, h5py.SoftLink("/stored/labels")),
        ],
    ),
    "layer-soft-link": (
        "accept",
        lambda h, p, r, w, v: [
            h.move(_layer(r, w, v), "stored/layer"),
            h.__setitem__(_layer(r, w, v), h5py.SoftLink("/stored/layer")),
        ],
    ),
    "labels-dangling-link": (
        "refuse",
        lambda h, p, r, w, v: [h.__delitem__(schema.LABELS), h.__setitem__(schema.LABELS, h5py.SoftLink("/nowhere"))],
    ),
    "labels-link-cycle": (
        "refuse",
        lambda h, p, r, w, v: [
            h.__delitem__(schema.LABELS),
            h.__setitem__(schema.LABELS, h5py.SoftLink("/" + schema.LABELS)),
        ],
    ),
    "labels-external-link": (
        "refuse",
        lambda h, p, r, w, v: [
            _companion(Path(p).parent, "other.h5", w["labels"]),
            h.__delitem__(schema.LABELS),
            h.__setitem__(schema.LABELS, h5py.ExternalLink("other.h5", "/data")),
        ],
    ),
    "layers-external-link": (
        "refuse",
        lambda h, p, r, w, v: [
            h.copy(schema.LAYERS, "moved"),
            h.__delitem__(schema.LAYERS),
            h.__setitem__(schema.LAYERS, h5py.ExternalLink(os.path.abspath(p), "/moved")),
        ],
    ),
    "layer-soft-to-external": (
        "refuse",
        lambda h, p, r, w, v: [
            _companion(Path(p).parent, "other.h5", h[_layer(r, w, v)][()]),
            h.__setitem__("outside", h5py.ExternalLink("other.h5", "/data")),
            h.__delitem__(_layer(r, w, v)),
            h.__setitem__(_layer(r, w, v), h5py.SoftLink("/outside")),
        ],
    ),
    "vds-complete": ("accept", lambda h, p, r, w, v: _vds(h, p, schema.LABELS, 1 + v % 3)),
    "vds-layer-complete": ("accept", lambda h, p, r, w, v: _vds(h, p, _layer(r, w, v), 1 + v % 3)),
    "vds-missing-source": (
        "refuse",
        lambda h, p, r, w, v: _vds(h, p, _layer(r, w, v), 2, then=lambda part: os.remove(part(v % 2))),
    ),
    "vds-not-hdf5-source": (
        "refuse",
        lambda h, p, r, w, v: _vds(h, p, schema.LABELS, 2, then=lambda part: part(1).write_bytes(b"not hdf5")),
    ),
    "vds-gap": ("refuse", lambda h, p, r, w, v: _vds(h, p, _layer(r, w, v), 2, gap=1)),
    "vds-short-source": (
        "refuse",
        lambda h, p, r, w, v: _vds(h, p, schema.LABELS, 2, then=lambda part: _shorten(part(1))),
    ),
    "vds-source-dataset-missing": (
        "refuse",
        lambda h, p, r, w, v: _vds(h, p, schema.LABELS, 2, then=lambda part: _rename_data(part(0))),
    ),
}


def _shorten(path: Path) -> None:
    with h5py.File(path, "r") as handle:
        data = handle["data"][:-1]
    _companion(path.parent, path.name, data)


def _rename_data(path: Path) -> None:
    with h5py.File(path, "r+") as handle:
        handle.move("data", "elsewhere")


def _targets(change: str) -> set[str]:
    """What a change alters: the word before its first '-', and what the num-classes ones remove besides."""
    extra = {"classifier", "class"} if change in ("num-classes-huge", "num-classes-larger") else set()
    return {change.split("-")[0], *extra}


def _needs(change: str) -> str | None:
    return "classifier" if change.startswith("classifier-") else None


def build(recipe: dict, directory: Path) -> Path:
    """Write the recipe's file (and companions) into ``directory``; returns the feature file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "features.h5"
    written = write_base(path, recipe)
    if recipe["latest"] or any(change == "attribute-huge" for change, _ in recipe["changes"]):
        _to_latest_format(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with h5py.File(path, "r+") as handle:
            for change, value in recipe["changes"]:
                try:
                    CHANGES[change][1](handle, str(path), recipe, written, value)
                except Exception:  # noqa: BLE001 - two changes that do not combine (labels-null, then vds on labels)
                    recipe["clashed"] = True
    return path


def _to_latest_format(path: Path) -> None:
    """Rewrite the file in HDF5's newest format (v2 object headers, dense attributes, new chunk indexes)."""
    staged = path.with_suffix(".latest")
    with h5py.File(path, "r") as source, h5py.File(staged, "w", libver="latest") as target:
        for name, value in source.attrs.items():
            target.attrs[name] = value
        for name in source:
            source.copy(name, target)
    os.replace(staged, path)


def expectation(recipe: dict) -> str:
    if recipe.get("clashed"):
        return "either"
    return "refuse" if any(CHANGES[change][0] == "refuse" for change, _ in recipe["changes"]) else "accept"


def recipes(count: int, seed: int) -> list[dict]:
    """``count`` recipes drawn by hypothesis (reproducible for a seed)."""
    if count < 1:
        return []
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    names = sorted(CHANGES)

    @st.composite
    def recipe(draw):
        classifier = draw(st.booleans())
        allowed = [name for name in names if _needs(name) is None or classifier]
        changes, touched = [], set()
        for _ in range(draw(st.integers(0, 2))):  # no two changes to one target: one could undo the other
            change = draw(st.sampled_from([name for name in allowed if not _targets(name) & touched]))
            changes.append(change)
            touched |= _targets(change)
        return {
            "seed": draw(st.integers(0, 2**16)),
            "n": draw(st.integers(4, 60)),
            "k": draw(st.integers(2, 6)),
            "dims": draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)),
            "dtype": draw(st.sampled_from(BASE_DTYPES)),
            "storage": draw(st.sampled_from(STORAGE)),
            "classifier": classifier,
            "names": draw(st.booleans()),
            "latest": draw(st.booleans()),
            "changes": [[change, draw(st.integers(0, 10**6))] for change in changes],
        }

    found: list[dict] = []

    @hypothesis_seed(seed)
    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(recipe())
    def collect(drawn):
        found.append(drawn)

    collect()
    return found[:count]


# --------------------------------------------------------------------------- the mutated corpus


def real_files(directory: Path) -> list[Path]:
    """Valid feature files as nccli and others write them: the writer (plain and gzip), plain h5py, a VDS index."""
    from nccli.io.writer import FeatureWriter, RowDataset

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n, k = 120, 4
    labels = np.arange(n) % k
    features = {"a": rng.normal(size=(n, 16)).astype(np.float32), "b": rng.normal(size=(n, 4)).astype(np.float32)}
    made = []
    for compression in ("none", "gzip"):
        path = directory / f"writer-{compression}.h5"
        datasets = [RowDataset(schema.LABELS, None, "int64")]
        datasets += [
            RowDataset(schema.layer_path(name), x.shape[1], "float32", {schema.ATTR_ORDER: i})
            for i, (name, x) in enumerate(features.items())
        ]
        attrs = {schema.ATTR_FORMAT: schema.FORMAT_NAME, schema.ATTR_FORMAT_VERSION: 1, schema.ATTR_NUM_CLASSES: k}
        writer = FeatureWriter.create(str(path), n, datasets, attrs, {"fuzz": 1}, compression)
        writer.write(0, {schema.LABELS: labels, **{schema.layer_path(name): x for name, x in features.items()}})
        writer.finish()
        made.append(path)
    made.append(
        write_feature_file(
            directory / "h5py-classifier.h5",
            labels,
            features,
            weight=rng.normal(size=(k, 4)),
            bias=np.zeros(k),
            classifier_layer="b",
            class_names=list("wxyz"),
            chunks=8,
            compression="lzf",
        )
    )
    index = directory / "index.h5"
    write_feature_file(index, labels, features)
    with h5py.File(index, "r+") as handle:
        for path in [schema.LABELS, *(schema.layer_path(name) for name in features)]:
            data = handle[path][()]
            _virtual(handle, path, data, _shards(index, data, 3, path.replace("/", "_")))
    made.append(index)
    return made


def mutate(source: Path, target: Path, rng: random.Random) -> str:
    """Write a damaged copy of ``source`` to ``target``; returns how it was damaged."""
    data = bytearray(source.read_bytes())
    kind = rng.choice(("truncate", "flip", "flip-header", "block", "word"))
    if kind == "truncate":
        cut = rng.choice((rng.randrange(len(data)), rng.randrange(min(len(data), 4096))))
        data = data[:cut]
        how = f"truncated to {cut} of {len(source.read_bytes())} bytes"
    elif kind in ("flip", "flip-header"):
        limit = min(len(data), 4096) if kind == "flip-header" else len(data)
        offsets = [rng.randrange(limit) for _ in range(rng.randint(1, 8))]
        for offset in offsets:
            data[offset] ^= 1 << rng.randrange(8)
        how = f"bits flipped at {offsets}"
    elif kind == "block":
        start = rng.randrange(len(data))
        size = rng.choice((8, 64, 512, 4096))
        fill = rng.choice((0, 0xFF))
        data[start : start + size] = bytes([fill]) * len(data[start : start + size])
        how = f"{size} bytes from {start} set to {fill:#x}"
    else:
        start = rng.randrange(0, len(data) - 8)
        value = rng.choice((2**63 - 1, 2**32, 0, 1, 2**64 - 1))
        data[start : start + 8] = value.to_bytes(8, "little")
        how = f"8-byte word at {start} set to {value}"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bytes(data))
    for companion in source.parent.glob("*.shards"):  # a damaged index keeps its shards beside it
        destination = target.parent / companion.name
        if not destination.exists():
            shutil.copytree(companion, destination)
    return how


# --------------------------------------------------------------------------- judging one file


def judge(path: str, expect: str) -> dict:
    """Run ``nccli analyze`` on ``path`` through the CLI; the verdict and, for a failure, why."""
    from typer.testing import CliRunner

    from nccli.cli import app

    folder = Path(tempfile.mkdtemp(prefix="fuzz-out-"))
    out = folder / "report.parquet"
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = CliRunner().invoke(app, ["analyze", path, "--out", str(out), "--device", "cpu"])
        seconds = time.perf_counter() - started
        lines = result.stderr.strip().splitlines()
        left = sorted(p.name for p in folder.iterdir() if p.name != "report.parquet")
        verdict, reason = "failure", ""
        if result.exit_code == 0 and out.exists() and not left:
            verdict = "accepted"
        elif result.exit_code == 2:
            if result.exception not in (None,) and not isinstance(result.exception, SystemExit):
                reason = f"exception {result.exception!r}"
            elif len(lines) != 1 or not lines[0].startswith("error: "):
                reason = f"{len(lines)} stderr lines: {result.stderr[-300:]!r}"
            elif "Traceback" in result.output:
                reason = "traceback"
            elif out.exists() or left:
                reason = f"output left behind: {left or [out.name]}"
            elif path not in lines[0]:
                reason = f"message does not name the file: {lines[0]}"
            else:
                verdict = "refused"
        else:
            exception = result.exception
            reason = (
                f"exit {result.exit_code}: {type(exception).__name__}: {str(exception)[:200]}"
                if exception
                else f"exit {result.exit_code}"
            )
        if verdict == "accepted" and expect == "refuse":
            verdict, reason = "failure", "accepted a file that must be refused"
        if verdict == "refused" and expect == "accept":
            verdict, reason = "failure", f"refused a valid file: {lines[0]}"
        return {"verdict": verdict, "reason": reason, "message": lines[0] if lines else "", "seconds": seconds}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _peak_rss_mb() -> int:
    """This process's peak RSS. Not ``ru_maxrss``: Linux keeps that across ``execve``, so a worker started by a
    large parent (pytest after the extract tests) would report the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def worker() -> None:
    """Judge the files named on stdin (JSON lines), one JSON verdict per line on stdout."""
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    for line in sys.stdin:
        case = json.loads(line)
        verdict = judge(case["path"], case["expect"])
        verdict["rss_mb"] = _peak_rss_mb()
        print(json.dumps(verdict), flush=True)


@dataclass
class Case:
    name: str
    path: str
    expect: str  # "accept", "refuse" or "either"
    recipe: object


class Judge:
    """A worker process judging files one at a time; restarted after a crash or a hang."""

    def __init__(self, seconds: float):
        self.seconds, self.process = seconds, None

    def _start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
        )

    def __call__(self, case: Case) -> dict:
        if self.process is None or self.process.poll() is not None:
            self._start()
        self.process.stdin.write(json.dumps({"path": case.path, "expect": case.expect}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], self.seconds)
        line = self.process.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        if ready:  # end of output: the worker died
            code = self.process.wait()
            self.process = None
            return {
                "verdict": "failure",
                "reason": f"worker crashed ({signal.Signals(-code).name if code < 0 else code})",
            }
        self.close()
        return {"verdict": "failure", "reason": f"no answer within {self.seconds:.0f} s (hang)"}

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def corpus(directory: Path, generated: int, mutated: int, seed: int) -> list[Case]:
    cases = []
    for index, recipe in enumerate(recipes(generated, seed)):
        name = f"g{index:04d}-" + ("+".join(change for change, _ in recipe["changes"]) or "valid")
        cases.append(Case(name, str(build(recipe, directory / f"g{index:04d}")), expectation(recipe), recipe))
    bases = real_files(directory / "real")
    rng = random.Random(seed)
    for index in range(mutated):
        base = bases[index % len(bases)]
        target = directory / f"m{index:04d}" / base.name
        how = mutate(base, target, rng)
        cases.append(Case(f"m{index:04d}-{base.stem}", str(target), "either", how))
    return cases


def run(cases: list[Case], seconds: float = FILE_SECONDS, log=print) -> Counter:
    judge_file, counts = Judge(seconds), Counter()
    peak = 0
    try:
        for case in cases:
            verdict = judge_file(case)
            counts[verdict["verdict"]] += 1
            peak = max(peak, verdict.get("rss_mb", 0))
            if verdict["verdict"] == "failure":
                log(f"FAILURE {case.name}: {verdict['reason']} [{json.dumps(case.recipe)}]")
    finally:
        judge_file.close()
    counts["peak_rss_mb"] = peak
    return counts


def main() -> None:
    if sys.argv[1:] == ["--worker"]:
        worker()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generated", type=int, default=400)
    parser.add_argument("--mutated", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=FILE_SECONDS, help="time limit per file")
    options = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as directory:
        cases = corpus(Path(directory), options.generated, options.mutated, options.seed)
        made = time.monotonic() - started
        counts = run(cases, options.seconds)
    tried = len(cases)
    clean = counts["accepted"] + counts["refused"]
    kinds = Counter(case.name.split("-")[0][0] for case in cases)
    print(
        f"tried {tried} files ({kinds['g']} generated, {kinds['m']} mutated): handled cleanly {clean} "
        f"(accepted {counts['accepted']}, refused {counts['refused']}), failures {counts['failure']}; "
        f"peak worker RSS {counts['peak_rss_mb']} MiB; {made:.0f} s to make, {time.monotonic() - started:.0f} s in all"
    )
    sys.exit(1 if counts["failure"] else 0)


if __name__ == "__main__":
    main()
