"""Image preprocessing: one tensor pipeline for single images (C, H, W) and whole batches (B, C, H, W).

Without ``--weights``: uint8 → float in [0, 1] (floats are taken as already
in [0, 1]; array files whose float pixels fall outside are refused, unless
``--mean`` and ``--std`` give their own scale: :mod:`.datasets`), optional ``--resize N`` (shorter side to N, then centre crop
N × N), then ``--mean``/``--std`` normalisation (ImageNet's statistics by
default, averaged for 1-channel images). With ``--weights`` the weights' own
transforms replace all of that.
"""

from collections.abc import Callable

import torch
from torchvision import transforms as T
from torchvision.transforms import functional as F

from nccli.errors import DataError
from nccli.extract.config import IMAGENET_MEAN, IMAGENET_STD


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
) -> T.Compose:
    """The pipeline for uint8 or float image tensors that have ``channels`` channels as stored."""
    steps: list[Callable] = [ToChannels(convert_to)] if convert_to and convert_to != channels else []
    channels = convert_to or channels
    if weights_transform is not None:
        return T.Compose([*steps, weights_transform])
    steps.append(T.ConvertImageDtype(torch.float32))
    if resize:
        steps += [T.Resize(resize, antialias=True), T.CenterCrop(resize)]
    steps.append(
        T.Normalize(
            _per_channel("--mean", mean, IMAGENET_MEAN, channels), _per_channel("--std", std, IMAGENET_STD, channels)
        )
    )
    return T.Compose(steps)


def _per_channel(
    option: str, values: tuple[float, ...] | None, default: tuple[float, ...], channels: int
) -> list[float]:
    if values is None:
        if channels == 1:
            return [sum(default) / len(default)]
        if channels != len(default):
            raise DataError(f"the images have {channels} channels; pass --channels 3 or --channels 1")
        return list(default)
    if len(values) == 1:
        return list(values) * channels
    if len(values) != channels:
        raise DataError(f"{option} has {len(values)} values but the images have {channels} channels")
    return list(values)
