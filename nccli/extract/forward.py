"""A model run over DATA with no file: re-iterable batches of every chosen layer's rows, for ``nccli measure``.

The same model loading, data, preprocessing, probe, layer plan and classifier as ``nccli extract`` (images),
or the same language model and token windows (token DATA); each call of ``batches()`` runs the model over
the data once more, so analyze's two passes see the rows of two forward passes (which must agree: the
analysis refuses a second pass that gives other rows).
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from nccli import schema
from nccli.errors import DataError, printable
from nccli.extract import loop
from nccli.extract.capture import FeatureCapture
from nccli.extract.config import ExtractConfig, is_token_data
from nccli.extract.datasets import SampleBatches, open_data, select_indices
from nccli.extract.planning import provenance_attributes
from nccli.extract.runner import prepare_job
from nccli.extract.token_rows import token_batches
from nccli.extract.token_runner import TOKEN_TRANSFORM, prepare_tokens, windows_part
from nccli.io.shards import rank_part
from nccli.progress import progress_bar

Batches = Callable[[], Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]]


@dataclass(frozen=True)
class ForwardRows:
    """What a model gives over DATA: ``batches()`` (a new forward pass over all of it per call) of
    ``({layer: (B, d) rows}, labels)``, and what a feature file of them would say."""

    batches: Batches
    layers: tuple[str, ...]
    num_classes: int
    classifier: tuple[np.ndarray, np.ndarray | None] | None
    classifier_layer: str | None
    class_names: tuple[str, ...] | None
    model: str
    epoch: int | None
    provenance: dict[str, str]
    notes: tuple[str, ...]


def forward_rows(source: str, config: ExtractConfig, part: tuple[int, int] | None = None) -> ForwardRows:
    """Load MODEL ``source`` and DATA as ``nccli extract`` would, ready to run pass after pass; ``part`` =
    (rank, ranks): only this rank's contiguous part of the samples or token windows, as extract's shards."""
    if is_token_data(config.data):
        return _token_rows(source, config, part)
    return _image_rows(source, config, part)


def _mine(count: int, part: tuple[int, int] | None, unit: str) -> slice:
    """This rank's items of ``count`` for ``part`` = (rank, ranks), all of them without a part."""
    return slice(0, count) if part is None else rank_part(count, *part, unit)


def _image_rows(source: str, config: ExtractConfig, part: tuple[int, int] | None) -> ForwardRows:
    own_scale = config.mean is not None and config.std is not None
    data = open_data(config.data, config.root, config.split, config.download, own_scale)
    indices = select_indices(data.labels, config.per_class, config.limit, config.seed)
    indices = indices[_mine(len(indices), part, "samples")]
    prepared = prepare_job(source, data, indices, config, fingerprint=False)  # nothing to resume: no hash
    job = prepared.job

    def batches() -> Iterator:
        rows = SampleBatches(data, indices, prepared.transform, prepared.image_shape)
        loader = loop.make_loader(rows, config.batch_size, config.workers, prepared.device)
        with FeatureCapture(prepared.model, list(job.plans)) as capture, torch.inference_mode():
            with progress_bar(config.progress, "measure", len(indices), "images") as advance:
                for images, labels, _ in loop.batches(loader):
                    features, _ = loop.run_batch(
                        capture, images, prepared.device, config.precision, prepared.channels_last
                    )
                    yield features, labels
                    advance(len(labels))

    weight = job.classifier.get(schema.CLASSIFIER_WEIGHT)
    classifier = None if weight is None else (weight, job.classifier.get(schema.CLASSIFIER_BIAS))
    loaded = job.loaded
    names = loaded.class_names or data.class_names
    return ForwardRows(
        batches,
        tuple(plan.name for plan in job.plans),
        job.num_classes,
        classifier,
        job.classifier_layer,
        names if names and len(names) == job.num_classes else None,
        loaded.name,
        loaded.epoch,
        provenance_attributes(loaded, data.description, job.transform),
        job.notes,
    )


def _token_rows(source: str, config: ExtractConfig, part: tuple[int, int] | None) -> ForwardRows:
    model, windows, layers, device = prepare_tokens(source, config)
    mine = _mine(len(windows.lengths), part, "token windows")
    windows = windows_part(windows, mine.start, mine.stop)

    def batches() -> Iterator:
        with progress_bar(config.progress, "measure", windows.rows, "tokens") as advance:
            for batch in token_batches(model, windows, layers, config.batch_size, device, config.precision):
                yield batch.features, torch.from_numpy(batch.labels)
                advance(len(batch.labels))

    layer = model.classifier_layer(layers)
    names = model.class_names()
    if not windows.rows:
        raise DataError(f"{windows.description}: no token rows")
    return ForwardRows(
        batches,
        layers,
        model.vocabulary,
        model.classifier() if layer else None,
        layer,
        tuple(printable(name) for name in names) if names else None,
        model.loaded.name,
        model.loaded.epoch,
        provenance_attributes(model.loaded, windows.description, TOKEN_TRANSFORM),
        (),
    )
