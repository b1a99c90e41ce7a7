"""Run a model over a dataset and stream per-layer features into a feature file (``docs/feature-file.md``).

Data flow: :mod:`~nccli.extract.models` and :mod:`~nccli.extract.checkpoints`
give an ``nn.Module``; :mod:`~nccli.extract.datasets` and
:mod:`~nccli.extract.transforms` give image batches (:mod:`~nccli.extract.samples`
decodes and checks single images); :mod:`~nccli.extract.hooks` probes the
model and plans its layers, :mod:`~nccli.extract.capture` captures and pools
them; :mod:`~nccli.extract.planning` decides what the file holds;
:mod:`~nccli.extract.loop` keeps the device busy and checks each batch's rows;
:mod:`~nccli.extract.runner` ties them to :mod:`nccli.io.writer`, and
:mod:`~nccli.extract.fingerprint` makes sure a resumed file has one network.

Exports load lazily, so the CLI can read :mod:`~nccli.extract.config`'s
choices without importing torch.
"""

import importlib

_LAZY_EXPORTS = {
    "ExtractConfig": "nccli.extract.config",
    "ModelOptions": "nccli.extract.config",
    "TokenOptions": "nccli.extract.config",
    "ExtractResult": "nccli.extract.results",
    "ExtractionInterrupted": "nccli.extract.results",
    "extract_features": "nccli.extract.runner",
    "list_layers": "nccli.extract.listing",
    "list_models": "nccli.extract.listing",
}

__all__ = list(_LAZY_EXPORTS)


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'nccli.extract' has no attribute '{name}'")
