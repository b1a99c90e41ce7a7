"""The optional model zoos: importing timm or transformers, or one line naming the extra that installs it.

Hugging Face's own progress bars and log lines are silenced on import: nccli
prints its own progress, and a user's stderr gets nccli's lines only. Weights
are read from the local Hugging Face cache only (:func:`cache_only`), unless
the user sets ``HF_HUB_OFFLINE=0``: offline, the hub client would otherwise
retry for a minute before it looks in the cache.
"""

import contextlib
import importlib
import importlib.metadata
import logging
import os
from types import ModuleType

from nccli.errors import UsageError

EXTRAS = {"timm": "timm", "transformers": "hf"}  # module → the nccli extra that installs it


def require(module: str, wanted_for: str) -> ModuleType:
    """``import module``, or a UsageError naming ``pip install 'nccli[extra]'``."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        imported = importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{wanted_for} needs the {module} package: pip install 'nccli[{EXTRAS[module]}]'") from None
    if module == "transformers":
        imported.utils.logging.set_verbosity_error()
        imported.utils.logging.disable_progress_bar()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    return imported


@contextlib.contextmanager
def cache_only():
    """Within: the Hugging Face hub client reads its local cache and never the network (unless HF_HUB_OFFLINE=0)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("0", "false", "no", "off"):
        yield
        return
    before, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def version_of(module: str) -> str:
    """``"timm 1.0.31"``: the installed distribution's name and version, recorded with the model's provenance."""
    return f"{module} {importlib.metadata.version(module)}"
