"""``nccli measure``: extract and analyze in one command with no feature file, equal to extract + analyze of
the same model and data (1e-10), for image models and causal language models, and refusing a model that does
not give the same rows twice."""

import math

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from cli_helpers import assert_user_error, invoke
from extract_helpers import random_images, tiny_cnn, write_npz
from torch import nn

from nccli import schema

ARCH = ("--arch", "extract_helpers:tiny_cnn")


def _same_reports(first, second, tolerance: float = 1e-10) -> None:
    """The same rows and columns; every number equal to ``tolerance`` (relative to its size), file aside."""
    a, b = pq.read_table(first).to_pylist(), pq.read_table(second).to_pylist()
    assert len(a) == len(b) and len(a) > 0
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a.keys() == row_b.keys()
        for key, value in row_a.items():
            other = row_b[key]
            if key == schema.COL_FILE:
                continue
            if isinstance(value, float) and not (math.isnan(value) or other is None):
                assert abs(value - other) <= tolerance * max(1.0, abs(value)), (key, value, other)
            else:
                assert value == other or (value != value and other != other), (key, value, other)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("measure")
    torch.save(tiny_cnn().state_dict(), folder / "model.pt")
    data = write_npz(folder / "data.npz", *random_images(n=40, size=16))
    return folder, data


def test_measure_equals_extract_then_analyze_with_every_table(images, tmp_path):
    folder, data = images
    common = (folder / "model.pt", data, *ARCH, "--normalize", "imagenet", "--batch-size", 7)
    extracted = invoke("extract", *common, "--out", tmp_path / "f.h5", "--workers", 0)
    assert extracted.exit_code == 0, extracted.stderr
    tables = ("--classes", "--pairs")
    analyzed = invoke(
        "analyze", tmp_path / "f.h5", "--out", tmp_path / "a.parquet", "--mse",
        *(part for option in tables for part in (option, tmp_path / f"a{option[2:]}.parquet")),
    )  # fmt: skip
    assert analyzed.exit_code == 0, analyzed.stderr
    measured = invoke(
        "measure", *common, "--out", tmp_path / "m.parquet", "--mse",
        *(part for option in tables for part in (option, tmp_path / f"m{option[2:]}.parquet")),
    )  # fmt: skip
    assert measured.exit_code == 0, measured.stderr
    assert measured.stdout.strip() == str(tmp_path / "m.parquet")
    for name in ("", "classes", "pairs"):
        _same_reports(tmp_path / f"a{name}.parquet", tmp_path / f"m{name}.parquet")
    rows = pq.read_table(tmp_path / "m.parquet").to_pylist()
    assert {row[schema.COL_FILE] for row in rows} == {str(data)}
    with h5py.File(tmp_path / "f.h5") as handle:
        assert [row[schema.COL_LAYER] for row in rows] == sorted(
            handle[schema.LAYERS], key=lambda name: handle[schema.layer_path(name)].attrs[schema.ATTR_ORDER]
        )


def test_measure_of_a_language_model_equals_extract_then_analyze(tmp_path):
    pytest.importorskip("transformers")
    from lm_helpers import causal_lm, trained_tokenizer

    tokenizer = trained_tokenizer()
    causal_lm(tmp_path / "gpt", "gpt2", tokenizer)
    np.random.default_rng(2).integers(0, len(tokenizer), size=90).astype(np.uint32).tofile(tmp_path / "ids.bin")
    common = (tmp_path / "gpt", tmp_path / "ids.bin", "--token-dtype", "uint32", "--seq-len", 12, "--stride", 9)
    assert invoke("extract", *common, "--out", tmp_path / "t.h5").exit_code == 0
    for name, restriction in (("all", ()), ("top", ("--top-classes", 7, "--min-count", 2))):
        analyzed = invoke("analyze", tmp_path / "t.h5", *restriction, "--out", tmp_path / f"a-{name}.parquet")
        assert analyzed.exit_code == 0, analyzed.stderr
        measured = invoke("measure", *common, *restriction, "--out", tmp_path / f"m-{name}.parquet")
        assert measured.exit_code == 0, measured.stderr
        _same_reports(tmp_path / f"a-{name}.parquet", tmp_path / f"m-{name}.parquet")
    kept = pq.read_table(tmp_path / "m-top.parquet").to_pylist()
    assert {row[schema.COL_N_CLASSES] for row in kept} == {7}  # the restriction reached measure


def test_measure_with_layer_groups_runs_the_model_once_per_pass_of_each_group(images, tmp_path, monkeypatch):
    from nccli.analyze import measure

    folder, data = images
    common = (folder / "model.pt", data, *ARCH, "--normalize", "none", "--layers", "fc:input,fc,block")
    assert invoke("measure", *common, "--out", tmp_path / "one.parquet").exit_code == 0
    monkeypatch.setattr(
        measure, "layer_groups", lambda xp, info, layers, config, budget: [(layer,) for layer in layers]
    )
    calls = []
    original = nn.Module.__call__
    monkeypatch.setattr(
        nn.Module, "__call__", lambda self, *a, **k: calls.append(type(self)) or original(self, *a, **k)
    )
    assert invoke("measure", *common, "--out", tmp_path / "groups.parquet").exit_code == 0
    _same_reports(tmp_path / "one.parquet", tmp_path / "groups.parquet")
    batches = math.ceil(40 / 128)
    from extract_helpers import TinyCNN

    assert calls.count(TinyCNN) == 1 + 3 * 2 * batches  # the probe, then two passes for each of three groups


class Dropping(nn.Module):
    """A model whose dropout stays on in eval mode: each forward pass gives other rows."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(nn.functional.dropout(self.body(x), 0.5, training=True))


def dropping() -> nn.Module:
    torch.manual_seed(0)
    return Dropping()


def test_a_model_that_gives_other_rows_on_the_second_pass_is_refused(images, tmp_path):
    _, data = images
    result = invoke("measure", f"{__file__}:dropping", data, "--normalize", "none", "--out", tmp_path / "r.parquet")
    assert_user_error(result, "the model gave other rows on its second pass", "dropout")
    assert list(tmp_path.iterdir()) == []


def test_measure_refuses_its_input_as_output_and_bad_options(images, tmp_path):
    folder, data = images
    common = (folder / "model.pt", data, *ARCH, "--normalize", "none")
    assert_user_error(invoke("measure", *common, "--out", data), "is the input file")
    assert_user_error(invoke("measure", *common, "--out", tmp_path / "r.parquet", "--pairs-top", 3), "add --pairs")
    assert list(tmp_path.iterdir()) == []
