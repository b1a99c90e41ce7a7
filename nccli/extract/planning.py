"""What one model's feature file will hold, decided before any row: the class count, whether /logits and
/classifier fit it, the options ``--resume`` compares, and the datasets and attributes the file is created with.
"""

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from nccli import schema
from nccli.errors import DataError, ModelError, OutputError
from nccli.extract.config import ExtractConfig
from nccli.extract.datasets import ImageData
from nccli.extract.hooks import INPUT_MARK, LayerPlan, Probe
from nccli.extract.loaded import LoadedModel
from nccli.io.header import root_attributes
from nccli.io.validate import label_range_problem
from nccli.io.writer import FeatureWriter, RowDataset


@dataclass(frozen=True)
class Job:
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


def plan_job(
    loaded: LoadedModel, probe: Probe, plans: tuple[LayerPlan, ...], transform: str, data: ImageData, network: str
) -> Job:
    """num_classes, and whether /logits and /classifier fit it: the model's outputs must be the classes."""
    span = int(data.labels.max()) + 1
    outputs = probe.logits_width
    if data.num_classes is not None:
        problem = label_range_problem(int(data.labels.min()), span - 1, data.num_classes)
        if problem is not None:  # the rule analyze applies to the file (io/validate.py), refused before writing
            raise DataError(f"{data.description}: {problem}")
        num_classes = data.num_classes
    else:
        num_classes = max(span, outputs or 0)
    notes, classifier, layer = [], {}, None
    for plan in plans:
        if plan.model_name:
            notes.append(
                f"layer '{plan.model_name}' is stored as '{plan.name}': a layer name in the file cannot hold '/'"
            )
    logits = outputs == num_classes
    if logits and probe.classifier_note:
        notes.append(f"{probe.classifier_note}; /classifier is not written")
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
            weight = parameters["weight"].detach().float().cpu().numpy()
            classifier = {schema.CLASSIFIER_WEIGHT: weight.reshape(len(weight), -1)}  # a 1×1 convolution's: (out, in)
            if parameters.get("bias") is not None:
                classifier[schema.CLASSIFIER_BIAS] = parameters["bias"].detach().float().cpu().numpy()
    for values in classifier.values():
        if not np.isfinite(values).all():
            raise ModelError(
                f"the last linear layer '{probe.classifier}' holds a non-finite weight (NaN or Inf), which analyze "
                "refuses; check the checkpoint (did training diverge?)"
            )
    classifier_layer = layer if classifier else None
    return Job(loaded, plans, transform, num_classes, logits, classifier, classifier_layer, tuple(notes), network)


def extract_options(config: ExtractConfig, job: Job, data: ImageData, indices: np.ndarray) -> dict:
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


def create_file(
    target: str, config: ExtractConfig, job: Job, data: ImageData, rows: int, options: dict
) -> FeatureWriter:
    """A new ``target.partial`` with every dataset at full size and every attribute but the rows."""
    parent = os.path.dirname(target)
    if parent:
        try:
            os.makedirs(parent, exist_ok=True)  # torchrun: every rank creates the shards folder at once
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


def provenance_attributes(loaded: LoadedModel, dataset: str, transform: str) -> dict[str, str]:
    """The provenance attributes of a feature file of ``loaded``'s rows (``nccli measure``: its report's)."""
    return {
        schema.ATTR_MODEL: loaded.name,
        schema.ATTR_WEIGHTS: loaded.weights,
        schema.ATTR_CHECKPOINT: loaded.checkpoint,
        schema.ATTR_CHECKPOINT_SHA256: loaded.checkpoint_sha256,
        schema.ATTR_DATASET: dataset,
        schema.ATTR_TRANSFORM: transform,
        schema.ATTR_TORCH_VERSION: str(torch.__version__),
        schema.ATTR_MODEL_LIBRARY: loaded.library,
    }


def _root_attrs(config: ExtractConfig, job: Job, data: ImageData) -> dict:
    selection = (f"; {config.per_class} per class (seed {config.seed})" if config.per_class else "") + (
        f"; first {config.limit}" if config.limit else ""
    )
    loaded = job.loaded
    names = loaded.class_names or data.class_names
    attrs = root_attributes(
        job.num_classes,
        str(config.split),
        config.command or "nccli.extract_features (Python API)",
        loaded.epoch,
        names if names and len(names) == job.num_classes else None,
        **provenance_attributes(loaded, data.description + selection, job.transform),
    )
    if job.logits:  # a placeholder of the type finishing writes, so that it is rewritten in place (io.writer)
        attrs[schema.ATTR_LOGITS_ACCURACY] = np.nan
    if loaded.init_seed is not None:
        attrs[schema.ATTR_INIT_SEED] = loaded.init_seed

    return attrs
