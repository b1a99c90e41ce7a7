"""``extract_features``: run each model over the data and stream its layers into one feature file.

For each model: load it, probe one batch to plan the layers, open (or resume)
``FILE.partial``, then compute batches while a background thread writes the
previous ones. Ctrl-C writes what was computed and keeps the partial file;
``--resume`` continues it when model, data and options are the same, the
model down to the hash of its weights (:mod:`.fingerprint`).

What analyze would refuse is refused before it is written: a non-finite
feature or logit stops the run at its batch, naming the layer and the sample.
A failure of the user's model or data after rows were written says which
partial file keeps them. Under ``--skip-unreadable`` a sample that cannot be
decoded gets a placeholder row (zeros, ``sample_index`` -1) in the partial
file, so positions and ``rows_written`` stay aligned for ``--resume``; the
finished file leaves those rows out and lists the samples in
``/skipped_index``.
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
from nccli.errors import DataError, ModelError, OutputError, UsageError
from nccli.extract import distributed, loop
from nccli.extract.config import ExtractConfig, Precision
from nccli.extract.datasets import ImageData, SampleBatches, open_data, select_indices
from nccli.extract.fingerprint import model_fingerprint, refuse_other_network
from nccli.extract.hooks import INPUT_MARK, FeatureCapture, LayerPlan, Probe, plan_layers, probe_model, select_layers
from nccli.extract.models import LoadedModel, expand_model_args, load_model
from nccli.extract.transforms import build_transform
from nccli.io import shards
from nccli.io.writer import FeatureWriter, RowDataset, check_not_being_written, partial_path, stored_options
from nccli.progress import progress_bar

PROBE_SAMPLES = 2
FEATURE_FILE_SUFFIX = ".h5"
MAX_SHOWN_SKIPPED = 5


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
            own_scale = config.mean is not None and config.std is not None and not config.model.weights
            data = open_data(config.data, config.root, config.split, config.download, own_scale)
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
    network: str  # model_fingerprint of the loaded model


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
    network = model_fingerprint(loaded.module)
    device = loop.resolve_device(config.device)
    transform = build_transform(
        data.channels, loaded.transforms, config.resize, config.mean, config.std, config.channels
    )
    model, channels_last = loop.place_model(loaded.module, device)
    probe_images = _probe_images(SampleBatches(data, indices, transform, None, config.skip_unreadable), data)
    with loop.autocast(device, config.precision):
        probe = probe_model(model, loop.to_device(probe_images, device, channels_last))
    plans = plan_layers(probe, select_layers(probe, config.layers), config.pool, config.token_pool, config.max_dim)
    job = _plan_job(loaded, probe, tuple(plans), repr(transform), data, network)
    options = _options(config, job, data, indices)
    result = ExtractResult(target, len(indices), tuple(p.name for p in plans), loaded.epoch, notes=job.notes)
    skipped_notes: list[str] = []

    def complete(path: str, wanted: dict) -> bool:
        """``--resume`` skips a finished file written with the same options, and refuses one with others."""
        if not (config.resume and not os.path.exists(partial_path(path)) and os.path.exists(path)):
            return False
        if stored_options(path) != wanted:
            raise UsageError(f"'{path}' exists and was written with other options; pass --overwrite to replace it")
        return True

    def write(path: str, rows: np.ndarray, wanted: dict) -> None:
        partial = partial_path(path)
        if config.resume and os.path.exists(partial):
            refuse_other_network(partial, stored_options(partial), wanted)
            writer = FeatureWriter.resume(path, wanted)
        else:
            writer = _create(path, config, job, data, len(rows), wanted)
        rest = SampleBatches(
            data, rows[writer.rows_written :], transform, tuple(probe_images.shape[1:]), config.skip_unreadable
        )
        try:
            _run(writer, rest, model, job, device, channels_last, config)
            skipped = np.flatnonzero(writer.written(schema.SAMPLE_INDEX) < 0)
            if len(skipped) == len(rows):
                raise DataError(f"no selected sample of {data.description} could be read; nothing to write")
        except BaseException as error:
            writer.close()
            if writer.rows_written == 0:
                writer.discard()  # nothing to keep, and nothing for the next run to trip over
                raise
            if isinstance(error, KeyboardInterrupt):
                raise ExtractionInterrupted(partial, writer.rows_written, len(rows)) from None
            if isinstance(error, (DataError, ModelError)):  # the user's data or model: say what is kept
                kept = f"'{partial}' keeps the first {writer.rows_written} of {len(rows)} rows: rerun with --resume"
                raise type(error)(f"{error}; {kept} once it is fixed") from None
            raise
        if len(skipped):
            keep = np.ones(len(rows), dtype=bool)
            keep[skipped] = False
            writer.finish(keep, {schema.SKIPPED_INDEX: rows[skipped]})
            shown = ", ".join(map(str, rows[skipped][:MAX_SHOWN_SKIPPED])) + (
                ", ..." if len(skipped) > MAX_SHOWN_SKIPPED else ""
            )
            skipped_notes.append(
                f"left out {len(skipped)} unreadable sample(s) ({shown}); /{schema.SKIPPED_INDEX} lists them"
            )
        else:
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
    return replace(result, seconds=time.perf_counter() - started, notes=result.notes + tuple(skipped_notes))


def _probe_images(batches: SampleBatches, data: ImageData) -> torch.Tensor:
    """The first PROBE_SAMPLES samples' images (under --skip-unreadable, the first readable ones)."""
    for start in range(0, len(batches), PROBE_SAMPLES):
        images = batches.__getitems__(list(range(start, min(start + PROBE_SAMPLES, len(batches)))))[0]
        if len(images):
            return images
    raise DataError(f"no selected sample of {data.description} could be read; nothing to write")


def _plan_job(
    loaded: LoadedModel, probe: Probe, plans: tuple[LayerPlan, ...], transform: str, data: ImageData, network: str
) -> _Job:
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
    for plan in plans:
        if plan.model_name:
            notes.append(f"layer '{plan.model_name}' is stored as '{plan.name}': a layer name in the file cannot hold '/'")
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
    for values in classifier.values():
        if not np.isfinite(values).all():
            raise ModelError(
                f"the last linear layer '{probe.classifier}' holds a non-finite weight (NaN or Inf), which analyze "
                "refuses; check the checkpoint (did training diverge?)"
            )
    classifier_layer = layer if classifier else None
    return _Job(loaded, plans, transform, num_classes, logits, classifier, classifier_layer, tuple(notes), network)


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
        "init_seed": job.loaded.init_seed,
        schema.EXTRACT_OPTION_NETWORK: job.network,
    }  # not --skip-unreadable: rows of readable samples are the same with it or without
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
    if loaded.init_seed is not None:
        attrs[schema.ATTR_INIT_SEED] = loaded.init_seed
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
        arrays = {path: tensor.numpy() for path, tensor in arrays.items()}
        _check_finite(arrays, config.precision)
        writer.write(start, arrays)

    background = loop.BackgroundWriter(write)
    row = writer.rows_written
    widths = {schema.layer_path(plan.name): plan.width for plan in job.plans}
    if job.logits:
        widths[schema.LOGITS] = job.num_classes
    try:
        with (
            FeatureCapture(model, list(job.plans)) as capture,
            torch.inference_mode(),
            progress_bar(config.progress, os.path.basename(writer.path), writer.rows, "images", row) as advance,
        ):
            for images, labels, indices in loop.batches(loader):
                arrays = {}
                if len(images):
                    features, output = loop.run_batch(capture, images, device, config.precision, channels_last)
                    arrays = {schema.layer_path(name): rows for name, rows in features.items()}
                    if job.logits:
                        arrays[schema.LOGITS] = _logits(output, len(images), job.num_classes)
                if len(images) < len(labels):  # samples left out by --skip-unreadable: placeholder rows
                    arrays = _with_placeholders(arrays, indices >= 0, widths, device)
                arrays, event = loop.to_host(arrays)
                arrays.update({schema.LABELS: labels, schema.SAMPLE_INDEX: indices})
                background.put((row, arrays, event))
                row += len(labels)
                advance(len(labels))
    finally:
        background.close()


def _logits(output: torch.Tensor | None, batch: int, classes: int) -> torch.Tensor:
    """The model's output as /logits rows: one row of ``classes`` values per image, as in the probe."""
    if output is None or tuple(output.shape) != (batch, classes):
        found = "no tensor" if output is None else f"shape {list(output.shape)}"
        raise ModelError(
            f"the model gave {found} for a batch of {batch} images, not [{batch}, {classes}] as in the probe batch "
            "(a forward pass that depends on the data?)"
        )
    return output.float()


def _with_placeholders(arrays: dict, kept: torch.Tensor, widths: dict[str, int], device) -> dict:
    """Each row dataset's rows at their batch positions, zeros where a sample was left out."""
    kept = kept.to(device)
    full = {}
    for path, width in widths.items():
        rows = torch.zeros((len(kept), width), dtype=torch.float32, device=device)
        if path in arrays:
            rows[kept] = arrays[path]
        full[path] = rows
    return full


def _check_finite(arrays: dict[str, np.ndarray], precision: Precision) -> None:
    """Refuse a batch with a NaN or Inf feature or logit (analyze refuses such files), before it is written."""
    for path, values in arrays.items():
        if values.dtype.kind != "f" or np.isfinite(values).all():
            continue
        row = int(np.flatnonzero(~np.isfinite(values).reshape(len(values), -1).all(axis=1))[0])
        what = "the model's output" if path == schema.LOGITS else f"layer '{path.removeprefix(schema.LAYERS + '/')}'"
        hint = "; fp16 overflows above 65504: try --precision bf16 or fp32" if precision == Precision.FP16 else ""
        raise ModelError(
            f"{what} is not finite (NaN or Inf) for sample {int(arrays[schema.SAMPLE_INDEX][row])}, and analyze "
            f"refuses non-finite features; check the model and its input{hint}"
        )
