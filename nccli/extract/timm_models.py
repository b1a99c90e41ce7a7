"""Models from timm by name: ``timm:NAME`` (``timm:NAME.TAG`` names a pretrained tag), as ``--arch`` too.

Random weights by default, seeded as ``torch.manual_seed(S); timm.create_model(NAME)`` is. ``--weights``
is timm's pretrained weights (``DEFAULT``: the tag in NAME, or timm's default tag; or a TAG) read from the
local Hugging Face or torch hub cache (:func:`~.extras.cache_only`), or a checkpoint file whose state_dict
fits NAME. Only pretrained weights bring the model's own preprocessing (timm's data config); the classifier
is ``get_classifier()`` and the default layers are the stages timm's ``feature_info`` lists.
"""

import os

import torch
from torch import nn

from nccli.errors import ModelError, UsageError, first_line
from nccli.extract.checkpoints import read_checkpoint
from nccli.extract.config import ModelOptions
from nccli.extract.extras import cache_only, require, version_of
from nccli.extract.loaded import LoadedModel, ModelLayout
from nccli.extract.messages import did_you_mean
from nccli.extract.state_dicts import load_state_dict, strip_prefixes
from nccli.extract.transforms import zoo_transform

PREFIX = "timm:"
DEFAULT_WEIGHTS = "DEFAULT"


def timm_names(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """timm's architecture names matching ``pattern`` (with ``pretrained``: every NAME.TAG of cached-or-not
    pretrained weights)."""
    timm = require("timm", "a timm model")
    return timm.list_pretrained(pattern) if pretrained else timm.list_models(pattern)


def load_timm(name: str, options: ModelOptions, epoch: int | None) -> LoadedModel:
    """``timm:NAME`` built with random (seeded) weights, pretrained weights or a checkpoint's state_dict."""
    timm = require("timm", f"'{PREFIX}{name}'")
    arch, tag = _known_arch(timm, name)
    if options.arch:
        raise UsageError(f"--arch builds the network for a checkpoint; '{PREFIX}{name}' is already a timm model")
    checkpoint = options.weights if options.weights and os.path.isfile(options.weights) else None
    pretrained = bool(options.weights) and checkpoint is None
    if pretrained:
        tag = _pretrained_tag(timm, arch, tag, options.weights)
    full_name = f"{arch}.{tag}" if tag else arch
    if checkpoint is not None:
        return _from_checkpoint(timm, arch, full_name, checkpoint, options, epoch)
    kwargs = {} if options.num_classes is None else {"num_classes": options.num_classes}
    with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's random state
        torch.manual_seed(options.init_seed)
        module = _create(timm, full_name, pretrained, kwargs)
    transforms = _data_transform(timm, module) if pretrained else None
    return _loaded(
        module,
        f"{PREFIX}{arch}",
        weights=full_name if pretrained else "",
        epoch=epoch,
        transforms=transforms,
        class_names=_imagenet_names(timm, module) if pretrained else None,
        init_seed=None if pretrained else options.init_seed,
    )


def build_timm_arch(name: str, num_classes: int | None, state_dict: dict) -> nn.Module:
    """``--arch timm:NAME`` for a state_dict checkpoint: the architecture, sized like the checkpoint's head."""
    timm = require("timm", f"--arch '{PREFIX}{name}'")
    arch, _ = _known_arch(timm, name)
    classes = num_classes if num_classes is not None else _classes_in_state_dict(timm, arch, state_dict)
    return _create(timm, arch, False, {} if classes is None else {"num_classes": classes})


def _from_checkpoint(timm, arch: str, full_name: str, path: str, options: ModelOptions, epoch) -> LoadedModel:
    checkpoint = read_checkpoint(path, options.trust_checkpoint)
    if checkpoint.state_dict is None:
        raise ModelError(f"--weights '{path}' holds a whole model, not a state_dict for '{PREFIX}{arch}'")
    module = build_timm_arch(full_name, options.num_classes, checkpoint.state_dict)
    load_state_dict(module, checkpoint, f"'{PREFIX}{arch}'")
    found_epoch = epoch if epoch is not None else checkpoint.epoch
    return _loaded(
        module,
        f"{PREFIX}{arch}",
        checkpoint=os.path.abspath(path),
        checkpoint_sha256=checkpoint.sha256,
        epoch=found_epoch,
    )


def _loaded(module: nn.Module, name: str, **provenance) -> LoadedModel:
    size = module.pretrained_cfg.get("input_size") if hasattr(module, "pretrained_cfg") else None
    return LoadedModel(
        module,
        name,
        layout=_layout(module),
        input_size=tuple(size) if size else None,
        library=version_of("timm"),
        **provenance,
    )


def _known_arch(timm, name: str) -> tuple[str, str]:
    """``(arch, tag)`` of a timm name, or one line saying it is not one, with the closest timm names."""
    arch, tag = timm.models.split_model_name_tag(name)
    if not timm.is_model(arch):
        raise ModelError(f"'{name}' is not a timm model name{did_you_mean(arch, timm.list_models())}")
    return arch, tag


def _pretrained_tag(timm, arch: str, tag: str, requested: str) -> str:
    """The tag of the pretrained weights ``--weights`` asks for: DEFAULT is NAME's tag, else timm's default."""
    tags = [full.split(".", 1)[1] for full in timm.list_pretrained(f"{arch}.*")]
    if not tags:
        raise ModelError(f"timm has no pretrained weights for '{arch}'; leave out --weights for random weights")
    if requested != DEFAULT_WEIGHTS:
        if tag and requested != tag:
            raise UsageError(f"'{PREFIX}{arch}.{tag}' names the tag '{tag}' and --weights '{requested}' another")
        tag = requested
    if not tag:
        return timm.models.get_pretrained_cfg(arch).tag or tags[0]
    if tag not in tags:
        raise ModelError(
            f"'{tag}' is not a pretrained tag of timm's '{arch}'{did_you_mean(tag, tags)}; its tags: {', '.join(tags)}"
        )
    return tag


def _create(timm, name: str, pretrained: bool, kwargs: dict) -> nn.Module:
    try:
        with cache_only():
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as error:
        if not pretrained:
            raise ModelError(f"cannot build timm's '{name}': {type(error).__name__}: {first_line(error)}") from None
        raise ModelError(
            f"timm's pretrained weights '{name}' are not in {_cache_of(timm, name)} ({type(error).__name__}); copy "
            "them there from a machine that is online, or set HF_HUB_OFFLINE=0 to let nccli download them"
        ) from None


def _cache_of(timm, name: str) -> str:
    """Where timm looks for ``name``'s weights: the Hugging Face hub cache, or the torch hub's checkpoints."""
    config = timm.models.get_pretrained_cfg(name)
    if config is not None and config.hf_hub_id:
        from huggingface_hub import constants

        return f"the Hugging Face cache ('{constants.HF_HUB_CACHE}', repo '{config.hf_hub_id}')"
    url = config.url if config is not None else ""
    return f"the torch hub cache ('{os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(url))}')"


def _classes_in_state_dict(timm, arch: str, state_dict: dict) -> int | None:
    """The row count of the head's weight in the state_dict (the head named by timm's pretrained config)."""
    head = getattr(timm.models.get_pretrained_cfg(arch), "classifier", None)
    if not isinstance(head, str):
        return None
    with torch.device("meta"):
        expected = set(timm.create_model(arch).state_dict())
    weight = strip_prefixes(state_dict, expected).get(head + ".weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def _layout(module: nn.Module) -> ModelLayout:
    """The head ``get_classifier()`` returns (an nn.Linear or a 1×1 nn.Conv2d, as dla's and dpn's, or a wrapper
    holding exactly one nn.Linear, as timm's ``ClassifierHead``; else None) and the stages ``feature_info`` lists
    (the probe then checks that the head's output is the model's)."""
    names = {id(child): name for name, child in module.named_modules()}
    head = module.get_classifier() if hasattr(module, "get_classifier") else None
    if isinstance(head, nn.Module) and not isinstance(head, (nn.Linear, nn.Conv2d)):
        linears = [child for child in head.modules() if isinstance(child, nn.Linear)]
        head = linears[0] if len(linears) == 1 else None
    classifier = names.get(id(head)) if isinstance(head, (nn.Linear, nn.Conv2d)) else None
    stages = [info.get("module", "") for info in getattr(module, "feature_info", None) or []]
    return ModelLayout(classifier, tuple(stage for stage in stages if stage in set(names.values())))


def _data_transform(timm, module: nn.Module):
    """timm's evaluation preprocessing of the pretrained weights: resize to size/crop_pct, centre crop, normalise."""
    config = timm.data.resolve_model_data_config(module)
    _, height, width = config["input_size"]
    crop_pct = config.get("crop_pct") or 1.0
    mode = config.get("crop_mode", "center")
    if mode not in ("center", "squash"):
        raise ModelError(
            f"timm's crop_mode '{mode}' is not supported; give your own preprocessing with --mean/--std and --resize"
        )
    scale = (int(height / crop_pct), int(width / crop_pct))
    resize = scale if mode == "squash" or scale[0] != scale[1] else scale[0]
    return zoo_transform(resize, (height, width), config["interpolation"], config["mean"], config["std"])


def _imagenet_names(timm, module: nn.Module) -> tuple[str, ...] | None:
    """The class names of an ImageNet head (timm's bundled label descriptions), None for other heads."""
    subset = timm.data.infer_imagenet_subset(module)
    return tuple(timm.data.ImageNetInfo(subset).label_descriptions()) if subset else None
