"""The row sources analyze's passes read (nccli/io/rows.py): the feature file and batches in memory both
implement every method of ``RowSource`` with its signature."""

import inspect

import pytest

from nccli.analyze.memory import BatchRows
from nccli.io.reader import FeatureFile
from nccli.io.rows import RowSource

METHODS = [name for name, value in vars(RowSource).items() if inspect.isfunction(value) and not name.startswith("_")]


@pytest.mark.parametrize("source", [FeatureFile, BatchRows])
def test_every_row_source_has_the_protocols_methods_and_signatures(source):
    assert set(METHODS) == {"block_rows", "blocks", "part_offsets"}
    for name in METHODS:
        wanted = list(inspect.signature(getattr(RowSource, name)).parameters)
        assert list(inspect.signature(getattr(source, name)).parameters) == wanted, name
