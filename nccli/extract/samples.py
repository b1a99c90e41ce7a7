"""Fetching images one at a time (image folders, named datasets, ``fake:N``): decoding errors named by file, every
image's size checked before it joins a batch.

An image that cannot be decoded (truncated, empty, not an image) raises :class:`UnreadableSample` naming its file;
:class:`~nccli.extract.datasets.SampleBatches` either stops there or, under ``--skip-unreadable``, leaves the sample
out. Every preprocessed image must have the shape of the first image of the run (``expected``), so an odd size is
named when its image is read, also when it would sit alone in the last batch, where stacking could not notice it.
"""

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as F

from nccli.errors import DataError, first_line

# What PIL raises for a file that is not a decodable image: not an image or empty (UnidentifiedImageError, an
# OSError), truncated (OSError), a broken header (SyntaxError), a bad field (ValueError), a decompression bomb.
UNDECODABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class UnreadableSample(DataError):
    """A sample whose image cannot be decoded; ``index`` is its index in the dataset.

    Built from its message alone as well, as the DataLoader rebuilds a worker's error from its text.
    """

    def __init__(self, message: str, index: int = -1):
        self.index = index
        super().__init__(message)


def shape_text(shape) -> str:
    return "×".join(map(str, shape))


def channels_of(dataset) -> int:
    """Channels of the dataset's images; folder datasets decode to RGB, so their first file need not be read."""
    if hasattr(dataset, "samples"):
        return 3
    return image_tensor(dataset[0][0]).shape[0]


def image_tensor(image) -> torch.Tensor:
    return image if isinstance(image, torch.Tensor) else F.pil_to_tensor(image)


class PerImage:
    """Fetch from a dataset of single images: decode and transform each, check its shape, then stack them."""

    def __init__(self, dataset, description: str):
        self.dataset, self.description = dataset, description

    def __call__(
        self, indices: np.ndarray, transform: Callable, expected: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        images = []
        for index in map(int, indices):
            image = transform(image_tensor(self._decode(index)))
            if expected is None:
                expected = tuple(image.shape)
            elif tuple(image.shape) != expected:
                raise DataError(
                    f"{self.name(index)} is {shape_text(image.shape)} after preprocessing, but the images before it "
                    f"are {shape_text(expected)}; pass --resize N to bring every image to N×N"
                )
            images.append(image)
        return torch.stack(images)

    def _decode(self, index: int):
        try:
            return self.dataset[index][0]
        except UNDECODABLE as error:  # the user's file, decoded by PIL
            raise UnreadableSample(
                f"cannot read {self.name(index)}: {type(error).__name__}: {first_line(error)}; replace or remove "
                "it, or pass --skip-unreadable to leave out the samples that cannot be read",
                index,
            ) from None

    def name(self, index: int) -> str:
        """``image 'path' (sample i)`` for datasets of files, ``sample i of DATA`` for the others."""
        samples = getattr(self.dataset, "samples", None)
        if samples is not None:
            return f"image '{samples[index][0]}' (sample {index})"
        return f"sample {index} of {self.description}"
