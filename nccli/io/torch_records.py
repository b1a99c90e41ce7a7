"""The storage records of a ``torch.save`` file, checked against the tensors that will read them.

A ``torch.save`` file is a zip archive: ``<folder>/data.pkl`` (the pickle) and one record
``<folder>/data/<key>`` per storage. ``torch.load(mmap=True)`` maps the whole file and gives each storage
the bytes from the start of its record on, as many as the pickle says (numel × element size), without
looking at the record: a record shorter than its storage (a truncated or edited file) or a compressed one
would be read as the bytes of whatever follows it. :func:`check_records` refuses such a tensor before a
row is read. It finds each tensor's storage keys with an unpickler that builds nothing (every class the
pickle names becomes a :class:`_Placeholder`, so no code runs).
"""

import io
import pickle
import zipfile
from dataclasses import dataclass

from nccli.errors import DataError


@dataclass(frozen=True)
class _Storage:
    """A storage the pickle refers to: its record key and its size in bytes."""

    key: str
    nbytes: int


class _Placeholder:
    """Whatever the pickle would build (tensors, parameters, ordered dicts): only what it was given is kept."""

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self.parts, self.items = [args, kwargs], {}
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):  # a placeholder called in turn (what a global's attribute gives)
        return _Placeholder(*args, **kwargs)

    def __setstate__(self, state):
        self.parts.append(state)

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.parts.append(value)

    def extend(self, values):
        self.parts.extend(values)


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, element_size):
        super().__init__(io.BytesIO(data))
        self.element_size = element_size

    def find_class(self, module: str, name: str):
        """Nothing is imported: a storage class is its name (``FloatStorage``), anything else a placeholder."""
        return name if module == "torch" and name.endswith("Storage") else _Placeholder

    def persistent_load(self, pid):
        _, storage_type, key, _, numel = pid  # ("storage", the storage class, key, location, numel)
        return _Storage(str(key), int(numel) * self.element_size(storage_type))


def _storages(value, seen: set[int]):
    """Every storage reachable from ``value``."""
    if isinstance(value, _Storage):
        yield value
        return
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, _Placeholder):
        children = [*value.parts, *value.items.values()]
    elif isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, (list, tuple)):
        children = list(value)
    else:
        return
    for child in children:
        yield from _storages(child, seen)


def check_records(path: str, keys: list[str]) -> None:
    """Refuse the first tensor of ``keys`` (top-level keys of the dict saved in ``path``) whose storage record
    is missing, compressed or shorter than its storage."""
    from torch.serialization import StorageType

    def element_size(name: str) -> int:
        return 1 if name == "UntypedStorage" else StorageType(name).dtype.itemsize

    with zipfile.ZipFile(path) as archive:
        records = {info.filename: info for info in archive.infolist()}
        folder = archive.namelist()[0].split("/")[0]  # as torch names it: the first record's folder
        saved = _Unpickler(archive.read(f"{folder}/data.pkl"), element_size).load()
    items = saved.items if isinstance(saved, _Placeholder) else saved
    for key in keys:
        for storage in _storages(items[key], set()):
            name = f"{folder}/data/{storage.key}"
            info = records.get(name)
            if info is None or info.file_size < storage.nbytes:
                found = "is missing" if info is None else f"holds {info.file_size} bytes"
                problem = f"{found} where the tensor needs {storage.nbytes} (a truncated or damaged file)"
            elif info.compress_type != zipfile.ZIP_STORED:
                problem = (
                    "is compressed, and torch reads tensors in place only from stored records (a file rewritten "
                    "by a zip tool?)"
                )
            else:
                continue
            raise DataError(
                f"key '{key}' of '{path}': its storage record '{name}' {problem}; save the tensors again with "
                "torch.save"
            )
