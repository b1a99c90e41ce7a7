"""What a MODEL argument becomes: an ``nn.Module`` with the provenance written into the feature file."""

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelLayout:
    """What a model zoo says about a model's structure, where the probe would otherwise infer it.

    ``classifier``: the module name of the head whose weight is W (None: the model has no single linear head,
    so no /classifier is written); ``stages``: the module names of the default layers (besides the classifier's
    input and the logits).
    """

    classifier: str | None
    stages: tuple[str, ...]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run, with the provenance written into the feature file."""

    module: nn.Module
    name: str
    weights: str = ""
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    epoch: int | None = None
    transforms: Callable | None = None  # the weights' or the model's own preprocessing
    class_names: tuple[str, ...] | None = None
    init_seed: int | None = None  # the seed of a randomly initialised network; None when weights fill it
    layout: ModelLayout | None = None  # None: the probe infers the classifier and the default layers
    input_size: tuple[int, int, int] | None = None  # (C, H, W) the model expects, where its zoo says
    library: str = ""  # the zoo's package and version ("timm 1.0.31"), for zoos other than torchvision
