"""``list_layers``: every capturable layer of a model, from one probe batch, with the default picks marked."""

import torch

from nccli.extract.config import DEFAULT_INPUT_SIZE, ModelOptions
from nccli.extract.hooks import LayerCall, probe_model
from nccli.extract.models import load_model

PROBE_BATCH = 2


def list_layers(
    model: str, options: ModelOptions | None = None, input_size: tuple[int, ...] | None = None
) -> list[LayerCall]:
    """Layers in forward order, probed with random inputs of ``input_size`` (C, H, W).

    The default size is the weights' crop size when ``--weights`` is given, else 3×224×224.
    """
    loaded = load_model(model, options or ModelOptions())
    if input_size is None:
        crop = getattr(loaded.transforms, "crop_size", None)
        input_size = (3, crop[0], crop[0]) if crop else DEFAULT_INPUT_SIZE
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(PROBE_BATCH, *input_size, generator=generator)
    return list(probe_model(loaded.module, batch).layers)
