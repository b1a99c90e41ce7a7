"""nccli: measure neural collapse in deep classifiers, layer by layer and checkpoint by checkpoint.

The library API (the command line is a thin layer over it)::

    from nccli import analyze_features, AnalyzeConfig
    from nccli import write_analysis  # analyze and write the report files, as `nccli analyze` does
    from nccli import extract_features, ExtractConfig
    from nccli import convert_features, ConvertConfig
    from nccli import measure_collapse  # metrics of batches in hand, e.g. in an evaluation loop
    from nccli import write_measurement, MeasureConfig  # a model over data into the report, as `nccli measure`

Heavy modules (torch, h5py, pyarrow) load on first use, so ``import nccli``
stays cheap.
"""

import importlib

__version__ = "0.1.0"

_LAZY_EXPORTS = {
    "AnalyzeConfig": "nccli.analyze.config",
    "AnalysisResult": "nccli.analyze.analysis",
    "analyze_features": "nccli.analyze.analysis",
    "write_analysis": "nccli.analyze.outputs",
    "ConvertConfig": "nccli.convert",
    "convert_features": "nccli.convert",
    "measure_collapse": "nccli.analyze.measure",
    "MeasureConfig": "nccli.analyze.model_runs",
    "write_measurement": "nccli.analyze.outputs",
    "ExtractConfig": "nccli.extract",
    "extract_features": "nccli.extract",
    "list_layers": "nccli.extract",
    "list_models": "nccli.extract",
}

__all__ = ["__version__", *_LAZY_EXPORTS]


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'nccli' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_EXPORTS})
