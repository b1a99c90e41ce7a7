"""Image folders as new users bring them: unreadable files (one line naming the file, or left out with
--skip-unreadable and listed in the file), and an odd image size wherever it sits, even alone in the last batch."""

import h5py
import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke
from extract_helpers import (
    IMAGENET,
    differences,
    random_images,
    read_datasets,
    tiny_cnn,
)
from PIL import Image

from nccli import schema

ARCH = ("--arch", "extract_helpers:tiny_cnn")
ROWS = 8
BAD = 5  # dataset index of the damaged file: in the third batch of two, so four rows come before it


def _damage(path, kind: str) -> None:
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"not an image at all")


def _folder(tmp_path, odd: dict | None = None):
    """Two classes of four 16×16 PNGs (sorted names, so dataset index = position); ``odd`` replaces some."""
    images, _ = random_images(n=ROWS, size=16)
    folder = tmp_path / "folder"
    paths = []
    for index in range(ROWS):
        (folder / f"class{index // 4}").mkdir(parents=True, exist_ok=True)
        path = folder / f"class{index // 4}" / f"{index}.png"
        Image.fromarray((odd or {}).get(index, images[index])).save(path)
        paths.append(path)
    torch.save(tiny_cnn().state_dict(), tmp_path / "model.pt")
    return folder, paths


def _snapshot(directory) -> dict:
    return {str(path): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


def _extract(tmp_path, folder, out, *options):
    return invoke(
        "extract", tmp_path / "model.pt", folder, *ARCH, *IMAGENET, "--out", out, "--batch-size", 2, "--workers", 0,
        *options,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["truncated", "empty", "not an image"])
def test_an_unreadable_image_is_named_in_one_line_and_the_rows_before_it_are_kept(tmp_path, kind):
    folder, paths = _folder(tmp_path)
    _damage(paths[BAD], kind)
    before = _snapshot(tmp_path)
    out = tmp_path / "f.h5"
    assert_user_error(
        _extract(tmp_path, folder, out),
        f"cannot read image '{paths[BAD]}' (sample {BAD})",
        "--skip-unreadable",
        f"'{out}.partial' keeps the first 4 of {ROWS} rows",
        "--resume",
    )
    assert _snapshot(tmp_path) == before | {str(out) + ".partial": (tmp_path / "f.h5.partial").read_bytes()}
    assert not out.exists()


def test_skip_unreadable_leaves_them_out_lists_them_and_analyze_reads_the_file(tmp_path):
    folder, paths = _folder(tmp_path)
    _damage(paths[BAD], "truncated")
    _damage(paths[0], "empty")  # the first sample too: the probe takes the first readable ones
    result = _extract(tmp_path, folder, tmp_path / "f.h5", "--skip-unreadable")
    assert result.exit_code == 0, result.stderr
    assert "left out 2 unreadable sample(s) (0, 5)" in result.stderr
    stored = read_datasets(tmp_path / "f.h5")
    assert stored[schema.SKIPPED_INDEX].tolist() == [0, BAD]
    assert stored[schema.SAMPLE_INDEX].tolist() == [1, 2, 3, 4, 6, 7]
    assert stored[schema.LABELS].tolist() == [0, 0, 0, 1, 1, 1]
    with h5py.File(tmp_path / "f.h5", "r") as handle:
        assert handle.attrs[schema.ATTR_ROWS_WRITTEN] == 6 and handle.attrs[schema.ATTR_COMPLETE]

    # the same rows as a folder without the two files (up to rounding: the batches are made up differently)
    for index in (0, BAD):
        paths[index].unlink()
    assert _extract(tmp_path, folder, tmp_path / "clean.h5").exit_code == 0
    clean = read_datasets(tmp_path / "clean.h5")
    for path in clean:
        if path != schema.SAMPLE_INDEX:
            np.testing.assert_allclose(stored[path], clean[path], rtol=1e-5, atol=1e-6, err_msg=path)

    result = invoke("analyze", tmp_path / "f.h5", "--out", tmp_path / "r.parquet")
    assert result.exit_code == 0, result.stderr


def test_resume_with_skip_unreadable_after_stopping_at_an_unreadable_image(tmp_path):
    folder, paths = _folder(tmp_path)
    _damage(paths[BAD], "not an image")
    assert _extract(tmp_path, folder, tmp_path / "f.h5").exit_code == 2
    result = _extract(tmp_path, folder, tmp_path / "f.h5", "--resume", "--skip-unreadable")
    assert result.exit_code == 0, result.stderr
    assert _extract(tmp_path, folder, tmp_path / "whole.h5", "--skip-unreadable").exit_code == 0
    assert differences(tmp_path / "f.h5", tmp_path / "whole.h5") == []


def test_a_dataloader_worker_names_the_unreadable_file_in_one_line(tmp_path):
    folder, paths = _folder(tmp_path)
    _damage(paths[BAD], "empty")
    result = _extract(tmp_path, folder, tmp_path / "f.h5", "--workers", 1)
    assert_user_error(result, f"cannot read image '{paths[BAD]}' (sample {BAD})", "--resume")


def test_nothing_readable_is_refused(tmp_path):
    folder, paths = _folder(tmp_path)
    for path in paths:
        _damage(path, "empty")
    before = _snapshot(tmp_path)
    assert_user_error(_extract(tmp_path, folder, tmp_path / "f.h5", "--skip-unreadable"), "no selected sample")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("batch_size", [2, 7, 8])
def test_an_odd_image_size_is_named_wherever_it_sits(tmp_path, batch_size):
    """The last image is 20×24: in a batch with others, alone in the last batch (7), or in the probe's batch (8)."""
    folder, paths = _folder(tmp_path, odd={ROWS - 1: np.zeros((20, 24, 3), dtype=np.uint8)})
    before = _snapshot(tmp_path)
    result = _extract(tmp_path, folder, tmp_path / "f.h5", "--batch-size", batch_size)
    assert_user_error(result, f"image '{paths[-1]}' (sample 7) is 3×20×24", "images before it are 3×16×16", "--resize")
    kept = (ROWS - 1) // batch_size * batch_size
    if kept:
        assert f"keeps the first {kept} of {ROWS} rows" in result.stderr
        before[str(tmp_path / "f.h5.partial")] = (tmp_path / "f.h5.partial").read_bytes()
    assert _snapshot(tmp_path) == before


def test_the_shard_index_lists_the_skipped_samples_of_every_shard(tmp_path):
    """Under torchrun each rank leaves out its own unreadable samples; the index over the shards lists them all."""
    import json

    from h5files import write_feature_file

    from nccli.io import shards

    target = str(tmp_path / "f.h5")
    options = {"dataset": "folder"}
    (tmp_path / "f.shards").mkdir()
    for rank, skipped in enumerate(([1], [6, 7])):
        path = shards.shard_path(target, rank, 2)
        shard_options = json.dumps({**options, schema.EXTRACT_OPTION_SHARD: [rank, 2, 4 * rank, 4 * rank + 4]})
        write_feature_file(
            path,
            np.zeros(3, dtype=np.int64),
            {"fc:input": np.ones((3, 2), dtype=np.float32)},
            complete=True,
            extra_root_attrs={schema.ATTR_EXTRACT_OPTIONS: shard_options},
        )
        with h5py.File(path, "a") as handle:
            handle[schema.SKIPPED_INDEX] = np.array(skipped, dtype=np.int64)
    shards.write_index(target, 2, options)
    assert read_datasets(tmp_path / "f.h5")[schema.SKIPPED_INDEX].tolist() == [1, 6, 7]
