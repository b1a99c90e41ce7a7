"""The checks ``analyze`` makes on a feature file, made on arrays before they become one.

``nccli convert`` (arrays from files) and ``measure_collapse`` (batches in
memory) refuse what ``analyze`` would refuse, with the same wording, but
naming where the array came from (``where``: a key of a source file, a
batch) instead of a path inside an HDF5 file. Everything is checked from
shapes and dtypes, except the label range and finiteness, which the callers
check block by block with :func:`label_range_error` and :func:`first_nonfinite_row`.
"""

import numpy as np

from nccli.errors import DataError, UsageError
from nccli.io.validate import MAX_WIDTH, label_range_problem, nonfinite_problem
from nccli.types import Classifier

FLOAT_SIZES = (2, 4, 8)


def check_layer_name(name: str, where: str) -> None:
    """A layer name is a non-empty string without '/' (the feature file stores it as an HDF5 name)."""
    if not isinstance(name, str):
        raise UsageError(f"{where}: a layer name must be a string, found {name!r} ({type(name).__name__})")
    if not name or "/" in name:
        raise UsageError(f"{where}: layer name '{name}' must be non-empty and hold no '/' (HDF5 would nest it)")


def check_labels(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    if len(shape) != 1 or dtype.kind not in "iu":
        raise DataError(
            f"{where}: labels must be a 1-D integer array, found shape {shape} dtype {dtype}"
            + ("; cast them to integers" if len(shape) == 1 and dtype.kind in "bf" else "")
        )
    if shape[0] == 0:
        raise DataError(f"{where}: holds no samples (N = 0)")


def check_features(shape: tuple[int, ...], dtype: np.dtype, rows: int, labels_where: str, where: str) -> None:
    """A (N, d) float16/32/64 array whose N matches the labels'."""
    if dtype.kind != "f" or dtype.itemsize not in FLOAT_SIZES:
        raise DataError(f"{where}: features must be float16/32/64, found {dtype}")
    if len(shape) != 2:
        raise DataError(f"{where}: features must be 2-D (N, d), found shape {shape}")
    check_rows(shape, rows, labels_where, where)
    if shape[1] == 0:
        raise DataError(f"{where}: has width d = 0")
    if shape[1] > MAX_WIDTH:
        raise DataError(f"{where}: has width d = {shape[1]}, above nccli's limit of {MAX_WIDTH}")


def check_rows(shape: tuple[int, ...], rows: int, labels_where: str, where: str) -> None:
    if not shape or shape[0] != rows:
        found = shape[0] if shape else "no"
        raise DataError(f"{where}: has {found} rows but the labels ({labels_where}) have {rows}")


def label_range_error(low: int, high: int, num_classes: int, where: str) -> DataError | None:
    """The error for labels spanning [low, high] when they must lie in [0, num_classes), else None."""
    problem = label_range_problem(low, high, num_classes)
    return None if problem is None else DataError(f"{where}: {problem}")


def first_nonfinite_row(block: np.ndarray) -> int | None:
    """Index of the first row of ``block`` holding NaN or Inf, else None."""
    finite = np.isfinite(block)
    if finite.all():
        return None
    return int(np.flatnonzero(~finite.reshape(len(block), -1).all(axis=1))[0])


def nonfinite_error(row: int, where: str) -> DataError:
    return DataError(f"{where}: {nonfinite_problem(row)}")


def classifier_layer(widths: dict[str, int], weight_width: int, given: str | None, option: str) -> str:
    """The layer W consumes: ``given`` (which must exist and match W's width), else the only layer of W's width."""
    if given is not None:
        if given not in widths:
            raise UsageError(f"{option} '{given}' is not a features layer; layers are: {', '.join(widths)}")
        if widths[given] != weight_width:
            raise DataError(
                f"the classifier weight has width {weight_width} but layer '{given}' has width {widths[given]}"
            )
        return given
    matching = [name for name, width in widths.items() if width == weight_width]
    if len(matching) == 1:
        return matching[0]
    found = f"layers {', '.join(matching)} all have" if matching else "no layer has"
    shown = ", ".join(f"{name} ({width})" for name, width in widths.items())
    raise UsageError(
        f"the classifier weight has width {weight_width} and {found} that width ({shown}); name the layer with {option}"
    )


def classifier(weight: np.ndarray, bias: np.ndarray | None, num_classes: int, where: str) -> Classifier:
    """W (num_classes, d) and b (num_classes,) as float64, finite; b defaults to zeros."""
    weight = np.asarray(weight)
    if weight.ndim != 2 or weight.dtype.kind != "f":
        raise DataError(
            f"{where}: the classifier weight must be a 2-D float array, found shape {weight.shape} dtype {weight.dtype}"
        )
    if weight.shape[0] != num_classes:
        raise DataError(f"{where}: the classifier weight has {weight.shape[0]} rows but num_classes is {num_classes}")
    if bias is None:
        bias = np.zeros(num_classes)
    bias = np.asarray(bias)
    if bias.shape != (num_classes,) or bias.dtype.kind != "f":
        raise DataError(
            f"{where}: the classifier bias must be float of shape ({num_classes},), found shape {bias.shape} dtype "
            f"{bias.dtype}"
        )
    result = Classifier(np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64))
    for name, values in (("weight", result.weight), ("bias", result.bias)):
        if not np.isfinite(values).all():
            raise DataError(f"{where}: the classifier {name} holds a non-finite value (NaN or Inf)")
    return result
