"""``extract_features``: run each model over the data and stream its layers into one feature file.

For each model: load it, probe one batch to plan the layers, open (or resume)
``FILE.partial``, then compute batches while a background thread writes the
previous ones. Ctrl-C writes what was computed and keeps the partial file;
``--resume`` continues it when model, data and options are the same.
"""

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import torch

from nccli import __version__, schema
from nccli.errors import DataError, OutputError, UsageError
from nccli.extract import distributed, loop
from nccli.extract.config import ExtractConfig
from nccli.extract.datasets import ImageData, SampleBatches, open_data, select_indices
from nccli.extract.hooks import INPUT_MARK, FeatureCapture, LayerPlan, Probe, plan_layers, probe_model, select_layers
from nccli.extract.models import LoadedModel, expand_model_args, load_model
from nccli.extract.transforms import build_transform
from nccli.io import shards
from nccli.io.writer import FeatureWriter, RowDataset, check_not_being_written, partial_path, stored_options
from nccli.progress import progress_bar

PROBE_SAMPLES = 2
FEATURE_FILE_SUFFIX = ".h5"


@dataclass(frozen=True)
class ExtractResult:
    """One feature file: where, how many rows, which layers; ``skipped`` if it was already complete."""

    path: str
    rows: int
    layers: tuple[str, ...]
    epoch: int | None = None
    seconds: float = 0.0
    skipped: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


class ExtractionInterrupted(KeyboardInterrupt):
    """Ctrl-C during extraction: the rows computed so far are kept in a resumable partial file."""

    def __init__(self, partial: str, rows: int, total: int):
        self.partial, self.rows, self.total = partial, rows, total
        super().__init__(
            f"kept {rows} of {total} rows in '{partial}'; rerun the same command with --resume to continue"
        )


def extract_features(config: ExtractConfig) -> list[ExtractResult]:
    """Write one feature file per model (``feature-file.md``); returns what was written.

    Under torchrun, each process writes its shard and rank 0 an index over them (:mod:`.distributed`).
    """
    with distributed.session(config.device) as session:
        if session is not None:  # this rank's GPU; a progress bar on rank 0 only
            config = replace(config, device=session.device, progress=config.progress and session.rank == 0)
        sources = expand_model_args(config.models)
        if config.epoch is not None and len(sources) > 1:
            raise UsageError(
                "--epoch names the epoch of one checkpoint; with several, each file name or checkpoint gives its own"
            )
        targets = output_paths(sources, config.out)
        for target in targets:
            check_output(target, config, session.world if session else 1)
        with session.rank0_first() if session and config.download else contextlib.nullcontext():
            data = open_data(config.data, config.root, config.split, config.download)
        indices = select_indices(data.labels, config.per_class, config.limit, config.seed)
        return [
            _extract_one(source, target, data, indices, config, session)
            for source, target in zip(sources, targets, strict=True)
        ]


def output_paths(sources: list[str], out: str) -> list[str]:
    """``out`` itself for one model; ``out/<checkpoint name>.h5`` for several, or when ``out`` is a directory."""
    if len(sources) == 1 and not out.endswith(("/", os.sep)) and not os.path.isdir(out):
        return [out]
    names = [os.path.splitext(os.path.basename(source))[0] + FEATURE_FILE_SUFFIX for source in sources]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"several checkpoints would write the same file name ({', '.join(repeated)}) in '{out}'")
    return [os.path.join(out, name) for name in names]


def check_output(path: str, config: ExtractConfig, ranks: int = 1) -> None:
    """Refuse, before any work, to replace a file or a partial file the user did not say to replace
    (and shards of a run with another number of processes than ``ranks``)."""
    partial = partial_path(path)
    if os.path.isdir(path):
        raise OutputError(f"'{path}' is a directory; --out names the feature file to write")
    if os.path.exists(path) and not (config.overwrite or config.resume):
        raise OutputError(f"'{path}' already exists; pass --overwrite to replace it")
    if os.path.exists(partial):
        check_not_being_written(path)  # a partial file another extract is filling is not an interrupted one
    if os.path.exists(partial) and not (config.overwrite or config.resume):
        raise OutputError(
            f"'{partial}' holds an interrupted extraction; pass --resume to continue it or --overwrite to start over"
        )
    parent = os.path.dirname(path) or "."
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise OutputError(f"cannot write '{path}': '{parent}' is not a directory")
    shards.check_existing(path, ranks, config.resume, config.overwrite)


@dataclass(frozen=True)
class _Job:
    """One model's extraction, planned: what to capture and what the file will say."""

    loaded: LoadedModel
    plans: tuple[LayerPlan, ...]
    transform: str
    num_classes: int
    logits: bool
    classifier: dict[str, np.ndarray]  # /classifier datasets; empty when not written
    classifier_layer: str | None
    notes: tuple[str, ...]


def _extract_one(
    source: str,
    target: str,
    data: ImageData,
    indices: np.ndarray,
    config: ExtractConfig,
    session: distributed.Session | None = None,
) -> ExtractResult:
    started = time.perf_counter()
    loaded = load_model(source, config.model, config.epoch)
    device = loop.resolve_device(config.device)
    transform = build_transform(
        data.channels, loaded.transforms, config.resize, config.mean, config.std, config.channels
    )
    model, channels_last = loop.place_model(loaded.module, device)
    probe_rows = list(range(min(PROBE_SAMPLES, len(indices))))
    probe_images = SampleBatches(data, indices, transform).__getitems__(probe_rows)[0]
    with loop.autocast(device, config.precision):
        probe = probe_model(model, loop.to_device(probe_images, device, channels_last))
    plans = plan_layers(probe, select_layers(probe, config.layers), config.pool, config.token_pool, config.max_dim)
    job = _plan_job(loaded, probe, tuple(plans), repr(transform), data)
    options = _options(config, job, data, indices)
    result = ExtractResult(target, len(indices), tuple(p.name for p in plans), loaded.epoch, notes=job.notes)

    def complete(path: str, wanted: dict) -> bool:
        """``--resume`` skips a finished file written with the same options, and refuses one with others."""
        if not (config.resume and not os.path.exists(partial_path(path)) and os.path.exists(path)):
            return False
        if stored_options(path) != wanted:
            raise UsageError(f"'{path}' exists and was written with other options; pass --overwrite to replace it")
        return True

    def write(path: str, rows: np.ndarray, wanted: dict) -> None:
        if config.resume and os.path.exists(partial_path(path)):
            writer = FeatureWriter.resume(path, wanted)
        else:
            writer = _create(path, config, job, data, len(rows), wanted)
        rest = SampleBatches(data, rows[writer.rows_written :], transform)
        try:
            _run(writer, rest, model, job, device, channels_last, config)
        except BaseException as error:
            writer.close()
            if writer.rows_written == 0:
                writer.discard()  # nothing to keep, and nothing for the next run to trip over
                raise
            if isinstance(error, KeyboardInterrupt):
                raise ExtractionInterrupted(partial_path(path), writer.rows_written, len(rows)) from None
            raise
        writer.finish()

    if session is not None:
        written = distributed.extract_shards(session, target, indices, options, config.overwrite, complete, write)
    elif not complete(target, options):
        if config.overwrite:
            shards.remove_stale(target)  # shards of an earlier torchrun run would outlive the file they made
        write(target, indices, options)
        written = True
    else:
        written = False
    if not written:
        return replace(result, skipped=True, notes=("already complete",))
    return replace(result, seconds=time.perf_counter() - started)


def _plan_job(loaded: LoadedModel, probe: Probe, plans: tuple[LayerPlan, ...], transform: str, data: ImageData) -> _Job:
    """num_classes, and whether /logits and /classifier fit it: the model's outputs must be the classes."""
    span = int(data.labels.max()) + 1
    outputs = probe.logits_width
    if data.num_classes is not None:
        if span > data.num_classes:
            raise DataError(f"{data.description} has label {span - 1} but only {data.num_classes} classes")
        num_classes = data.num_classes
    else:
        num_classes = max(span, outputs or 0)
    notes, classifier, layer = [], {}, None
    logits = outputs == num_classes
    if outputs is not None and not logits:
        notes.append(
            f"the model has {outputs} outputs but the data {num_classes} classes; "
            "/logits and /classifier are not written"
        )
    if logits and probe.classifier is not None:
        parameters = dict(dict(loaded.module.named_modules())[probe.classifier].named_parameters(recurse=False))
        layer = next((plan.name for plan in plans if plan.pre_hook), None)
        if layer is None:
            notes.append(
                f"--layers leaves out the classifier input '{probe.classifier}{INPUT_MARK}'; /classifier is not written"
            )
        elif parameters["weight"].shape[0] != num_classes:
            notes.append(
                f"the last linear layer '{probe.classifier}' has {parameters['weight'].shape[0]} outputs, not the "
                f"{num_classes} classes; /classifier is not written"
            )
        else:
            classifier = {schema.CLASSIFIER_WEIGHT: parameters["weight"].detach().float().cpu().numpy()}
            if parameters.get("bias") is not None:
                classifier[schema.CLASSIFIER_BIAS] = parameters["bias"].detach().float().cpu().numpy()
    return _Job(loaded, plans, transform, num_classes, logits, classifier, layer if classifier else None, tuple(notes))


def _options(config: ExtractConfig, job: _Job, data: ImageData, indices: np.ndarray) -> dict:
    """Everything that decides the rows of the file: ``--resume`` continues only when these match."""
    options = {
        "model": job.loaded.name,
        "weights": job.loaded.weights,
        "checkpoint_sha256": job.loaded.checkpoint_sha256,
        "epoch": job.loaded.epoch,
        "dataset": data.description,
        "split": str(config.split),
        "samples": f"{len(indices)} rows, sha256 {hashlib.sha256(indices.tobytes()).hexdigest()}",
        "transform": job.transform,
        "layers": [[plan.name, plan.pooling] for plan in job.plans],
        "num_classes": job.num_classes,
        "logits": job.logits,
        "classifier": job.classifier_layer,
        "precision": str(config.precision),
        "dtype": str(config.dtype),
        "compression": str(config.compression),
    }
    return json.loads(json.dumps(options))


def _create(target: str, config: ExtractConfig, job: _Job, data: ImageData, rows: int, options: dict) -> FeatureWriter:
    parent = os.path.dirname(target)
    if parent and not os.path.isdir(parent):
        try:
            os.makedirs(parent)
        except OSError as error:
            raise OutputError(f"cannot create directory '{parent}': {error}") from None
    datasets = [RowDataset(schema.LABELS, None, "int64"), RowDataset(schema.SAMPLE_INDEX, None, "int64")]
    for plan in job.plans:
        attrs = {
            schema.ATTR_ORDER: plan.order,
            schema.ATTR_SAMPLE_SHAPE: np.array(plan.sample_shape, dtype=np.int64),
            schema.ATTR_POOLING: plan.pooling,
        }
        datasets.append(RowDataset(schema.layer_path(plan.name), plan.width, str(config.dtype), attrs))
    if job.logits:
        datasets.append(RowDataset(schema.LOGITS, job.num_classes, str(config.dtype)))
    group_attrs = {schema.CLASSIFIER: {schema.ATTR_CLASSIFIER_LAYER: job.classifier_layer}} if job.classifier else {}
    attrs = _root_attrs(config, job, data)
    return FeatureWriter.create(
        target, rows, datasets, attrs, options, str(config.compression), job.classifier, group_attrs
    )


def _root_attrs(config: ExtractConfig, job: _Job, data: ImageData) -> dict:
    selection = (f"; {config.per_class} per class (seed {config.seed})" if config.per_class else "") + (
        f"; first {config.limit}" if config.limit else ""
    )
    loaded = job.loaded
    attrs = {
        schema.ATTR_FORMAT: schema.FORMAT_NAME,
        schema.ATTR_FORMAT_VERSION: schema.FORMAT_VERSION,
        schema.ATTR_NUM_CLASSES: job.num_classes,
        schema.ATTR_SPLIT: str(config.split),
    }
    provenance = {
        schema.ATTR_MODEL: loaded.name,
        schema.ATTR_WEIGHTS: loaded.weights,
        schema.ATTR_CHECKPOINT: loaded.checkpoint,
        schema.ATTR_CHECKPOINT_SHA256: loaded.checkpoint_sha256,
        schema.ATTR_DATASET: data.description + selection,
        schema.ATTR_TRANSFORM: job.transform,
        schema.ATTR_COMMAND: config.command or "nccli.extract_features (Python API)",
        schema.ATTR_CREATED: datetime.now(UTC).isoformat(timespec="seconds"),
        schema.ATTR_NCCLI_VERSION: __version__,
        schema.ATTR_TORCH_VERSION: str(torch.__version__),
    }
    attrs.update(provenance)
    if loaded.epoch is not None:
        attrs[schema.ATTR_EPOCH] = loaded.epoch
    names = loaded.class_names or data.class_names
    if names and len(names) == job.num_classes:
        attrs[schema.ATTR_CLASS_NAMES] = np.array(names, dtype=object)
    return attrs


def _run(writer: FeatureWriter, rest: SampleBatches, model, job: _Job, device, channels_last: bool, config) -> None:
    """Compute the remaining batches and hand them to a background writer; on any exit, write what was computed."""
    loader = loop.make_loader(rest, config.batch_size, config.workers, device)

    def write(item) -> None:
        start, arrays, event = item
        if event is not None:
            event.synchronize()
        writer.write(start, {path: tensor.numpy() for path, tensor in arrays.items()})

    background = loop.BackgroundWriter(write)
    row = writer.rows_written
    try:
        with (
            FeatureCapture(model, list(job.plans)) as capture,
            torch.inference_mode(),
            progress_bar(config.progress, os.path.basename(writer.path), writer.rows, "images", row) as advance,
        ):
            for images, labels, indices in loop.batches(loader):
                features, output = loop.run_batch(capture, images, device, config.precision, channels_last)
                arrays = {schema.layer_path(name): rows for name, rows in features.items()}
                if job.logits:
                    arrays[schema.LOGITS] = output.float()
                arrays, event = loop.to_host(arrays)
                arrays.update({schema.LABELS: labels, schema.SAMPLE_INDEX: indices})
                background.put((row, arrays, event))
                row += len(labels)
                advance(len(labels))
    finally:
        background.close()
