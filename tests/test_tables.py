"""Tables for people never break a number across lines: at 80 or 40 columns, columns that do not fit are
left out, and a one-line note says which and how to choose them."""

import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_helpers import assert_user_error, invoke, invoke_with_columns, snapshot
from h5files import good_file
from rich.console import Console

from nccli.cli.common import TABLE_ROWS_MAX
from nccli.report.formats import compact, to_rich

NUMBER = re.compile(r"(?<![\w.+-])-?\d[\d.]*(?:e[+-]\d+)?(?![\w.])")


def report(folder, files=3):
    paths = [
        good_file(folder / f"run_{index}.h5", seed=index, epoch=10 * index + 1, split="test") for index in range(files)
    ]
    out = folder / "r.parquet"
    assert invoke("analyze", *paths, "--out", out, "--device", "cpu").exit_code == 0
    return out


def shown_numbers(text: str) -> list[str]:
    """Every number in the table body, as printed."""
    return [match for line in text.splitlines() for match in NUMBER.findall(line)]


def expected_numbers(table: pa.Table, columns: list[str]) -> set[str]:
    from nccli.report.formats import _human

    return {
        _human(value)
        for column in columns
        for value in table.column(column).to_pylist()
        if isinstance(value, (int, float))
    }


@pytest.mark.parametrize("width", [80, 40])
def test_numbers_are_whole_at_any_width(tmp_path, width):
    table = compact(pq.read_table(report(tmp_path)))
    rich_table, left_out = to_rich(table, title="r.parquet", width=width)
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(rich_table)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    kept = [column for column in table.column_names if column not in left_out]
    assert left_out == table.column_names[len(kept) :] and kept[0] == "file"  # cut from the right
    assert left_out  # these tables are wider than 80 columns
    expected = expected_numbers(table, [c for c in kept if c not in ("file", "split", "layer")])
    assert expected and expected <= set(shown_numbers(text))  # every number shown, whole, on one line


def test_a_wide_console_keeps_every_column(tmp_path):
    table = compact(pq.read_table(report(tmp_path)))
    assert to_rich(table, width=400)[1] == [] and to_rich(table)[1] == []


@pytest.mark.parametrize("width", [80, 40])
def test_report_command_at_a_narrow_terminal(tmp_path, width):
    out = report(tmp_path)
    before = snapshot(tmp_path)
    result = invoke_with_columns(width, "report", out)
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= width
    table = compact(pq.read_table(out))
    note = result.stderr.strip().splitlines()
    assert (
        len(note) == 1 and note[0].startswith("note: ") and "--columns" in note[0] and f"{width} characters" in note[0]
    )
    left_out = note[0].split(": ", 2)[2].split(";")[0].split(", ")
    assert left_out and set(left_out) < set(table.column_names) and "nc4_ncc_mismatch" in left_out
    kept = [c for c in table.column_names if c not in left_out]
    assert expected_numbers(table, [c for c in kept if c not in ("file", "split", "layer")]) <= set(
        shown_numbers(result.stdout)
    )
    assert snapshot(tmp_path) == before


def test_report_columns_chosen_to_fit_need_no_note(tmp_path):
    out = report(tmp_path)
    result = invoke_with_columns(40, "report", out, "--columns", "epoch,layer,nc1")
    assert result.exit_code == 0 and result.stderr == ""
    assert expected_numbers(pq.read_table(out, columns=["epoch", "nc1"]), ["epoch", "nc1"]) <= set(
        shown_numbers(result.stdout)
    )


def test_numbers_in_scientific_notation_stay_whole():
    table = pa.table({"layer": ["a", "b"], "tiny": [1.234e-05, np.nan], "huge": [-9.876e12, 0.5]})
    rich_table, left_out = to_rich(table, width=40)
    console = Console(width=40, record=True, file=io.StringIO())
    console.print(rich_table)
    text = console.export_text()
    assert left_out == [] and {"1.234e-05", "-9.876e+12", "0.5"} <= set(shown_numbers(text))


def test_a_table_for_people_shows_its_first_rows_and_says_so(tmp_path):
    """A small file may declare millions of rows (it took minutes to draw them): the table stops at its cap."""
    rows = TABLE_ROWS_MAX + 500
    path = tmp_path / "many.parquet"
    pq.write_table(
        pa.table({"file": ["a.h5"] * rows, "layer": [f"l{i}" for i in range(rows)], "nc1": [1.0] * rows}), path
    )
    result = invoke("report", path, "--columns", "layer,nc1")
    assert result.exit_code == 0, result.output
    assert f"l{TABLE_ROWS_MAX - 1} " in result.stdout and f"l{TABLE_ROWS_MAX} " not in result.stdout
    assert f"showing the first {TABLE_ROWS_MAX} of {rows} rows" in result.stderr
    every = invoke("report", path, "--format", "csv", "--columns", "layer")
    assert every.stdout.count("\n") == rows + 1  # the formats for pipes: every row


def test_a_parquet_file_naming_a_column_twice_is_one_line(tmp_path):
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0])], names=["nc1", "nc1"]), path)
    assert_user_error(invoke("report", path), "names column(s) 'nc1' twice")
