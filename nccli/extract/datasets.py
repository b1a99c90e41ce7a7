"""Reading the DATA argument: torchvision datasets by name, image folders, .npz/.h5 array files, ``fake:N``.

Every source exposes all its labels up front (for ``--per-class`` and the
label checks) and fetches images a batch at a time: array files slice a
whole batch and transform it at once (:mod:`nccli.extract.array_files`);
per-image datasets transform each image and stack them.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from nccli.errors import DataError, UsageError, first_line
from nccli.extract.array_files import ArrayBatches, read_h5, read_npz
from nccli.extract.config import Split
from nccli.extract.messages import did_you_mean
from nccli.extract.samples import PerImage, UnreadableSample, channels_of

NAMED_DATASETS = ("cifar10", "cifar100", "mnist", "fashionmnist", "svhn", "stl10", "imagenet")
FAKE_PREFIX = "fake:"
FAKE_IMAGE_SIZE = (3, 32, 32)
FAKE_CLASSES = 10


@dataclass
class ImageData:
    """An opened dataset: its labels, class names and a way to fetch transformed image batches."""

    fetch: Callable[..., torch.Tensor]  # (sorted indices, transform, expected C×H×W or None) → (B, C, H, W)
    labels: np.ndarray
    channels: int
    description: str
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None


class SampleBatches(Dataset):
    """The selected samples, fetched a batch at a time: the DataLoader calls ``__getitems__``.

    ``expected`` is the shape every preprocessed image must have (that of the first, once known). With
    ``skip_unreadable``, a sample whose image cannot be decoded is left out of the images and its index is
    given as -1; labels keep one entry per position.
    """

    def __init__(
        self,
        data: ImageData,
        indices: np.ndarray,
        transform: Callable,
        expected: tuple[int, ...] | None = None,
        skip_unreadable: bool = False,
    ):
        self.data, self.indices, self.transform = data, indices, transform
        self.expected, self.skip_unreadable = expected, skip_unreadable

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        """One sample, as a batch of one (the DataLoader uses ``__getitems__``)."""
        return self.__getitems__([position])

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices = self.indices[positions]
        kept = np.ones(len(indices), dtype=bool)
        while kept.any():
            try:
                images = self.data.fetch(indices[kept], self.transform, self.expected)
                break
            except UnreadableSample as error:
                if not self.skip_unreadable:
                    raise
                kept &= indices != error.index  # fetch again without it: unreadable samples are rare
        else:
            images = torch.empty((0, *(self.expected or ())))
        found = np.where(kept, indices, -1)
        return images, torch.from_numpy(self.data.labels[indices]), torch.from_numpy(found)


def already_batched(batch):
    """The DataLoader's collate_fn: ``__getitems__`` already returns a stacked batch."""
    return batch


def open_data(spec: str, root: str, split: Split, download: bool, any_float_range: bool = False) -> ImageData:
    """Open DATA: ``fake:N``, a dataset name, an image folder, or a .npz/.h5 array file.

    Float images in array files are read as [0, 1], and values outside refused (0–255 floats would otherwise
    pass unnoticed), unless ``any_float_range``: the user gave ``--mean`` and ``--std`` in the images' own scale.
    """
    if spec.startswith(FAKE_PREFIX):
        return _fake(spec)
    if spec.lower() in NAMED_DATASETS and not os.path.exists(spec):
        return _named(spec.lower(), root, split, download)
    if download:
        raise UsageError("--download fetches the named torchvision datasets only")
    if os.path.isdir(spec):
        return _image_folder(spec)
    if spec.endswith(".npz"):
        return _npz(spec, any_float_range)
    if spec.endswith((".h5", ".hdf5")):
        return _h5(spec, any_float_range)
    if os.path.exists(spec):
        raise DataError(f"'{spec}' is not a dataset: expected an image folder, a .npz or .h5 file")
    raise DataError(
        f"'{spec}' does not exist and is not a dataset name ({', '.join(NAMED_DATASETS)}) or fake:N"
        + did_you_mean(spec.lower(), NAMED_DATASETS)
    )


def select_indices(labels: np.ndarray, per_class: int | None, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices: a seeded sample of ``per_class`` per class (all of a smaller one), then the first ``limit``."""
    indices = np.arange(len(labels), dtype=np.int64)
    if per_class:
        rng = np.random.default_rng(seed)
        chosen = []
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            chosen.append(rng.choice(members, per_class, replace=False) if len(members) > per_class else members)
        indices = np.sort(np.concatenate(chosen)).astype(np.int64)
    return indices[:limit] if limit else indices


def check_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """Labels as int64, refusing anything but non-negative integers, one per sample."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"labels in {where} must be one integer per sample, found shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DataError(
            f"labels in {where} have dtype {labels.dtype}, not integers; save them as integers (y.astype('int64'))"
        )
    if len(labels) == 0:
        raise DataError(f"{where} holds no samples")
    if labels.min() < 0:
        raise DataError(f"labels in {where} must be ≥ 0, found {labels.min()}")
    if labels.max() > np.iinfo(np.int64).max:  # uint64 beyond int64: the cast would wrap it to a negative label
        raise DataError(f"labels in {where} must fit int64 (class ids from 0), found {labels.max()}")
    return labels.astype(np.int64)


def _fake(spec: str) -> ImageData:
    from torchvision.datasets import FakeData

    count = spec[len(FAKE_PREFIX) :]
    if not count.isdigit() or int(count) < 1:
        raise DataError(f"'{spec}': fake:N needs a positive number of images, e.g. fake:256")
    dataset = FakeData(size=int(count), image_size=FAKE_IMAGE_SIZE, num_classes=FAKE_CLASSES)
    labels = np.array([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)
    shape = "×".join(map(str, FAKE_IMAGE_SIZE))
    return _per_image(
        dataset, labels, f"{spec} (torchvision FakeData, {shape}, {FAKE_CLASSES} classes)", num_classes=FAKE_CLASSES
    )


def _named(name: str, root: str, split: Split, download: bool) -> ImageData:
    from torchvision import datasets

    train = split == Split.TRAIN
    builders = {
        "cifar10": lambda: datasets.CIFAR10(root, train=train, download=download),
        "cifar100": lambda: datasets.CIFAR100(root, train=train, download=download),
        "mnist": lambda: datasets.MNIST(root, train=train, download=download),
        "fashionmnist": lambda: datasets.FashionMNIST(root, train=train, download=download),
        "svhn": lambda: datasets.SVHN(root, split=str(split), download=download),
        "stl10": lambda: datasets.STL10(root, split=str(split), download=download),
        "imagenet": lambda: datasets.ImageNet(root, split="train" if train else "val"),
    }
    if name == "imagenet" and download:
        raise UsageError("ImageNet cannot be downloaded automatically; get it from image-net.org and pass --root")
    try:
        dataset = builders[name]()
    except (RuntimeError, OSError) as error:
        hint = "" if download or name == "imagenet" else "; pass --download to fetch it"
        raise DataError(f"{name} ({split}) not found under --root '{root}' ({first_line(error)}){hint}") from None
    labels = np.asarray(dataset.targets if hasattr(dataset, "targets") else dataset.labels)
    classes = getattr(dataset, "classes", None)
    names = tuple(c if isinstance(c, str) else c[0] for c in classes) if classes else None
    return _per_image(
        dataset,
        check_labels(labels, f"{name} ({split})"),
        f"{name} {split} (root '{os.path.abspath(root)}')",
        num_classes=len(names) if names else 10,
        class_names=names,
    )


def _image_folder(path: str) -> ImageData:
    from torchvision.datasets import ImageFolder

    try:
        dataset = ImageFolder(path)
    except (FileNotFoundError, OSError) as error:
        raise DataError(f"image folder '{path}': {first_line(error)}") from None
    labels = check_labels(np.asarray(dataset.targets, dtype=np.int64), f"image folder '{path}'")
    return _per_image(
        dataset, labels, f"image folder '{os.path.abspath(path)}'", len(dataset.classes), tuple(dataset.classes)
    )


def _per_image(dataset, labels, description, num_classes=None, class_names=None) -> ImageData:
    fetch = PerImage(dataset, description)
    return ImageData(fetch, labels, channels_of(dataset), description, num_classes, class_names)


def _npz(path: str, any_float_range: bool) -> ImageData:
    images, labels = read_npz(path)
    description = f"array file '{os.path.abspath(path)}'"
    return _arrays(images, images.shape, images.dtype, labels, description, any_float_range)


def _h5(path: str, any_float_range: bool) -> ImageData:
    images, shape, dtype, labels = read_h5(path)
    description = f"array file '{os.path.abspath(path)}'"
    return _arrays(images, shape, dtype, labels, description, any_float_range)


def _arrays(
    images, shape: tuple, dtype: np.dtype, labels: np.ndarray, description: str, any_float_range: bool
) -> ImageData:
    labels = check_labels(labels, description)
    if len(shape) not in (3, 4):
        raise DataError(f"images in {description} must be N×H×W, N×H×W×C or N×C×H×W, found shape {shape}")
    if shape[0] != len(labels):
        raise DataError(f"{description} has {shape[0]} images but {len(labels)} labels")
    if dtype != np.uint8 and dtype.kind != "f":
        raise DataError(f"images in {description} have dtype {dtype}; expected uint8 (0–255) or float (0–1)")
    channels_last = len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4)
    channels = 1 if len(shape) == 3 else shape[-1] if channels_last else shape[1]
    unit_range = dtype.kind == "f" and not any_float_range
    return ImageData(ArrayBatches(images, channels_last, description, unit_range), labels, channels, description)
