"""Turning a MODEL argument into an eval-mode ``nn.Module``: torchvision names, ``timm:NAME``, Hugging Face
folders and ``hf:ORG/NAME`` (:mod:`.timm_models`, :mod:`.hf_models`), ``file.py:callable`` builders,
``--arch`` builders for checkpoints."""

import os

import torch
from torch import nn

from nccli.errors import ModelError, UsageError
from nccli.extract.builders import call_builder
from nccli.extract.checkpoints import CHECKPOINT_SUFFIXES, epoch_from_name, read_checkpoint
from nccli.extract.config import ModelOptions, is_hugging_face
from nccli.extract.extras import version_of
from nccli.extract.hf_models import load_hf
from nccli.extract.loaded import LoadedModel
from nccli.extract.messages import did_you_mean
from nccli.extract.state_dicts import load_state_dict, strip_prefixes
from nccli.extract.timm_models import PREFIX as TIMM_PREFIX
from nccli.extract.timm_models import build_timm_arch, load_timm
from nccli.globs import expand_globs

EXPLICIT_INIT = ("googlenet", "inception_v3")  # torchvision warns unless init_weights is given without weights
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # a file's first 8 bytes (superblock at offset 0, as h5py writes)


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
    """Build or load ``source`` (see :func:`model_kind`) and put it in eval mode."""
    loaders = {
        "timm": lambda: load_timm(source[len(TIMM_PREFIX) :], options, epoch),
        "hf": lambda: load_hf(source, options, epoch),
        "builder": lambda: _from_builder(source, options, epoch),
        "checkpoint": lambda: _from_checkpoint(source, options, epoch),
        "torchvision": lambda: _from_torchvision(source, options, epoch),
    }
    loaded = loaders[model_kind(source)]()
    loaded.module.eval()
    return loaded


def model_kind(source: str) -> str:
    """Which zoo a MODEL argument names: ``timm:NAME``; ``hf:ORG/NAME`` or a folder with config.json;
    ``file.py:callable`` or ``module.path:callable`` (random weights); a checkpoint file; a torchvision name."""
    if source.startswith(TIMM_PREFIX):
        return "timm"
    if is_hugging_face(source):
        return "hf"
    if os.path.isdir(source):
        raise ModelError(f"'{source}' is a folder but not a Hugging Face model (it has no config.json)")
    if os.path.isfile(source):
        if _is_hdf5(source):
            raise ModelError(
                f"'{source}' is an HDF5 file (features?), not a model; see what a feature file holds with "
                f"`nccli info {source}`"
            )
        return "checkpoint"
    target, colon, attr = source.rpartition(":")
    if colon and target and attr.isidentifier():
        return "builder"
    if _looks_like_path(source):
        raise ModelError(f"checkpoint file '{source}' does not exist")
    return "torchvision"


def _from_builder(source: str, options: ModelOptions, epoch: int | None) -> LoadedModel:
    """``file.py:callable`` or ``module.path:callable`` called with random weights seeded by ``--init-seed``."""
    if options.weights or options.arch:
        raise UsageError(f"'{source}' builds a network with random weights; --weights and --arch are for others")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.init_seed)
        module = call_builder(source, options.num_classes, f"'{source}'")
    return LoadedModel(module, name=source, epoch=epoch, init_seed=options.init_seed)


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
    if weights is None and name in EXPLICIT_INIT:
        kwargs["init_weights"] = True  # their default, said explicitly: torchvision warns otherwise
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
        library=version_of("torchvision"),
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
        load_state_dict(module, checkpoint, f"--arch '{options.arch}'")
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
    if arch.startswith(TIMM_PREFIX):
        return build_timm_arch(arch[len(TIMM_PREFIX) :], num_classes, state_dict)
    if ":" not in arch:
        return _torchvision_arch(arch, num_classes, state_dict)
    return call_builder(arch, num_classes, f"--arch '{arch}'")


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
