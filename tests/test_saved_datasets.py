"""A folder Hugging Face ``datasets`` wrote with ``save_to_disk`` as token DATA: its rows equal those of the same
ids as ``.npy`` or the same documents as ``.jsonl``, read with pyarrow alone."""

import json

import h5py
import numpy as np
import pytest
from cli_helpers import assert_user_error, invoke
from extract_helpers import read_datasets
from lm_helpers import SENTENCES, causal_lm, trained_tokenizer

from nccli import schema

datasets = pytest.importorskip("datasets")
pytest.importorskip("transformers")

ROWS_OF_THE_FILE = (schema.LABELS, schema.SAMPLE_INDEX, schema.LAYERS)


@pytest.fixture(scope="module")
def tokenizer():
    return trained_tokenizer()


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("lm") / "gpt2"
    causal_lm(folder, "gpt2", tokenizer)
    return folder


@pytest.fixture(autouse=True)
def quiet_datasets():
    datasets.disable_progress_bars()


def _documents_of_ids(vocabulary: int, seed: int) -> list[list[int]]:
    """About 100 ids in rows of 1 to 20, as a tokenised dataset holds them."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocabulary, size=rng.integers(1, 21)).tolist() for _ in range(10)]


def _extract(model, data, out, *options) -> dict[str, np.ndarray]:
    result = invoke("extract", model, data, "--seq-len", 12, "--stride", 8, "--batch-size", 3, *options, "--out", out)
    assert result.exit_code == 0, result.stderr
    return {name: rows for name, rows in read_datasets(out).items() if name.startswith(ROWS_OF_THE_FILE)}


def _assert_same_rows(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys() and any(name.startswith(schema.LAYERS) for name in found)
    for name, rows in expected.items():
        np.testing.assert_array_equal(found[name], rows, err_msg=name)
        assert found[name].dtype == rows.dtype, name


def test_input_ids_rows_equal_the_same_ids_as_npy_bit_for_bit(gpt2, tokenizer, tmp_path):
    rows = _documents_of_ids(len(tokenizer), seed=0)
    saved = datasets.Dataset.from_dict({"input_ids": rows, "text": ["ignored"] * len(rows)})
    saved.save_to_disk(tmp_path / "saved", num_shards=3)  # the shards are read in state.json's order
    np.save(tmp_path / "ids.npy", np.concatenate(rows))
    found = _extract(gpt2, tmp_path / "saved", tmp_path / "d.h5")
    _assert_same_rows(found, _extract(gpt2, tmp_path / "ids.npy", tmp_path / "n.h5"))
    description = _attribute(tmp_path / "d.h5", schema.ATTR_DATASET)
    assert description.startswith(f"datasets folder '{tmp_path / 'saved'}': {sum(map(len, rows))} tokens")


def test_text_rows_equal_the_same_documents_as_jsonl(gpt2, tmp_path):
    datasets.Dataset.from_dict({"text": SENTENCES, "n": list(range(len(SENTENCES)))}).save_to_disk(tmp_path / "saved")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": sentence}) + "\n" for sentence in SENTENCES))
    found = _extract(gpt2, tmp_path / "saved", tmp_path / "d.h5")
    _assert_same_rows(found, _extract(gpt2, tmp_path / "t.jsonl", tmp_path / "j.h5"))


def test_a_dataset_dicts_split_is_chosen_with_split(gpt2, tokenizer, tmp_path):
    train, test = _documents_of_ids(len(tokenizer), seed=1), _documents_of_ids(len(tokenizer), seed=2)
    splits = {
        "train": datasets.Dataset.from_dict({"input_ids": train}),
        "test": datasets.Dataset.from_dict({"input_ids": test}),
    }
    datasets.DatasetDict(splits).save_to_disk(tmp_path / "saved")
    np.save(tmp_path / "test.npy", np.concatenate(test))
    found = _extract(gpt2, tmp_path / "saved", tmp_path / "d.h5", "--split", "test")
    _assert_same_rows(found, _extract(gpt2, tmp_path / "test.npy", tmp_path / "n.h5", "--split", "test"))
    assert _attribute(tmp_path / "d.h5", schema.ATTR_SPLIT) == "test"
    assert f"datasets folder '{tmp_path / 'saved'}' (split test)" in _attribute(tmp_path / "d.h5", schema.ATTR_DATASET)


@pytest.mark.parametrize(
    ("columns", "fragments"),
    [
        ({"story": SENTENCES}, ("has no column 'input_ids' (token ids) or 'text'", "its columns are: story (string)")),
        ({"text": [1, 2]}, ("column 'text' (--text-field) holds int64, not text", "its columns are: text (int64)")),
        ({"input_ids": [[0.5]]}, ("column 'input_ids' holds list<item: double>, not lists of integer token ids",)),
    ],
)
def test_a_column_missing_or_of_another_type_is_one_line(gpt2, tmp_path, columns, fragments):
    datasets.Dataset.from_dict(columns).save_to_disk(tmp_path / "saved")
    result = invoke("extract", gpt2, tmp_path / "saved", "--out", tmp_path / "f.h5")
    assert_user_error(result, f"datasets folder '{tmp_path / 'saved'}'", *fragments)
    assert not list(tmp_path.glob("f.h5*"))


def test_a_missing_split_is_one_line_naming_the_splits(gpt2, tmp_path):
    text = datasets.Dataset.from_dict({"text": SENTENCES})
    datasets.DatasetDict({"train": text, "validation": text}).save_to_disk(tmp_path / "saved")
    result = invoke("extract", gpt2, tmp_path / "saved", "--split", "test", "--out", tmp_path / "f.h5")
    assert_user_error(result, "has no split 'test' (--split); its splits are: train, validation")
    assert not list(tmp_path.glob("f.h5*"))


def test_a_folder_of_arrow_files_without_state_json_is_one_line(gpt2, tmp_path):
    datasets.Dataset.from_dict({"text": SENTENCES}).save_to_disk(tmp_path / "saved")
    (tmp_path / "saved" / "state.json").unlink()
    result = invoke("extract", gpt2, tmp_path / "saved", "--out", tmp_path / "f.h5")
    assert_user_error(result, "has no state.json or dataset_dict.json: not a folder that datasets' save_to_disk wrote")
    assert not list(tmp_path.glob("f.h5*"))


def _attribute(path, name: str) -> str:
    with h5py.File(path) as handle:
        return str(handle.attrs[name])
