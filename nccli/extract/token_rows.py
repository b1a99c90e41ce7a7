"""A causal LM run over token windows: each batch's rows of every layer, one row per kept position.

Windows of one length are batched together (only the stream's last window may be shorter), so no padding
and no attention mask change what the model computes. Each layer's (B, T, d) output is cut to the kept
positions inside its forward hook, in float32, before later in-place operations can touch it. Once every
chosen layer has given its rows the forward pass stops (:class:`_AllCaptured`): the LM head's logits, rows ×
vocabulary products that nothing reads, are never computed (nor the blocks after the last chosen layer).
"""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from nccli.errors import ModelError, first_line
from nccli.extract import loop
from nccli.extract.config import Precision
from nccli.extract.hooks import first_tensor
from nccli.extract.language import LanguageModel
from nccli.extract.tokens import TokenWindows


class _AllCaptured(Exception):
    """Raised by the hook of the last chosen layer to run: the rest of the forward pass is not needed."""


@dataclass(frozen=True)
class TokenBatch:
    """The rows of one batch of windows: labels (next tokens), sample_index (start, position), each layer's rows."""

    labels: np.ndarray
    sample_index: np.ndarray
    features: dict[str, torch.Tensor]  # on the model's device


def window_batches(windows: TokenWindows, batch_size: int, first: int = 0) -> Iterator[range]:
    """Consecutive windows from ``first``, at most ``batch_size`` per batch, of one input length each."""
    lengths = windows.lengths
    start = first
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and end - start < batch_size and lengths[end] == lengths[start]:
            end += 1
        yield range(start, end)
        start = end


def token_batches(
    model: LanguageModel,
    windows: TokenWindows,
    layers: tuple[str, ...],
    batch_size: int,
    device: torch.device,
    precision: Precision,
    first_window: int = 0,
) -> Iterator[TokenBatch]:
    """Run the model over the windows from ``first_window`` on: each batch's rows of ``layers``."""
    module = model.loaded.module
    named = dict(module.named_modules())
    captured: dict[str, torch.Tensor] = {}
    mask: torch.Tensor | None = None

    def hook(name: str):
        def capture(_module, _args, output):
            tensor = first_tensor(output)
            if tensor is None or tensor.ndim != 3 or tuple(tensor.shape[:2]) != tuple(mask.shape):
                found = "no tensor" if tensor is None else f"shape {list(tensor.shape)}"
                raise ModelError(f"layer '{name}' gave {found} for token ids of shape {list(mask.shape)}")
            captured[name] = tensor[mask].to(torch.float32, copy=True)
            if len(captured) == len(layers):
                raise _AllCaptured

        return capture

    handles = [named[name].register_forward_hook(hook(name)) for name in layers]
    try:
        for batch in window_batches(windows, batch_size, first_window):
            parts = [windows.window(index) for index in batch]
            ids = torch.from_numpy(np.stack([part[0] for part in parts])).to(device)
            kept = np.zeros(ids.shape, dtype=bool)
            for row, index in enumerate(batch):
                kept[row, windows.first_rows[index] :] = True
            mask = torch.from_numpy(kept).to(device)
            captured.clear()
            try:
                with torch.inference_mode(), loop.autocast(device, precision):
                    module(ids)
            except _AllCaptured:
                pass
            except ModelError:
                raise
            except Exception as error:  # the user's model may raise anything
                raise ModelError(
                    f"the model failed on token windows {batch.start}–{batch.stop - 1}: "
                    f"{type(error).__name__}: {first_line(error)}"
                ) from None
            yield TokenBatch(
                np.concatenate([part[1] for part in parts]),
                np.concatenate([part[2] for part in parts]),
                dict(captured),
            )
    finally:
        for handle in handles:
            handle.remove()
