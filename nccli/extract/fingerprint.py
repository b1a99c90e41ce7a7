"""The fingerprint of a network's tensors, so that ``--resume`` appends rows from the very network that wrote the first.

A resumed run builds the model again in a new process. A checkpoint's digest says its file is the same, not that
the network built from it is: a torchvision model without ``--weights`` is the same only when initialised from the
same seed by the same torch (hence ``--init-seed``), an ``--arch`` builder may have changed between the runs, a
buffer the state_dict does not hold may be drawn at random. Hashing every parameter and buffer once the model is
loaded covers all of these at the cost of one read of the weights (a few tenths of a second for a ResNet-50).
"""

import hashlib

import torch
from torch import nn

from nccli import schema
from nccli.errors import ModelError


def model_fingerprint(module: nn.Module) -> str:
    """sha256 over every parameter and buffer: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    tensors = sorted([*module.named_parameters(), *module.named_buffers()], key=lambda item: item[0])
    for name, tensor in tensors:
        tensor = tensor.detach()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def refuse_other_network(partial: str, stored: dict | None, wanted: dict) -> None:
    """Refuse, saying why, to resume ``partial`` when its options differ from ``wanted`` in the network alone.

    Other differences are the options the user changed; the writer lists those.
    """
    key = schema.EXTRACT_OPTION_NETWORK
    if stored is None or stored.get(key) == wanted.get(key):
        return
    if {k: v for k, v in stored.items() if k != key} != {k: v for k, v in wanted.items() if k != key}:
        return
    raise ModelError(
        f"cannot resume '{partial}': the network built now differs from the one that wrote its first rows (its "
        "weights hash differently: a random initialisation under another torch version, a changed --arch builder, "
        "a buffer drawn at random?), and one file must not mix the two; pass --overwrite to start over"
    )
