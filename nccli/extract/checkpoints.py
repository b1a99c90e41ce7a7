"""Reading model files: state_dicts and their wrappers, safetensors, torch.export programs, pickled modules.

A checkpoint yields either a whole module (a ``.pt2`` program, unflattened so
its submodules can be hooked, or a pickled ``nn.Module`` the user trusts) or a
state_dict that :mod:`nccli.extract.models` loads into ``--arch``.

Nothing in a file runs unless the user passes ``--trust-checkpoint``:
``torch.load`` runs with ``weights_only=True`` (tensors and plain containers
only); a ``.pt2`` program is refused, since ``torch.export.load`` unpickles
parts of the archive with ``weights_only=False`` and plain ``pickle`` (its own
documentation: never load one from an untrusted source); safetensors hold no
code. ``weights_only`` itself had bypasses that ran code from a crafted file
(CVE-2025-32434, fixed in torch 2.6; CVE-2026-24747, fixed in 2.10), so under
an older torch pickle-based checkpoints are refused too, with the ways out.
"""

import hashlib
import os
import pickle
import re
import zipfile
from dataclasses import dataclass

import torch
from torch import nn
from torch.torch_version import TorchVersion

from nccli.errors import ModelError, first_line

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".pt2")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
EPOCH_KEYS = ("epoch", "step", "global_step")
SAFE_TORCH = (2, 10)  # the first torch without a known weights_only bypass
KNOWN_BYPASSES = "CVE-2025-32434, fixed in torch 2.6; CVE-2026-24747, fixed in 2.10"


@dataclass(frozen=True)
class Checkpoint:
    """What one model file holds: a module or a state_dict, with its epoch and digest."""

    path: str
    sha256: str
    module: nn.Module | None = None
    state_dict: dict[str, torch.Tensor] | None = None
    epoch: int | None = None


def read_checkpoint(path: str, trust: bool) -> Checkpoint:
    """Load ``path`` without running untrusted code unless ``trust`` (``--trust-checkpoint``)."""
    digest = file_sha256(path)
    if path.endswith(".pt2"):
        if not trust:
            raise ModelError(
                f"'{path}' is a torch.export program, and torch.export.load unpickles parts of it, which can run "
                "arbitrary code; pass --trust-checkpoint if you trust where the file came from, or save "
                "model.state_dict() (.pt or .safetensors) and use --arch"
            )
        return Checkpoint(path, digest, module=_read_exported(path))
    if path.endswith(".safetensors"):
        state_dict, epoch = _read_safetensors(path)
        return Checkpoint(path, digest, state_dict=state_dict, epoch=epoch)
    if _is_torchscript(path):
        raise ModelError(
            f"'{path}' is a TorchScript archive; TorchScript modules do not run Python forward hooks, so their "
            "layers cannot be captured. Save a state_dict (use --arch) or a torch.export program (.pt2) instead"
        )
    loaded = _torch_load(path, trust)
    module, state_dict = _unwrap(loaded, path)
    return Checkpoint(path, digest, module=module, state_dict=state_dict, epoch=_epoch_of(loaded))


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    digest_file(digest, path)
    return digest.hexdigest()


def digest_file(digest, path: str) -> None:
    """Feed ``path``'s bytes to ``digest`` a mebibyte at a time."""
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)


def epoch_from_name(path: str) -> int | None:
    """The epoch in a file name: after a word like ``epoch`` or ``step`` (``resnet18_ep5.pt`` → 5), else the
    last number standing on its own (``epoch_012.pt`` → 12, ``ckpt-5000.pth`` → 5000; not the 18 of ``r18.pt``)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    tagged = r"(?<![A-Za-z])(?:{})[_=-]?(\d+)(?![A-Za-z0-9])"
    loose = r"(?<![A-Za-z0-9])(\d+)(?![A-Za-z0-9])"
    for pattern in (tagged.format("epoch|ep"), tagged.format("step|iter|it"), loose):
        numbers = re.findall(pattern, stem, flags=re.IGNORECASE)
        if numbers:
            return int(numbers[-1])
    return None


def _read_exported(path: str) -> nn.Module:
    try:
        program = torch.export.load(path)
    except Exception as error:  # noqa: BLE001 - torch.export raises many types for a bad archive
        raise ModelError(f"cannot load '{path}' as a torch.export program: {first_line(error)}") from None
    return torch.export.unflatten(program)


def _read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], int | None]:
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file
    except ImportError:
        raise ModelError(f"reading '{path}' needs the safetensors package: pip install 'nccli[safetensors]'") from None
    try:
        state_dict = load_file(path)
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for bad headers
        raise ModelError(f"cannot read '{path}' as safetensors: {first_line(error)}") from None
    epoch = metadata.get("epoch")
    return state_dict, int(epoch) if epoch is not None and epoch.isdigit() else None


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def torch_is_safe() -> bool:
    """Whether this torch has no known way for a file loaded with ``weights_only=True`` to run code."""
    return TorchVersion(torch.__version__) >= SAFE_TORCH


def _torch_load(path: str, trust: bool):
    if not trust and not torch_is_safe():
        raise ModelError(
            f"'{path}' is a pickle-based checkpoint, and torch {torch.__version__} has known ways for such a file to "
            f"run code even when loading only tensors ({KNOWN_BYPASSES}); upgrade torch to "
            f"{'.'.join(map(str, SAFE_TORCH))} or later, convert the file to .safetensors, or pass "
            "--trust-checkpoint if you trust where it came from"
        )
    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001 - unpickling a trusted file runs its code, which may raise anything
            raise ModelError(
                f"cannot read '{path}' as a PyTorch checkpoint: {type(error).__name__}: {first_line(error)}"
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(
            f"'{path}' holds pickled Python objects (such as a whole nn.Module), and unpickling can run arbitrary "
            "code, so nccli loads only tensors by default; pass --trust-checkpoint if you trust where the file "
            "came from, or save model.state_dict() instead"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise ModelError(f"cannot read '{path}' as a PyTorch checkpoint: {first_line(error)}") from None


def _unwrap(loaded, path: str) -> tuple[nn.Module | None, dict[str, torch.Tensor] | None]:
    """A module, or the state_dict inside the common wrappers ``{'state_dict': ...}``, ``{'model': ...}``, ..."""
    if isinstance(loaded, nn.Module):
        return loaded, None
    if isinstance(loaded, dict):
        if loaded and all(isinstance(value, torch.Tensor) for value in loaded.values()):
            odd = next((key for key in loaded if not isinstance(key, str)), None)
            if odd is not None:
                raise ModelError(
                    f"the state_dict in '{path}' has a {type(odd).__name__} key ({odd!r}); a state_dict maps "
                    "parameter names (strings) to tensors: save model.state_dict()"
                )
            return None, dict(loaded)
        for key in WRAPPER_KEYS:
            if isinstance(loaded.get(key), (dict, nn.Module)):
                return _unwrap(loaded[key], path)
        keys = ", ".join(map(str, list(loaded)[:8]))
        raise ModelError(
            f"no state_dict found in '{path}': expected tensors or one of the keys {', '.join(WRAPPER_KEYS)}; "
            f"found keys {keys}"
        )
    raise ModelError(f"'{path}' holds a {type(loaded).__name__}, not a state_dict or an nn.Module")


def _epoch_of(loaded) -> int | None:
    if isinstance(loaded, dict):
        for key in EPOCH_KEYS:
            value = loaded.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None
