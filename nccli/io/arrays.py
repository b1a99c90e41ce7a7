"""Arrays saved by other tools (``.npy``, ``.npz``, ``.pt``/``.pth``, ``.safetensors``), read in row blocks.

:func:`open_sources` turns the files given to ``nccli convert`` into one key
space of :class:`SourceArray` objects: each knows its shape and dtype without
reading its values, and :meth:`SourceArray.blocks` yields its rows from the
first, a block at a time. How much of a file is in memory at once depends on
what its format allows:

* ``.npy``: memory-mapped (``np.load(mmap_mode="r")``); only the block read.
* ``.npz``: each member is a zip entry, read as a stream from its start (and
  inflated as it goes when the archive is compressed); only the block read.
  A Fortran-ordered member is read whole.
* ``.pt``/``.pth``: ``torch.load(weights_only=True)``, which never runs
  pickled code: only tensors, numpy arrays of plain numeric dtypes and
  containers are built, anything else is refused. Tensors are memory-mapped
  (``mmap=True``) in files written by ``torch.save`` since torch 1.6, once
  each tensor's storage record is checked (:mod:`nccli.io.torch_records`);
  numpy arrays inside a ``.pt`` file, and tensors of the legacy format, are
  in memory whole.
* ``.safetensors``: memory-mapped (``safe_open``); only the block read.

Nothing here imports torch or safetensors until such a file is opened.
"""

import contextlib
import os
import pickle
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from nccli.errors import DataError, UsageError
from nccli.io.attributes import shown
from nccli.io.torch_records import check_records

SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".safetensors")
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


@dataclass
class SourceArray:
    """One named array of a source file: shape and dtype known, rows read on demand by ``read_rows``."""

    source: str
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype  # the dtype of the rows yielded (bfloat16 is widened to float32)
    read_rows: Callable[[int], Iterator[np.ndarray]]  # block_rows → row blocks from row 0

    @property
    def where(self) -> str:
        return f"key '{self.key}' of '{self.source}'"

    def blocks(self, block_rows: int) -> Iterator[np.ndarray]:
        """Consecutive blocks of ``block_rows`` rows (the last one shorter), from the first row."""
        return self.read_rows(block_rows)

    def read(self) -> np.ndarray:
        """The whole array, for small ones only (the classifier's W and b)."""
        blocks = list(self.blocks(max(1, self.shape[0])))
        return blocks[0] if len(blocks) == 1 else np.empty(self.shape, self.dtype)  # one block, or no rows


def conversion_hint(path: str) -> str | None:
    """For ``analyze``, given a file that is not HDF5: a one-line pointer to ``nccli convert`` when the file is
    one of its input formats, by suffix or else by its first bytes."""
    stem, suffix = os.path.splitext(path)
    command = f"`nccli convert {path} --out {os.path.basename(stem)}.h5`"
    if suffix.lower() not in SUFFIXES:
        try:
            with open(path, "rb") as file:
                head = file.read(9)
        except OSError:
            return None
        if head.startswith(NPY_MAGIC):
            kind = ".npy"
        elif head.startswith(ZIP_MAGIC):
            kind = ".npz or .pt"
        elif len(head) == 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then its JSON header
            kind = ".safetensors"
        else:
            return None
        suffix, command = kind, f"`nccli convert` after renaming it to {kind}"
    return (
        f"this is {suffix} data, not an HDF5 feature file; convert it first: {command} "
        "(add --features KEY --labels KEY unless its keys are the usual ones; see `nccli convert --help`)"
    )


class KeySpace:
    """The arrays of all sources by key; remembers which option took each key, so that none is used twice."""

    def __init__(self, arrays: dict[str, SourceArray]):
        self.arrays: dict[str, SourceArray] = arrays
        self.used: dict[str, str] = {}

    def take(self, option: str, key: str) -> SourceArray:
        if key not in self.arrays:
            raise UsageError(
                f"{option} '{key}': no such key in the sources; keys are: {', '.join(self.arrays) or 'none'}"
            )
        if key in self.used:
            raise UsageError(f"{option} '{key}': the key is already used by {self.used[key]}")
        array = self.arrays[key]
        if array.dtype.kind not in "biuf":  # checked only here: other keys of a file may hold anything
            raise DataError(
                f"{array.where}: dtype {array.dtype} is not numeric; nccli reads integer labels and float arrays"
            )
        self.used[key] = option
        return array

    def default(self, defaults: tuple[str, ...]) -> str | None:
        """The first of ``defaults`` present in the sources and not used yet."""
        return next((name for name in defaults if name in self.arrays and name not in self.used), None)

    def optional(self, option: str, key: str | None, defaults: tuple[str, ...]) -> SourceArray | None:
        """``key`` when given, else the first default present, else None."""
        key = key if key is not None else self.default(defaults)
        return None if key is None else self.take(option, key)

    def pick(self, option: str, key: str | None, defaults: tuple[str, ...]) -> SourceArray:
        return self.take(option, key if key is not None else self.required_default(option, defaults))

    def required_default(self, option: str, defaults: tuple[str, ...]) -> str:
        found = self.default(defaults)
        if found is None:
            raise UsageError(
                f"no {option.removeprefix('--')} key: none of {', '.join(defaults)} is in the sources; "
                f"pass {option} KEY (keys are: {', '.join(self.arrays) or 'none'})"
            )
        return found


def open_sources(paths: tuple[str, ...], stack: contextlib.ExitStack) -> KeySpace:
    """Every array of every file, by key; a key found in two files is refused. Handles close with ``stack``."""
    arrays: dict[str, SourceArray] = {}
    for path in paths:
        if not os.path.isfile(path):
            raise UsageError(f"source '{path}' " + ("is a directory" if os.path.isdir(path) else "does not exist"))
        suffix = os.path.splitext(path)[1].lower()
        opener = _OPENERS.get(suffix)
        if opener is None:
            raise UsageError(f"source '{path}': unknown format '{suffix}'; nccli convert reads {', '.join(SUFFIXES)}")
        for array in opener(path, stack):
            if array.key in arrays:
                raise UsageError(
                    f"key '{array.key}' is in both '{arrays[array.key].source}' and '{path}'; "
                    "each key must name one array: rename one of them"
                )
            arrays[array.key] = array
    return KeySpace(arrays)


def _sliced(array, convert=np.asarray):
    """Row blocks of anything that slices by rows (memory maps, tensors, safetensors slices)."""

    def read_rows(block_rows: int) -> Iterator[np.ndarray]:
        rows = array.get_shape()[0] if hasattr(array, "get_shape") else len(array)
        for start in range(0, rows, block_rows):
            yield convert(array[start : start + block_rows])

    return read_rows


def _open_npy(path: str, stack: contextlib.ExitStack) -> list[SourceArray]:
    key = os.path.splitext(os.path.basename(path))[0]
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"'{path}' cannot be read as a .npy file: {shown(error)}") from None
    return [SourceArray(path, key, array.shape, array.dtype, _sliced(array))]


def _open_npz(path: str, stack: contextlib.ExitStack) -> list[SourceArray]:
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
        names = [name for name in archive.namelist() if name.endswith(".npy")]
        arrays = [_npz_member(path, archive, name) for name in names]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise DataError(f"'{path}' cannot be read as a .npz archive: {shown(error)}") from None
    return arrays


def _npz_member(path: str, archive: zipfile.ZipFile, name: str) -> SourceArray:
    key = name[: -len(".npy")]
    where = f"key '{key}' of '{path}'"
    with archive.open(name) as stream:
        shape, fortran, dtype = _npy_header(stream)
    row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))

    def read_rows(block_rows: int) -> Iterator[np.ndarray]:
        try:
            with archive.open(name) as stream:
                _npy_header(stream)
                if fortran and len(shape) > 1:  # a row's values are not contiguous: read it whole
                    count = int(np.prod(shape, dtype=np.int64))
                    whole = np.frombuffer(stream.read(count * dtype.itemsize), dtype=dtype).reshape(shape, order="F")
                    yield from _sliced(whole)(block_rows)
                    return
                for start in range(0, shape[0], block_rows):
                    count = min(block_rows, shape[0] - start)
                    data = stream.read(count * row_bytes)
                    if len(data) != count * row_bytes:
                        raise EOFError(f"the member ends inside row {start + len(data) // max(row_bytes, 1)}")
                    yield np.frombuffer(data, dtype=dtype).reshape((count, *shape[1:]))
        except (zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error) as error:
            raise DataError(f"{where}: cannot be read (a damaged archive?): {shown(error)}") from None

    return SourceArray(path, key, shape, dtype, read_rows)


def _npy_header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of the ``.npy`` data at ``stream``, which is left at the first value.
    (Version 3.0 only adds UTF-8 field names of structured dtypes, which nccli does not read.)"""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    return tuple(shape), fortran, dtype


def _tensor_to_numpy(tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every value exactly
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()


def _torch_dtype(tensor) -> np.dtype:
    """The numpy dtype of the rows a tensor (or safetensors slice) gives, read from an empty slice of it."""
    empty = tensor.reshape(-1)[:0] if hasattr(tensor, "reshape") else tensor[:0]
    return _tensor_to_numpy(empty).dtype


def _safe_numpy_globals() -> list:
    """What ``weights_only`` must allow to rebuild numpy arrays of numeric dtypes: the array and dtype
    constructors, no function that could run code (object arrays stay refused)."""
    reconstruct = np.zeros(1).__reduce__()[0]
    return [reconstruct, np.ndarray, np.dtype, *(type(np.dtype(code)) for code in "?bhilqBHILQefdg")]


def _open_torch(path: str, stack: contextlib.ExitStack) -> list[SourceArray]:
    import torch

    mapped = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(_safe_numpy_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's notes on what it validates: not the user's
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "WeightsUnpickler error" in line), lines[0] if lines else "")
        reason = reason.removeprefix("WeightsUnpickler error:").strip() or type(error).__name__
        raise DataError(
            f"'{path}' holds Python objects other than tensors and arrays, which nccli never unpickles "
            f"({shown(reason)}); save a dict of tensors or arrays"
        ) from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, TypeError) as error:
        raise DataError(f"'{path}' cannot be read as a torch.save file: {shown(error)}") from None
    if not isinstance(loaded, dict):
        raise DataError(f"'{path}' holds a {type(loaded).__name__}; nccli convert reads a dict of tensors or arrays")
    if mapped:  # torch.load mapped the storages without looking at their records' sizes
        check_records(path, [key for key, value in loaded.items() if isinstance(value, torch.Tensor)])
    arrays = []
    for key, value in loaded.items():
        if isinstance(value, torch.Tensor):
            kind = _unusual_kind(value)
            if kind is not None:
                raise DataError(f"key '{key}' of '{path}' is a {kind} tensor, not rows of numbers; {_DENSE[kind]}")
            arrays.append(
                SourceArray(path, str(key), tuple(value.shape), _torch_dtype(value), _sliced(value, _tensor_to_numpy))
            )
        elif isinstance(value, np.ndarray):
            arrays.append(SourceArray(path, str(key), value.shape, value.dtype, _sliced(value)))
    return arrays


_DENSE = {  # how to save each kind of tensor as the dense array convert reads
    "sparse": "save tensor.to_dense()",
    "nested": "save one padded tensor (torch.nested.to_padded_tensor)",
    "quantized": "save tensor.dequantize()",
    "meta": "it holds no values: save the tensor itself, not its meta-device copy",
}


def _unusual_kind(tensor) -> str | None:
    """What makes a tensor more than a dense array of numbers in memory (sparse, nested, quantized, on the meta
    device), which cannot be read as rows; None for a plain dense tensor."""
    import torch

    if tensor.layout != torch.strided:
        return "sparse"
    for kind, flag in (("nested", "is_nested"), ("quantized", "is_quantized"), ("meta", "is_meta")):
        if getattr(tensor, flag, False):
            return kind
    return None


def _open_safetensors(path: str, stack: contextlib.ExitStack) -> list[SourceArray]:
    from safetensors import SafetensorError, safe_open

    try:
        handle = stack.enter_context(safe_open(path, framework="pt"))
        arrays = []
        for key in handle.keys():
            tensor = handle.get_slice(key)
            dtype = _torch_dtype(tensor if tensor.get_shape() else handle.get_tensor(key))
            arrays.append(SourceArray(path, key, tuple(tensor.get_shape()), dtype, _sliced(tensor, _tensor_to_numpy)))
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        raise DataError(f"'{path}' cannot be read as a .safetensors file: {shown(error)}") from None
    return arrays


_OPENERS = {
    ".npy": _open_npy,
    ".npz": _open_npz,
    ".pt": _open_torch,
    ".pth": _open_torch,
    ".safetensors": _open_safetensors,
}
