"""Typed summary records: one value for every metric column of the registry, each named exactly once.

The per-class table is checked the same way (:func:`class_table`).

A record is built from what ``summarize_layer`` computed: exactly the columns
that apply to the layer (``schema.Column.applies_to``; classifier-layer
columns only with a classifier), none of the opt-in ones (``--mse``,
``--snr``, ``--ood``), which are added afterwards by name. An unknown or a
missing name is an error (a bug in nccli), never a silently null column; the
columns that do not apply are NaN (null in Parquet).
"""

from collections.abc import Iterator, Mapping
from types import MappingProxyType

import numpy as np

from nccli import schema


def computed_columns(classifier: bool) -> frozenset[str]:
    """The columns ``summarize_layer`` must give: every non-opt-in one that applies to the layer."""
    return frozenset(
        column.name
        for column in schema.METRICS
        if column.name not in schema.OPT_IN_METRICS and (classifier or column.applies_to == schema.ANY_LAYER)
    )


class SummaryRecord(Mapping):
    """Read-only mapping column → float over ``schema.METRIC_COLUMNS``, in registry order."""

    def __init__(self, values: Mapping[str, float]):
        self._values = MappingProxyType({name: float(values[name]) for name in schema.METRIC_COLUMNS})

    @classmethod
    def computed(cls, values: Mapping[str, float], classifier: bool) -> "SummaryRecord":
        """The record of a layer: ``values`` must name exactly :func:`computed_columns`; the rest are NaN."""
        _check(set(values), computed_columns(classifier), "summarize_layer")
        return cls({name: values.get(name, np.nan) for name in schema.METRIC_COLUMNS})

    def with_opt_in(self, values: Mapping[str, float]) -> "SummaryRecord":
        """This record with opt-in columns set (the MSE decomposition, the SNR, NC5); nothing else may change."""
        unknown = set(values) - set(schema.OPT_IN_METRICS)
        if unknown:
            raise KeyError(f"not opt-in metric columns: {', '.join(sorted(unknown))}")
        return SummaryRecord({**self._values, **values})

    def __getitem__(self, name: str) -> float:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def class_table(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-class table as columns: exactly ``schema.COL_CLASS`` and every name of ``schema.CLASS_METRICS``."""
    _check(set(columns), frozenset((schema.COL_CLASS, *schema.CLASS_METRICS)), "per-class table")
    return columns


def _check(given: set[str], expected: frozenset[str], where: str) -> None:
    unknown, missing = given - expected, expected - given
    if unknown or missing:
        raise KeyError(f"{where}: unknown columns {sorted(unknown)}, missing columns {sorted(missing)}")
