"""``convert``: write a feature file (``docs/feature-file.md``) from arrays other tools saved.

The sources (:mod:`nccli.io.arrays`: ``.npy``, ``.npz``, ``.pt``/``.pth``,
``.safetensors``) form one key space; the options name which key holds the
labels, each layer's features, the classifier and the logits, with defaults
for the usual names (``schema.CONVERT_*_KEYS``). Everything ``analyze`` would
refuse is refused here first (:mod:`nccli.io.checks`): shapes, dtypes and the
label range before the output is created (the labels are read once, in
blocks, for their range), non-finite features while the rows are copied, in
which case the partial file is deleted. Rows are copied a block at a time;
(N, C, H, W…) feature maps are pooled per block with extract's own
:func:`~nccli.extract.capture.pool_rows` (rows then float32, as extract writes
them); 2-D features keep their dtype. The file is written as extract writes
it (:class:`~nccli.io.writer.FeatureWriter`: ``FILE.partial``, locked,
renamed when complete), so no reader ever sees half a file.
"""

import contextlib
import json
import os
from dataclasses import dataclass

import numpy as np

from nccli import schema
from nccli.errors import DataError, OutputError, UsageError
from nccli.extract.config import MapPooling
from nccli.io import checks
from nccli.io.arrays import KeySpace, SourceArray, open_sources
from nccli.io.header import root_attributes
from nccli.io.validate import MAX_CLASSIFIER_BYTES, memory_budget
from nccli.io.writer import FeatureWriter, RowDataset, check_not_being_written, check_output_name, partial_path
from nccli.progress import progress_bar

BLOCK_BYTES = 16 * 2**20  # rows read at once: about this much of the widest source array
UNPOOLED = "none"


@dataclass(frozen=True)
class ConvertConfig:
    """What to convert. ``features``: ``KEY`` or ``KEY=LAYER`` per layer, in forward order (empty: the first
    of ``schema.CONVERT_FEATURES_KEYS`` present); ``labels``, ``weight``, ``bias``, ``logits``: keys (None: the
    usual names, if present); ``class_names``: a text file, one name per line; ``pool``: how (N, C, H, W…)
    feature maps become rows."""

    sources: tuple[str, ...]
    out: str
    features: tuple[str, ...] = ()
    labels: str | None = None
    weight: str | None = None
    bias: str | None = None
    classifier_layer: str | None = None
    logits: str | None = None
    class_names: str | None = None
    split: str = schema.DEFAULT_SPLIT
    epoch: int | None = None
    num_classes: int | None = None
    pool: MapPooling = MapPooling.AVG
    overwrite: bool = False
    show_progress: bool = False
    command: str | None = None

    def __post_init__(self):
        if isinstance(self.sources, str):
            object.__setattr__(self, "sources", (self.sources,))
        if self.pool not in {choice.value for choice in MapPooling}:
            raise UsageError(f"--pool must be one of {', '.join(MapPooling)}, got '{self.pool}'")
        object.__setattr__(self, "pool", MapPooling(self.pool))
        if not self.sources:
            raise UsageError("no SOURCE files given")
        if self.num_classes is not None and self.num_classes < 1:
            raise UsageError(f"--num-classes must be a positive integer, got {self.num_classes}")
        if not self.split:
            raise UsageError("--split must not be empty")


@dataclass(frozen=True)
class ConvertResult:
    out: str
    n_samples: int
    num_classes: int
    layers: tuple[str, ...]
    classifier_layer: str | None


@dataclass(frozen=True)
class _Layer:
    name: str
    array: SourceArray
    pooling: str
    width: int
    dtype: np.dtype  # as stored: the source's for (N, d) rows, float32 for pooled maps


@dataclass(frozen=True)
class _Plan:
    """Everything checked, nothing written yet."""

    labels: SourceArray
    layers: list[_Layer]
    logits: SourceArray | None
    classifier_layer: str | None
    classifier: dict[str, np.ndarray]  # /classifier datasets
    num_classes: int
    class_names: list[str] | None
    block_rows: int


def convert_features(config: ConvertConfig) -> ConvertResult:
    """Write ``config.out`` from the sources; refuse, before creating it, anything analyze would refuse."""
    _check_output(config)
    with contextlib.ExitStack() as stack:
        keys = open_sources(config.sources, stack)
        plan = _plan(keys, config)
        _write(plan, keys, config)
    layers = tuple(layer.name for layer in plan.layers)
    return ConvertResult(config.out, plan.labels.shape[0], plan.num_classes, layers, plan.classifier_layer)


def _plan(keys: KeySpace, config: ConvertConfig) -> _Plan:
    labels = keys.pick("--labels", config.labels, schema.CONVERT_LABELS_KEYS)
    checks.check_labels(labels.shape, labels.dtype, labels.where)
    layers = _plan_layers(keys, config, labels)
    weight = keys.optional("--weight", config.weight, schema.CONVERT_WEIGHT_KEYS)
    bias = keys.optional("--bias", config.bias, schema.CONVERT_BIAS_KEYS) if weight is not None else None
    logits = keys.optional("--logits", config.logits, schema.CONVERT_LOGITS_KEYS)
    streamed = [labels, *(layer.array for layer in layers), *([logits] if logits is not None else [])]
    widest = max(int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize for array in streamed)
    block_rows = max(1, BLOCK_BYTES // widest)
    num_classes = _num_classes(labels, weight, config, block_rows)
    classifier_layer, classifier = _classifier(weight, bias, config, layers, num_classes)
    if logits is not None:
        if logits.dtype.kind != "f" or len(logits.shape) != 2 or logits.shape[1] != num_classes:
            raise DataError(
                f"{logits.where}: logits must be float (N, {num_classes}), found shape {logits.shape} dtype "
                f"{logits.dtype}"
            )
        checks.check_rows(logits.shape, labels.shape[0], labels.where, logits.where)
    names = _class_names(config.class_names, num_classes)
    return _Plan(labels, layers, logits, classifier_layer, classifier, num_classes, names, block_rows)


def _write(plan: _Plan, keys: KeySpace, config: ConvertConfig) -> None:
    """The file, through ``FILE.partial``; deleted again if a row cannot be written (NaN, Ctrl-C, a full disk)."""
    datasets = [RowDataset(schema.LABELS, None, "int64")]
    for order, layer in enumerate(plan.layers):
        attrs = {
            schema.ATTR_ORDER: order,
            schema.ATTR_SAMPLE_SHAPE: np.array(layer.array.shape[1:], dtype=np.int64),
            schema.ATTR_POOLING: layer.pooling,
        }
        datasets.append(RowDataset(schema.layer_path(layer.name), layer.width, layer.dtype.str, attrs))
    if plan.logits is not None:
        datasets.append(RowDataset(schema.LOGITS, plan.num_classes, plan.logits.dtype.str))
    layer_attr = {schema.CLASSIFIER: {schema.ATTR_CLASSIFIER_LAYER: plan.classifier_layer}} if plan.classifier else {}
    options = {"convert": {"sources": list(config.sources), "keys": keys.used, "pool": str(config.pool)}}
    n = plan.labels.shape[0]
    attrs = _root_attrs(config, plan.num_classes, plan.class_names)
    parent = os.path.dirname(config.out)
    try:
        os.makedirs(parent or ".", exist_ok=True)  # as extract does: --out may name a new folder
    except OSError as error:
        raise OutputError(f"cannot create directory '{parent}': {error.strerror}") from None
    writer = FeatureWriter.create(
        config.out, n, datasets, attrs, options, fixed=plan.classifier, group_attrs=layer_attr
    )
    try:
        with progress_bar(config.show_progress, os.path.basename(config.out), n) as advance:
            _copy_rows(writer, plan, advance)
    except BaseException:
        writer.discard()
        raise
    writer.finish()


def _check_output(config: ConvertConfig) -> None:
    out, partial = config.out, partial_path(config.out)
    check_output_name(out)
    if os.path.isdir(out):
        raise OutputError(f"'{out}' is a directory; --out names the feature file to write")
    if any(_same_path(out, source) for source in config.sources):
        raise UsageError(f"--out '{out}' is also a SOURCE; write the feature file elsewhere")
    if os.path.exists(out) and not config.overwrite:
        raise OutputError(f"'{out}' already exists; pass --overwrite to replace it")
    if os.path.exists(partial):
        check_not_being_written(out)  # refuse at once, naming the process that is writing it
        if not config.overwrite:
            raise OutputError(f"'{partial}' is left from an interrupted write; pass --overwrite to replace it")
    parent = os.path.dirname(out) or "."
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise OutputError(f"cannot write '{out}': '{parent}' is not a directory")


def _same_path(a: str, b: str) -> bool:
    """The same file, through links and symlinked folders too (``b`` exists; ``a`` may not yet)."""
    try:
        return os.path.realpath(a) == os.path.realpath(b) or os.path.samefile(a, b)
    except OSError:
        return False


def _plan_layers(keys: KeySpace, config: ConvertConfig, labels: SourceArray) -> list[_Layer]:
    """Each ``--features KEY[=LAYER]`` checked; maps pooled per ``--pool``."""
    wanted = [spec.partition("=")[::2] for spec in config.features]
    if not wanted:
        wanted = [(keys.required_default("--features", schema.CONVERT_FEATURES_KEYS), "")]
    layers = []
    for key, name in wanted:
        array = keys.take("--features", key)
        name = name or key
        checks.check_layer_name(name, f"--features '{key}={name}'")
        if name in {layer.name for layer in layers}:
            raise UsageError(f"--features: layer name '{name}' is given twice")
        shape, dtype = array.shape, array.dtype
        if dtype.kind != "f" or len(shape) < 2:  # the checks below say what is wrong
            checks.check_features(shape, dtype, labels.shape[0], labels.where, array.where)
        if len(shape) == 2:
            pooling, width, stored = UNPOOLED, shape[1], dtype
        elif len(shape) == 3 and config.pool != MapPooling.FLATTEN:
            raise UsageError(
                f"{array.where}: has shape {shape}: (N, T, D) tokens or (N, C, L) maps are ambiguous to pool; "
                "pass --pool flatten, or pool them before saving"
            )
        elif 0 in shape[1:]:  # nothing to pool: averages of no values would read as NaN features
            raise DataError(f"{array.where}: has shape {shape}, with no values per sample to pool")
        else:
            pooling, stored = str(config.pool), np.dtype(np.float32)
            width = int(np.prod(shape[1:], dtype=np.int64)) if config.pool == MapPooling.FLATTEN else shape[1]
        checks.check_features((shape[0], width), stored, labels.shape[0], labels.where, array.where)
        layers.append(_Layer(name, array, pooling, int(width), stored))
    return layers


def _num_classes(labels: SourceArray, weight: SourceArray | None, config: ConvertConfig, block_rows: int) -> int:
    """--num-classes, else max(label) + 1 or the classifier's rows if more (as analyze infers it); labels in range."""
    low, high = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    for block in labels.blocks(block_rows):
        low, high = min(low, int(block.min())), max(high, int(block.max()))
    rows = weight.shape[0] if weight is not None and len(weight.shape) == 2 else 0
    num_classes = config.num_classes or max(high + 1, rows)
    error = checks.label_range_error(low, high, num_classes, labels.where)
    if error is not None:
        raise error
    return num_classes


def _classifier(weight, bias, config: ConvertConfig, layers: list[_Layer], num_classes: int) -> tuple[str | None, dict]:
    """The layer W consumes and the /classifier datasets, checked as analyze checks them; (None, {}) without W."""
    if weight is None:
        for option, value in (("--bias", config.bias), ("--classifier-layer", config.classifier_layer)):
            if value is not None:
                raise UsageError(f"{option} needs --weight (the classifier's weight matrix)")
        return None, {}
    if len(weight.shape) != 2:
        raise DataError(
            f"{weight.where}: the classifier weight must be 2-D (num_classes, d), found shape {weight.shape}"
        )
    widths = {layer.name: layer.width for layer in layers}
    name = checks.classifier_layer(widths, weight.shape[1], config.classifier_layer, "--classifier-layer")
    most = min(MAX_CLASSIFIER_BYTES, memory_budget()) // (8 * max(weight.shape[1], 1))
    if not 1 <= weight.shape[0] <= most:  # the bound analyze sets (io/validate.py), before W is read whole
        raise DataError(f"{weight.where}: the classifier weight has {weight.shape[0]} rows; expected 1 to {most}")
    fixed = {schema.CLASSIFIER_WEIGHT: weight.read()}
    if bias is not None and len(bias.shape) != 1:
        raise DataError(f"{bias.where}: the classifier bias must be 1-D (num_classes,), found shape {bias.shape}")
    if bias is not None:
        fixed[schema.CLASSIFIER_BIAS] = bias.read()
    checks.classifier(fixed[schema.CLASSIFIER_WEIGHT], fixed.get(schema.CLASSIFIER_BIAS), num_classes, weight.where)
    return name, fixed


def _class_names(path: str | None, num_classes: int) -> list[str] | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            names = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--class-names '{path}' cannot be read: {error}") from None
    while names and not names[-1].strip():
        names.pop()
    if len(names) != num_classes:
        raise UsageError(f"--class-names '{path}' has {len(names)} lines for {num_classes} classes (one name per line)")
    return names


def _root_attrs(config: ConvertConfig, num_classes: int, names: list[str] | None) -> dict:
    return root_attributes(
        num_classes,
        config.split,
        config.command or "nccli.convert_features (Python API)",
        config.epoch,
        names,
        **{schema.ATTR_SOURCES: json.dumps(list(config.sources))},
    )


def _copy_rows(writer: FeatureWriter, plan: _Plan, advance) -> None:
    """Every source's blocks in step; maps pooled, features and logits checked for NaN/Inf, rows handed to the
    writer."""
    if any(layer.pooling != UNPOOLED for layer in plan.layers):
        import torch  # only for maps: pool_rows is extract's, on tensors

        from nccli.extract.capture import pool_rows
    streams = {schema.LABELS: plan.labels.blocks(plan.block_rows)}
    streams.update({schema.layer_path(layer.name): layer.array.blocks(plan.block_rows) for layer in plan.layers})
    if plan.logits is not None:
        streams[schema.LOGITS] = plan.logits.blocks(plan.block_rows)
    start = 0
    for blocks in zip(*streams.values(), strict=True):
        arrays = dict(zip(streams, blocks))
        for layer in plan.layers:
            path = schema.layer_path(layer.name)
            if layer.pooling != UNPOOLED:
                arrays[path] = pool_rows(torch.from_numpy(np.array(arrays[path])), layer.pooling).numpy()
            bad = checks.first_nonfinite_row(arrays[path])
            if bad is not None:
                raise checks.nonfinite_error(start + bad, layer.array.where)
        if plan.logits is not None:  # extract refuses non-finite logits before writing them; so does convert
            bad = checks.first_nonfinite_row(arrays[schema.LOGITS])
            if bad is not None:
                raise DataError(f"{plan.logits.where}: non-finite logit (NaN or Inf) in row {start + bad}")
        writer.write(start, {path: np.ascontiguousarray(values) for path, values in arrays.items()})
        start += len(arrays[schema.LABELS])
        advance(len(arrays[schema.LABELS]))
