"""Token streams for language models: DATA as token ids, cut into windows whose positions are the rows.

DATA is pre-tokenised ids (a headerless ``.bin`` as nanoGPT writes it, read with ``--token-dtype``, or a 1-D
integer ``.npy``; both memory-mapped) or text (``.txt``, or ``.jsonl`` with one document per line in
``--text-field``) that the model's own tokenizer turns into ids, documents joined by its end-of-text token.

Position p of the stream predicts token p + 1: every position but the last is a row, labelled with the next
token. Windows of ``seq_len`` tokens start every ``stride`` tokens; a window's rows are its positions not
already in the previous window (all of the first), so every row appears once and, with ``stride <
seq_len``, has at least ``seq_len - stride`` tokens of context. ``max_tokens`` keeps the first rows.
``/sample_index`` row = (the window's start in the stream, the position in the window).
"""

import json
import os
from dataclasses import dataclass

import numpy as np

from nccli.errors import DataError, UsageError, first_line

TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
SCAN_TOKENS = 1 << 22  # ids checked per block: the whole stream is checked in bounded memory


@dataclass(frozen=True)
class TokenWindows:
    """A token stream cut into windows; rows are the kept positions of each window, in order."""

    tokens: np.ndarray  # 1-D integers (a memory map for .bin and .npy)
    starts: np.ndarray  # each window's first token in the stream
    lengths: np.ndarray  # each window's input length (≤ seq_len)
    first_rows: np.ndarray  # each window's first kept position
    description: str

    @property
    def rows(self) -> int:
        return int((self.lengths - self.first_rows).sum())

    def row_counts(self) -> np.ndarray:
        return self.lengths - self.first_rows

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input ids, labels of the kept positions, sample_index rows) of one window."""
        start, length, first = int(self.starts[index]), int(self.lengths[index]), int(self.first_rows[index])
        ids = np.asarray(self.tokens[start : start + length + 1], dtype=np.int64)
        positions = np.arange(first, length, dtype=np.int64)
        index_rows = np.stack([np.full(len(positions), start, dtype=np.int64), positions], axis=1)
        return ids[:length], ids[first + 1 : length + 1], index_rows


def cut_windows(
    tokens: np.ndarray, seq_len: int, stride: int | None, max_tokens: int | None, description: str
) -> TokenWindows:
    """Windows of ``seq_len`` tokens every ``stride`` (default ``seq_len``: no overlap), up to ``max_tokens`` rows."""
    stride = stride or seq_len
    if seq_len < 1 or stride < 1:
        raise UsageError(f"--seq-len and --stride must be positive, got {seq_len} and {stride}")
    positions = len(tokens) - 1  # the last token predicts nothing
    if positions < 1:
        raise DataError(f"{description} holds {len(tokens)} token(s); at least 2 are needed (a token and the next)")
    starts = np.arange(0, positions, stride, dtype=np.int64)
    lengths = np.minimum(seq_len, positions - starts)
    ends = starts + lengths
    covered = np.concatenate([[0], ends[:-1]])  # the previous window's end: positions before it are rows already
    first_rows = np.clip(covered - starts, 0, lengths)
    keep = first_rows < lengths
    starts, lengths, first_rows = starts[keep], lengths[keep], first_rows[keep]
    if max_tokens is not None:
        counts = np.cumsum(lengths - first_rows)
        last = int(np.searchsorted(counts, max_tokens))  # the window holding the max_tokens-th row
        starts, lengths, first_rows = starts[: last + 1], lengths[: last + 1].copy(), first_rows[: last + 1]
        if last < len(counts):
            lengths[-1] -= int(counts[last] - max_tokens)
    return TokenWindows(tokens, starts, lengths, first_rows, description)


def read_token_ids(spec: str, token_dtype: str | None) -> np.ndarray:
    """The ids of a ``.bin`` (``--token-dtype``) or ``.npy`` file, memory-mapped: one dimension of integers."""
    if not os.path.isfile(spec):
        raise DataError(f"token file '{spec}' does not exist")
    if spec.endswith(".bin"):
        if token_dtype is None:
            raise UsageError(f"'{spec}' is a headerless token file: say its width with --token-dtype uint16|uint32")
        width = np.dtype(TOKEN_DTYPES[token_dtype]).itemsize
        size = os.path.getsize(spec)
        if size % width:
            raise DataError(f"'{spec}' has {size} bytes, not a multiple of {width} ({token_dtype} ids): another width?")
        return np.memmap(spec, dtype=TOKEN_DTYPES[token_dtype], mode="r")
    try:
        ids = np.load(spec, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise DataError(f"'{spec}' is not a readable .npy file: {first_line(error)}") from None
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise DataError(f"'{spec}' holds {ids.dtype} of shape {ids.shape}; token ids are one dimension of integers")
    return ids


def read_documents(spec: str, text_field: str) -> list[str]:
    """The documents of a ``.txt`` (one) or ``.jsonl`` file (``text_field`` of each line)."""
    if not os.path.isfile(spec):
        raise DataError(f"text file '{spec}' does not exist")
    try:
        with open(spec, encoding="utf-8") as stream:
            if spec.endswith(".txt"):
                return [stream.read()]
            documents = []
            for number, line in enumerate(stream, 1):
                if line.strip():
                    record = json.loads(line)
                    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                        raise DataError(f"'{spec}' line {number} has no text field '{text_field}' (--text-field)")
                    documents.append(record[text_field])
            return documents
    except UnicodeDecodeError as error:
        raise DataError(f"'{spec}' is not UTF-8 text: {first_line(error)}") from None
    except json.JSONDecodeError as error:
        raise DataError(f"'{spec}' is not JSON lines: {first_line(error)}") from None


def check_vocabulary(tokens: np.ndarray, vocabulary: int, description: str) -> None:
    """Every id in [0, vocabulary): checked over the whole stream, a block at a time."""
    for start in range(0, len(tokens), SCAN_TOKENS):
        block = np.asarray(tokens[start : start + SCAN_TOKENS])
        bad = np.flatnonzero((block < 0) | (block >= vocabulary))
        if len(bad):
            where = start + int(bad[0])
            raise DataError(
                f"{description}: token {where} is id {int(block[bad[0]])}, outside the model's vocabulary of "
                f"{vocabulary} (another tokenizer, or another --token-dtype?)"
            )
