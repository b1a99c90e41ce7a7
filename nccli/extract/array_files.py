"""DATA as an array file (.npz in memory, .h5 read a batch at a time): the images and labels, checked as
they are opened, and the batches sliced from them (:class:`ArrayBatches`)."""

import os
from collections.abc import Callable

import numpy as np
import torch

from nccli import schema
from nccli.errors import DataError, first_line


def read_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a .npz file, in memory."""
    if not os.path.isfile(path):
        raise DataError(f"array file '{path}' does not exist")
    try:
        with np.load(path) as arrays:
            missing = [key for key in (schema.NPZ_IMAGES, schema.NPZ_LABELS) if key not in arrays.files]
            if missing:
                raise DataError(
                    f"'{path}' lacks array {', '.join(missing)}; it has {', '.join(arrays.files) or 'none'}"
                )
            images, labels = arrays[schema.NPZ_IMAGES], arrays[schema.NPZ_LABELS]
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read '{path}' as .npz: {first_line(error)}") from None
    return images, labels


def read_h5(path: str) -> tuple["H5Images", tuple, np.dtype, np.ndarray]:
    """(images read a batch at a time, their shape and dtype, labels) of an .h5 file."""
    import h5py

    if not os.path.isfile(path):
        raise DataError(f"array file '{path}' does not exist")
    try:
        with h5py.File(path, "r") as handle:
            missing = [key for key in (schema.ARRAY_FILE_IMAGES, schema.ARRAY_FILE_LABELS) if key not in handle]
            if missing:
                raise DataError(
                    f"'{path}' lacks dataset /{', /'.join(missing)}; it has /{', /'.join(handle) or 'none'}"
                )
            for key in (schema.ARRAY_FILE_IMAGES, schema.ARRAY_FILE_LABELS):
                if not isinstance(handle[key], h5py.Dataset):
                    raise DataError(f"'{path}': /{key} is a {type(handle[key]).__name__}; it must be a dataset")
            shape, dtype = handle[schema.ARRAY_FILE_IMAGES].shape, handle[schema.ARRAY_FILE_IMAGES].dtype
            labels = handle[schema.ARRAY_FILE_LABELS][()]
    except OSError as error:
        raise DataError(f"cannot read '{path}' as HDF5: {first_line(error)}") from None
    return H5Images(path), shape, dtype, labels


class H5Images:
    """The /images dataset of an HDF5 file, opened lazily once per process (DataLoader workers must not share it)."""

    def __init__(self, path: str):
        self.path, self._opened = path, None

    def __getitem__(self, selection):
        import h5py

        try:
            if self._opened is None or self._opened[0] != os.getpid():
                self._opened = (os.getpid(), h5py.File(self.path, "r")[schema.ARRAY_FILE_IMAGES])
            return self._opened[1][selection]
        except OSError as error:  # the user's file: changed since it was opened, or damaged
            raise DataError(f"cannot read the images of '{self.path}': {first_line(error)}") from None

    def __getstate__(self):
        return {"path": self.path, "_opened": None}


class ArrayBatches:
    """Fetch from an image array (in memory or HDF5): slice the batch, make it N×C×H×W, transform it at once.

    With ``unit_range``, a batch of float images with a value outside [0, 1] is refused: the transform takes float
    pixels as [0, 1], and 0–255 floats would give features of a different input without a word.
    """

    def __init__(self, images, channels_last: bool, description: str = "", unit_range: bool = False):
        self.images, self.channels_last = images, channels_last
        self.description, self.unit_range = description, unit_range

    def __call__(self, indices: np.ndarray, transform: Callable, expected: tuple | None = None) -> torch.Tensor:
        contiguous = indices[-1] - indices[0] + 1 == len(indices)
        block = self.images[indices[0] : indices[-1] + 1] if contiguous else self.images[indices]
        batch = torch.from_numpy(np.ascontiguousarray(block))
        if self.unit_range:
            self._check_unit_range(batch, indices)
        if batch.ndim == 3:
            batch = batch.unsqueeze(1)
        elif self.channels_last:
            batch = batch.permute(0, 3, 1, 2).contiguous()  # reorder the small uint8 pixels, not the floats
        return transform(batch).contiguous()

    def _check_unit_range(self, batch: torch.Tensor, indices: np.ndarray) -> None:
        low, high = torch.aminmax(batch)
        if low >= 0 and high <= 1:  # False for NaN too
            return
        outside = ~((batch >= 0) & (batch <= 1))
        row = int(torch.nonzero(outside.flatten(1).any(1))[0, 0])
        bad = batch[row][outside[row]][0].item()
        raise DataError(
            f"images in {self.description} are floats, read as pixels in [0, 1], but sample {int(indices[row])} "
            f"holds {bad:g}; "
            "store them as uint8 (0–255) or divide 0–255 floats by 255, or, for images in another scale "
            "(already normalised), pass --mean and --std in that scale (e.g. --mean 0 --std 1)"
        )
