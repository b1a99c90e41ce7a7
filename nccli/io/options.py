"""The extract options a feature file records (``schema.ATTR_EXTRACT_OPTIONS``, JSON), so that
``--resume`` and torchrun shards continue only what the same options started."""

import json

import h5py

from nccli import schema

MAX_SHOWN_VALUE = 40


def store_options(handle: h5py.File, options: dict) -> None:
    handle.attrs[schema.ATTR_EXTRACT_OPTIONS] = json.dumps(options, sort_keys=True)


def options_of(handle: h5py.File) -> dict | None:
    """The options recorded in an open file, or None if it has none."""
    value = handle.attrs.get(schema.ATTR_EXTRACT_OPTIONS)
    return None if value is None else json.loads(value)


def stored_options(path: str) -> dict | None:
    """The extract options a feature file was written with, or None if it has none (or is unreadable)."""
    try:
        with h5py.File(path, "r") as handle:
            return options_of(handle)
    except OSError:
        return None


def describe_differences(stored: dict, wanted: dict) -> str:
    """``key: old → new`` for each option that differs (long values by name only)."""
    parts = []
    for key in sorted(set(stored) | set(wanted)):
        old, new = stored.get(key), wanted.get(key)
        if old != new:
            shown = f"{old} → {new}"
            parts.append(f"{key}: {shown}" if len(shown) <= 2 * MAX_SHOWN_VALUE else key)
    return "; ".join(parts)
