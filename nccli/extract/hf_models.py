"""Hugging Face image classifiers: a model folder (``config.json`` and weights, as ``save_pretrained`` writes it)
or ``hf:ORG/NAME`` from the local Hugging Face cache, through ``AutoModelForImageClassification``.

The preprocessing is the folder's image processor (its size, crop, mean and std), the classifier is the head's
last linear layer, the default layers are the encoder's blocks, and the class names come from ``id2label``.
A folder with ``config.json`` and no weights builds the network with random weights, seeded by ``--init-seed``.
Remote code never runs (``trust_remote_code`` stays off).
"""

import hashlib
import os
from dataclasses import dataclass

import torch
from torch import nn

from nccli.errors import ModelError, UsageError, first_line
from nccli.extract.checkpoints import digest_file
from nccli.extract.config import HF_CONFIG_FILE, HF_PREFIX, ModelOptions
from nccli.extract.extras import cache_only, require, version_of
from nccli.extract.loaded import LoadedModel, ModelLayout
from nccli.extract.transforms import zoo_transform

PREFIX = HF_PREFIX
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
DIGESTED_SUFFIXES = (".json", ".safetensors", ".bin")  # the files whose bytes decide the network and its inputs
RESAMPLING = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's codes, as image processors store them


def hf_cached_names(pattern: str = "*") -> list[str]:
    """``hf:ORG/NAME`` of every model repository in the local Hugging Face cache that matches ``pattern``."""
    import fnmatch

    require("transformers", "a Hugging Face model")
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        repos = scan_cache_dir().repos
    except CacheNotFound:
        return []
    return sorted(
        PREFIX + repo.repo_id
        for repo in repos
        if repo.repo_type == "model" and fnmatch.fnmatchcase(repo.repo_id, pattern)
    )


@dataclass(frozen=True)
class HubModel:
    """A Hugging Face model built from a folder, with what the feature file records of it."""

    module: nn.Module
    folder: str
    config: object
    provenance: dict  # LoadedModel's name, weights, checkpoint, checkpoint_sha256, init_seed and library


def build_hugging_face(source: str, options: ModelOptions, auto_class: str, kind: str) -> HubModel:
    """The ``transformers.<auto_class>`` model of a folder or ``hf:ORG/NAME``; ``kind`` names what it must be."""
    transformers = require("transformers", f"the Hugging Face model '{source}'")
    for option, value in (
        ("--weights", options.weights),
        ("--arch", options.arch),
        ("--num-classes", options.num_classes),
    ):
        if value is not None:
            raise UsageError(f"{option} is not for a Hugging Face model: '{source}' holds its network and weights")
    folder, name, weights = hub_folder(source)
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"'{source}' is not a readable Hugging Face model: {first_line(error)}") from None
    has_weights = any(entry.endswith(WEIGHT_SUFFIXES) for entry in os.listdir(folder))
    auto = getattr(transformers, auto_class)
    try:
        if has_weights:
            module = auto.from_pretrained(folder, local_files_only=True)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(options.init_seed)
                module = auto.from_config(config)
    except ValueError as error:
        model_type = getattr(config, "model_type", "?")
        raise ModelError(
            f"'{source}' is a '{model_type}' model, not {kind} that {auto_class} builds ({first_line(error)})"
        ) from None
    except (OSError, RuntimeError) as error:
        raise ModelError(f"cannot load the Hugging Face model '{source}': {first_line(error)}") from None
    provenance = {
        "name": name or type(module).__name__,
        "weights": weights,
        "checkpoint": "" if name else os.path.abspath(folder),
        "checkpoint_sha256": folder_sha256(folder),
        "init_seed": None if has_weights else options.init_seed,
        "library": version_of("transformers"),
    }
    return HubModel(module, folder, config, provenance)


def load_hf(source: str, options: ModelOptions, epoch: int | None) -> LoadedModel:
    """A Hugging Face image classifier from a folder or ``hf:ORG/NAME`` (the local cache only)."""
    hub = build_hugging_face(source, options, "AutoModelForImageClassification", "an image classifier")
    transformers = require("transformers", f"the Hugging Face model '{source}'")
    processor = _image_processor(transformers, hub.folder)
    return LoadedModel(
        hub.module,
        epoch=epoch,
        transforms=_processor_transform(processor, source) if processor is not None else None,
        class_names=_class_names(hub.config),
        layout=_layout(hub.module),
        input_size=_input_size(processor, hub.config),
        **hub.provenance,
    )


def folder_sha256(folder: str) -> str:
    """One digest of the folder's config, processor and weight files (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if entry.endswith(DIGESTED_SUFFIXES) and os.path.isfile(path):
            digest.update(entry.encode() + b"\0")
            digest_file(digest, path)
    return digest.hexdigest()


def hub_folder(source: str) -> tuple[str, str, str]:
    """(local folder, the ``hf:`` name or "", the cached snapshot's revision or "") of a MODEL argument."""
    if not source.startswith(PREFIX):
        return source, "", ""
    repo = source[len(PREFIX) :]
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise UsageError(f"'{source}' is not a Hugging Face model id; write hf:ORG/NAME")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        with cache_only():
            folder = snapshot_download(repo, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        raise ModelError(
            f"'{repo}' is not in the local Hugging Face cache ('{constants.HF_HUB_CACHE}'); download it on a "
            "machine that is online (e.g. `hf download ORG/NAME`) and copy the cache, or pass the model's folder"
        ) from None
    if not os.path.isfile(os.path.join(folder, HF_CONFIG_FILE)):
        raise ModelError(f"the cached '{repo}' has no {HF_CONFIG_FILE}, so it is not a Hugging Face model")
    return folder, source, f"{source}@{os.path.basename(folder)}"


def _image_processor(transformers, folder: str):
    try:
        return transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError):
        return None  # no preprocessor_config.json: the user says how to normalise


def _processor_transform(processor, source: str):
    """The image processor's resize, crop, rescale and normalisation, as one tensor pipeline."""
    if (
        not getattr(processor, "do_rescale", True)
        or abs(getattr(processor, "rescale_factor", 1 / 255) * 255 - 1) > 1e-6
    ):
        raise ModelError(
            f"the image processor of '{source}' does not scale pixels by 1/255, which nccli cannot follow; give your "
            "own preprocessing with --mean/--std or --normalize"
        )
    resize = None
    if getattr(processor, "do_resize", False):
        size = dict(processor.size)
        resize = size.get("shortest_edge") or (size.get("height"), size.get("width"))
        if resize == (None, None):
            raise ModelError(f"the image processor of '{source}' resizes by {size}, which nccli cannot follow")
    crop = None
    if getattr(processor, "do_center_crop", False) and processor.crop_size:
        crop = (dict(processor.crop_size)["height"], dict(processor.crop_size)["width"])
    resample = RESAMPLING.get(int(getattr(processor, "resample", 2)), f"PIL resampling {processor.resample}")
    normalize = getattr(processor, "do_normalize", False)
    mean = tuple(processor.image_mean) if normalize else None
    std = tuple(processor.image_std) if normalize else None
    return zoo_transform(resize, crop, resample, mean, std)


def _input_size(processor, config) -> tuple[int, int, int] | None:
    channels = getattr(config, "num_channels", 3)
    crop = dict(processor.crop_size) if processor is not None and getattr(processor, "do_center_crop", False) else {}
    size = dict(processor.size) if processor is not None else {}
    height = crop.get("height") or size.get("height") or size.get("shortest_edge")
    width = crop.get("width") or size.get("width") or size.get("shortest_edge")
    if height and width:
        return channels, height, width
    side = getattr(config, "image_size", None)
    return (channels, side, side) if isinstance(side, int) else None


def _class_names(config) -> tuple[str, ...] | None:
    labels = getattr(config, "id2label", None) or {}
    names = [labels.get(index, labels.get(str(index))) for index in range(len(labels))]
    if not names or None in names or names == [f"LABEL_{index}" for index in range(len(names))]:
        return None  # no names, or transformers' placeholders
    return tuple(str(name) for name in names)


def _layout(module: nn.Module) -> ModelLayout:
    """The head's last linear layer, and the blocks of the shallowest ModuleList in the base model."""
    base = getattr(module, "base_model_prefix", "")
    named = list(module.named_modules())
    heads = [name for name, child in named if isinstance(child, nn.Linear) and not name.startswith(base + ".")]
    lists = [(name.count("."), name, child) for name, child in named if name.startswith(base + ".")]
    lists = [item for item in lists if isinstance(item[2], nn.ModuleList)]
    stages: tuple[str, ...] = ()
    if lists:
        _, name, blocks = min(lists, key=lambda item: (item[0], -len(item[2])))
        stages = tuple(f"{name}.{index}" for index in range(len(blocks)))
    return ModelLayout(heads[-1] if heads else None, stages)
