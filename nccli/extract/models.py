"""Turning a MODEL argument into an eval-mode ``nn.Module``: torchvision names, ``--arch`` builders, checkpoints."""

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nccli.errors import ModelError, UsageError, first_line
from nccli.extract.checkpoints import CHECKPOINT_SUFFIXES, epoch_from_name, read_checkpoint
from nccli.extract.config import ModelOptions
from nccli.extract.messages import did_you_mean
from nccli.extract.state_dicts import load_state_dict, strip_prefixes
from nccli.globs import expand_globs

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # a file's first 8 bytes (superblock at offset 0, as h5py writes)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run, with the provenance written into the feature file."""

    module: nn.Module
    name: str
    weights: str = ""
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    epoch: int | None = None
    transforms: Callable | None = None
    class_names: tuple[str, ...] | None = None
    init_seed: int | None = None  # the seed of a randomly initialised network; None when weights fill it


def expand_model_args(args: tuple[str, ...]) -> list[str]:
    """MODEL arguments with globs expanded (:func:`nccli.globs.expand_globs`: natural order, epoch_2 before
    epoch_10); several entries must all be checkpoint files."""
    expanded = expand_globs(args, "checkpoint pattern")
    if len(expanded) > 1:
        for path in expanded:
            if not os.path.isfile(path):
                raise ModelError(f"'{path}' is not a checkpoint file; several MODELs must all be checkpoint files")
    return expanded


def load_model(source: str, options: ModelOptions, epoch: int | None = None) -> LoadedModel:
    """Build or load ``source`` (a torchvision name or a checkpoint path) and put it in eval mode."""
    if os.path.isfile(source) and _is_hdf5(source):
        raise ModelError(
            f"'{source}' is an HDF5 file (features?), not a model; see what a feature file holds with "
            f"`nccli info {source}`"
        )
    if os.path.isfile(source):
        loaded = _from_checkpoint(source, options, epoch)
    elif _looks_like_path(source):
        raise ModelError(f"checkpoint file '{source}' does not exist")
    else:
        loaded = _from_torchvision(source, options, epoch)
    loaded.module.eval()
    return loaded


def _is_hdf5(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE


def _looks_like_path(source: str) -> bool:
    return os.sep in source or "/" in source or source.endswith(CHECKPOINT_SUFFIXES)


def _torchvision_names() -> list[str]:
    from torchvision import models

    return models.list_models()


def _from_torchvision(name: str, options: ModelOptions, epoch: int | None) -> LoadedModel:
    from torchvision import models

    if name not in _torchvision_names():
        raise ModelError(
            f"'{name}' is neither a checkpoint file nor a torchvision model{did_you_mean(name, _torchvision_names())}"
        )
    if options.arch:
        raise UsageError(f"--arch builds the network for a checkpoint; '{name}' is already a torchvision model")
    weights = _weights_enum(name, options.weights) if options.weights else None
    kwargs = {} if options.num_classes is None else {"num_classes": options.num_classes}
    try:
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's random state
            torch.manual_seed(options.init_seed)
            module = models.get_model(name, weights=weights, **kwargs)
    except ValueError as error:
        raise ModelError(f"cannot build '{name}' with weights {options.weights}: {error}") from None
    except OSError as error:
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        raise ModelError(
            f"weights {weights} are not in the torch hub cache ('{cache}') and could not be downloaded "
            f"({error}); copy the file there from a machine that is online"
        ) from None
    return LoadedModel(
        module,
        name=name,
        weights=str(weights) if weights else "",
        epoch=epoch,
        transforms=weights.transforms() if weights else None,
        class_names=tuple(weights.meta["categories"]) if weights and "categories" in weights.meta else None,
        init_seed=None if weights else options.init_seed,
    )


def _weights_enum(name: str, requested: str):
    from torchvision import models

    enum = models.get_model_weights(name)
    member = requested.rsplit(".", 1)[-1]
    if member not in enum.__members__:
        raise ModelError(
            f"'{requested}' is not a weights name of '{name}'; choose one of {', '.join(enum.__members__)}"
        )
    return enum[member]


def _from_checkpoint(path: str, options: ModelOptions, epoch: int | None) -> LoadedModel:
    if options.weights:
        raise UsageError("--weights names torchvision weights for a torchvision model name, not for a checkpoint")
    checkpoint = read_checkpoint(path, options.trust_checkpoint)
    if checkpoint.module is not None:
        if options.arch:
            raise UsageError(f"'{path}' holds a whole model; --arch is only for state_dicts")
        module = checkpoint.module
        name = os.path.basename(path) if path.endswith(".pt2") else type(module).__name__
    else:
        if not options.arch:
            raise UsageError(
                f"'{path}' holds a state_dict; pass --arch NAME (a torchvision model), --arch module.path:callable "
                "or --arch path/to/file.py:callable to build the network it fits"
            )
        module = build_arch(options.arch, options.num_classes, checkpoint.state_dict)
        load_state_dict(module, checkpoint, options.arch)
        name = options.arch
    found_epoch = epoch if epoch is not None else checkpoint.epoch
    return LoadedModel(
        module,
        name=name,
        checkpoint=os.path.abspath(path),
        checkpoint_sha256=checkpoint.sha256,
        epoch=found_epoch if found_epoch is not None else epoch_from_name(path),
    )


def build_arch(arch: str, num_classes: int | None, state_dict: dict) -> nn.Module:
    """The network ``--arch`` names: a torchvision model, ``module.path:callable`` or ``file.py:callable``."""
    target, sep, attr = arch.rpartition(":")
    if not sep:
        return _torchvision_arch(arch, num_classes, state_dict)
    if not target or not attr:
        raise UsageError(
            f"--arch '{arch}' names no callable; use a torchvision model name, module.path:callable or "
            "path/to/file.py:callable"
        )
    source = _import_target(target, arch)
    factory = getattr(source, attr, None)
    if not callable(factory):
        public = [name for name in dir(source) if not name.startswith("_")]
        raise ModelError(f"--arch '{arch}': '{target}' has no callable '{attr}'{did_you_mean(attr, public)}")
    try:
        module = factory() if num_classes is None else factory(num_classes=num_classes)
    except Exception as error:  # the user's builder may raise anything
        raise ModelError(
            f"--arch '{arch}': calling {attr}() failed: {type(error).__name__}: {first_line(error)}"
        ) from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"--arch '{arch}' returned a {type(module).__name__}, not an nn.Module")
    return module


def _import_target(target: str, arch: str):
    if not target.endswith(".py"):
        try:
            return importlib.import_module(target)
        except ImportError as error:
            raise ModelError(f"--arch '{arch}': cannot import '{target}': {first_line(error)}") from None
        except Exception as error:  # the user's module may raise anything while importing
            raise ModelError(
                f"--arch '{arch}': importing '{target}' failed: {type(error).__name__}: {first_line(error)}"
            ) from None
    if not os.path.isfile(target):
        raise ModelError(f"--arch '{arch}': file '{target}' does not exist")
    stem = os.path.splitext(os.path.basename(target))[0]
    name = f"nccli_arch_{stem}_{abs(hash(os.path.realpath(target))):x}"  # one module per file, not per file name
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, target)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, os.path.dirname(os.path.abspath(target)))  # so the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's file may raise anything while importing
        del sys.modules[name]
        raise ModelError(
            f"--arch '{arch}': importing '{target}' failed: {type(error).__name__}: {first_line(error)}"
        ) from None
    finally:
        sys.path.remove(os.path.dirname(os.path.abspath(target)))
    return module


def _torchvision_arch(name: str, num_classes: int | None, state_dict: dict) -> nn.Module:
    from torchvision import models

    if name not in _torchvision_names():
        raise ModelError(
            f"--arch '{name}' is not a torchvision model{did_you_mean(name, _torchvision_names())}; "
            "for your own network use --arch module.path:callable or --arch path/to/file.py:callable"
        )
    if num_classes is None:
        num_classes = _classes_in_state_dict(name, state_dict)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    skeleton = _on_meta_device(name, kwargs)
    if skeleton is None or set(dict(skeleton.named_buffers())) - set(skeleton.state_dict()):
        return models.get_model(name, **kwargs)
    return skeleton.to_empty(device="cpu")  # the checkpoint fills every tensor: skip the random initialisation


def _on_meta_device(name: str, kwargs: dict) -> nn.Module | None:
    """The architecture without allocating or initialising weights; None if its builder needs real tensors."""
    from torchvision import models

    try:
        with torch.device("meta"):
            return models.get_model(name, **kwargs)
    except (RuntimeError, NotImplementedError):
        return None


def _classes_in_state_dict(name: str, state_dict: dict) -> int | None:
    """The output width of the architecture's last Linear layer as stored in the state_dict."""
    skeleton = _on_meta_device(name, {})
    if skeleton is None:
        return None
    linears = [module_name for module_name, module in skeleton.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        return None
    weight = strip_prefixes(state_dict, set(skeleton.state_dict())).get(linears[-1] + ".weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None
