"""A redesign changes no number: the many-class report equals the stored one bit for bit (tests/stored_reports.py;
the demo's is checked in test_demo.py)."""

from stored_reports import assert_as_stored, many_classes_report


def test_the_many_class_report_is_the_stored_one(tmp_path):
    assert_as_stored("many_classes", many_classes_report(tmp_path))
