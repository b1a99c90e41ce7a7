"""The test suite's shared setup.

``tests/`` is not a package: its helper modules are imported by name, from this folder —
``h5files`` (feature files written with plain h5py, ``good_file``), ``cli_helpers`` (running the
command line and the benchmark scripts, the shape of a refusal), ``analysis_helpers`` (analyze on
arrays, comparisons with the oracle), ``extract_helpers`` (tiny models and image data), ``reference``
and ``reference_more`` (the naive float64 oracle, written from ``docs/metrics.md``), ``closed_forms``
(fixtures with known values), ``dense`` (the dense pair statistics) and ``zoo_helpers`` (a Hugging
Face cache in a test folder, tiny Hugging Face classifiers) and ``lm_helpers`` (tiny causal language models
and a tokenizer trained in the test). Test modules import helpers,
never each other. Tests marked ``slow`` (torchrun jobs, kills, whole pipelines) are left out by
``pytest -m "not slow"``.
"""

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:  # the helpers above, also for subprocesses that import this file's folder
    sys.path.insert(0, TESTS)

from zoo_helpers import hub_cache  # noqa: E402,F401  (a fixture of the model-zoo tests)
