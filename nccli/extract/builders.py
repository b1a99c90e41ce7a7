"""Calling the user's own network builder: ``module.path:callable`` or ``path/to/file.py:callable``."""

import importlib
import importlib.util
import os
import sys

from torch import nn

from nccli.errors import ModelError, UsageError, first_line
from nccli.extract.messages import did_you_mean


def call_builder(spec: str, num_classes: int | None, label: str) -> nn.Module:
    """The module ``spec``'s callable returns (given ``num_classes=K`` when set); ``label`` names it in errors
    (``--arch 'x.py:f'``, or the MODEL argument)."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise UsageError(
            f"{label} names no callable; use a torchvision model name, module.path:callable or path/to/file.py:callable"
        )
    source = _import_target(target, attr, label)
    factory = getattr(source, attr, None)
    if not callable(factory):
        public = [name for name in dir(source) if not name.startswith("_")]
        raise ModelError(f"{label}: '{target}' has no callable '{attr}'{did_you_mean(attr, public)}")
    try:
        module = factory() if num_classes is None else factory(num_classes=num_classes)
    except Exception as error:  # the user's builder may raise anything
        raise ModelError(f"{label}: calling {attr}() failed: {type(error).__name__}: {first_line(error)}") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"{label} returned a {type(module).__name__}, not an nn.Module")
    return module


def _import_target(target: str, attr: str, label: str):
    if not target.endswith(".py"):
        try:
            return importlib.import_module(target)
        except ImportError as error:
            hint = f"; did you mean '{target}.py:{attr}'?" if os.path.isfile(target + ".py") else ""
            raise ModelError(f"{label}: cannot import '{target}': {first_line(error)}{hint}") from None
        except Exception as error:  # the user's module may raise anything while importing
            raise ModelError(
                f"{label}: importing '{target}' failed: {type(error).__name__}: {first_line(error)}"
            ) from None
    if not os.path.isfile(target):
        raise ModelError(f"{label}: file '{target}' does not exist")
    stem = os.path.splitext(os.path.basename(target))[0]
    name = f"nccli_arch_{stem}_{abs(hash(os.path.realpath(target))):x}"  # one module per file, not per file name
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, target)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = os.path.dirname(os.path.abspath(target))
    sys.path.insert(0, folder)  # so the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's file may raise anything while importing
        del sys.modules[name]
        raise ModelError(f"{label}: importing '{target}' failed: {type(error).__name__}: {first_line(error)}") from None
    finally:
        sys.path.remove(folder)
    return module
