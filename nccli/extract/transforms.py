"""Image preprocessing: one tensor pipeline for single images (C, H, W) and whole batches (B, C, H, W).

Without ``--weights``: uint8 → float in [0, 1] (floats are taken as already
in [0, 1]; array files whose float pixels fall outside are refused, unless
``--mean`` and ``--std`` give their own scale: :mod:`.datasets`), optional
``--resize N`` (shorter side to N, then centre crop N × N), then
normalisation by ``--mean``/``--std``, by ImageNet's statistics
(``--normalize imagenet``, averaged for 1-channel images), or none
(``--normalize none``). Nothing is assumed:
:class:`~nccli.extract.config.ExtractConfig` refuses a run that says none of
these (a wrong guess gives plausible, wrong features). With ``--weights`` (or
a Hugging Face model's image processor) the model's own preprocessing is
used instead, unless ``--mean``/``--std`` or ``--normalize`` is given: then
the model sees exactly those pixels. The pipeline's ``repr`` is the file's
``transform`` attribute, so it shows the normalisation used (no
``Normalize`` step: none).
"""

from collections.abc import Callable

import torch
from torchvision import transforms as T
from torchvision.transforms import functional as F

from nccli.errors import DataError, UsageError
from nccli.extract.config import IMAGENET_MEAN, IMAGENET_STD, Normalization


class ToChannels:
    """Convert images to ``channels`` channels: grey → RGB by repetition, RGB(A) → grey by luminance."""

    def __init__(self, channels: int):
        self.channels = channels

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        have = images.shape[-3]
        if have == self.channels:
            return images
        if have == 1 and self.channels == 3:
            return images.expand(*images.shape[:-3], 3, *images.shape[-2:])
        if have in (3, 4) and self.channels == 1:
            return F.rgb_to_grayscale(images[..., :3, :, :])
        if have == 4 and self.channels == 3:
            return images[..., :3, :, :]
        raise DataError(f"cannot convert {have}-channel images to {self.channels} channels")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels})"


def build_transform(
    channels: int,
    weights_transform: Callable | None = None,
    resize: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    convert_to: int | None = None,
    normalize: Normalization | None = None,
) -> T.Compose:
    """The pipeline for uint8 or float image tensors that have ``channels`` channels as stored.

    ``mean`` and ``std`` (both) or ``normalize`` say how to normalise; without them, the model's own
    ``weights_transform``, and without that, nothing is guessed.
    """
    steps: list[Callable] = [ToChannels(convert_to)] if convert_to and convert_to != channels else []
    channels = convert_to or channels
    own = (mean is not None and std is not None) or normalize is not None
    if weights_transform is not None and not own:
        if resize:
            raise UsageError(
                "--resize is for your own preprocessing; the model's own resizes the images (pass --mean/--std "
                "or --normalize too to replace it)"
            )
        return T.Compose([*steps, weights_transform])
    steps.append(T.ConvertImageDtype(torch.float32))
    if resize:
        steps += [T.Resize(resize, antialias=True), T.CenterCrop(resize)]
    if mean is not None and std is not None:
        steps.append(T.Normalize(_per_channel("--mean", mean, channels), _per_channel("--std", std, channels)))
    elif normalize == Normalization.IMAGENET:
        steps.append(T.Normalize(_imagenet(IMAGENET_MEAN, channels), _imagenet(IMAGENET_STD, channels)))
    elif normalize != Normalization.NONE:
        raise UsageError(
            "say how to normalise the images (the model brings no preprocessing of its own): --mean M --std S (the "
            "statistics the model was trained with), --normalize none (pixels in [0, 1]) or --normalize imagenet"
        )
    return T.Compose(steps)


def zoo_transform(
    resize: int | tuple[int, int] | None,
    crop: tuple[int, int] | None,
    interpolation: str,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
) -> T.Compose:
    """A model's own preprocessing as its zoo describes it (timm's data config, a Hugging Face image processor):
    resize (an int: the shorter side), centre crop, uint8 → [0, 1] (floats are taken as already in [0, 1]) and,
    where ``mean`` and ``std`` are given, normalise.
    """
    try:
        mode = T.InterpolationMode(interpolation)
    except ValueError:
        raise DataError(f"the model's preprocessing resizes with '{interpolation}', which nccli cannot") from None
    steps: list[Callable] = [T.Resize(resize, interpolation=mode, antialias=True)] if resize else []
    if crop:
        steps.append(T.CenterCrop(crop))
    steps.append(T.ConvertImageDtype(torch.float32))
    if mean is not None and std is not None:
        steps.append(T.Normalize(list(mean), list(std)))
    return T.Compose(steps)


def _imagenet(values: tuple[float, ...], channels: int) -> list[float]:
    """ImageNet's statistics for ``channels`` channels: their average for grey images."""
    if channels == 1:
        return [sum(values) / len(values)]
    if channels != len(values):
        raise DataError(f"the images have {channels} channels; pass --channels 3 or --channels 1")
    return list(values)


def _per_channel(option: str, values: tuple[float, ...], channels: int) -> list[float]:
    if len(values) == 1:
        return list(values) * channels
    if len(values) != channels:
        raise DataError(f"{option} has {len(values)} values but the images have {channels} channels")
    return list(values)
