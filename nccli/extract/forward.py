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
from nccli.extract.hooks import plan_layers, probe_model, select_layers
from nccli.extract.models import load_model
from nccli.extract.planning import plan_job
from nccli.extract.token_rows import token_batches
from nccli.extract.token_runner import prepare_tokens
from nccli.extract.transforms import build_transform
from nccli.progress import progress_bar

PROBE_SAMPLES = 2
Batches = Callable[[], Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]]


@dataclass(frozen=True)
class ForwardRows:
    """What a model gives over DATA: ``batches()`` (a new forward pass over all of it per call) of
    ``({layer: (B, d) rows}, labels)``, and what a feature file of them would say."""

    batches: Batches
    layers: tuple[str, ...]
    rows: int
    num_classes: int
    classifier: tuple[np.ndarray, np.ndarray | None] | None
    classifier_layer: str | None
    class_names: tuple[str, ...] | None
    model: str
    epoch: int | None
    dataset: str
    provenance: dict[str, str]
    notes: tuple[str, ...]


def forward_rows(source: str, config: ExtractConfig) -> ForwardRows:
    """Load MODEL ``source`` and DATA as ``nccli extract`` would, ready to run pass after pass."""
    if is_token_data(config.data):
        return _token_rows(source, config)
    return _image_rows(source, config)


def _image_rows(source: str, config: ExtractConfig) -> ForwardRows:
    loaded = load_model(source, config.model, config.epoch)
    device = loop.resolve_device(config.device)
    own_scale = config.mean is not None and config.std is not None
    data = open_data(config.data, config.root, config.split, config.download, own_scale)
    indices = select_indices(data.labels, config.per_class, config.limit, config.seed)
    transform = build_transform(
        data.channels, loaded.transforms, config.resize, config.mean, config.std, config.channels, config.normalize
    )
    model, channels_last = loop.place_model(loaded.module, device)
    probe_batch = SampleBatches(data, indices, transform).__getitems__(list(range(min(PROBE_SAMPLES, len(indices)))))
    images = probe_batch[0]
    with loop.autocast(device, config.precision):
        probe = probe_model(model, loop.to_device(images, device, channels_last), loaded.layout)
    plans = plan_layers(probe, select_layers(probe, config.layers), config.pool, config.token_pool, config.max_dim)
    job = plan_job(loaded, probe, tuple(plans), repr(transform), data, "")
    expected = tuple(images.shape[1:])

    def batches() -> Iterator:
        loader = loop.make_loader(
            SampleBatches(data, indices, transform, expected), config.batch_size, config.workers, device
        )
        with FeatureCapture(model, list(plans)) as capture, torch.inference_mode():
            with progress_bar(config.progress, "measure", len(indices), "images") as advance:
                for images, labels, _ in loop.batches(loader):
                    features, _ = loop.run_batch(capture, images, device, config.precision, channels_last)
                    yield features, labels
                    advance(len(labels))

    weight = job.classifier.get(schema.CLASSIFIER_WEIGHT)
    classifier = None if weight is None else (weight, job.classifier.get(schema.CLASSIFIER_BIAS))
    names = loaded.class_names or data.class_names
    return ForwardRows(
        batches,
        tuple(plan.name for plan in plans),
        len(indices),
        job.num_classes,
        classifier,
        job.classifier_layer,
        names if names and len(names) == job.num_classes else None,
        loaded.name,
        loaded.epoch,
        data.description,
        _provenance(loaded, data.description, repr(transform)),
        job.notes,
    )


def _token_rows(source: str, config: ExtractConfig) -> ForwardRows:
    model, windows, layers, device = prepare_tokens(source, config)
    weight, bias = model.classifier()

    def batches() -> Iterator:
        with progress_bar(config.progress, "measure", windows.rows, "tokens") as advance:
            for batch in token_batches(model, windows, layers, config.batch_size, device, config.precision):
                yield batch.features, torch.from_numpy(batch.labels)
                advance(len(batch.labels))

    layer = model.final_norm if model.final_norm in layers else None
    classifier = (weight.float().cpu().numpy(), None if bias is None else bias.float().cpu().numpy())
    names = model.class_names()
    if not windows.rows:
        raise DataError(f"{windows.description}: no token rows")
    return ForwardRows(
        batches,
        layers,
        windows.rows,
        model.vocabulary,
        classifier if layer else None,
        layer,
        tuple(printable(name) for name in names) if names else None,
        model.loaded.name,
        model.loaded.epoch,
        windows.description,
        _provenance(model.loaded, windows.description, "token ids (rows: positions; labels: the next token)"),
        (),
    )


def _provenance(loaded, dataset: str, transform: str) -> dict[str, str]:
    """The provenance attributes a feature file of these rows would hold (the report's metadata)."""
    return {
        "model": loaded.name,
        "weights": loaded.weights,
        "checkpoint": loaded.checkpoint,
        "checkpoint_sha256": loaded.checkpoint_sha256,
        "dataset": dataset,
        "transform": transform,
        "torch_version": str(torch.__version__),
        "model_library": loaded.library,
    }
