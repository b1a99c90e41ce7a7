"""A folder written by Hugging Face ``datasets``' ``save_to_disk`` as token DATA, read with pyarrow alone.

``Dataset.save_to_disk`` writes Arrow IPC stream files (``data-*.arrow``) and ``state.json``, whose
``_data_files`` lists them in order; ``DatasetDict.save_to_disk`` writes one such folder per split and
``dataset_dict.json`` naming the splits. A column ``input_ids`` (a list of integer ids per row) is already
tokenised: the rows' ids are joined end to end, with whatever separators the user's tokenisation put in them.
Without it, the ``--text-field`` column (strings) holds the documents the model's tokenizer reads.
"""

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.ipc

from nccli.errors import DataError, UsageError, first_line

STATE_FILE = "state.json"  # a Dataset's folder
DICT_FILE = "dataset_dict.json"  # a DatasetDict's folder: one Dataset folder per split
ARROW_SUFFIX = ".arrow"
IDS_COLUMN = "input_ids"


def is_datasets_folder(path: str) -> bool:
    """A folder for this module: one ``save_to_disk`` wrote, or one holding Arrow files (refused, saying why)."""
    if not os.path.isdir(path):
        return False
    names = os.listdir(path)
    return STATE_FILE in names or DICT_FILE in names or any(name.endswith(ARROW_SUFFIX) for name in names)


@dataclass(frozen=True)
class SavedDataset:
    """One split of a saved dataset: its Arrow files in order, their columns, and the words naming it."""

    files: tuple[str, ...]
    schema: pa.Schema
    description: str

    @property
    def holds_token_ids(self) -> bool:
        return IDS_COLUMN in self.schema.names

    def token_ids(self) -> np.ndarray:
        """The ``input_ids`` rows joined end to end, in the column's integer type.

        One array in memory, growing with the data (``.bin`` and ``.npy`` files are memory-mapped instead).
        """
        column_type = self.schema.field(IDS_COLUMN).type
        if not (_is_list(column_type) and pa.types.is_integer(column_type.value_type)):
            raise DataError(
                f"{self.description}: column '{IDS_COLUMN}' holds {column_type}, not lists of integer token ids; "
                f"its columns are: {self._columns()}"
            )
        parts = []
        for batch in self._batches():
            ids = batch.column(IDS_COLUMN).flatten()  # flatten, unlike .values, keeps to the batch's own rows
            if batch.column(IDS_COLUMN).null_count or ids.null_count:
                raise DataError(f"{self.description}: column '{IDS_COLUMN}' holds nulls, not token ids")
            parts.append(ids.to_numpy())
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def documents(self, text_field: str) -> Iterator[str]:
        """The strings of column ``text_field``, read a record batch at a time."""
        if text_field not in self.schema.names:
            raise DataError(
                f"{self.description} has no column '{IDS_COLUMN}' (token ids) or '{text_field}' (text, "
                f"--text-field); its columns are: {self._columns()}"
            )
        column_type = self.schema.field(text_field).type
        if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
            raise DataError(
                f"{self.description}: column '{text_field}' (--text-field) holds {column_type}, not text; "
                f"its columns are: {self._columns()}"
            )
        return self._strings(text_field)

    def _strings(self, text_field: str) -> Iterator[str]:
        row = 0
        for batch in self._batches():
            column = batch.column(text_field)
            if column.null_count:
                missing = row + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                raise DataError(f"{self.description}: row {missing} of column '{text_field}' is null, not text")
            yield from column.to_pylist()
            row += len(column)

    def _batches(self) -> Iterator[pa.RecordBatch]:
        """The record batches of every file in order, one at a time (memory-mapped)."""
        for path in self.files:
            with _stream(path) as reader:
                yield from reader

    def _columns(self) -> str:
        return ", ".join(f"{field.name} ({field.type})" for field in self.schema)


def open_saved_dataset(folder: str, split: str) -> SavedDataset:
    """The saved Dataset in ``folder``, or the ``split`` of the DatasetDict there."""
    description = f"datasets folder '{os.path.abspath(folder)}'"
    state_file = os.path.join(folder, STATE_FILE)
    if os.path.isfile(os.path.join(folder, DICT_FILE)):
        splits = _json(os.path.join(folder, DICT_FILE)).get("splits", [])
        if split not in splits:
            raise UsageError(
                f"{description} has no split '{split}' (--split); its splits are: {', '.join(splits)} (the folder "
                "of any split inside it is DATA too)"
            )
        state_file = os.path.join(folder, split, STATE_FILE)
    elif not os.path.isfile(state_file):
        raise DataError(
            f"'{folder}' has no {STATE_FILE} or {DICT_FILE}: not a folder that datasets' save_to_disk wrote "
            "(a load_dataset cache folder? save the dataset with save_to_disk and give that folder)"
        )
    else:
        split = None  # one Dataset: --split chooses nothing in it
    state = _json(state_file)
    split = split or state.get("_split")
    entries = state.get("_data_files") or []
    files = tuple(os.path.join(os.path.dirname(state_file), entry["filename"]) for entry in entries)
    if not files:
        raise DataError(f"{description} holds no rows: '{state_file}' lists no data files")
    with _stream(files[0]) as reader:
        schema = reader.schema
    return SavedDataset(files, schema, description + (f" (split {split})" if split else ""))


def _is_list(column_type: pa.DataType) -> bool:
    return (
        pa.types.is_list(column_type) or pa.types.is_large_list(column_type) or pa.types.is_fixed_size_list(column_type)
    )


@contextmanager
def _stream(path: str) -> Iterator[pa.ipc.RecordBatchStreamReader]:
    """A reader of one Arrow IPC stream file (the format save_to_disk writes), memory-mapped: the arrays it
    gives keep the mapping alive once the file is closed."""
    if not os.path.isfile(path):
        raise DataError(f"'{path}' does not exist, though {STATE_FILE} lists it")
    try:
        with pa.memory_map(path) as source:
            yield pa.ipc.open_stream(source)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"'{path}' is not an Arrow stream file as save_to_disk writes: {first_line(error)}") from None


def _json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as stream:
            found = json.load(stream)
    except (OSError, ValueError) as error:
        raise DataError(f"'{path}' is not readable JSON: {first_line(error)}") from None
    if not isinstance(found, dict):
        raise DataError(f"'{path}' holds {type(found).__name__}, not a JSON object")
    return found
