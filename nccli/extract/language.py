"""Causal language models for token-level collapse: a Hugging Face folder or ``hf:ORG/NAME``
(``AutoModelForCausalLM``), or a state_dict with ``--arch`` for a model that returns logits over the
vocabulary (nanoGPT style), and what one probe shows of its structure.

The classes are the vocabulary (the LM head's rows), the classifier is the LM head (tied to the embeddings
or not; a bias if it has one), and the layers are each block's output (the residual stream) and the final
norm's output, which the head reads. The blocks are the shallowest ``nn.ModuleList`` whose members all run;
the final norm is the last module outside them giving (B, T, d) before the head runs.
"""

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nccli.errors import ModelError, first_line
from nccli.extract.config import ModelOptions
from nccli.extract.extras import require
from nccli.extract.hf_models import build_hugging_face
from nccli.extract.hooks import first_tensor
from nccli.extract.loaded import LoadedModel
from nccli.extract.models import load_model, model_kind

PROBE_TOKENS = 4


@dataclass(frozen=True)
class LanguageModel:
    """A causal LM ready to run on (B, T) token ids, with what nccli reads of it."""

    loaded: LoadedModel
    blocks: tuple[str, ...]  # module names, in forward order
    final_norm: str  # the module whose (B, T, d) output the head reads
    head: str  # the LM head's module name (an nn.Linear: vocabulary × d)
    vocabulary: int
    context: int | None  # the longest window the model takes, where its config says
    tokenizer: object | None  # the folder's tokenizer (for text DATA and the class names), if it has one

    @property
    def layers(self) -> tuple[str, ...]:
        return (*self.blocks, self.final_norm)

    def classifier(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The LM head's W (vocabulary × d) and bias, as float32 arrays on the host."""
        head = dict(self.loaded.module.named_modules())[self.head]
        weight, bias = (
            None if value is None else value.detach().float().cpu().numpy() for value in (head.weight, head.bias)
        )
        return weight, bias

    def classifier_layer(self, layers: tuple[str, ...]) -> str | None:
        """The layer W reads (the final norm) if ``layers`` hold it, else None (no classifier then)."""
        return self.final_norm if self.final_norm in layers else None

    def class_names(self) -> tuple[str, ...] | None:
        """Every id's token, as the tokenizer writes it (None without a tokenizer)."""
        if self.tokenizer is None:
            return None
        tokens = self.tokenizer.convert_ids_to_tokens(list(range(self.vocabulary)))
        return tuple("" if token is None else str(token) for token in tokens)


def load_language_model(source: str, options: ModelOptions, epoch: int | None = None) -> LanguageModel:
    """A causal LM from a Hugging Face folder or ``hf:ORG/NAME``, or any MODEL nccli loads (``--arch``)."""
    tokenizer = None
    if model_kind(source) == "hf":
        loaded, tokenizer = _hugging_face(source, options, epoch)
    else:
        loaded = load_model(source, options, epoch)
    loaded.module.eval()
    return _structure(loaded, tokenizer)


def _hugging_face(source: str, options: ModelOptions, epoch: int | None):
    hub = build_hugging_face(source, options, "AutoModelForCausalLM", "a causal language model")
    hub.module.config.use_cache = False  # no key/value cache: one forward pass per window
    transformers = require("transformers", f"the Hugging Face model '{source}'")
    return LoadedModel(hub.module, epoch=epoch, **hub.provenance), _tokenizer(transformers, hub.folder)


def _tokenizer(transformers, folder: str):
    if not any(os.path.isfile(os.path.join(folder, name)) for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"the tokenizer in '{folder}' cannot be loaded: {first_line(error)}") from None


def _structure(loaded: LoadedModel, tokenizer) -> LanguageModel:
    """Blocks, final norm and head from one probe of ``PROBE_TOKENS`` ids, or one line saying what is missing."""
    module = loaded.module
    context = _context(module)
    length = min(PROBE_TOKENS, context or PROBE_TOKENS)
    calls: list[tuple[str, nn.Module, torch.Tensor | None]] = []
    handles = [
        child.register_forward_hook(
            lambda child, args, output, name=name: calls.append((name, child, first_tensor(output)))
        )
        for name, child in module.named_modules()
        if name
    ]
    try:
        with torch.inference_mode():
            logits = first_tensor(module(torch.zeros((1, length), dtype=torch.long)))
    except Exception as error:  # the user's model may raise anything on token ids
        raise ModelError(
            f"'{loaded.name}' failed on token ids of shape [1, {length}]: {type(error).__name__}: {first_line(error)}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    if logits is None or logits.ndim != 3:
        shape = "nothing" if logits is None else list(logits.shape)
        raise ModelError(f"'{loaded.name}' returned {shape} for token ids, not logits (batch, tokens, vocabulary)")
    heads = [(name, child) for name, child, output in calls if isinstance(child, nn.Linear) and output is not None]
    heads = [(name, child) for name, child in heads if child.out_features == logits.shape[-1]]
    if not heads:
        raise ModelError(f"'{loaded.name}' has no linear LM head with {logits.shape[-1]} outputs (the vocabulary)")
    head, head_module = heads[-1]
    width = head_module.in_features
    sequences = {name for name, _, output in calls if output is not None and tuple(output.shape) == (1, length, width)}
    blocks = _blocks(module, sequences)
    inside = tuple(block + "." for block in blocks)
    order = [name for name, _, _ in calls]
    before_head = order[: order.index(head)]
    norms = [  # not a block, inside one, nor a container of them (whose output may be the norm's as well)
        name
        for name in before_head
        if name in sequences
        and not name.startswith(inside)
        and not any(block.startswith(name + ".") for block in blocks)
        and name not in blocks
    ]
    if not blocks or not norms:
        raise ModelError(
            f"'{loaded.name}': no blocks (an nn.ModuleList of modules giving (B, T, d)) or final norm found"
        )
    return LanguageModel(loaded, blocks, norms[-1], head, int(logits.shape[-1]), context, tokenizer)


def _blocks(module: nn.Module, sequences: set[str]) -> tuple[str, ...]:
    """The members of the shallowest ModuleList whose members all give (B, T, d)."""
    lists = [
        (name.count("."), name, len(child))
        for name, child in module.named_modules()
        if isinstance(child, nn.ModuleList)
        and len(child)
        and all(f"{name}.{i}" in sequences for i in range(len(child)))
    ]
    if not lists:
        return ()
    _, name, count = min(lists)
    return tuple(f"{name}.{index}" for index in range(count))


def _context(module: nn.Module) -> int | None:
    """The longest window the model's config allows (Hugging Face's max_position_embeddings or n_positions,
    nanoGPT's block_size)."""
    config = getattr(module, "config", None)
    for key in ("max_position_embeddings", "n_positions", "block_size"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
