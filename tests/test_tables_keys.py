"""The per-class and per-pair tables carry the summary's keys of their file and layer (``file``, ``split``,
``epoch``, ``layer``; docs/report.md), with the summary's types and values, so they join the summary on
``split, epoch, layer`` as well as on ``file, layer``."""

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cli_helpers import invoke
from h5files import good_file

from nccli import schema
from nccli.analyze.analysis import AnalyzeConfig, analyze_features

KEYS = [schema.COL_FILE, schema.COL_SPLIT, schema.COL_EPOCH, schema.COL_LAYER]


def runs(folder):
    """Three files: train and test of epoch 10 (the test file with class names), and one with no epoch."""
    return [
        good_file(folder / "train.h5", epoch=10),
        good_file(folder / "test.h5", seed=1, epoch=10, split="test", class_names=["a", "b", "c", "d"]),
        good_file(folder / "last.h5", seed=2),
    ]


def analyzed(folder, *options):
    paths = {name: folder / f"{name}.parquet" for name in ("out", "classes", "pairs")}
    args = [item for name, path in paths.items() for item in (f"--{name}", path)]
    result = invoke("analyze", *runs(folder), *args, *options)
    assert result.exit_code == 0, result.output
    return {name: pq.read_table(path) for name, path in paths.items()}


def keys_by_file(table: pa.Table) -> dict[str, set[tuple]]:
    rows = table.select(KEYS).to_pylist()
    found: dict[str, set[tuple]] = {}
    for row in rows:
        found.setdefault(row[schema.COL_FILE], set()).add(tuple(row.values()))
    return found


def test_both_tables_carry_the_summarys_keys_with_its_types_and_values(tmp_path):
    tables = analyzed(tmp_path)
    summary = tables["out"]
    for name, after in (("classes", [schema.COL_CLASS, schema.COL_CLASS_NAME]), ("pairs", [schema.COL_CLASS])):
        table = tables[name]
        assert table.column_names[: len(KEYS) + len(after)] == KEYS + after
        for key in KEYS:
            assert table.schema.field(key).type == summary.schema.field(key).type, (name, key)
        assert keys_by_file(table) == keys_by_file(summary), name
    epochs = dict(zip(summary.column("file").to_pylist(), summary.column("epoch").to_pylist()))
    assert sorted(epochs.values(), key=str) == [10, 10, None]  # no epoch attribute: null, as in the summary


def test_the_tables_join_the_summary_on_split_epoch_and_layer(tmp_path):
    tables = analyzed(tmp_path, "--pairs-top", "2")
    by = [schema.COL_SPLIT, schema.COL_EPOCH, schema.COL_LAYER]
    summary = tables["out"].select([*by, "nc1"])
    for name, per_layer in (("classes", 4), ("pairs", 2)):
        table = tables[name].filter(pc.is_valid(tables[name].column(schema.COL_EPOCH)))
        joined = table.join(summary, keys=by)
        assert joined.num_rows == table.num_rows == 2 * 2 * per_layer  # two files with an epoch, two layers
        test = joined.filter(pc.equal(joined.column(schema.COL_SPLIT), "test"))
        assert set(test.column(schema.COL_FILE).to_pylist()) == {str(tmp_path / "test.h5")}


def test_the_python_api_gives_the_same_keys(tmp_path):
    train, test, _ = runs(tmp_path)
    result = analyze_features(AnalyzeConfig(files=(str(test),), device="cpu"))
    classes = pa.concat_tables(result.classes)
    assert set(classes.column(schema.COL_SPLIT).to_pylist()) == {"test"}
    assert set(classes.column(schema.COL_EPOCH).to_pylist()) == {10}
    pairs = []
    analyze_features(AnalyzeConfig(files=(str(train),), device="cpu"), pairs=pairs.append)
    table = pa.Table.from_batches(pairs)
    assert table.num_rows == 2 * 6  # two layers of K(K−1)/2 pairs
    assert set(zip(table.column(schema.COL_SPLIT).to_pylist(), table.column(schema.COL_EPOCH).to_pylist())) == {
        ("train", 10)
    }
