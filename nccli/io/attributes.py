"""Reading the attributes of an untrusted feature file: each size checked before it is read, each type
checked against the one the format gives it, every failure one :class:`FeatureFileError` naming the file,
the path inside it and the attribute."""

import numpy as np

from nccli.errors import FeatureFileError

MAX_ATTR_BYTES = 16 * 2**20
MAX_SHOWN_CHARS = 60
READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)  # what h5py raises on damaged files


def shown(value) -> str:
    """A value or error as one short line, for messages."""
    text = " ".join(str(value).split()) if isinstance(value, Exception) else " ".join(repr(value).split())
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 1] + "…"


def read_attribute(file: str, obj, name: str, path: str, default=None):
    """Attribute ``name`` of ``obj`` as stored (size-checked, bytes decoded); ``default`` when absent. The one
    way to read an attribute of an untrusted file."""
    if name not in obj.attrs:
        return default
    try:
        stored = obj.attrs.get_id(name)
        size = stored.get_storage_size()
        if size > MAX_ATTR_BYTES:
            raise FeatureFileError(file, path, f"attribute '{name}' holds {size} bytes (limit {MAX_ATTR_BYTES})")
        value = obj.attrs[name]
    except READ_ERRORS as error:
        raise FeatureFileError(file, path, f"attribute '{name}' cannot be read: {shown(error)}") from None
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "SUOiufb":
        value = value.reshape(()).item() if value.dtype.kind != "O" else value.reshape(())[()]
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def text_attribute(file: str, obj, name: str, path: str, default=None) -> str | None:
    value = read_attribute(file, obj, name, path, default)
    if value is None or isinstance(value, str):
        return value
    raise FeatureFileError(file, path, f"attribute '{name}' must be a string, found {shown(value)}")


def int_attribute(file: str, obj, name: str, path: str, default=None) -> int | None:
    value = read_attribute(file, obj, name, path, default)
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise FeatureFileError(file, path, f"attribute '{name}' must be an integer, found {shown(value)}")
    return int(value)


def bool_attribute(file: str, obj, name: str, path: str) -> bool | None:
    value = read_attribute(file, obj, name, path)
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise FeatureFileError(file, path, f"attribute '{name}' must be a boolean, found {shown(value)}")


def names_attribute(file: str, obj, name: str, path: str) -> tuple[str, ...] | None:
    value = read_attribute(file, obj, name, path)
    if value is None:
        return None
    values = np.atleast_1d(np.asarray(value, dtype=object))
    if values.ndim != 1 or not all(isinstance(item, (str, bytes)) for item in values):
        raise FeatureFileError(file, path, f"attribute '{name}' must be a 1-D array of strings, found {shown(value)}")
    return tuple(item.decode(errors="replace") if isinstance(item, bytes) else item for item in values)
