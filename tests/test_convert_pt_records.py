"""A ``.pt`` file is a zip archive with one record per storage, which ``torch.load(mmap=True)`` maps without
checking its size: convert refuses a tensor whose record is shorter than its storage, or compressed, before
a row is read (its rows would be the bytes of other records)."""

import collections
import contextlib
import os
import zipfile

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke

from nccli.io.arrays import open_sources

N = 40


def tensors() -> dict[str, torch.Tensor]:
    labels = torch.arange(N) % 4
    return {
        "labels": labels,
        "features": torch.randn(N, 3, generator=torch.Generator().manual_seed(0)) + labels[:, None],
    }


def rewritten(source, target, change) -> None:
    """``target``: the records of ``source``, each passed through ``change(info, data) -> data``."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            copy = zipfile.ZipInfo(info.filename, info.date_time)
            copy.compress_type = info.compress_type
            new.writestr(copy, change(copy, data))


def features_record(path) -> str:
    """The record of the second storage saved, ``features``'s (``<folder>/data/1``)."""
    with zipfile.ZipFile(path) as archive:
        return next(name for name in archive.namelist() if name.endswith("/data/1"))


def damaged(folder, saved, change) -> tuple:
    """``saved`` written by torch.save, then its ``features`` record (the second storage) rewritten."""
    torch.save(saved, folder / "good.pt")
    record = features_record(folder / "good.pt")
    rewritten(
        folder / "good.pt",
        folder / "run.pt",
        lambda info, data: change(info, data) if info.filename == record else data,
    )
    os.remove(folder / "good.pt")
    return folder / "run.pt", record


def truncate(info, data):
    return data[:12]  # 3 of the 120 float32 values


def compress(info, data):
    info.compress_type = zipfile.ZIP_DEFLATED
    return data


@pytest.mark.parametrize(
    "saved",
    [tensors(), collections.OrderedDict(tensors())],  # a plain dict and a state dict's OrderedDict
    ids=["dict", "ordered"],
)
def test_a_storage_record_shorter_than_its_tensor_is_refused_in_one_line(tmp_path, saved):
    source, record = damaged(tmp_path, saved, truncate)
    result = invoke("convert", source, "--out", tmp_path / "out.h5")
    assert_user_error(result, "key 'features'", "run.pt", f"'{record}'", "holds 12 bytes", "needs 480", "torch.save")
    assert sorted(os.listdir(tmp_path)) == ["run.pt"]


def test_a_compressed_storage_record_is_refused_in_one_line(tmp_path):
    source, record = damaged(tmp_path, tensors(), compress)
    result = invoke("convert", source, "--out", tmp_path / "out.h5")
    assert_user_error(result, "key 'features'", f"'{record}'", "is compressed", "torch.save")
    assert sorted(os.listdir(tmp_path)) == ["run.pt"]


def test_tensors_sharing_or_viewing_storages_are_read_whole(tmp_path):
    """Views, parameters and shared storages: every record holds its storage, nothing is refused."""
    whole = torch.arange(3 * N, dtype=torch.float64).reshape(N, 3)
    saved = {
        "labels": torch.arange(N) % 4,
        "features": whole[:, 1:],  # a view of a larger storage
        "same": whole,  # the same storage again
        "weight": torch.nn.Parameter(torch.ones(4, 2)),
        "half": torch.ones(N, 2, dtype=torch.bfloat16),
    }
    torch.save(saved, tmp_path / "run.pt")
    with contextlib.ExitStack() as stack:
        arrays = open_sources((str(tmp_path / "run.pt"),), stack).arrays
        assert np.array_equal(arrays["features"].read(), whole[:, 1:].numpy())
        assert arrays["weight"].read().shape == (4, 2) and arrays["half"].read().dtype == np.float32
