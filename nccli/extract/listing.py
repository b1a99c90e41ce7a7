"""What can be extracted: ``list_models`` (the names of a zoo) and ``list_layers`` (every capturable layer of a
model, from one probe batch, with the default picks marked)."""

import fnmatch

import torch

from nccli.extract.config import DEFAULT_INPUT_SIZE, ModelOptions, Zoo
from nccli.extract.hf_models import hf_cached_names
from nccli.extract.hooks import LayerCall, probe_model
from nccli.extract.models import load_model
from nccli.extract.timm_models import PREFIX as TIMM_PREFIX
from nccli.extract.timm_models import timm_names

PROBE_BATCH = 2


def list_layers(
    model: str, options: ModelOptions | None = None, input_size: tuple[int, ...] | None = None
) -> list[LayerCall]:
    """Layers in forward order, probed with random inputs of ``input_size`` (C, H, W).

    The default size is the one the model's zoo gives (timm's input size, a Hugging Face image processor's), or
    the weights' crop size when ``--weights`` is given, else 3×224×224.
    """
    loaded = load_model(model, options or ModelOptions())
    if input_size is None:
        crop = getattr(loaded.transforms, "crop_size", None)
        input_size = loaded.input_size or ((3, crop[0], crop[0]) if crop else DEFAULT_INPUT_SIZE)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(PROBE_BATCH, *input_size, generator=generator)
    return list(probe_model(loaded.module, batch, loaded.layout).layers)


def list_models(zoo: Zoo | str, pattern: str = "*", pretrained: bool = False) -> list[str]:
    """MODEL names of ``zoo`` matching the glob ``pattern``, as `nccli extract` takes them: torchvision's
    classification models, timm's architectures (``pretrained``: its NAME.TAG weights), or the Hugging Face
    models in the local cache."""
    zoo = Zoo(zoo)
    if zoo == Zoo.TORCHVISION:
        from torchvision import models

        return sorted(fnmatch.filter(models.list_models(module=models), pattern))
    if zoo == Zoo.TIMM:
        return [TIMM_PREFIX + name for name in timm_names(pattern, pretrained)]
    return hf_cached_names(pattern)
