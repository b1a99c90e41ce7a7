"""``extract_features`` for token DATA: a causal LM's rows, one per token position, in a feature file.

``num_classes`` is the vocabulary (the LM head's rows, not inferred from the labels), the classifier the LM
head, the layers each block's output and the final norm's (the head's input, the classifier layer); the class
names the tokenizer's tokens, printable. ``/logits`` is not stored (N × vocabulary values; analyze computes
what it needs from W), and a note says so. ``/sample_index`` is (N, 2): the window's start in the token stream
and the position in the window. Ctrl-C keeps the rows written; ``--resume`` continues at the next window.
"""

import os
import time
from collections.abc import Iterable
from dataclasses import replace
from functools import partial

import numpy as np
import torch

from nccli import schema
from nccli.errors import ModelError, UsageError, printable
from nccli.extract import distributed, loop
from nccli.extract.config import ExtractConfig, TokenOptions
from nccli.extract.fingerprint import model_fingerprint
from nccli.extract.language import LanguageModel, load_language_model
from nccli.extract.planning import provenance_attributes
from nccli.extract.results import ExtractResult, resumed_or_created, rows_kept_on_failure
from nccli.extract.saved_datasets import open_saved_dataset
from nccli.extract.token_rows import token_batches
from nccli.extract.tokens import TokenWindows, check_vocabulary, cut_windows, read_documents, read_token_ids
from nccli.globs import names_matching
from nccli.io.header import root_attributes
from nccli.io.writer import FeatureWriter, RowDataset, already_complete, partial_path
from nccli.progress import progress_bar

TOKEN_TRANSFORM = "token ids (rows: positions; labels: the next token)"  # the file's transform attribute
LOGITS_NOTE = (
    "/logits is not stored for token rows (rows × vocabulary values); analyze computes what it needs from /classifier"
)


def open_tokens(data: str, options: TokenOptions, model: LanguageModel, split: str) -> TokenWindows:
    """The token stream of DATA (ids, or text through the model's tokenizer), checked against the vocabulary and
    cut into windows of ``--seq-len`` (default: the model's context); ``split``: a saved DatasetDict's split."""
    documents = None
    if data.endswith((".bin", ".npy")):
        tokens, description = read_token_ids(data, options.token_dtype), f"token file '{os.path.abspath(data)}'"
    elif os.path.isdir(data):
        saved = open_saved_dataset(data, split)
        description = saved.description
        if saved.holds_token_ids:
            tokens = saved.token_ids()
        else:
            documents = saved.documents(options.text_field)
    else:
        documents, description = read_documents(data, options.text_field), f"text file '{os.path.abspath(data)}'"
    if documents is not None:
        if model.tokenizer is None:
            raise UsageError(
                f"'{data}' is text, and the model has no tokenizer (tokenizer.json in its folder) to read it; give "
                "token ids instead (.bin with --token-dtype, .npy, or a datasets folder with input_ids)"
            )
        tokens = _tokenized(documents, model.tokenizer)
    check_vocabulary(tokens, model.vocabulary, description)
    seq_len = options.seq_len or model.context
    if seq_len is None:
        raise UsageError(f"'{model.loaded.name}' does not say its context length; pass --seq-len")
    if model.context is not None and seq_len > model.context:
        raise UsageError(f"--seq-len {seq_len} is above the model's context of {model.context} tokens")
    windows = cut_windows(tokens, seq_len, options.stride, options.max_tokens, description)
    stride = options.stride or seq_len
    return replace(
        windows,
        description=f"{description}: {len(tokens)} tokens, windows of {seq_len} every {stride}"
        + (f", first {options.max_tokens} rows" if options.max_tokens else ""),
    )


def _tokenized(documents: Iterable[str], tokenizer) -> np.ndarray:
    """The documents' ids, joined by the tokenizer's end-of-text token where it has one."""
    end = getattr(tokenizer, "eos_token_id", None)
    separator = [] if end is None else [end]
    parts = [  # one small array per document: a Python list of ints would take several times the memory
        np.asarray(
            (separator if number else []) + tokenizer(document, add_special_tokens=False)["input_ids"], dtype=np.int64
        )
        for number, document in enumerate(documents)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def chosen_layers(model: LanguageModel, patterns: tuple[str, ...] | None) -> tuple[str, ...]:
    """The layers ``--layers`` names (names or globs over the blocks and the final norm), all by default."""
    if not patterns:
        return model.layers
    chosen: set[str] = set()
    for pattern in patterns:
        matches = names_matching(pattern, list(model.layers))
        if not matches:
            raise UsageError(
                f"--layers '{pattern}' matches no layer of the language model; its layers are: "
                + ", ".join(model.layers)
            )
        chosen |= set(matches)
    return tuple(layer for layer in model.layers if layer in chosen)


def prepare_tokens(source: str, config: ExtractConfig) -> tuple[LanguageModel, TokenWindows, tuple, torch.device]:
    """The language model on its device, the token windows of DATA and the layers ``--layers`` names."""
    model = load_language_model(source, config.model, config.epoch)
    windows = open_tokens(config.data, config.tokens, model, config.split)
    layers = chosen_layers(model, config.layers)
    device = loop.resolve_device(config.device)
    model.loaded.module.to(device)
    return model, windows, layers, device


def windows_part(windows: TokenWindows, first: int, end: int) -> TokenWindows:
    """Windows [first, end) of ``windows`` (a torchrun rank's part): their rows and sample_index as in the whole."""
    return replace(
        windows,
        starts=windows.starts[first:end],
        lengths=windows.lengths[first:end],
        first_rows=windows.first_rows[first:end],
    )


def extract_tokens(source: str, target: str, config: ExtractConfig, session: distributed.Session | None = None):
    """One feature file of token rows (the ``ExtractResult`` of :mod:`.runner`); under torchrun each rank writes
    the rows of its contiguous part of the windows to its shard, and rank 0 the index (:mod:`.distributed`)."""
    started = time.perf_counter()
    model, windows, layers, device = prepare_tokens(source, config)
    options = _options(config, model, windows, layers)

    def write(path: str, chosen: np.ndarray, wanted: dict) -> None:
        part = windows_part(windows, int(chosen[0]), int(chosen[-1]) + 1)
        _write_file(path, part, wanted, model, layers, device, config)

    complete = partial(already_complete, resume=config.resume)
    every_window = np.arange(len(windows.lengths))
    unit = "token windows"
    if not distributed.extract_file(session, target, every_window, options, config.overwrite, complete, write, unit):
        return ExtractResult(
            target, windows.rows, layers, model.loaded.epoch, skipped=True, notes=("already complete",)
        )
    return ExtractResult(
        target, windows.rows, layers, model.loaded.epoch, time.perf_counter() - started, notes=(LOGITS_NOTE,)
    )


def _write_file(path: str, windows: TokenWindows, options: dict, model, layers, device, config) -> None:
    """The rows of ``windows`` in the feature file ``path``, resuming its partial file at a window boundary."""
    create = partial(_create, path, config, model, windows, layers, options)
    writer = resumed_or_created(path, options, config.resume, create)
    counts = np.cumsum(windows.row_counts())
    first_window = int(np.searchsorted(counts, writer.rows_written, side="right"))
    if first_window and counts[first_window - 1] != writer.rows_written:
        writer.close()
        raise UsageError(
            f"cannot resume '{partial_path(path)}': its rows end inside a window; pass --overwrite to start over"
        )
    with rows_kept_on_failure(writer):
        _write(writer, model, windows, layers, first_window, device, config)
        writer.finish()


def _write(writer, model, windows, layers, first_window, device, config) -> None:
    row = writer.rows_written

    def write(item) -> None:
        start, arrays = item
        loop.check_finite(arrays, config.precision, str(config.dtype))
        writer.write(start, arrays)

    background = loop.BackgroundWriter(write)
    try:
        with progress_bar(config.progress, os.path.basename(writer.path), writer.rows, "tokens", row) as advance:
            for batch in token_batches(
                model, windows, layers, config.batch_size, device, config.precision, first_window
            ):
                arrays = {schema.layer_path(name): rows.cpu().numpy() for name, rows in batch.features.items()}
                arrays.update({schema.LABELS: batch.labels, schema.SAMPLE_INDEX: batch.sample_index})
                background.put((row, arrays))
                row += len(batch.labels)
                advance(len(batch.labels))
    finally:
        background.close()


def _options(config: ExtractConfig, model: LanguageModel, windows: TokenWindows, layers: tuple[str, ...]) -> dict:
    """What decides the rows: ``--resume`` continues only when these match."""
    loaded = model.loaded
    return {
        "model": loaded.name,
        "weights": loaded.weights,
        "checkpoint_sha256": loaded.checkpoint_sha256,
        "epoch": loaded.epoch,
        "dataset": windows.description,
        "split": str(config.split),
        "layers": list(layers),
        "num_classes": model.vocabulary,
        "precision": str(config.precision),
        "dtype": str(config.dtype),
        "compression": str(config.compression),
        "init_seed": loaded.init_seed,
        schema.EXTRACT_OPTION_NETWORK: model_fingerprint(loaded.module),
    }


def _create(target, config, model, windows, layers, options) -> FeatureWriter:
    parent = os.path.dirname(target)
    if parent:
        os.makedirs(parent, exist_ok=True)
    weight, bias = model.classifier()
    width = int(weight.shape[1])
    datasets = [RowDataset(schema.LABELS, None, "int64"), RowDataset(schema.SAMPLE_INDEX, 2, "int64")]
    for order, name in enumerate(layers):
        attrs = {
            schema.ATTR_ORDER: order,
            schema.ATTR_SAMPLE_SHAPE: np.array([width], dtype=np.int64),
            schema.ATTR_POOLING: "none",
        }
        datasets.append(RowDataset(schema.layer_path(name), width, str(config.dtype), attrs))
    classifier = {schema.CLASSIFIER_WEIGHT: weight}
    if bias is not None:
        classifier[schema.CLASSIFIER_BIAS] = bias
    if not all(np.isfinite(values).all() for values in classifier.values()):
        raise ModelError(f"the LM head '{model.head}' holds a non-finite weight (NaN or Inf), which analyze refuses")
    layer = model.classifier_layer(layers)
    group_attrs = {schema.CLASSIFIER: {schema.ATTR_CLASSIFIER_LAYER: layer}} if layer else {}
    names = model.class_names()
    loaded = model.loaded
    attrs = root_attributes(
        model.vocabulary,
        str(config.split),
        config.command or "nccli.extract_features (Python API)",
        loaded.epoch,
        [printable(name) for name in names] if names else None,
        **provenance_attributes(loaded, windows.description, TOKEN_TRANSFORM),
    )
    if loaded.init_seed is not None:
        attrs[schema.ATTR_INIT_SEED] = loaded.init_seed
    fixed = classifier if layer else {}
    return FeatureWriter.create(
        target, windows.rows, datasets, attrs, options, str(config.compression), fixed, group_attrs
    )
