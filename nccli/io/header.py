"""The root attributes every writer of a feature file sets (``docs/feature-file.md``): one builder for
``extract`` and ``convert``, so the format's identity, the label space and the provenance are spelled once."""

from datetime import UTC, datetime

import numpy as np

from nccli import __version__, schema
from nccli.errors import UsageError

INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def root_attributes(
    num_classes: int,
    split: str,
    command: str,
    epoch: int | None = None,
    class_names: list[str] | None = None,
    **provenance,
) -> dict:
    """The format and its version, ``num_classes``, ``split``, ``epoch`` and ``class_names`` when known, the
    command, the time of creation, nccli's version and the writer's own ``provenance`` (schema names)."""
    attrs = {
        schema.ATTR_FORMAT: schema.FORMAT_NAME,
        schema.ATTR_FORMAT_VERSION: schema.FORMAT_VERSION,
        schema.ATTR_NUM_CLASSES: num_classes,
        schema.ATTR_SPLIT: split,
        schema.ATTR_COMMAND: command,
        schema.ATTR_CREATED: datetime.now(UTC).isoformat(timespec="seconds"),
        schema.ATTR_NCCLI_VERSION: __version__,
        **provenance,
    }
    if epoch is not None:
        if not INT64_MIN <= epoch <= INT64_MAX:  # an attribute of int64, as every reader takes it
            raise UsageError(f"--epoch {epoch} does not fit int64")
        attrs[schema.ATTR_EPOCH] = epoch
    if class_names is not None:
        attrs[schema.ATTR_CLASS_NAMES] = np.array(class_names, dtype=object)
    return attrs
