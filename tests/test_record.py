"""Summary records and the per-class table: every registry column named exactly once, or an error."""

import math

import numpy as np
import pytest

from nccli import schema
from nccli.metrics.record import SummaryRecord, class_table, computed_columns


def computed(classifier: bool) -> dict[str, float]:
    return {name: float(number) for number, name in enumerate(sorted(computed_columns(classifier)))}


@pytest.mark.parametrize("classifier", [True, False])
def test_a_record_holds_every_column_in_registry_order(classifier):
    values = computed(classifier)
    record = SummaryRecord.computed(values, classifier)
    assert tuple(record) == schema.METRIC_COLUMNS
    for name in schema.METRIC_COLUMNS:
        assert record[name] == values[name] if name in values else math.isnan(record[name])
    classifier_only = {c.name for c in schema.METRICS if c.applies_to == schema.CLASSIFIER_LAYER}
    assert (classifier_only - set(schema.OPT_IN_METRICS) <= set(values)) == classifier


@pytest.mark.parametrize("change", ["typo", "missing", "opt-in"])
def test_an_unknown_or_missing_column_is_an_error_not_a_null(change):
    values = computed(True)
    if change == "typo":
        values["nc2_equinrom"] = values.pop("nc2_equinorm")
    elif change == "missing":
        del values["margin_normalized"]
    else:
        values["mse_loss"] = 1.0  # opt-in columns come through with_opt_in only
    with pytest.raises(KeyError):
        SummaryRecord.computed(values, True)


def test_opt_in_columns_are_added_by_name_and_nothing_else_changes():
    record = SummaryRecord.computed(computed(True), True)
    added = record.with_opt_in(dict(zip(schema.SNR_METRICS, (1.0, 2.0))))
    assert [added[name] for name in schema.SNR_METRICS] == [1.0, 2.0]
    others = [name for name in schema.METRIC_COLUMNS if name not in schema.SNR_METRICS]
    assert np.array_equal([added[name] for name in others], [record[name] for name in others], equal_nan=True)
    with pytest.raises(KeyError):
        record.with_opt_in({"nc1": 0.0})


def test_the_class_table_has_exactly_the_registry_columns():
    columns = {name: [0.0] for name in (schema.COL_CLASS, *schema.CLASS_METRICS)}
    assert class_table(columns) is columns
    with pytest.raises(KeyError):
        class_table({**columns, "w_nrom": [0.0]})


def test_parquet_types_and_compact_columns_come_from_the_registry():
    from nccli.report.formats import COMPACT_COLUMNS
    from nccli.report.parquet import arrow_type
    from nccli.report.tables import class_columns, pair_columns

    for column in (*schema.SUMMARY_COLUMNS, *class_columns(True), *pair_columns(True)):
        assert str(arrow_type(column)) in ("double", "int64", "string"), column
    assert str(arrow_type(schema.CLASS_COLUMNS[0].name)) == "int64"  # 'n': the registry says int64
    with pytest.raises(KeyError):
        arrow_type("nc1_tidle")
    flagged = [c.name for c in schema.METRICS if c.compact]
    assert COMPACT_COLUMNS[-len(flagged) :] == tuple(flagged) and set(COMPACT_COLUMNS) <= set(schema.SUMMARY_COLUMNS)
