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
``/skipped_index``. A file with logits records the top-1 accuracy of its
stored logits, counted from the partial file's rows just before it is
finished (:mod:`nccli.io.accuracy`).
"""

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from torch import nn

from nccli import schema
from nccli.errors import DataError, ModelError, OutputError, UsageError
from nccli.extract import distributed, loop
from nccli.extract.capture import FeatureCapture
from nccli.extract.config import ExtractConfig, is_token_data
from nccli.extract.datasets import ImageData, SampleBatches, open_data, select_indices
from nccli.extract.fingerprint import model_fingerprint
from nccli.extract.hooks import plan_layers, probe_model, select_layers
from nccli.extract.models import expand_model_args, load_model
from nccli.extract.planning import Job, create_file, extract_options, plan_job
from nccli.extract.results import ExtractResult, resumed_or_created, rows_kept_on_failure
from nccli.extract.token_runner import extract_tokens
from nccli.extract.transforms import build_transform
from nccli.io import shards
from nccli.io.accuracy import recorded_accuracy, top1_counts
from nccli.io.writer import FeatureWriter, already_complete, check_not_being_written, check_output_name, partial_path
from nccli.progress import progress_bar

PROBE_SAMPLES = 2
FEATURE_FILE_SUFFIX = ".h5"
MAX_SHOWN_SKIPPED = 5


def extract_features(config: ExtractConfig) -> list[ExtractResult]:
    """Write one feature file per model (``docs/feature-file.md``); returns what was written.

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
        if is_token_data(config.data):
            return [
                extract_tokens(source, target, config, session) for source, target in zip(sources, targets, strict=True)
            ]
        with session.rank0_first() if session and config.download else contextlib.nullcontext():
            own_scale = config.mean is not None and config.std is not None
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
    check_output_name(path)
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


def _extract_one(
    source: str,
    target: str,
    data: ImageData,
    indices: np.ndarray,
    config: ExtractConfig,
    session: distributed.Session | None = None,
) -> ExtractResult:
    started = time.perf_counter()
    prepared = prepare_job(source, data, indices, config)
    job = prepared.job
    options = extract_options(config, job, data, indices)
    result = ExtractResult(target, len(indices), tuple(p.name for p in job.plans), job.loaded.epoch, notes=job.notes)
    skipped_notes, skipped_rows = [], []

    complete = partial(already_complete, resume=config.resume)

    def write(path: str, rows: np.ndarray, wanted: dict) -> None:
        create = partial(create_file, path, config, job, data, len(rows), wanted)
        writer = resumed_or_created(path, wanted, config.resume, create)
        rest = SampleBatches(
            data, rows[writer.rows_written :], prepared.transform, prepared.image_shape, config.skip_unreadable
        )
        with rows_kept_on_failure(writer):
            _run(writer, rest, prepared, config)
            skipped = np.flatnonzero(writer.written(schema.SAMPLE_INDEX) < 0)
            if len(skipped) == len(rows):
                raise DataError(f"no selected sample of {data.description} could be read; nothing to write")
            keep = None
            if len(skipped):
                keep = np.ones(len(rows), dtype=bool)
                keep[skipped] = False
            attrs = {}
            if job.logits:  # from the rows as stored (float16, resumed), placeholders of --skip-unreadable left out
                correct, counted = top1_counts(writer.dataset(schema.LOGITS), writer.dataset(schema.LABELS), keep)
                attrs[schema.ATTR_LOGITS_ACCURACY] = correct / counted
        if len(skipped):
            writer.finish(keep, {schema.SKIPPED_INDEX: rows[skipped]}, attrs)
            shown = ", ".join(map(str, rows[skipped][:MAX_SHOWN_SKIPPED])) + (
                ", ..." if len(skipped) > MAX_SHOWN_SKIPPED else ""
            )
            skipped_notes.append(
                f"left out {len(skipped)} unreadable sample(s) ({shown}); /{schema.SKIPPED_INDEX} lists them"
            )
            skipped_rows.append(len(skipped))
        else:
            writer.finish(attrs=attrs)

    if not distributed.extract_file(session, target, indices, options, config.overwrite, complete, write):
        return replace(result, skipped=True, notes=("already complete",))
    reports = session is None or session.rank == 0  # under torchrun, rank 0 reports the index's
    return replace(
        result,
        rows=result.rows - sum(skipped_rows),
        seconds=time.perf_counter() - started,
        notes=result.notes + tuple(skipped_notes),
        logits_accuracy=recorded_accuracy(target) if reports and job.logits else None,
    )


@dataclass(frozen=True)
class PreparedJob:
    """A model ready to run over image DATA: its plan (:class:`~.planning.Job`), the preprocessing, the model on
    its device, and the shape every preprocessed image has (the probe's)."""

    job: Job
    transform: Callable
    model: nn.Module
    device: torch.device
    channels_last: bool
    image_shape: tuple[int, ...]


def prepare_job(
    source: str, data: ImageData, indices: np.ndarray, config: ExtractConfig, fingerprint: bool = True
) -> PreparedJob:
    """Load MODEL ``source``, build its preprocessing, probe the first samples and plan the layers, as extract
    does for a file and measure for its passes (``fingerprint``: hash the network for ``--resume``)."""
    loaded = load_model(source, config.model, config.epoch)
    network = model_fingerprint(loaded.module) if fingerprint else ""
    device = loop.resolve_device(config.device)
    transform = build_transform(
        data.channels, loaded.transforms, config.resize, config.mean, config.std, config.channels, config.normalize
    )
    model, channels_last = loop.place_model(loaded.module, device)
    probe_images = _probe_images(SampleBatches(data, indices, transform, None, config.skip_unreadable), data)
    with loop.autocast(device, config.precision):
        probe = probe_model(model, loop.to_device(probe_images, device, channels_last), loaded.layout)
    plans = plan_layers(probe, select_layers(probe, config.layers), config.pool, config.token_pool, config.max_dim)
    job = plan_job(loaded, probe, tuple(plans), repr(transform), data, network)
    return PreparedJob(job, transform, model, device, channels_last, tuple(probe_images.shape[1:]))


def _probe_images(batches: SampleBatches, data: ImageData) -> torch.Tensor:
    """The first PROBE_SAMPLES samples' images (under --skip-unreadable, the first readable ones)."""
    for start in range(0, len(batches), PROBE_SAMPLES):
        images = batches.__getitems__(list(range(start, min(start + PROBE_SAMPLES, len(batches)))))[0]
        if len(images):
            return images
    raise DataError(f"no selected sample of {data.description} could be read; nothing to write")


def _run(writer: FeatureWriter, rest: SampleBatches, prepared: PreparedJob, config) -> None:
    """Compute the remaining batches and hand them to a background writer; on any exit, write what was computed."""
    job, model, device, channels_last = prepared.job, prepared.model, prepared.device, prepared.channels_last
    loader = loop.make_loader(rest, config.batch_size, config.workers, device)

    def write(item) -> None:
        start, arrays, event = item
        if event is not None:
            event.synchronize()
        arrays = {path: tensor.numpy() for path, tensor in arrays.items()}
        loop.check_finite(arrays, config.precision, str(config.dtype))
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
                    try:
                        features, output = loop.run_batch(capture, images, device, config.precision, channels_last)
                        arrays = {schema.layer_path(name): rows for name, rows in features.items()}
                        if job.logits:
                            arrays[schema.LOGITS] = loop.logits_rows(output, len(images), job.num_classes)
                    except ModelError as error:  # the user's model failed on this batch: say which samples
                        found = indices[indices >= 0]
                        raise ModelError(f"samples {int(found[0])}–{int(found[-1])}: {error}") from None
                if len(images) < len(labels):  # samples left out by --skip-unreadable: placeholder rows
                    arrays = loop.with_placeholders(arrays, indices >= 0, widths, device)
                arrays, event = loop.to_host(arrays)
                arrays.update({schema.LABELS: labels, schema.SAMPLE_INDEX: indices})
                background.put((row, arrays, event))
                row += len(labels)
                advance(len(labels))
    finally:
        background.close()
