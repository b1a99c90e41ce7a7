"""The feature-file writer: explicit ~1 MiB chunks, rows_written after each flush, rename on finish."""

import h5py
import numpy as np
import pytest

from nccli import schema
from nccli.errors import UsageError
from nccli.io.writer import (
    CHUNK_BYTES,
    FeatureWriter,
    RowDataset,
    chunk_rows,
    partial_path,
)

ROWS = 5000


def _create(path, dtype="float32", compression="none", options=None, huge=True):
    datasets = [
        RowDataset(schema.LABELS, None, "int64"),
        RowDataset(schema.layer_path("wide"), 512, dtype, {schema.ATTR_ORDER: 0}),
    ]
    if huge:  # 6 GB declared: a compressed finish() would copy (and compress) all of it
        datasets.append(RowDataset(schema.layer_path("huge"), 300_000, dtype, {schema.ATTR_ORDER: 1}))
    attrs = {schema.ATTR_FORMAT: schema.FORMAT_NAME, schema.ATTR_FORMAT_VERSION: schema.FORMAT_VERSION}
    return FeatureWriter.create(str(path), ROWS, datasets, attrs, options or {"run": 1}, compression)


@pytest.mark.parametrize(("dtype", "itemsize"), [("float32", 4), ("float16", 2)])
def test_chunks_are_whole_rows_of_about_one_mebibyte(tmp_path, dtype, itemsize):
    writer = _create(tmp_path / "f.h5", dtype)
    writer.close()
    with h5py.File(partial_path(str(tmp_path / "f.h5")), "r") as handle:
        wide = handle[schema.layer_path("wide")]
        assert wide.chunks == (CHUNK_BYTES // (512 * itemsize), 512)
        assert wide.dtype == np.dtype(dtype)
        assert handle[schema.layer_path("huge")].chunks == (1, 300_000)  # one row is already above 1 MiB
        assert handle[schema.LABELS].chunks == (ROWS,)  # capped at the row count
        assert not handle.attrs[schema.ATTR_COMPLETE] and handle.attrs[schema.ATTR_ROWS_WRITTEN] == 0


def test_chunk_rows_bounds():
    assert chunk_rows(width=1, itemsize=8, rows=10) == 10
    assert chunk_rows(width=256, itemsize=4, rows=10**6) == 1024
    assert chunk_rows(width=10**7, itemsize=4, rows=10) == 1


def test_rows_written_follows_each_write_and_finish_renames(tmp_path):
    path = tmp_path / "f.h5"
    writer = _create(path, compression="lzf", huge=False)
    rng = np.random.default_rng(0)
    wide = rng.normal(size=(ROWS, 512)).astype(np.float32)
    for start in range(0, ROWS, 2000):
        stop = min(start + 2000, ROWS)
        writer.write(start, {schema.LABELS: np.arange(start, stop), schema.layer_path("wide"): wide[start:stop]})
        writer.close()
        assert writer.rows_written == stop
        with h5py.File(partial_path(str(path)), "r") as reader:
            assert reader.attrs[schema.ATTR_ROWS_WRITTEN] == stop
        writer = FeatureWriter.resume(str(path), {"run": 1})
    with pytest.raises(ValueError, match="in order"):
        writer.write(0, {schema.LABELS: np.arange(3)})
    writer.finish()
    assert path.exists() and not (tmp_path / "f.h5.partial").exists()
    with h5py.File(path, "r") as handle:
        assert handle.attrs[schema.ATTR_COMPLETE]
        assert handle[schema.layer_path("wide")].compression == "lzf"
        np.testing.assert_array_equal(handle[schema.layer_path("wide")][()], wide)


def test_resume_checks_options_and_continues_at_rows_written(tmp_path):
    path = tmp_path / "f.h5"
    writer = _create(path, options={"dtype": "float32", "layers": ["wide"]})
    writer.write(0, {schema.LABELS: np.arange(100)})
    writer.close()
    with pytest.raises(UsageError, match="dtype: float32 → float16"):
        FeatureWriter.resume(str(path), {"dtype": "float16", "layers": ["wide"]})
    resumed = FeatureWriter.resume(str(path), {"dtype": "float32", "layers": ["wide"]})
    assert resumed.rows_written == 100 and resumed.rows == ROWS
    resumed.close()


def test_finish_before_all_rows_is_a_bug(tmp_path):
    writer = _create(tmp_path / "f.h5")
    with pytest.raises(ValueError, match="0 of 5000 rows"):
        writer.finish()
    writer.close()


def test_the_class_names_of_a_vocabulary_fit_in_the_file(tmp_path):
    """50 257 names (GPT-2's vocabulary) overflow the earliest HDF5 format's 64 KiB attribute header: convert,
    like extract, writes the file format of HDF5 1.8, whose dense attribute storage holds them."""
    from cli_helpers import invoke

    classes = 50_257
    features = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    np.savez(tmp_path / "arrays.npz", features=features, labels=np.arange(6, dtype=np.int64) * 1000)
    names = [f"token {index}" for index in range(classes)]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    result = invoke(
        "convert", tmp_path / "arrays.npz", "--num-classes", classes,
        "--class-names", tmp_path / "names.txt", "--out", tmp_path / "k.h5",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    with h5py.File(tmp_path / "k.h5") as handle:
        assert list(handle.attrs[schema.ATTR_CLASS_NAMES].astype(str)) == names
