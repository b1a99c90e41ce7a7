"""Fitting a checkpoint's state_dict to the network ``--arch`` builds: wrapper prefixes dropped (DDP,
torch.compile, one shared wrapper attribute), a missing BatchNorm counter filled, every other missing,
unexpected or mis-shaped key named."""

import torch
from torch import nn

from nccli.errors import ModelError
from nccli.extract.checkpoints import Checkpoint

STRIPPED_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
MAX_LISTED_KEYS = 5


def strip_prefixes(state_dict: dict, expected: set[str]) -> dict:
    """Drop DDP's ``module.``, torch.compile's ``_orig_mod.`` or any one wrapper attribute shared by all keys."""
    keys = list(state_dict)
    changed = True
    while changed and keys:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(key.startswith(prefix) for key in keys):
                state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
                keys, changed = list(state_dict), True
    first = {key.split(".", 1)[0] for key in keys}
    if len(first) == 1 and not set(keys) <= expected and all("." in key for key in keys):
        stripped = {key.split(".", 1)[1]: value for key, value in state_dict.items()}
        if set(stripped) <= expected:
            return stripped
    return state_dict


def load_state_dict(module: nn.Module, checkpoint: Checkpoint, target: str) -> None:
    """Load a checkpoint's state_dict into ``module`` (``target`` names it: ``--arch 'resnet18'``), or say in one
    line what does not fit."""
    expected = module.state_dict()
    state_dict = dict(strip_prefixes(checkpoint.state_dict, set(expected)))
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state_dict:  # a training counter; often not saved
            state_dict[key] = torch.zeros((), dtype=torch.long)
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key} (checkpoint {list(value.shape)}, model {list(expected[key].shape)})"
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    problems = [
        f"{label} {_listed(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched))
        if keys
    ]
    if problems:
        raise ModelError(
            f"the state_dict in '{checkpoint.path}' does not fit {target}: {'; '.join(problems)} "
            "(check the architecture and --num-classes)"
        )
    module.load_state_dict(state_dict, strict=False)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    return shown + (f" (+{len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else "")
